package lazy_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/lazymigrate/lazymigrate/fallback"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/lazy"
)

// Rollback: with mirroring on, half the table is migrated through reads
// and writes; switched to "old", every read returns the latest
// acknowledged write.
func TestRollbackToOldServesLatestWrites(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{worker: true})
	_, prefix := testenv.Redis(t)
	sw, err := fallback.New(b.rdb, "accounts", &fallback.Config{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	repo := writeRepo(t, b, lazy.Config[Account]{Scheduler: b.enqueuer, Mode: sw})

	want := map[int64]*Account{} // nil: deleted
	for k := int64(1); k <= 100; k++ {
		a, err := repo.Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		want[k] = &a
	}
	for k := int64(1); k <= 50; k++ { // reads promote the lower half
		if _, err := repo.Get(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 20*time.Second, "the lower half promoted", func() bool {
		return len(tableText(t, b.pair.New)) >= 50
	})
	for k := int64(10); k <= 90; k += 10 {
		switch k % 30 {
		case 0:
			if err := repo.Delete(ctx, k); err != nil {
				t.Fatal(err)
			}
			want[k] = nil
		case 10:
			a, err := repo.Put(ctx, k, account(k, "put before rollback"))
			if err != nil {
				t.Fatal(err)
			}
			want[k] = &a
		default:
			a, err := repo.Update(ctx, k, func(a *Account) error { a.Name = "updated before rollback"; return nil })
			if err != nil {
				t.Fatal(err)
			}
			want[k] = &a
		}
	}
	a, err := repo.Put(ctx, 5000, account(5000, "only ever in NEW"))
	if err != nil {
		t.Fatal(err)
	}
	want[5000] = &a

	if err := sw.Set(ctx, fallback.ModeOld); err != nil {
		t.Fatal(err)
	}
	newQueries := b.newQueries.Load()
	for k, w := range want {
		got, err := repo.Get(ctx, k)
		switch {
		case w == nil:
			if !errors.Is(err, lazy.ErrNotFound) {
				t.Fatalf("rolled back: Get(deleted %d) = %+v, %v; want ErrNotFound", k, got, err)
			}
		case err != nil || !same(got, *w):
			t.Fatalf("rolled back: Get(%d) = %+v, %v; want %+v", k, got, err, *w)
		}
	}
	got, err := repo.GetMany(ctx, []int64{10, 20, 30, 5000})
	if err != nil || len(got) != 3 || got[20].Name != "updated before rollback" {
		t.Fatalf("rolled back: GetMany = %v, %v", keysOf(got), err)
	}
	if b.newQueries.Load() != newQueries {
		t.Fatal("rolled-back reads queried NEW")
	}
}

// Mode "new": no fallback, nothing scheduled.
func TestModeNewDoesNotFallBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	sw, err := fallback.New(nil, "accounts", nil)
	if err != nil {
		t.Fatal(err)
	}
	sw.Override(fallback.ModeNew)
	repo := writeRepo(t, b, lazy.Config[Account]{Scheduler: b.enqueuer, Mode: sw})
	if _, err := repo.Get(ctx, 3); !errors.Is(err, lazy.ErrNotFound) {
		t.Fatalf("mode new: Get(key only in OLD) err = %v, want ErrNotFound", err)
	}
	if got, err := repo.GetMany(ctx, []int64{3, 4}); err != nil || len(got) != 0 {
		t.Fatalf("mode new: GetMany = %v, %v", keysOf(got), err)
	}
	if n := b.oldQueries.Load(); n != 0 {
		t.Fatalf("mode new sent %d queries to OLD", n)
	}
	if err := b.enqueuer.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := b.metric(t, "lazymigrate_promotions_total", "enqueued"); got != 0 {
		t.Fatalf("mode new scheduled %v promotions", got)
	}
}

func TestPurgeTombstonesOnlyInModeNew(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	sw, err := fallback.New(nil, "accounts", nil)
	if err != nil {
		t.Fatal(err)
	}
	repo := writeRepo(t, b, lazy.Config[Account]{Mode: sw})
	for _, k := range []int64{1, 2} {
		if err := repo.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := repo.PurgeTombstones(ctx); !errors.Is(err, lazy.ErrPurgeTooEarly) {
		t.Fatalf("purge in readthrough: err = %v, want ErrPurgeTooEarly", err)
	}
	if _, err := repo.Get(ctx, 1); !errors.Is(err, lazy.ErrNotFound) {
		t.Fatal("a refused purge removed a tombstone")
	}
	sw.Override(fallback.ModeNew)
	if n, err := repo.PurgeTombstones(ctx); err != nil || n != 2 {
		t.Fatalf("purge in mode new = %d, %v; want 2", n, err)
	}
}

// A mode rolled out to half the keys: each key is read in its own mode, by
// Get and by GetMany, and only the keys in readthrough are promoted.
func TestRolloutServesEachKeyInItsMode(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	_, prefix := testenv.Redis(t)
	sw, err := fallback.New(b.rdb, "accounts", &fallback.Config{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	half := fallback.Policy{Mode: fallback.ModeReadthrough, Percent: 50}
	if err := sw.SetPolicy(ctx, half); err != nil {
		t.Fatal(err)
	}
	repo := writeRepo(t, b, lazy.Config[Account]{Scheduler: b.enqueuer, Mode: sw})
	rolledOut := func(lo, hi int64) (in, out []int64) {
		for k := lo; k < hi; k++ {
			if half.ModeOf(k) == fallback.ModeReadthrough {
				in = append(in, k)
			} else {
				out = append(out, k)
			}
		}
		if len(in) == 0 || len(out) == 0 {
			t.Fatalf("keys [%d, %d): %d rolled out, %d not; the test needs both", lo, hi, len(in), len(out))
		}
		return in, out
	}

	in, out := rolledOut(1, 51)
	for _, k := range out {
		if a, err := repo.Get(ctx, k); err != nil || a.ID != k {
			t.Fatalf("Get(%d), in mode old = %+v, %v", k, a, err)
		}
	}
	if n := b.newQueries.Load(); n != 0 {
		t.Fatalf("reads of keys kept in mode old sent %d queries to NEW", n)
	}
	for _, k := range in {
		if a, err := repo.Get(ctx, k); err != nil || a.ID != k {
			t.Fatalf("Get(%d), in readthrough = %+v, %v", k, a, err)
		}
	}
	if n := b.newQueries.Load(); n < int64(len(in)) {
		t.Fatalf("%d reads in readthrough sent %d queries to NEW", len(in), n)
	}

	manyIn, _ := rolledOut(51, 101)
	all := make([]int64, 0, 50)
	for k := int64(51); k <= 100; k++ {
		all = append(all, k)
	}
	got, err := repo.GetMany(ctx, all)
	if err != nil || len(got) != 50 {
		t.Fatalf("GetMany(51..100) = %d records, %v; want 50", len(got), err)
	}
	for _, k := range all {
		if got[k].ID != k {
			t.Fatalf("GetMany: key %d holds %+v", k, got[k])
		}
	}
	if err := b.enqueuer.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := b.metric(t, "lazymigrate_promotions_total", "enqueued"), float64(len(in)+len(manyIn)); got != want {
		t.Fatalf("%v promotions enqueued, want %v: one per key in readthrough", got, want)
	}

	// A rollout of new to half the keys: those NEW lacks read as not
	// found, the others still fall back.
	halfNew := fallback.Policy{Mode: fallback.ModeNew, Percent: 50}
	if err := sw.SetPolicy(ctx, halfNew); err != nil {
		t.Fatal(err)
	}
	got, err = repo.GetMany(ctx, all)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range all {
		_, found := got[k]
		_, getErr := repo.Get(ctx, k)
		if want := halfNew.ModeOf(k) == fallback.ModeReadthrough; found != want || (getErr == nil) != want {
			t.Fatalf("new 50%%, key %d (only in OLD): GetMany found it = %v, Get = %v; want found = %v", k, found, getErr, want)
		}
	}
	if _, err := repo.PurgeTombstones(ctx); !errors.Is(err, lazy.ErrPurgeTooEarly) {
		t.Fatalf("PurgeTombstones at new 50%% = %v, want ErrPurgeTooEarly", err)
	}
}

// policySource serves a fixed fallback.Policy as a lazy.ModeSource.
type policySource struct{ p fallback.Policy }

func (s policySource) ModeOf(key int64) fallback.Mode { return s.p.ModeOf(key) }
func (s policySource) Policy() fallback.Policy        { return s.p }

// During a rollout, a GetMany whose OLD is down returns what NEW served,
// an error wrapping ErrOldUnavailable from the keys still read in mode
// old, and counts each key once.
func TestRolloutGetManyWithOldDown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	for k := int64(1); k <= 10; k++ {
		rgNewRow(t, b, k)
	}
	policy := fallback.Policy{Mode: fallback.ModeReadthrough, Percent: 50}
	oldPool := b.pair.Old.NewPool(t, nil)
	repo, reg := rgRepo(t, oldPool, b.pair.New.Pool, lazy.Config[Account]{Mode: policySource{policy}})
	oldPool.Close() // OLD goes down

	all := make([]int64, 0, 20)
	var wantHits []int64
	for k := int64(1); k <= 20; k++ {
		all = append(all, k)
		if k <= 10 && policy.ModeOf(k) == fallback.ModeReadthrough {
			wantHits = append(wantHits, k)
		}
	}
	got, err := repo.GetMany(ctx, all)
	if !errors.Is(err, lazy.ErrOldUnavailable) {
		t.Fatalf("GetMany with OLD down: err = %v, want ErrOldUnavailable", err)
	}
	if len(got) != len(wantHits) {
		t.Fatalf("GetMany with OLD down = keys %v, want NEW's hits in readthrough %v", keysOf(got), wantHits)
	}
	for _, k := range wantHits {
		if got[k].Name != fmt.Sprintf("NEW %d", k) {
			t.Fatalf("key %d = %+v, want NEW's row", k, got[k])
		}
	}
	total := 0.0
	for _, o := range []string{"new", "old", "not_found", "error"} {
		total += rgReads(t, reg, o)
	}
	if total != 20 {
		t.Fatalf("reads_total counts %v reads for 20 keys", total)
	}
	if n := rgReads(t, reg, "new"); n != float64(len(wantHits)) {
		t.Fatalf("reads_total{new} = %v, want %d", n, len(wantHits))
	}
}
