package promote_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/promote"
)

// The row path lists tombstones after its transactions commit. A key it
// inserted and a delete tombstoned in between is listed as tombstoned too,
// and was counted as both copied and tombstoned: Present went negative,
// and the counter that adds it panics ("counter cannot decrease"), in an
// asynq worker or in the goroutine of a caller's Update. It counts as
// copied.
func TestCopyCountsAKeyDeletedRightAfterItsCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// One stripe per two keys: keys 1..80 take 41 stripes, two
	// transactions of at most 32, the second from key 64 on.
	b := setup(t, &promote.CopierConfig{StripeBits: 1})
	hold, err := b.pair.New.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = hold.Rollback(ctx) }()
	if err := b.copier.LockKeys(ctx, hold, []int64{70}); err != nil {
		t.Fatal(err)
	}
	ks := make([]int64, 80)
	for i := range ks {
		ks[i] = int64(i + 1)
	}
	type result struct {
		res promote.Result
		err error
	}
	done := make(chan result, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- result{err: fmt.Errorf("panic: %v", p)}
			}
		}()
		res, err := b.copier.CopyKeys(ctx, ks)
		done <- result{res, err}
	}()
	// The first transaction has committed once the second waits for the
	// lock held here.
	testenv.Eventually(t, 10*time.Second, "the copy's second transaction waits for key 70's stripe", func() bool {
		var n int
		_ = b.pair.New.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n)
		return n > 0
	})
	// Delete key 5, copied by the first transaction, as lazy's Delete does.
	del, err := b.pair.New.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.copier.LockKeys(ctx, del, []int64{5}); err != nil {
		t.Fatal(err)
	}
	if tag, err := del.Exec(ctx, `DELETE FROM accounts WHERE id = 5`); err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("delete key 5 after the first transaction committed: %v, %v rows", err, tag.RowsAffected())
	}
	if _, err := del.Exec(ctx, `INSERT INTO lazymigrate.tombstones (table_name, key) VALUES ('public.accounts', 5)`); err != nil {
		t.Fatal(err)
	}
	if err := del.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := hold.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-done
	// OLD lacks the multiples of 10: 72 of the 80 keys are there.
	if want := (promote.Result{Copied: 72, Absent: 8}); r.err != nil || r.res != want {
		t.Fatalf("CopyKeys = %+v, %v; want %+v", r.res, r.err, want)
	}
}
