package promote_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/promote"
)

// bulkFixture sets up OLD with keys 1..100 but multiples of 10, and a
// copier with 4-key stripes, on the bulk path unless noBulk, that counts
// the NEW transactions of its bulk path. NEW holds rows 5 (also in OLD) and
// 150 (not), and tombstones 3 and 77 (in OLD) and 20 (not).
func bulkFixture(t *testing.T, noBulk bool) (*testBundle, *atomic.Int64) {
	t.Helper()
	locked := new(atomic.Int64)
	b := setup(t, &promote.CopierConfig{StripeBits: 2, NoBulk: noBulk,
		Hooks: promote.Hooks{AfterLock: func(context.Context, int64, int64) { locked.Add(1) }}})
	b.pair.New.Exec(t, `INSERT INTO accounts VALUES
		(5, 'new@example.com', 'Written in NEW', 1, 'active', '2021-01-01Z', '2021-01-01Z'),
		(150, 'only@example.com', 'Only in NEW', 2, 'active', '2021-01-01Z', '2021-01-01Z')`)
	b.pair.New.Exec(t, `INSERT INTO lazymigrate.tombstones (table_name, key)
		VALUES ('public.accounts', 3), ('public.accounts', 20), ('public.accounts', 77)`)
	return b, locked
}

// The bulk path (binary COPY) and the row path agree on what they copy and
// on what they report, with rows present in NEW, tombstones inside and
// outside OLD, and a range wider than one transaction's stripes.
func TestCopyRangeBulkMatchesRowPath(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	type outcome struct {
		res    promote.Result
		rows   map[int64]string
		bulked int64
	}
	run := func(noBulk bool) outcome {
		b, locked := bulkFixture(t, noBulk)
		res, err := b.copier.CopyRange(ctx, 0, 300)
		if err != nil {
			t.Fatalf("noBulk=%v: %v", noBulk, err)
		}
		if left, err := b.tracker.Unsettled(ctx, 0, 300); err != nil || len(left) != 0 {
			t.Fatalf("noBulk=%v: unsettled after CopyRange: %v, %v", noBulk, left, err)
		}
		return outcome{res, rowsText(t, b.pair.New, "accounts"), locked.Load()}
	}
	bulk, rows := run(false), run(true)
	if rows.bulked != 0 {
		t.Fatalf("NoBulk copier took the bulk path %d times", rows.bulked)
	}
	// 300 keys, 4 keys a stripe, 32 stripes a transaction: 3 transactions.
	if bulk.bulked != 3 {
		t.Fatalf("bulk path ran %d transactions, want 3", bulk.bulked)
	}
	// OLD: 90 rows in 1..100. 3 and 77 are tombstoned in OLD, 20 outside;
	// 5 is present in NEW.
	want := promote.Result{Copied: 87, Present: 1, Tombstoned: 3, Absent: 209}
	if bulk.res != want || rows.res != want {
		t.Fatalf("results: bulk %+v, row path %+v, want %+v", bulk.res, rows.res, want)
	}
	if !mapsEqual(bulk.rows, rows.rows) {
		t.Fatal("NEW differs between the bulk and the row path")
	}
	for _, k := range []int64{3, 77} {
		if _, ok := bulk.rows[k]; ok {
			t.Fatalf("tombstoned key %d copied by the bulk path", k)
		}
	}
}

// Columns whose types differ between OLD and NEW go through the row path,
// which converts them.
func TestCopyRangeRowPathWhenTypesDiffer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := testenv.NewPair(t)
	p.Old.Exec(t, `ALTER TABLE accounts ALTER COLUMN balance_cents TYPE integer`)
	testenv.SeedAccounts(t, p.Old, 1, 11)
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		t.Fatal(err)
	}
	var locked atomic.Int64
	cp, err := promote.NewCopier(ctx, p.Old.Pool, p.New.Pool, &promote.CopierConfig{Table: "accounts",
		Hooks: promote.Hooks{AfterLock: func(context.Context, int64, int64) { locked.Add(1) }}})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := cp.CopyRange(ctx, 0, 20); err != nil || res.Copied != 10 {
		t.Fatalf("CopyRange = %+v, %v", res, err)
	}
	if locked.Load() != 0 {
		t.Fatal("bulk path used although balance_cents is integer in OLD and bigint in NEW")
	}
	if !mapsEqual(rowsText(t, p.Old, "accounts"), rowsText(t, p.New, "accounts")) {
		t.Fatal("NEW differs from OLD")
	}
}

// A delete that comes while a bulk copy holds the range's locks waits for
// the copy and then removes the copied row: the key stays deleted.
func TestCopyRangeBulkDeleteWaits(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	paused, resume := make(chan struct{}), make(chan struct{})
	var once sync.Once
	b := setup(t, &promote.CopierConfig{Hooks: promote.Hooks{AfterLock: func(context.Context, int64, int64) {
		once.Do(func() { close(paused); <-resume })
	}}})
	release := sync.OnceFunc(func() { close(resume) })
	t.Cleanup(release) // a failing test must not leave the copy paused
	done := make(chan error, 1)
	go func() { _, err := b.copier.CopyRange(ctx, 0, 100); done <- err }()
	<-paused

	deleted := make(chan error, 1)
	go func() {
		tx, err := b.pair.New.Pool.Begin(ctx)
		if err != nil {
			deleted <- err
			return
		}
		defer func() { _ = tx.Rollback(ctx) }()
		if err := b.copier.LockKeys(ctx, tx, []int64{7}); err != nil {
			deleted <- err
			return
		}
		if _, err := tx.Exec(ctx, `DELETE FROM accounts WHERE id = 7`); err != nil {
			deleted <- err
			return
		}
		if _, err := tx.Exec(ctx, `INSERT INTO lazymigrate.tombstones (table_name, key) VALUES ('public.accounts', 7)`); err != nil {
			deleted <- err
			return
		}
		deleted <- tx.Commit(ctx)
	}()
	testenv.Eventually(t, 10*time.Second, "the delete waits for the copy's lock", func() bool {
		var waiting int
		_ = b.pair.New.Pool.QueryRow(ctx, waitingInOwnDatabase).Scan(&waiting)
		return waiting > 0
	})
	release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := <-deleted; err != nil {
		t.Fatal(err)
	}
	rows := rowsText(t, b.pair.New, "accounts")
	if _, ok := rows[7]; ok {
		t.Fatal("key 7 is in NEW after its delete")
	}
	if len(rows) != 89 {
		t.Fatalf("NEW has %d rows, want 89", len(rows))
	}
	// Copying again leaves the deleted key alone.
	if _, err := b.copier.CopyRange(ctx, 0, 100); err != nil {
		t.Fatal(err)
	}
	if _, ok := rowsText(t, b.pair.New, "accounts")[7]; ok {
		t.Fatal("key 7 resurrected by a second bulk copy")
	}
}

// A row inserted into NEW by a writer that takes no lock makes the bulk
// COPY fail with a unique violation; the copy lists the range again and
// keeps the writer's row.
func TestCopyRangeBulkRetriesAfterRogueInsert(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var b *testBundle
	var once sync.Once
	b = setup(t, &promote.CopierConfig{Hooks: promote.Hooks{AfterLock: func(context.Context, int64, int64) {
		once.Do(func() {
			b.pair.New.Exec(t, `INSERT INTO accounts VALUES (5, 'rogue@example.com', 'Rogue', 1, 'active', now(), now())`)
		})
	}}})
	res, err := b.copier.CopyRange(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if want := (promote.Result{Copied: 89, Present: 1, Absent: 10}); res != want {
		t.Fatalf("result = %+v, want %+v", res, want)
	}
	var name string
	if err := b.pair.New.Pool.QueryRow(ctx, `SELECT name FROM accounts WHERE id = 5`).Scan(&name); err != nil || name != "Rogue" {
		t.Fatalf("row 5 name = %q, %v; want the writer's row kept", name, err)
	}
}

// A row NEW refuses fails the whole range with ErrRowRejected, commits
// nothing and marks nothing.
func TestCopyRangeBulkRejectedRow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, nil)
	b.pair.New.Exec(t, `ALTER TABLE accounts ADD CONSTRAINT small CHECK (balance_cents < 5000)`)
	_, err := b.copier.CopyRange(ctx, 0, 100)
	if !errors.Is(err, promote.ErrRowRejected) {
		t.Fatalf("err = %v, want ErrRowRejected", err)
	}
	if n := len(rowsText(t, b.pair.New, "accounts")); n != 0 {
		t.Fatalf("NEW has %d rows after a rejected range, want 0", n)
	}
	if left, err := b.tracker.Unsettled(ctx, 0, 100); err != nil || len(left) != 100 {
		t.Fatalf("unsettled = %d keys, %v; want all 100", len(left), err)
	}
}

func TestCopyRangeBulkReportsOldUnavailable(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.pair.Old.Pool.Close()
	if _, err := b.copier.CopyRange(context.Background(), 0, 100); !errors.Is(err, promote.ErrOldUnavailable) {
		t.Fatalf("err = %v, want ErrOldUnavailable", err)
	}
}

// A smallint key: range bounds past its maximum must not fail to encode, on
// either path.
func TestCopyRangeSmallintKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, noBulk := range []bool{false, true} {
		p := testenv.NewPair(t)
		for _, db := range []*testenv.Database{p.Old, p.New} {
			db.Exec(t, `CREATE TABLE small (id smallint PRIMARY KEY, v text)`)
		}
		p.Old.Exec(t, `INSERT INTO small VALUES (1, 'a'), (32767, 'z')`)
		if err := promote.Setup(ctx, p.New.Pool); err != nil {
			t.Fatal(err)
		}
		cp, err := promote.NewCopier(ctx, p.Old.Pool, p.New.Pool, &promote.CopierConfig{Table: "small", NoBulk: noBulk})
		if err != nil {
			t.Fatal(err)
		}
		if res, err := cp.CopyRange(ctx, 0, 40000); err != nil || res.Copied != 2 {
			t.Fatalf("noBulk=%v: CopyRange = %+v, %v", noBulk, res, err)
		}
	}
}
