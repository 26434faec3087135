package lazy_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazymigrate/lazymigrate/fallback"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/lazy"
)

// testShadow returns a Shadow that compares every read, with a registry of
// its own, closed when the test ends. cfg may set the rest.
func testShadow(t *testing.T, cfg fallback.ShadowConfig) (*fallback.Shadow, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg.Rate, cfg.Registerer = 1, reg
	sh, err := fallback.NewShadow("accounts", &cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sh.Close)
	return sh, reg
}

func shadowCount(t *testing.T, reg *prometheus.Registry, outcome string) float64 {
	t.Helper()
	return testenv.CounterValue(t, reg, "lazymigrate_shadow_reads_total", "outcome", outcome)
}

// requireShadowCounts fails unless shadow_reads_total counts want for each
// outcome want names.
func requireShadowCounts(t *testing.T, reg *prometheus.Registry, what string, want map[string]float64) {
	t.Helper()
	for o, w := range want {
		if got := shadowCount(t, reg, o); got != w {
			t.Fatalf("%s: shadow_reads_total{outcome=%q} = %v, want %v", what, o, got, w)
		}
	}
}

// Shadow reads compare what Get returned with the other database: a read
// of NEW with OLD, a read of OLD in mode old with NEW. Each difference a
// failed mirror can leave is reported; keys not migrated yet are not.
func TestShadowReadsFindWhatDiffers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	var log testenv.SyncBuffer
	sh, reg := testShadow(t, fallback.ShadowConfig{RecheckDelay: time.Millisecond, Logger: slog.New(slog.NewTextHandler(&log, nil))})
	sw, err := fallback.New(nil, "accounts", nil)
	if err != nil {
		t.Fatal(err)
	}
	repo := writeRepo(t, b, lazy.Config[Account]{Mode: sw, Shadow: sh})

	want := map[string]float64{}
	step := func(what string, key int64, outcome, logged string) {
		t.Helper()
		before := log.String()
		_, _ = repo.Get(ctx, key)
		sh.Wait()
		if outcome != "" {
			want[outcome]++
		}
		requireShadowCounts(t, reg, what, map[string]float64{"match": want["match"], "mismatch": want["mismatch"],
			"unmigrated": want["unmigrated"], "error": want["error"], "busy": want["busy"]})
		added := strings.TrimPrefix(log.String(), before)
		if logged == "" && added != "" || !strings.Contains(added, logged) {
			t.Fatalf("%s: logged %q, want a line with %q", what, added, logged)
		}
	}

	step("readthrough, a miss OLD serves", 5, "", "")
	if _, err := repo.Put(ctx, 6, account(6, "mirrored")); err != nil {
		t.Fatal(err)
	}
	repo.Close() // the Put's outbox entry deleted
	step("readthrough, a hit OLD agrees with", 6, "match", "")
	b.pair.Old.Exec(t, `UPDATE accounts SET name = 'drifted', status = 'closed' WHERE id = 6`)
	step("readthrough, a hit OLD disagrees with", 6, "mismatch", "key=6 served_by=new difference=\"fields differ: Name, Status\"")

	if err := repo.Delete(ctx, 7); err != nil {
		t.Fatal(err)
	}
	repo.Close()
	step("readthrough, a key deleted in both", 7, "match", "")
	testenv.SeedAccounts(t, b.pair.Old, 7, 8) // as if the delete's mirror had failed
	step("readthrough, a key deleted in NEW only", 7, "mismatch", "deleted in NEW, still in OLD")
	step("readthrough, a key in neither", 5000, "match", "")

	sw.Override(fallback.ModeOld)
	step("mode old, a key not migrated yet", 8, "unmigrated", "")
	step("mode old, a key NEW disagrees with", 6, "mismatch", "key=6 served_by=old difference=\"fields differ: Name, Status\"")
	b.pair.New.Exec(t, `INSERT INTO accounts SELECT 5000, 'n@example.com', 'only in NEW', 0, 'active', now(), now()`)
	step("mode old, a key only in NEW", 5000, "mismatch", "in NEW, missing from OLD")

	sw.Override(fallback.ModeNew)
	b.pair.Old.Exec(t, `UPDATE accounts SET name = 'mirrored', status = 'active' WHERE id = 6`)
	step("mode new, OLD current again", 6, "match", "")
	step("mode new, a key the sweep missed", 9, "unmigrated", "")

	// A write whose mirror is left to the relay: OLD is behind, and will
	// catch up.
	tx, err := b.pair.New.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := repo.PutTx(ctx, tx, 10, account(10, "written in a transaction")); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	step("mode new, a write still in the outbox", 10, "pending", "")
	if err := repo.Reconcile(ctx, 10); err != nil {
		t.Fatal(err)
	}
	repo.Close()
	step("mode new, the write mirrored", 10, "match", "")

	// GetMany samples each key it reads.
	b.pair.Old.Exec(t, `UPDATE accounts SET name = 'drifted again' WHERE id = 10`)
	if got, err := repo.GetMany(ctx, []int64{6, 9, 10}); err != nil || len(got) != 2 {
		t.Fatalf("GetMany(6, 9, 10) in mode new = %v, %v", keysOf(got), err)
	}
	sh.Wait()
	want["match"]++      // 6
	want["unmigrated"]++ // 9
	want["mismatch"]++   // 10
	requireShadowCounts(t, reg, "after GetMany", want)
}

// A difference a write mends before the recheck is not a mismatch: the
// recheck reads both databases again.
func TestShadowRecheckReadsAgain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	sh, reg := testShadow(t, fallback.ShadowConfig{RecheckDelay: time.Second})
	repo := writeRepo(t, b, lazy.Config[Account]{Shadow: sh})
	if _, err := repo.Put(ctx, 6, account(6, "mirrored")); err != nil {
		t.Fatal(err)
	}
	repo.Close() // the Put's bookkeeping done: the counts below are the shadow's
	b.pair.Old.Exec(t, `UPDATE accounts SET name = 'behind' WHERE id = 6`)

	b.newQueries.Store(0)
	if _, err := repo.Get(ctx, 6); err != nil {
		t.Fatal(err)
	}
	// NEW sees the hit, the check's read and, once the check has found
	// the difference, its look at the tombstones and the outbox.
	testenv.Eventually(t, 5*time.Second, "the first check to find the difference", func() bool {
		return b.newQueries.Load() >= 3
	})
	b.pair.Old.Exec(t, `UPDATE accounts SET name = 'mirrored' WHERE id = 6`)
	sh.Wait()
	requireShadowCounts(t, reg, "after the recheck", map[string]float64{"match": 1, "mismatch": 0})
}

// A repo of pointers: the caller owns the record Get returns and may
// change it at once; the comparison does not read it (run with -race).
func TestShadowLeavesTheCallersRecordAlone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	sh, reg := testShadow(t, fallback.ShadowConfig{})
	if _, err := b.copier.CopyKeys(ctx, []int64{6}); err != nil {
		t.Fatal(err)
	}
	repo, err := lazy.New(ctx, b.oldPool, b.newPool, &lazy.Config[*Account]{
		Table: "accounts", Scan: pgx.RowToAddrOfStructByName[Account], Shadow: sh,
	})
	if err != nil {
		t.Fatal(err)
	}
	a, err := repo.Get(ctx, 6)
	if err != nil {
		t.Fatal(err)
	}
	a.Name = "changed by the caller"
	sh.Wait()
	if got := shadowCount(t, reg, "match"); got != 1 {
		t.Fatalf("match = %v, want 1: NEW and OLD hold the same row", got)
	}
}
