package promote_test

// Tests for guards of the copier, the handler and the enqueuer that no other
// test exercised: each one fails when its guard is removed.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/promote"
	"github.com/lazymigrate/lazymigrate/tracker"
)

// newTracker returns a tracker for table under a Redis prefix of the test's
// own.
func newTracker(t *testing.T, table string) *tracker.Tracker {
	t.Helper()
	rdb, prefix := testenv.Redis(t)
	tr, err := tracker.New(rdb, table, &tracker.Config{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// unsettledIn returns how many keys of [lo, hi) tr has not marked.
func unsettledIn(t *testing.T, tr *tracker.Tracker, lo, hi int64) int {
	t.Helper()
	left, err := tr.Unsettled(context.Background(), lo, hi)
	if err != nil {
		t.Fatal(err)
	}
	return len(left)
}

// requireNothingDone fails t unless NEW's accounts table is empty and no key
// of [lo, hi) is marked: what a failed copy must leave behind.
func requireNothingDone(t *testing.T, b *testBundle, lo, hi int64) {
	t.Helper()
	if n := len(rowsText(t, b.pair.New, "accounts")); n != 0 {
		t.Errorf("NEW holds %d rows after a failed copy, want 0", n)
	}
	if n := unsettledIn(t, b.tracker, lo, hi); n != int(hi-lo) {
		t.Errorf("%d keys of [%d, %d) marked settled after a failed copy, want none", int(hi-lo)-n, lo, hi)
	}
}

// requireCopyWaitsForLockedDelete deletes key in a READ COMMITTED NEW
// transaction that first takes its lock with cp.LockKeys (as lazy's Delete
// does) and tombstones it; meanwhile it runs run, a copy, which must wait for a
// lock in NEW's database (t fails at once if it returns first). Then the
// delete commits, run must succeed, and key must not be in NEW.
func requireCopyWaitsForLockedDelete(t *testing.T, b *testBundle, cp *promote.Copier, key int64, run func(context.Context) error) {
	t.Helper()
	ctx := context.Background()
	tx, err := b.pair.New.Pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := cp.LockKeys(ctx, tx, []int64{key}); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM accounts WHERE id = $1`, key); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO lazymigrate.tombstones (table_name, key) VALUES ($1, $2)`, cp.TableID(), key); err != nil {
		t.Fatal(err)
	}

	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case err := <-done:
			t.Fatalf("the copy returned (err = %v) while the delete of key %d held the key's lock: it took no lock of that key's stripe", err, key)
		default:
		}
		var waiting int
		if err := b.pair.New.Pool.QueryRow(ctx, waitingInOwnDatabase).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the copy did not wait for the lock of key %d within 10s", key)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("copy: %v", err)
	}
	if _, ok := rowsText(t, b.pair.New, "accounts")[key]; ok {
		t.Fatalf("key %d was resurrected by a copy that waited for its delete", key)
	}
}

// Given keys, the bulk path's first attempt lists only their tombstones:
// that list is all that keeps a tombstoned key OLD still holds out of NEW
// when NEW holds none of the keys (no unique violation to fall back on).
func TestCopyRangeKeysBulkSkipsTombstonedKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var locked atomic.Int64
	b := setup(t, &promote.CopierConfig{Hooks: promote.Hooks{AfterLock: func(context.Context, int64, int64) { locked.Add(1) }}})
	b.pair.New.Exec(t, `INSERT INTO lazymigrate.tombstones (table_name, key) VALUES ('public.accounts', 3), ('public.accounts', 20)`)

	// 3 is in OLD and tombstoned, 20 tombstoned and not in OLD, 30 neither.
	res, err := b.copier.CopyRangeKeys(ctx, 0, 100, []int64{2, 3, 4, 20, 30})
	if err != nil {
		t.Fatal(err)
	}
	rows := rowsText(t, b.pair.New, "accounts")
	if _, ok := rows[3]; ok {
		t.Fatal("tombstoned key 3 was copied into NEW by CopyRangeKeys")
	}
	old := rowsText(t, b.pair.Old, "accounts")
	for _, k := range []int64{2, 4} {
		if rows[k] != old[k] {
			t.Fatalf("key %d: NEW %q, want OLD's %q", k, rows[k], old[k])
		}
	}
	if len(rows) != 2 {
		t.Fatalf("NEW holds %d rows, want 2", len(rows))
	}
	if want := (promote.Result{Copied: 2, Tombstoned: 2, Absent: 1}); res != want {
		t.Fatalf("result = %+v, want %+v", res, want)
	}
	if n := locked.Load(); n != 1 {
		t.Fatalf("bulk path ran %d transactions, want 1 (the first, optimistic attempt)", n)
	}
}

// Invariant 3 on the bulk path whatever NEW's default isolation: a bulk copy
// that waits for a delete's stripe lock must see the tombstone that delete
// commits. At REPEATABLE READ its snapshot would be taken by the lock
// statement, before the wait.
func TestBulkCopyWaitsForDeleteUnderRepeatableReadDefault(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		run  func(context.Context, *promote.Copier) (promote.Result, error)
	}{
		{"CopyRange", func(ctx context.Context, cp *promote.Copier) (promote.Result, error) {
			return cp.CopyRange(ctx, 0, 100)
		}},
		{"CopyRangeKeys", func(ctx context.Context, cp *promote.Copier) (promote.Result, error) {
			return cp.CopyRangeKeys(ctx, 0, 100, []int64{1, 2, 7, 9})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var locked atomic.Int64
			b := setup(t, nil)
			b.pair.New.Exec(t, fmt.Sprintf(`ALTER DATABASE %q SET default_transaction_isolation = 'repeatable read'`, b.pair.New.Name))
			cp := newCopier(t, b.pair, b.pair.Old.Pool, freshPool(t, b.pair.New), promote.CopierConfig{Table: "accounts",
				Hooks: promote.Hooks{AfterLock: func(context.Context, int64, int64) { locked.Add(1) }}})
			var res promote.Result
			requireCopyWaitsForLockedDelete(t, b, cp, 7, func(ctx context.Context) (err error) {
				res, err = tc.run(ctx, cp)
				return err
			})
			if locked.Load() == 0 {
				t.Fatal("the copy did not take the bulk path")
			}
			if res.Tombstoned != 1 {
				t.Fatalf("result = %+v, want key 7 counted tombstoned", res)
			}
		})
	}
}

// A copy spanning several stripes takes every stripe's lock, not only the
// first: a delete that holds the lock of a key in a later stripe holds the
// copy up, on both paths.
func TestCopyWaitsForDeleteInLaterStripe(t *testing.T) {
	t.Parallel()
	// With 4-key stripes, keys 0-3 are stripe 0 and 7 is in stripe 1.
	for _, tc := range []struct {
		name   string
		noBulk bool
		run    func(context.Context, *promote.Copier) error
	}{
		{"bulk/CopyRange", false, func(ctx context.Context, cp *promote.Copier) error {
			_, err := cp.CopyRange(ctx, 0, 100)
			return err
		}},
		{"bulk/CopyRangeKeys", false, func(ctx context.Context, cp *promote.Copier) error {
			_, err := cp.CopyRangeKeys(ctx, 0, 100, []int64{1, 2, 7, 9})
			return err
		}},
		{"rowpath/CopyKeys", true, func(ctx context.Context, cp *promote.Copier) error {
			_, err := cp.CopyKeys(ctx, []int64{1, 2, 7, 9})
			return err
		}},
		{"rowpath/CopyRange", true, func(ctx context.Context, cp *promote.Copier) error {
			_, err := cp.CopyRange(ctx, 0, 100)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var locked atomic.Int64
			b := setup(t, &promote.CopierConfig{StripeBits: 2, NoBulk: tc.noBulk,
				Hooks: promote.Hooks{AfterLock: func(context.Context, int64, int64) { locked.Add(1) }}})
			requireCopyWaitsForLockedDelete(t, b, b.copier, 7, func(ctx context.Context) error { return tc.run(ctx, b.copier) })
			if bulked := locked.Load() > 0; bulked == tc.noBulk {
				t.Fatalf("bulk path taken: %v, want %v", bulked, !tc.noBulk)
			}
			rows := rowsText(t, b.pair.New, "accounts")
			for _, k := range []int64{1, 2, 9} {
				if _, ok := rows[k]; !ok {
					t.Fatalf("key %d, in OLD and not deleted, is not in NEW", k)
				}
			}
		})
	}
}

// When writers keep inserting keys of a range around the locks, the bulk
// path gives up after its last attempt and copies the rows it read through
// the row path: every OLD row the writers did not write must reach NEW, or
// they are lost while the range is marked settled.
func TestBulkCopyFallsBackToRowPathWhenWritersKeepInserting(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		keys     bool // CopyRangeKeys with every key of OLD, not CopyRange
		attempts int
	}{
		{"CopyRange", false, 3},
		{"CopyRangeKeys", true, 4}, // the optimistic first attempt, then 3
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			var b *testBundle
			var calls atomic.Int64
			b = setup(t, &promote.CopierConfig{Hooks: promote.Hooks{AfterLock: func(context.Context, int64, int64) {
				// The bulk transaction holds the range's stripe locks: a
				// writer that takes none inserts a key OLD has and NEW lacks.
				k := 1 + calls.Add(1) // 2, 3, 4, ...
				if _, err := b.pair.New.Pool.Exec(ctx, `INSERT INTO accounts VALUES ($1, 'w@example.com', 'Written during the copy', 1, 'active', now(), now())`, k); err != nil {
					t.Errorf("writer's insert of key %d: %v", k, err)
				}
			}}})
			var res promote.Result
			var err error
			if tc.keys {
				var ks []int64
				for k := int64(1); k < 100; k++ {
					if k%10 != 0 {
						ks = append(ks, k)
					}
				}
				res, err = b.copier.CopyRangeKeys(ctx, 0, 100, ks)
			} else {
				res, err = b.copier.CopyRange(ctx, 0, 100)
			}
			if err != nil {
				t.Fatal(err)
			}
			n := int(calls.Load())
			if n != tc.attempts {
				t.Fatalf("bulk path ran %d attempts, want %d before falling back", n, tc.attempts)
			}
			old, rows := rowsText(t, b.pair.Old, "accounts"), rowsText(t, b.pair.New, "accounts")
			var lost []int64
			for k, o := range old {
				written := k >= 2 && k < int64(2+n)
				switch {
				case written && !strings.Contains(rows[k], "Written during the copy"):
					t.Fatalf("key %d: the writer's row was replaced: %s", k, rows[k])
				case !written && rows[k] != o:
					lost = append(lost, k)
				}
			}
			if len(lost) > 0 {
				slices.Sort(lost)
				t.Fatalf("%d OLD rows the writers did not write are not in NEW as OLD has them (the range is marked all the same): %v", len(lost), lost)
			}
			if len(rows) != len(old) {
				t.Fatalf("NEW holds %d rows, want %d", len(rows), len(old))
			}
			absent := 10
			if tc.keys {
				absent = 0 // the keys given are OLD's
			}
			if want := (promote.Result{Copied: 90 - n, Present: n, Absent: absent}); res != want {
				t.Fatalf("result = %+v, want %+v", res, want)
			}
			if left := unsettledIn(t, b.tracker, 0, 100); left != 0 {
				t.Fatalf("%d keys unsettled after the copy", left)
			}
		})
	}
}

// wideFixture makes OLD and NEW tables wide(id bigint PRIMARY KEY, payload
// text), OLD holding rows 1..n whose payload is the SQL expression payload
// (over g, the key), and a copier on the bulk path holding at most
// bulkBytes of OLD's rows at once, marking a tracker of its own.
func wideFixture(t *testing.T, n int, payload string, bulkBytes int) (*testenv.Pair, *promote.Copier, *tracker.Tracker, *atomic.Int64) {
	t.Helper()
	p := testenv.NewPair(t)
	for _, db := range []*testenv.Database{p.Old, p.New} {
		db.Exec(t, `CREATE TABLE wide (id bigint PRIMARY KEY, payload text)`)
	}
	p.Old.Exec(t, fmt.Sprintf(`INSERT INTO wide SELECT g, %s FROM generate_series(1, %d) g`, payload, n))
	tr := newTracker(t, "wide")
	locked := new(atomic.Int64)
	cp := newCopier(t, p, p.Old.Pool, p.New.Pool, promote.CopierConfig{Table: "wide", BulkBytes: bulkBytes, Marker: tr,
		Hooks: promote.Hooks{AfterLock: func(context.Context, int64, int64) { locked.Add(1) }}})
	return p, cp, tr, locked
}

// A row bigger than BulkBytes cannot be held by the bulk path: the part
// around it is halved down to the single key, which goes through the row
// path, and is copied like any other.
func TestBulkCopiesRowLargerThanBulkBytes(t *testing.T) {
	t.Parallel()
	for _, keys := range []bool{false, true} {
		name := "CopyRange"
		if keys {
			name = "CopyRangeKeys"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			// Row 5 is 16 KiB, the others a few bytes; 4 KiB held at once.
			p, cp, tr, locked := wideFixture(t, 8, `CASE WHEN g = 5 THEN repeat(md5(g::text), 512) ELSE 'small '||g END`, 4<<10)
			var res promote.Result
			var err error
			if keys {
				res, err = cp.CopyRangeKeys(ctx, 0, 16, []int64{1, 2, 3, 4, 5, 6, 7, 8})
			} else {
				res, err = cp.CopyRange(ctx, 0, 16)
			}
			if err != nil {
				t.Fatal(err)
			}
			if !mapsEqual(rowsText(t, p.Old, "wide"), rowsText(t, p.New, "wide")) {
				t.Fatal("NEW differs from OLD: the row larger than BulkBytes was not copied")
			}
			want := promote.Result{Copied: 8, Absent: 8}
			if keys {
				want.Absent = 0
			}
			if res != want {
				t.Fatalf("result = %+v, want %+v", res, want)
			}
			if locked.Load() == 0 {
				t.Fatal("the copy did not take the bulk path")
			}
			if left := unsettledIn(t, tr, 0, 16); left != 0 {
				t.Fatalf("%d keys unsettled after the copy", left)
			}
		})
	}
}

// Given keys, a part read only partly (its rows are wider than BulkBytes
// together) is written up to the last row read, and the rest of its keys
// are read and written after: every key given is copied, and no other.
func TestCopyRangeKeysCopiesPartReadInPieces(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// 12 rows of 3 KiB, 8 KiB held at once: two rows a read.
	p, cp, tr, locked := wideFixture(t, 12, `repeat(md5(g::text), 96)`, 8<<10)
	ks := []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	res, err := cp.CopyRangeKeys(ctx, 0, 16, ks)
	if err != nil {
		t.Fatal(err)
	}
	old, rows := rowsText(t, p.Old, "wide"), rowsText(t, p.New, "wide")
	for _, k := range ks {
		if rows[k] != old[k] {
			t.Errorf("key %d, given, was not copied faithfully (NEW holds %d bytes)", k, len(rows[k]))
		}
	}
	if len(rows) != len(ks) {
		t.Fatalf("NEW holds %d rows, want the %d given", len(rows), len(ks))
	}
	if want := (promote.Result{Copied: 10}); res != want {
		t.Fatalf("result = %+v, want %+v", res, want)
	}
	if n := locked.Load(); n < 5 {
		t.Fatalf("bulk path ran %d transactions, want at least 5 (two rows a read)", n)
	}
	if left := unsettledIn(t, tr, 0, 16); left != 0 {
		t.Fatalf("%d keys unsettled after the copy", left)
	}
}

// A copy that fails marks nothing: not the range of CopyRange on the row
// path, nor that of CopyRangeKeys on either path.
func TestFailedRangeCopyMarksNothing(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		noBulk bool
		run    func(context.Context, *promote.Copier) (promote.Result, error)
	}{
		{"rowpath/CopyRange", true, func(ctx context.Context, cp *promote.Copier) (promote.Result, error) {
			return cp.CopyRange(ctx, 0, 100)
		}},
		{"rowpath/CopyRangeKeys", true, func(ctx context.Context, cp *promote.Copier) (promote.Result, error) {
			return cp.CopyRangeKeys(ctx, 0, 100, []int64{1, 2, 61})
		}},
		{"bulk/CopyRangeKeys", false, func(ctx context.Context, cp *promote.Copier) (promote.Result, error) {
			return cp.CopyRangeKeys(ctx, 0, 100, []int64{1, 2, 61})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, &promote.CopierConfig{NoBulk: tc.noBulk})
			// Keys from 50 on have a balance of 5007 or more.
			b.pair.New.Exec(t, `ALTER TABLE accounts ADD CONSTRAINT small CHECK (balance_cents < 5000)`)
			if _, err := tc.run(context.Background(), b.copier); !errors.Is(err, promote.ErrRowRejected) {
				t.Errorf("err = %v, want ErrRowRejected", err)
			}
			requireNothingDone(t, b, 0, 100)
		})
	}
}

// Keys whose rows are rejected (here by the Transform) stay unsettled: the
// copy reports the rejection and marks nothing, and the handler, which
// copies the others of the task, leaves the rejected key for the sweeper.
func TestRejectedKeysStayUnsettled(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, &promote.CopierConfig{Transform: func(_ context.Context, old promote.Row) (promote.Row, error) {
		if old["id"].(int64) == 2 {
			return nil, errors.New("cannot convert key 2")
		}
		return old, nil
	}})
	ks := []int64{1, 2, 3}
	if _, err := b.copier.CopyKeys(ctx, ks); !errors.Is(err, promote.ErrRowRejected) {
		t.Fatalf("CopyKeys: err = %v, want ErrRowRejected", err)
	}
	if got := settledKeys(t, b.tracker, ks); len(got) != 0 {
		t.Fatalf("keys %v marked settled by a rejected copy", got)
	}
	if n := len(rowsText(t, b.pair.New, "accounts")); n != 0 {
		t.Fatalf("NEW holds %d rows after a rejected copy, want 0", n)
	}

	h, err := promote.NewHandler([]*promote.Copier{b.copier}, &promote.HandlerConfig{
		Settled: map[string]promote.SettledChecker{"accounts": b.tracker}})
	if err != nil {
		t.Fatal(err)
	}
	task, err := promote.NewTask("accounts", ks)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.ProcessTask(ctx, task); !errors.Is(err, promote.ErrRowRejected) || !errors.Is(err, asynq.SkipRetry) {
		t.Fatalf("ProcessTask: err = %v, want ErrRowRejected and SkipRetry", err)
	}
	if got := settledKeys(t, b.tracker, ks); len(got) != 2 || got[0] != 1 || got[1] != 3 {
		t.Fatalf("settled after the task = %v, want [1 3]: the rejected key must stay unsettled", got)
	}
	rows := rowsText(t, b.pair.New, "accounts")
	if _, ok := rows[2]; ok || len(rows) != 2 {
		t.Fatalf("NEW holds keys %v, want 1 and 3", rows)
	}
}

// oldFailsAtKey55 swaps OLD's accounts table for a view of it that fails
// when the row of key 55 is read, after the rows before it, with the SQL
// condition fail (over id).
func oldFailsAtKey55(t *testing.T, b *testBundle, fail string) {
	t.Helper()
	b.pair.Old.Exec(t, fmt.Sprintf(`ALTER TABLE accounts RENAME TO accounts_data;
		CREATE VIEW accounts AS
		SELECT id, email, name, CASE WHEN %s THEN balance_cents END AS balance_cents, status, created_at, updated_at
		FROM accounts_data`, fail))
}

// An OLD that fails partway through a read (an error at one row, or its
// connection ending) fails the copy with ErrOldUnavailable: the rows read
// before are not taken for all of OLD's, so nothing is copied or marked,
// on the plain row path, the Transform path and the bulk path.
func TestOldFailurePartwayThroughReadMarksNothing(t *testing.T) {
	t.Parallel()
	identity := func(_ context.Context, r promote.Row) (promote.Row, error) { return r, nil }
	for _, path := range []struct {
		name string
		cfg  promote.CopierConfig
	}{
		{"rowpath", promote.CopierConfig{NoBulk: true}},
		{"transform", promote.CopierConfig{Transform: identity}},
		{"bulk", promote.CopierConfig{}},
	} {
		for _, failure := range []struct {
			name, cond, code string
		}{
			{"error", `1/(id-55) IS NOT NULL`, "22012"}, // division by zero
			// The backend kills itself: OLD goes away mid-read.
			{"closed", `id <> 55 OR pg_terminate_backend(pg_backend_pid())`, "57P01"},
		} {
			t.Run(path.name+"/"+failure.name, func(t *testing.T) {
				t.Parallel()
				ctx := context.Background()
				b := setup(t, &path.cfg)
				oldFailsAtKey55(t, b, failure.cond)
				check := func(op string, err error) {
					t.Helper()
					var pgErr *pgconn.PgError
					if !errors.Is(err, promote.ErrOldUnavailable) || !errors.As(err, &pgErr) || pgErr.Code != failure.code {
						t.Fatalf("%s: err = %v, want ErrOldUnavailable wrapping OLD's SQLSTATE %s", op, err, failure.code)
					}
				}
				_, err := b.copier.CopyRange(ctx, 0, 100)
				check("CopyRange", err)
				requireNothingDone(t, b, 0, 100)
				ks := []int64{1, 2, 55}
				_, err = b.copier.CopyKeys(ctx, ks)
				check("CopyKeys", err)
				_, err = b.copier.CopyRangeKeys(ctx, 0, 100, ks)
				check("CopyRangeKeys", err)
				requireNothingDone(t, b, 0, 100)
			})
		}
	}
}

// An OLD that is gone before the read fails the Transform path's copy with
// ErrOldUnavailable too, and marks nothing.
func TestTransformCopyReportsOldUnavailable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, &promote.CopierConfig{Transform: func(_ context.Context, r promote.Row) (promote.Row, error) { return r, nil }})
	b.pair.Old.Pool.Close()
	if _, err := b.copier.CopyRange(ctx, 0, 100); !errors.Is(err, promote.ErrOldUnavailable) {
		t.Fatalf("CopyRange: err = %v, want ErrOldUnavailable", err)
	}
	if _, err := b.copier.CopyKeys(ctx, []int64{1, 2}); !errors.Is(err, promote.ErrOldUnavailable) {
		t.Fatalf("CopyKeys: err = %v, want ErrOldUnavailable", err)
	}
	requireNothingDone(t, b, 0, 100)
}

// refuseAtCommit makes the COMMIT of any NEW transaction that inserted key
// into accounts fail: a deferred constraint trigger raises then.
func refuseAtCommit(t *testing.T, db *testenv.Database, key int64) {
	t.Helper()
	db.Exec(t, fmt.Sprintf(`CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.id = %d THEN RAISE EXCEPTION 'key %d refused at commit'; END IF;
			RETURN NULL;
		END $$;
		CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON accounts
			DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_at_commit()`, key, key))
}

// A NEW transaction whose COMMIT fails (a deferred constraint trigger
// refuses a row) fails the copy, which counts nothing copied and marks
// nothing, on both paths.
func TestCommitFailureFailsCopy(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		noBulk bool
		run    func(context.Context, *promote.Copier) (promote.Result, error)
	}{
		{"bulk/CopyRange", false, func(ctx context.Context, cp *promote.Copier) (promote.Result, error) {
			return cp.CopyRange(ctx, 0, 100)
		}},
		{"bulk/CopyRangeKeys", false, func(ctx context.Context, cp *promote.Copier) (promote.Result, error) {
			return cp.CopyRangeKeys(ctx, 0, 100, []int64{1, 2, 55})
		}},
		{"rowpath/CopyRange", true, func(ctx context.Context, cp *promote.Copier) (promote.Result, error) {
			return cp.CopyRange(ctx, 0, 100)
		}},
		{"rowpath/CopyKeys", true, func(ctx context.Context, cp *promote.Copier) (promote.Result, error) {
			return cp.CopyKeys(ctx, []int64{1, 2, 55})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reg := prometheus.NewRegistry()
			b := setup(t, &promote.CopierConfig{NoBulk: tc.noBulk, Registerer: reg})
			refuseAtCommit(t, b.pair.New, 55)
			res, err := tc.run(context.Background(), b.copier)
			if err == nil || !strings.Contains(err.Error(), "refused at commit") {
				t.Errorf("err = %v, want the COMMIT's failure", err)
			}
			if res.Copied != 0 {
				t.Errorf("result = %+v: nothing committed, so nothing was copied", res)
			}
			if n := testenv.CounterValue(t, reg, "lazymigrate_copy_rows_total", "outcome", "copied"); n != 0 {
				t.Errorf("%v rows counted copied, want 0", n)
			}
			requireNothingDone(t, b, 0, 100)
		})
	}
}

// The row path writes rows of more stripes than one transaction may lock
// as several transactions, pipelined: when a later one fails at COMMIT, the
// earlier ones stay committed, and the copy counts their rows, and only
// theirs, copied, fails, and marks nothing.
func TestRowPathCommitFailureCountsCommittedTransactionsOnly(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	// 2-key stripes, 32 a transaction: keys 0..63, then 64..127.
	b := setup(t, &promote.CopierConfig{NoBulk: true, StripeBits: 1, Registerer: reg})
	refuseAtCommit(t, b.pair.New, 75)
	res, err := b.copier.CopyRange(context.Background(), 0, 100)
	if err == nil || !strings.Contains(err.Error(), "refused at commit") {
		t.Errorf("err = %v, want the COMMIT's failure", err)
	}
	rows := rowsText(t, b.pair.New, "accounts")
	for k := range rows {
		if k >= 64 {
			t.Fatalf("key %d, of the transaction that failed, is in NEW", k)
		}
	}
	// OLD's keys below 64: 63 less 6 multiples of ten.
	if len(rows) != 57 {
		t.Fatalf("NEW holds %d rows, want the 57 of the first transaction", len(rows))
	}
	if res.Copied != 57 {
		t.Errorf("result = %+v, want the 57 rows committed counted copied", res)
	}
	if n := testenv.CounterValue(t, reg, "lazymigrate_copy_rows_total", "outcome", "copied"); n != 57 {
		t.Errorf("%v rows counted copied, want 57", n)
	}
	if n := unsettledIn(t, b.tracker, 0, 100); n != 100 {
		t.Errorf("%d keys marked after a failed copy, want none", 100-n)
	}
}

// A task whose copy fails because OLD or NEW is down is retried by asynq:
// its error wraps neither asynq.SkipRetry nor ErrRowRejected, and says which
// side is down.
func TestHandlerRetriesWhenADatabaseIsDown(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		down error
	}{
		{"OLD", promote.ErrOldUnavailable},
		{"NEW", promote.ErrNewUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			b := setup(t, nil)
			oldPool, newPool := b.pair.Old.NewPool(t, nil), b.pair.New.NewPool(t, nil)
			cp := newCopier(t, b.pair, oldPool, newPool, promote.CopierConfig{Table: "accounts", Marker: b.tracker})
			reg := prometheus.NewRegistry()
			h, err := promote.NewHandler([]*promote.Copier{cp}, &promote.HandlerConfig{Registerer: reg})
			if err != nil {
				t.Fatal(err)
			}
			if tc.down == promote.ErrOldUnavailable {
				oldPool.Close()
			} else {
				newPool.Close()
			}
			task, err := promote.NewTask("accounts", []int64{1, 2, 3})
			if err != nil {
				t.Fatal(err)
			}
			err = h.ProcessTask(ctx, task)
			switch {
			case !errors.Is(err, tc.down):
				t.Fatalf("err = %v, want %v", err, tc.down)
			case errors.Is(err, asynq.SkipRetry), errors.Is(err, promote.ErrRowRejected):
				t.Fatalf("err = %v: a database that is down must not archive the task (SkipRetry %v, ErrRowRejected %v)",
					err, errors.Is(err, asynq.SkipRetry), errors.Is(err, promote.ErrRowRejected))
			}
			if n := testenv.CounterValue(t, reg, "lazymigrate_promotions_total", "outcome", "rejected"); n != 0 {
				t.Fatalf("%v keys counted rejected", n)
			}
			if n := testenv.CounterValue(t, reg, "lazymigrate_promote_tasks_total", "outcome", "error"); n != 1 {
				t.Fatalf("tasks counted error = %v, want 1", n)
			}
			if got := settledKeys(t, b.tracker, []int64{1, 2, 3}); len(got) != 0 {
				t.Fatalf("keys %v marked though the copy failed", got)
			}
		})
	}
}

// A task for a table this worker has no copier for is not a bad payload:
// another worker may own the table. asynq must retry it, not archive it at
// once.
func TestHandlerRetriesTaskForUnknownTable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, nil)
	reg := prometheus.NewRegistry()
	h, err := promote.NewHandler([]*promote.Copier{b.copier}, &promote.HandlerConfig{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	task, err := promote.NewTask("invoices", []int64{1, 2})
	if err != nil {
		t.Fatal(err)
	}
	err = h.ProcessTask(ctx, task)
	switch {
	case err == nil:
		t.Fatal("a task for a table without a copier succeeded")
	case errors.Is(err, asynq.SkipRetry), errors.Is(err, promote.ErrBadPayload):
		t.Errorf("err = %v, want an error that asynq retries (SkipRetry %v, ErrBadPayload %v)",
			err, errors.Is(err, asynq.SkipRetry), errors.Is(err, promote.ErrBadPayload))
	case !strings.Contains(err.Error(), "invoices"):
		t.Errorf("err = %v, want it to name the table", err)
	}
	if n := testenv.CounterValue(t, reg, "lazymigrate_promote_tasks_total", "table", "invoices"); n != 1 {
		t.Fatalf("tasks counted for invoices = %v, want 1", n)
	}
	if n := testenv.CounterValue(t, reg, "lazymigrate_promote_tasks_total", "outcome", "bad_payload"); n != 0 {
		t.Fatalf("counted as a bad payload %v times", n)
	}

	// Through a real worker: asynq runs the task again before archiving it.
	rdb, _ := testenv.Redis(t)
	queue := "lmtest-" + testenv.Suffix()
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Queues:                   map[string]int{queue: 1},
		Concurrency:              1,
		TaskCheckInterval:        20 * time.Millisecond,
		DelayedTaskCheckInterval: 50 * time.Millisecond, // retries come back at once
		RetryDelayFunc:           func(int, error, *asynq.Task) time.Duration { return 10 * time.Millisecond },
		LogLevel:                 asynq.FatalLevel,
	})
	mux := asynq.NewServeMux()
	mux.Handle(promote.TaskType, h)
	if err := srv.Start(mux); err != nil {
		t.Fatal(err)
	}
	inspector := asynq.NewInspectorFromRedisClient(rdb)
	t.Cleanup(func() {
		srv.Shutdown()
		_ = inspector.DeleteQueue(queue, true)
	})
	if _, err := asynq.NewClientFromRedisClient(rdb).Enqueue(task, asynq.Queue(queue), asynq.MaxRetry(1)); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, "the task for an unknown table is archived after its retry", func() bool {
		info, err := inspector.GetQueueInfo(queue)
		return err == nil && info.Archived == 1
	})
	archived, err := inspector.ListArchivedTasks(queue)
	if err != nil {
		t.Fatal(err)
	}
	if len(archived) != 1 || archived[0].Retried != 1 {
		retried := make([]int, len(archived))
		for i, ti := range archived {
			retried[i] = ti.Retried
		}
		t.Fatalf("archived %d tasks, retried %v times; want one task, retried once", len(archived), retried)
	}
	if n := len(rowsText(t, b.pair.New, "accounts")); n != 0 {
		t.Fatalf("NEW holds %d rows: a task for another table copied accounts", n)
	}
}

// The tasks the Enqueuer puts on Redis carry its MaxRetry and Timeout, set
// or defaulted, not asynq's own defaults (25 retries, 30 minutes).
func TestEnqueuedTasksCarryRetryAndTimeout(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		cfg         promote.EnqueuerConfig
		wantRetry   int
		wantTimeout time.Duration
	}{
		{"Configured", promote.EnqueuerConfig{MaxRetry: 3, Timeout: 42 * time.Second}, 3, 42 * time.Second},
		{"Defaults", promote.EnqueuerConfig{}, 5, time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			rdb, _ := testenv.Redis(t)
			queue := "lmtest-" + testenv.Suffix()
			client := asynq.NewClientFromRedisClient(rdb)
			inspector := asynq.NewInspectorFromRedisClient(rdb)
			t.Cleanup(func() { _ = inspector.DeleteQueue(queue, true) })
			cfg := tc.cfg
			cfg.Queue, cfg.BatchSize = queue, 2
			e, err := promote.NewEnqueuer(client, "accounts", &cfg)
			if err != nil {
				t.Fatal(err)
			}
			if n := e.Schedule(1, 2, 3); n != 3 {
				t.Fatalf("Schedule accepted %d keys, want 3", n)
			}
			if err := e.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			tasks, err := inspector.ListPendingTasks(queue)
			if err != nil {
				t.Fatal(err)
			}
			if len(tasks) != 2 {
				t.Fatalf("%d tasks pending, want 2 (batches of 2 keys)", len(tasks))
			}
			for _, ti := range tasks {
				if ti.Type != promote.TaskType || ti.Queue != queue {
					t.Fatalf("task of type %q on queue %q, want %q on %q", ti.Type, ti.Queue, promote.TaskType, queue)
				}
				if ti.MaxRetry != tc.wantRetry || ti.Timeout != tc.wantTimeout {
					t.Fatalf("task carries MaxRetry %d and Timeout %v, want %d and %v", ti.MaxRetry, ti.Timeout, tc.wantRetry, tc.wantTimeout)
				}
				got, err := inspector.GetTaskInfo(queue, ti.ID)
				if err != nil {
					t.Fatal(err)
				}
				if got.MaxRetry != tc.wantRetry || got.Timeout != tc.wantTimeout {
					t.Fatalf("GetTaskInfo: MaxRetry %d and Timeout %v, want %d and %v", got.MaxRetry, got.Timeout, tc.wantRetry, tc.wantTimeout)
				}
			}
		})
	}
}

// CopyRangeKeys refuses a key outside [lo, hi), which it would copy and
// then mark a range that does not hold it: a clear error, nothing copied,
// nothing marked, on both paths.
func TestCopyRangeKeysRefusesKeyOutsideRange(t *testing.T) {
	t.Parallel()
	for _, noBulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("noBulk=%v", noBulk), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			b := setup(t, &promote.CopierConfig{NoBulk: noBulk})
			for _, ks := range [][]int64{{5, 15}, {15, 25}, {11, 20}} {
				_, err := b.copier.CopyRangeKeys(ctx, 10, 20, ks)
				if err == nil || !strings.Contains(err.Error(), "[10, 20)") {
					t.Fatalf("CopyRangeKeys(10, 20, %v): err = %v, want an error naming the range", ks, err)
				}
			}
			requireNothingDone(t, b, 0, 30)
		})
	}
}

// A key OLD holds twice (OLD's key has no unique index) fails a bulk copy
// with ErrRowRejected as soon as OLD's rows are read: NEW is never written,
// not even tried, and nothing is marked.
func TestBulkCopyRefusesDuplicateOldKeysAtOnce(t *testing.T) {
	t.Parallel()
	for _, keys := range []bool{false, true} {
		name := "CopyRange"
		if keys {
			name = "CopyRangeKeys"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			p := testenv.NewPair(t)
			p.Old.Exec(t, `CREATE TABLE t (id bigint, s text)`)
			p.New.Exec(t, `CREATE TABLE t (id bigint PRIMARY KEY, s text)`)
			p.Old.Exec(t, `INSERT INTO t VALUES (1, 'a'), (1, 'b'), (2, 'c')`)
			tr := newTracker(t, "t")
			var locked, read atomic.Int64
			cp := newCopier(t, p, p.Old.Pool, p.New.Pool, promote.CopierConfig{Table: "t", Marker: tr, Hooks: promote.Hooks{
				AfterLock: func(context.Context, int64, int64) { locked.Add(1) },
				AfterRead: func(context.Context, []int64) { read.Add(1) },
			}})
			var err error
			if keys {
				_, err = cp.CopyRangeKeys(ctx, 0, 10, []int64{1, 2})
			} else {
				_, err = cp.CopyRange(ctx, 0, 10)
			}
			if !errors.Is(err, promote.ErrRowRejected) || !strings.Contains(err.Error(), "more than once") {
				t.Fatalf("err = %v, want ErrRowRejected for key 1 held twice", err)
			}
			if n, r := locked.Load(), read.Load(); n != 0 || r != 0 {
				t.Fatalf("NEW was written %d times (AfterRead ran %d times) for a read that held a key twice, want neither", n, r)
			}
			if n := len(rowsText(t, p.New, "t")); n != 0 {
				t.Fatalf("NEW holds %d rows, want 0", n)
			}
			if n := unsettledIn(t, tr, 0, 10); n != 10 {
				t.Fatalf("%d keys marked, want none", 10-n)
			}
		})
	}
}

// The row path parses OLD's text in NEW under pinned settings, xmloption
// included: under NEW's "document" default an XML fragment would be refused.
func TestCopyPinsXMLOptionInNew(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := testenv.NewPair(t)
	for _, db := range []*testenv.Database{p.Old, p.New} {
		db.Exec(t, `CREATE TABLE x (id bigint PRIMARY KEY, doc xml)`)
	}
	p.Old.Exec(t, `INSERT INTO x VALUES (1, XMLPARSE(CONTENT 'text <b>bold</b> tail')), (2, XMLPARSE(DOCUMENT '<a/>'))`)
	p.New.Exec(t, fmt.Sprintf(`ALTER DATABASE %q SET xmloption = document`, p.New.Name))
	for _, noBulk := range []bool{true, false} {
		p.New.Exec(t, `TRUNCATE x`)
		cp := newCopier(t, p, p.Old.Pool, freshPool(t, p.New), promote.CopierConfig{Table: "x", NoBulk: noBulk})
		// CopyRange takes the bulk path (binary COPY) unless NoBulk.
		if res, err := cp.CopyRange(ctx, 0, 10); err != nil || res.Copied != 2 {
			t.Fatalf("NoBulk %v: CopyRange = %+v, %v; want both rows copied", noBulk, res, err)
		}
		if o, n := rowsText(t, p.Old, "x"), rowsText(t, p.New, "x"); !mapsEqual(o, n) {
			t.Fatalf("NoBulk %v: NEW = %v, want OLD's %v", noBulk, n, o)
		}
	}
}
