package lazy_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazymigrate/lazymigrate/fallback"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/lazy"
)

// Shadow reads compare what Get returned with the other database: a read
// of NEW with OLD, a read of OLD in mode old with NEW. Each difference a
// failed mirror can leave is reported; keys not migrated yet are not.
func TestShadowReadsFindWhatDiffers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	reg := prometheus.NewRegistry()
	var log testenv.SyncBuffer
	sh, err := fallback.NewShadow("accounts", &fallback.ShadowConfig{
		Rate: 1, RecheckDelay: time.Millisecond, Registerer: reg,
		Logger: slog.New(slog.NewTextHandler(&log, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sh.Wait)
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
		for _, o := range []string{"match", "mismatch", "unmigrated", "error", "busy"} {
			if got := testenv.CounterValue(t, reg, "lazymigrate_shadow_reads_total", "outcome", o); got != want[o] {
				t.Fatalf("%s: shadow_reads_total{outcome=%q} = %v, want %v", what, o, got, want[o])
			}
		}
		added := strings.TrimPrefix(log.String(), before)
		if logged == "" && added != "" || !strings.Contains(added, logged) {
			t.Fatalf("%s: logged %q, want a line with %q", what, added, logged)
		}
	}

	step("readthrough, a miss OLD serves", 5, "", "")
	if _, err := repo.Put(ctx, 6, account(6, "mirrored")); err != nil {
		t.Fatal(err)
	}
	step("readthrough, a hit OLD agrees with", 6, "match", "")
	b.pair.Old.Exec(t, `UPDATE accounts SET name = 'drifted', status = 'closed' WHERE id = 6`)
	step("readthrough, a hit OLD disagrees with", 6, "mismatch", "key=6 served_by=new difference=\"fields differ: Name, Status\"")

	if err := repo.Delete(ctx, 7); err != nil {
		t.Fatal(err)
	}
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
}
