package lazy_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/lazymigrate/lazymigrate/fallback"
	"github.com/lazymigrate/lazymigrate/lazy"
	"github.com/lazymigrate/lazymigrate/promote"
)

// modeNew returns a mode switch held at mode new, as a completed migration
// is before its tombstones are purged.
func modeNew(t *testing.T) *fallback.Switch {
	t.Helper()
	sw, err := fallback.New(nil, "accounts", nil)
	if err != nil {
		t.Fatal(err)
	}
	sw.Override(fallback.ModeNew)
	return sw
}

// pausedCopier returns a copier of b's table whose first copy stops after
// reading OLD: paused is closed then, and the copy goes on once resume is.
func pausedCopier(t *testing.T, b *testBundle, noBulk bool) (cp *promote.Copier, paused, resume chan struct{}) {
	t.Helper()
	paused, resume = make(chan struct{}), make(chan struct{})
	var once sync.Once
	cp, err := promote.NewCopier(context.Background(), b.pair.Old.Pool, b.pair.New.Pool, &promote.CopierConfig{
		Table: "accounts", Marker: b.tracker, NoBulk: noBulk,
		Hooks: promote.Hooks{AfterRead: func(context.Context, []int64) { once.Do(func() { close(paused); <-resume }) }},
	})
	if err != nil {
		t.Fatal(err)
	}
	return cp, paused, resume
}

// requireDeleted fails unless key reads as not found and NEW has no row.
func requireDeleted(t *testing.T, b *testBundle, repo *lazy.Repo[Account], key int64) {
	t.Helper()
	if got, err := repo.Get(context.Background(), key); !errors.Is(err, lazy.ErrNotFound) {
		t.Errorf("Get(deleted %d) = %+v, %v; want ErrNotFound", key, got, err)
	}
	if _, ok := tableText(t, b.pair.New)[key]; ok {
		t.Errorf("NEW holds deleted key %d again", key)
	}
}

// Invariant 3 across PurgeTombstones. A copy that read key 9 from OLD
// before the key was deleted checks for its tombstone only when it writes:
// if the purge came in between, it would find none and put the row back.
// Purging closes the table's migration in the same transaction, and the
// copy, on either path, refuses with ErrClosed.
func TestPurgeClosesCopiesUnderWay(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		copy func(cp *promote.Copier) (promote.Result, error)
	}{
		{"row path", func(cp *promote.Copier) (promote.Result, error) {
			return cp.CopyKeys(context.Background(), []int64{9})
		}},
		{"bulk path", func(cp *promote.Copier) (promote.Result, error) {
			return cp.CopyRange(context.Background(), 1, 101)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			b := setup(t, setupOpts{})
			cp, paused, resume := pausedCopier(t, b, c.name == "row path")
			repo := writeRepo(t, b, lazy.Config[Account]{Mode: modeNew(t)})

			copied := make(chan error, 1)
			go func() { _, err := c.copy(cp); copied <- err }()
			<-paused // the copy has read key 9 from OLD
			if err := repo.Delete(ctx, 9); err != nil {
				t.Fatal(err)
			}
			if n, err := repo.PurgeTombstones(ctx); err != nil || n != 1 {
				t.Fatalf("PurgeTombstones = %d, %v; want 1 tombstone", n, err)
			}
			close(resume)
			if err := <-copied; !errors.Is(err, promote.ErrClosed) {
				t.Fatalf("copy under way across the purge: err = %v, want ErrClosed", err)
			}
			requireDeleted(t, b, repo, 9)
		})
	}
}

// The same through Update of a key NEW lacks, which promotes it first: the
// key was deleted and purged meanwhile, so Update finds nothing.
func TestPurgeDuringUpdatesPromotion(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	cp, paused, resume := pausedCopier(t, b, false)
	repo := writeRepo(t, b, lazy.Config[Account]{Mode: modeNew(t), Copier: cp})

	updated := make(chan error, 1)
	go func() {
		_, err := repo.Update(ctx, 9, func(a *Account) error { a.Name = "updated"; return nil })
		updated <- err
	}()
	<-paused
	if err := repo.Delete(ctx, 9); err != nil {
		t.Fatal(err)
	}
	if _, err := repo.PurgeTombstones(ctx); err != nil {
		t.Fatal(err)
	}
	close(resume)
	if err := <-updated; !errors.Is(err, lazy.ErrNotFound) {
		t.Errorf("Update racing Delete and PurgeTombstones = %v, want ErrNotFound", err)
	}
	requireDeleted(t, b, repo, 9)
	if _, ok := tableText(t, b.pair.Old)[9]; ok {
		t.Error("OLD holds deleted key 9 again")
	}
}

// purgedWithoutMirror returns a bundle whose repo, without mirroring and
// in mode new, deleted key and then purged the tombstones: OLD still holds
// the key's row.
func purgedWithoutMirror(t *testing.T, key int64) (*testBundle, *lazy.Repo[Account]) {
	t.Helper()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	repo := writeRepo(t, b, lazy.Config[Account]{Mode: modeNew(t), DisableMirror: true})
	if err := repo.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	if _, err := repo.PurgeTombstones(ctx); err != nil {
		t.Fatal(err)
	}
	return b, repo
}

// Without mirroring OLD keeps the rows deleted in NEW, so after the purge
// no race is needed: every later copy would bring them back. None is made:
// Update and Migrate find nothing, copies and sweeps of the table refuse,
// and writes go on.
func TestAfterPurgeNothingIsCopied(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b, repo := purgedWithoutMirror(t, 9)
	if _, err := repo.Update(ctx, 9, func(*Account) error { return nil }); !errors.Is(err, lazy.ErrNotFound) {
		t.Errorf("Update(deleted 9) after the purge = %v, want ErrNotFound", err)
	}
	if err := repo.Migrate(ctx, 9); !errors.Is(err, lazy.ErrNotFound) {
		t.Errorf("Migrate(deleted 9) after the purge = %v, want ErrNotFound", err)
	}
	requireDeleted(t, b, repo, 9)
	if _, err := b.copier.CopyKeys(ctx, []int64{9, 10}); !errors.Is(err, promote.ErrClosed) {
		t.Errorf("CopyKeys after the purge: err = %v, want ErrClosed", err)
	}
	if _, err := b.copier.CopyRange(ctx, 1, 101); !errors.Is(err, promote.ErrClosed) {
		t.Errorf("CopyRange after the purge: err = %v, want ErrClosed", err)
	}
	if n := len(tableText(t, b.pair.New)); n != 0 {
		t.Errorf("NEW holds %d rows after refused copies, want 0", n)
	}
	// Writes are not copies.
	if _, err := repo.Put(ctx, 9, account(9, "again")); err != nil {
		t.Fatalf("Put after the purge: %v", err)
	}
	if got, err := repo.Get(ctx, 9); err != nil || got.Name != "again" {
		t.Errorf("Get(9) after Put = %+v, %v", got, err)
	}
}

// Invariant 3 on a closed table, for reads: a process still reading in
// readthrough (it has not seen mode new yet, or Redis lost the mode key)
// with the tracker's bits lost must not serve from OLD a key deleted
// before the purge. Once the table is closed, a key NEW lacks is gone.
func TestReadsOfAClosedTableDoNotFallBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b, _ := purgedWithoutMirror(t, 9)
	if err := b.tracker.Reset(ctx); err != nil { // Redis lost its keys
		t.Fatal(err)
	}
	if got, err := b.repo.Get(ctx, 9); !errors.Is(err, lazy.ErrNotFound) {
		t.Errorf("Get(deleted and purged 9) in readthrough = %+v, %v; want ErrNotFound", got, err)
	}
	got, err := b.repo.GetMany(ctx, []int64{9, 10})
	if err != nil || len(got) != 0 {
		t.Errorf("GetMany(9, 10) of a closed table NEW lacks both of = %v, %v; want nothing", keysOf(got), err)
	}
}
