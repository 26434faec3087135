package lazy_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/lazy"
	"github.com/lazymigrate/lazymigrate/promote"
)

func shapeName(folded bool) string {
	if folded {
		return "folded"
	}
	return "plain"
}

// Get reads NEW with one of two statements, the plain query or one that
// folds in the tombstone check; each must answer every kind of key alike,
// settled ones included (TestMissesLeaveTheTrackerAlone covers the shapes
// without the tracker).
func TestGetAnswersAlikeInBothShapes(t *testing.T) {
	t.Parallel()
	for _, folded := range []bool{false, true} {
		t.Run(shapeName(folded), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			b := setup(t, setupOpts{askTracker: true})
			b.pair.New.Exec(t, `INSERT INTO accounts SELECT * FROM (VALUES (1, 'n@example.com', 'In NEW', 5, 'active', now(), now())) v`)
			b.pair.New.Exec(t, `INSERT INTO lazymigrate.tombstones (table_name, key) VALUES ('public.accounts', 2)`)
			if _, err := b.tracker.Mark(ctx, []int64{11}); err != nil {
				t.Fatal(err)
			}
			lazy.FoldReads(b.repo, folded)

			if got, err := b.repo.Get(ctx, 1); err != nil || got.Name != "In NEW" {
				t.Errorf("Get(1, in NEW) = %+v, %v", got, err)
			}
			if got, err := b.repo.Get(ctx, 3); err != nil || got.Name != "User 3" {
				t.Errorf("Get(3, only in OLD) = %+v, %v", got, err)
			}
			for _, k := range []int64{2, 11, 500} { // tombstoned, settled, in neither
				if got, err := b.repo.Get(ctx, k); !errors.Is(err, lazy.ErrNotFound) || !errors.Is(err, pgx.ErrNoRows) {
					t.Errorf("Get(%d) = %+v, %v; want ErrNotFound", k, got, err)
				}
			}
			b.pair.New.Exec(t, `INSERT INTO lazymigrate.tables (table_name, stripe_bits, closed_at) VALUES ('public.accounts', 6, now())
				ON CONFLICT (table_name) DO UPDATE SET closed_at = now()`)
			if got, err := b.repo.Get(ctx, 4); !errors.Is(err, lazy.ErrNotFound) {
				t.Errorf("Get(4, only in OLD) of a closed table = %+v, %v; want ErrNotFound", got, err)
			}
		})
	}
}

// After a window of misses a tombstoned key costs one statement on NEW,
// the folded read, and none on OLD; after a window of hits it costs two on
// NEW again, the plain read and the tombstone query, so that hits pay
// nothing for the fold.
func TestMissesFoldTheTombstoneCheckIntoTheRead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	b.pair.New.Exec(t, `INSERT INTO accounts SELECT * FROM (VALUES (1, 'n@example.com', 'In NEW', 5, 'active', now(), now())) v`)
	b.pair.New.Exec(t, `INSERT INTO lazymigrate.tombstones (table_name, key) VALUES ('public.accounts', 2)`)
	tombstoned := func() (newStatements, oldStatements int64) {
		t.Helper()
		b.newQueries.Store(0)
		b.oldQueries.Store(0)
		if _, err := b.repo.Get(ctx, 2); !errors.Is(err, lazy.ErrNotFound) {
			t.Fatalf("Get(tombstoned 2) err = %v, want ErrNotFound", err)
		}
		return b.newQueries.Load(), b.oldQueries.Load()
	}
	readMany := func(key int64) {
		t.Helper()
		for range 256 {
			if _, err := b.repo.Get(ctx, key); err != nil && !errors.Is(err, lazy.ErrNotFound) {
				t.Fatal(err)
			}
		}
	}

	if n, o := tombstoned(); n != 2 || o != 1 {
		t.Errorf("before any window: %d statements on NEW and %d on OLD, want 2 and 1 (plain read; tombstone beside OLD)", n, o)
	}
	readMany(500) // in neither: misses
	if n, o := tombstoned(); n != 1 || o != 0 {
		t.Errorf("after misses: %d statements on NEW and %d on OLD, want 1 and 0 (the folded read)", n, o)
	}
	readMany(1) // hits
	if n, _ := tombstoned(); n != 2 {
		t.Errorf("after hits: %d statements on NEW, want 2 (plain read, then the tombstone)", n)
	}
}

// Both statements read the key as a bigint whatever the key column's
// integer type, and the folded one hands Config.Scan only the record's
// columns.
func TestFoldedReadOfAnIntegerKeyWithCustomScan(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := testenv.NewPair(t)
	for _, db := range []*testenv.Database{p.Old, p.New} {
		db.Exec(t, `CREATE TABLE items (id integer PRIMARY KEY, label text, n smallint)`)
	}
	p.Old.Exec(t, `INSERT INTO items VALUES (1, 'one', 1), (2, 'two', 2)`)
	p.New.Exec(t, `INSERT INTO items VALUES (1, 'uno', 1)`)
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		t.Fatal(err)
	}
	type item struct {
		Label string
		N     int16
	}
	repo, err := lazy.New(ctx, p.Old.Pool, p.New.Pool, &lazy.Config[item]{
		Table:   "items",
		Columns: []string{"label", "n"},
		Scan: func(row pgx.CollectableRow) (item, error) {
			if n := len(row.FieldDescriptions()); n != 2 {
				return item{}, errors.New("scan sees more columns than the record's")
			}
			var it item
			err := row.Scan(&it.Label, &it.N)
			return it, err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, folded := range []bool{false, true} {
		lazy.FoldReads(repo, folded)
		want := map[int64]item{1: {"uno", 1}, 2: {"two", 2}}
		for k, w := range want {
			if got, err := repo.Get(ctx, k); err != nil || got != w {
				t.Errorf("folded %v: Get(%d) = %+v, %v; want %+v", folded, k, got, err, w)
			}
		}
		// Beyond the column's type: no such row, not a database error.
		if _, err := repo.Get(ctx, 1<<40); !errors.Is(err, lazy.ErrNotFound) {
			t.Errorf("folded %v: Get(2^40) of an integer key err = %v, want ErrNotFound", folded, err)
		}
	}
}

// By default a miss sends nothing to Redis, in either shape, and tombstones
// and the closure still keep deleted keys from OLD. A key settled but
// absent from NEW without a tombstone is served from OLD: the documented
// price of leaving Config.AskTrackerOnMiss off.
func TestMissesLeaveTheTrackerAlone(t *testing.T) {
	t.Parallel()
	for _, folded := range []bool{false, true} {
		t.Run(shapeName(folded), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			trackerRDB, hook := countingRedis(t)
			b := setup(t, setupOpts{trackerRDB: trackerRDB})
			b.pair.New.Exec(t, `INSERT INTO lazymigrate.tombstones (table_name, key) VALUES ('public.accounts', 2)`)
			if _, err := b.tracker.Mark(ctx, []int64{11}); err != nil {
				t.Fatal(err)
			}
			lazy.FoldReads(b.repo, folded)
			hook.n.Store(0)

			if _, err := b.repo.Get(ctx, 2); !errors.Is(err, lazy.ErrNotFound) {
				t.Errorf("Get(tombstoned 2) err = %v, want ErrNotFound", err)
			}
			if got, err := b.repo.Get(ctx, 11); err != nil || got.ID != 11 {
				t.Errorf("Get(settled 11, in OLD) = %+v, %v; want OLD's row", got, err)
			}
			got, err := b.repo.GetMany(ctx, []int64{2, 3, 500})
			if err != nil || len(got) != 1 || got[3].ID != 3 {
				t.Errorf("GetMany(2, 3, 500) = %v, %v; want key 3 only", keysOf(got), err)
			}
			if n := hook.n.Load(); n != 0 {
				t.Errorf("misses sent %d commands to the tracker's Redis, want 0", n)
			}
		})
	}
}

// The tracker left off the miss is still asked when OLD is down, so that
// settled keys answer not found rather than OLD unavailable (invariant 7).
func TestTrackerAnswersWhileOldIsDown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	if _, err := b.tracker.Mark(ctx, []int64{11}); err != nil {
		t.Fatal(err)
	}
	b.oldPool.Close()
	for _, folded := range []bool{false, true} {
		lazy.FoldReads(b.repo, folded)
		if _, err := b.repo.Get(ctx, 11); !errors.Is(err, lazy.ErrNotFound) {
			t.Errorf("folded %v: Get(settled 11) with OLD down err = %v, want ErrNotFound", folded, err)
		}
		if _, err := b.repo.Get(ctx, 12); !errors.Is(err, lazy.ErrOldUnavailable) || errors.Is(err, lazy.ErrNotFound) {
			t.Errorf("folded %v: Get(unsettled 12) with OLD down err = %v, want ErrOldUnavailable", folded, err)
		}
	}
	got, err := b.repo.GetMany(ctx, []int64{11, 12})
	if !errors.Is(err, lazy.ErrOldUnavailable) || len(got) != 0 {
		t.Errorf("GetMany(11, 12) with OLD down = %v, %v; want nothing and ErrOldUnavailable", keysOf(got), err)
	}
	if !strings.Contains(fmt.Sprint(err), "1 keys unresolved") {
		t.Errorf("GetMany err = %v, want only unsettled key 12 unresolved", err)
	}
}

// A Scan with more or fewer destinations than the columns is an error in
// every read, as pgx makes it one in the plain read: the folded read and
// GetMany, which show Scan a view of their rows, filled such a record in
// part, or from the wrong columns, and said nothing.
func TestScanOfTheWrongWidthFailsInEveryRead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := testenv.NewPair(t)
	testenv.SeedAccounts(t, p.Old, 1, 3)
	testenv.SeedAccounts(t, p.New, 1, 2)
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		t.Fatal(err)
	}
	type wide struct { // one field more than the seven columns
		Account
		Extra string
	}
	scans := map[string]pgx.RowToFunc[Account]{
		"six destinations": func(row pgx.CollectableRow) (Account, error) {
			var a Account
			err := row.Scan(&a.ID, &a.Email, &a.Name, &a.BalanceCents, &a.Status, &a.CreatedAt)
			return a, err
		},
		"eight fields by position": func(row pgx.CollectableRow) (Account, error) {
			w, err := pgx.RowToStructByPos[wide](row)
			return w.Account, err
		},
	}
	for name, scan := range scans {
		repo, err := lazy.New(ctx, p.Old.Pool, p.New.Pool, &lazy.Config[Account]{Table: "accounts", Scan: scan})
		if err != nil {
			t.Fatal(err)
		}
		for _, folded := range []bool{false, true} {
			lazy.FoldReads(repo, folded)
			for _, k := range []int64{1, 2} { // in NEW; only in OLD
				if got, err := repo.Get(ctx, k); err == nil {
					t.Errorf("%s, %s: Get(%d) = %+v, nil; want a scan error", name, shapeName(folded), k, got)
				}
			}
		}
		if got, err := repo.GetMany(ctx, []int64{1, 2}); err == nil {
			t.Errorf("%s: GetMany = %v, nil; want a scan error", name, keysOf(got))
		}
	}
}
