package promote_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/promote"
	"github.com/lazymigrate/lazymigrate/tracker"
)

type testBundle struct {
	pair    *testenv.Pair
	tracker *tracker.Tracker
	copier  *promote.Copier
}

// setup returns OLD seeded with accounts [1, 101) minus every 10th id, an
// empty NEW with lazymigrate's schema, a tracker and a copier wired to it.
func setup(t *testing.T, cfg *promote.CopierConfig) *testBundle {
	t.Helper()
	ctx := context.Background()
	p := testenv.NewPair(t)
	testenv.SeedAccounts(t, p.Old, 1, 101)
	p.Old.Exec(t, `DELETE FROM accounts WHERE id % 10 = 0`)
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		t.Fatal(err)
	}
	rdb, prefix := testenv.Redis(t)
	tr, err := tracker.New(rdb, "accounts", &tracker.Config{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	var c promote.CopierConfig
	if cfg != nil {
		c = *cfg
	}
	c.Table = "accounts"
	c.Marker = tr
	cp, err := promote.NewCopier(ctx, p.Old.Pool, p.New.Pool, &c)
	if err != nil {
		t.Fatal(err)
	}
	return &testBundle{pair: p, tracker: tr, copier: cp}
}

// rowsText returns each row of table in db as its text form, by key.
func rowsText(t *testing.T, db *testenv.Database, table string) map[int64]string {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), `SELECT id, t::text FROM `+table+` t ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int64]string{}
	for rows.Next() {
		var id int64
		var s string
		if err := rows.Scan(&id, &s); err != nil {
			t.Fatal(err)
		}
		out[id] = s
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func settledKeys(t *testing.T, tr *tracker.Tracker, ks []int64) []int64 {
	t.Helper()
	got, err := tr.Settled(context.Background(), ks)
	if err != nil {
		t.Fatal(err)
	}
	var out []int64
	for i, ok := range got {
		if ok {
			out = append(out, ks[i])
		}
	}
	return out
}

// Invariant 1: a promoted record in NEW equals the OLD record, for every
// column type, NULLs included, and through a type widening.
func TestCopyKeysIsFaithful(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := testenv.NewPair(t)
	const oldDDL = `
		CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
		CREATE TABLE things (
			id     integer PRIMARY KEY,
			n      numeric(20,6), f float8, r real, b boolean,
			ts     timestamptz, d date, iv interval,
			j      jsonb, bin bytea, arr text[], m mood,
			u      uuid, txt varchar(40), ip inet, c char(3), bt bit(4))`
	p.Old.Exec(t, oldDDL)
	// NEW widens the key to bigint: the text path casts it.
	p.New.Exec(t, `CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
		CREATE TABLE things (
			id     bigint PRIMARY KEY,
			n      numeric(20,6), f float8, r real, b boolean,
			ts     timestamptz, d date, iv interval,
			j      jsonb, bin bytea, arr text[], m mood,
			u      uuid, txt varchar(40), ip inet, c char(3), bt bit(4))`)
	p.Old.Exec(t, `INSERT INTO things VALUES
		(1, 12345678901234.123456, 0.1, 3.4028235e38, true,
		 '2021-03-04 05:06:07.891011+02', '2020-02-29', '1 year 2 days 00:00:00.000001',
		 '{"a": [1, 2.5, "x"], "b": null}', '\xdeadbeef00', '{"a,b","c\"d",NULL}', 'happy',
		 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'naïve ✓', '10.0.0.1/8', 'ab', B'1010'),
		(2, NULL, 'NaN', '-Infinity', NULL, 'infinity', NULL, NULL, NULL, NULL, '{}', NULL, NULL, '', NULL, NULL, NULL),
		(3, -0.000001, -1.7976931348623157e308, 1e-45, false, '-infinity', '0001-01-01 BC', '-1 hour',
		 '[]', '', '{{1,2},{3,4}}', 'sad', NULL, 'x''y', '::1', 'xyz', B'0001')`)
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		t.Fatal(err)
	}
	cp, err := promote.NewCopier(ctx, p.Old.Pool, p.New.Pool, &promote.CopierConfig{Table: "things"})
	if err != nil {
		t.Fatal(err)
	}
	res, err := cp.CopyKeys(ctx, []int64{3, 1, 2, 1})
	if err != nil {
		t.Fatal(err)
	}
	if want := (promote.Result{Copied: 3}); res != want {
		t.Fatalf("result = %+v, want %+v", res, want)
	}
	oldRows, newRows := rowsText(t, p.Old, "things"), rowsText(t, p.New, "things")
	if len(newRows) != 3 {
		t.Fatalf("NEW has %d rows, want 3", len(newRows))
	}
	for id, o := range oldRows {
		if newRows[id] != o {
			t.Errorf("key %d:\n OLD %s\n NEW %s", id, o, newRows[id])
		}
	}
}

// Invariant 2: a copy never replaces a row that already exists in NEW.
func TestCopyNeverOverwrites(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, nil)
	b.pair.New.Exec(t, `INSERT INTO accounts VALUES (5, 'new@example.com', 'Written in NEW', 1, 'active', now(), now())`)
	before := rowsText(t, b.pair.New, "accounts")[5]

	res, err := b.copier.CopyKeys(ctx, []int64{4, 5, 6})
	if err != nil {
		t.Fatal(err)
	}
	if want := (promote.Result{Copied: 2, Present: 1}); res != want {
		t.Fatalf("result = %+v, want %+v", res, want)
	}
	if after := rowsText(t, b.pair.New, "accounts")[5]; after != before {
		t.Fatalf("NEW row 5 was overwritten:\n before %s\n after  %s", before, after)
	}
	// The range copy must not overwrite it either.
	if _, err := b.copier.CopyRange(ctx, 0, 50); err != nil {
		t.Fatal(err)
	}
	if after := rowsText(t, b.pair.New, "accounts")[5]; after != before {
		t.Fatalf("NEW row 5 was overwritten by CopyRange:\n before %s\n after  %s", before, after)
	}
}

func TestCopySkipsTombstonedKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, nil)
	b.pair.New.Exec(t, `INSERT INTO lazymigrate.tombstones (table_name, key) VALUES ('public.accounts', 3), ('public.accounts', 20)`)

	// 20 is absent from OLD (every 10th id is) and tombstoned: counted as
	// tombstoned and settled. 30 is absent and not settled.
	res, err := b.copier.CopyKeys(ctx, []int64{2, 3, 20, 30})
	if err != nil {
		t.Fatal(err)
	}
	if want := (promote.Result{Copied: 1, Tombstoned: 2, Absent: 1}); res != want {
		t.Fatalf("result = %+v, want %+v", res, want)
	}
	newRows := rowsText(t, b.pair.New, "accounts")
	if _, ok := newRows[3]; ok {
		t.Fatal("tombstoned key 3 was copied into NEW")
	}
	if got, want := settledKeys(t, b.tracker, []int64{2, 3, 20, 30}), []int64{2, 3, 20}; !slices.Equal(got, want) {
		t.Fatalf("settled = %v, want %v", got, want)
	}

	res, err = b.copier.CopyRange(ctx, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if want := (promote.Result{Copied: 7, Present: 1, Tombstoned: 1, Absent: 1}); res != want {
		t.Fatalf("range result = %+v, want %+v", res, want)
	}
	if _, ok := rowsText(t, b.pair.New, "accounts")[3]; ok {
		t.Fatal("tombstoned key 3 was copied into NEW by CopyRange")
	}
}

// Invariant 6: a task run twice, or killed between the NEW commit and the
// tracker marking, changes nothing beyond the first complete run.
func TestCopyIsIdempotent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	crash := errors.New("simulated crash")
	crashing := true
	var mu sync.Mutex
	b := setup(t, &promote.CopierConfig{Hooks: promote.Hooks{
		AfterCommit: func(context.Context, []int64) error {
			mu.Lock()
			defer mu.Unlock()
			if crashing {
				return crash
			}
			return nil
		},
	}})
	ks := []int64{1, 2, 3, 10, 11}

	_, err := b.copier.CopyKeys(ctx, ks)
	if !errors.Is(err, crash) {
		t.Fatalf("first run: err = %v, want the simulated crash", err)
	}
	if got := settledKeys(t, b.tracker, ks); len(got) != 0 {
		t.Fatalf("keys marked despite the crash before marking: %v", got)
	}
	afterCrash := rowsText(t, b.pair.New, "accounts")
	if len(afterCrash) != 4 {
		t.Fatalf("NEW has %d rows after the committed first run, want 4", len(afterCrash))
	}

	mu.Lock()
	crashing = false
	mu.Unlock()
	for run := range 2 {
		res, err := b.copier.CopyKeys(ctx, ks)
		if err != nil {
			t.Fatal(err)
		}
		if want := (promote.Result{Present: 4, Absent: 1}); res != want {
			t.Fatalf("rerun %d: result = %+v, want %+v", run, res, want)
		}
		if got := rowsText(t, b.pair.New, "accounts"); !mapsEqual(got, afterCrash) {
			t.Fatalf("rerun %d changed NEW", run)
		}
	}
	if got, want := settledKeys(t, b.tracker, ks), []int64{1, 2, 3, 11}; !slices.Equal(got, want) {
		t.Fatalf("settled after rerun = %v, want %v", got, want)
	}
}

func mapsEqual(a, b map[int64]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestCopyRangeSettlesGaps(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, nil)
	res, err := b.copier.CopyRange(ctx, 0, 200)
	if err != nil {
		t.Fatal(err)
	}
	// OLD holds 1..100 minus 10 multiples of ten: 90 rows.
	if want := (promote.Result{Copied: 90, Absent: 110}); res != want {
		t.Fatalf("result = %+v, want %+v", res, want)
	}
	left, err := b.tracker.Unsettled(ctx, 0, 200)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Fatalf("range not fully settled; left: %v", left)
	}
	oldRows, newRows := rowsText(t, b.pair.Old, "accounts"), rowsText(t, b.pair.New, "accounts")
	if !mapsEqual(oldRows, newRows) {
		t.Fatal("NEW differs from OLD after copying the whole range")
	}
}

// The per-key lock is what stops a copy from resurrecting a key whose
// delete commits while the copy runs: the delete holds the stripe lock, the
// copy waits for it and then sees the tombstone.
func TestCopyWaitsForConcurrentDelete(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	requireCopyWaitsForDelete(t, b, b.copier)
}

// requireCopyWaitsForDelete runs a copy of key 7 while a delete of it holds
// the key's lock, commits the delete once the copy waits, and fails t if
// the copy brought the key back.
func requireCopyWaitsForDelete(t *testing.T, b *testBundle, cp *promote.Copier) {
	t.Helper()
	ctx := context.Background()
	// READ COMMITTED asked for: NEW's default may be another (LockKeys
	// refuses those).
	tx, err := b.pair.New.Pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := cp.LockKeys(ctx, tx, []int64{7}); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO lazymigrate.tombstones (table_name, key) VALUES ('public.accounts', 7)`); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := cp.CopyKeys(ctx, []int64{7})
		done <- err
	}()
	// The copy must block on the lock: wait until Postgres shows it waiting.
	testenv.Eventually(t, 10*time.Second, "copy waits for the advisory lock", func() bool {
		var waiting int
		_ = b.pair.New.Pool.QueryRow(ctx, waitingInOwnDatabase).Scan(&waiting)
		return waiting > 0
	})
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, ok := rowsText(t, b.pair.New, "accounts")[7]; ok {
		t.Fatal("key 7 was resurrected by a copy that ran during its delete")
	}
}

func TestCopyTransform(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := testenv.NewPair(t)
	p.Old.Exec(t, `CREATE TABLE people (id bigint PRIMARY KEY, first text, last text, born date)`)
	p.New.Exec(t, `CREATE TABLE people (id bigint PRIMARY KEY, full_name text NOT NULL, born date, migrated boolean DEFAULT true)`)
	p.Old.Exec(t, `INSERT INTO people VALUES (1, 'Ada', 'Lovelace', '1815-12-10'), (2, 'Alan', 'Turing', NULL)`)
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		t.Fatal(err)
	}
	cp, err := promote.NewCopier(ctx, p.Old.Pool, p.New.Pool, &promote.CopierConfig{
		Table:   "people",
		Columns: []string{"id", "full_name", "born"},
		Transform: func(_ context.Context, old promote.Row) (promote.Row, error) {
			return promote.Row{
				"id":        old["id"],
				"full_name": old["first"].(string) + " " + old["last"].(string),
				"born":      old["born"],
			}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cp.CopyKeys(ctx, []int64{1, 2}); err != nil {
		t.Fatal(err)
	}
	got := rowsText(t, p.New, "people")
	want := map[int64]string{1: `(1,"Ada Lovelace",1815-12-10,t)`, 2: `(2,"Alan Turing",,t)`}
	if !mapsEqual(got, want) {
		t.Fatalf("NEW = %v, want %v", got, want)
	}
}

func TestCopyTransformMustKeepKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, nil)
	cp, err := promote.NewCopier(ctx, b.pair.Old.Pool, b.pair.New.Pool, &promote.CopierConfig{
		Table: "accounts",
		Transform: func(_ context.Context, old promote.Row) (promote.Row, error) {
			old["id"] = old["id"].(int64) + 1000
			return old, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cp.CopyKeys(ctx, []int64{1}); err == nil {
		t.Fatal("a transform that changes the key must fail the copy")
	}
	if n := len(rowsText(t, b.pair.New, "accounts")); n != 0 {
		t.Fatalf("NEW has %d rows after a failed transform, want 0", n)
	}
}

func TestNewCopierRejectsBadConfig(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := testenv.NewPair(t)
	p.Old.Exec(t, `CREATE TABLE texty (id text PRIMARY KEY); CREATE TABLE nouniq (id bigint, v int); CREATE TABLE extra (id bigint PRIMARY KEY, only_new int)`)
	p.New.Exec(t, `CREATE TABLE texty (id text PRIMARY KEY); CREATE TABLE nouniq (id bigint, v int); CREATE TABLE extra (id bigint PRIMARY KEY, only_new int)`)
	p.Old.Exec(t, `ALTER TABLE extra DROP COLUMN only_new`)

	// Before setup, NEW has no lazymigrate schema.
	_, err := promote.NewCopier(ctx, p.Old.Pool, p.New.Pool, &promote.CopierConfig{Table: "accounts"})
	if err == nil {
		t.Fatal("NewCopier without lazymigrate's schema in NEW: want an error")
	}
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		t.Fatal(err)
	}
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		t.Fatalf("second Setup: %v", err)
	}
	for _, tc := range []struct {
		name string
		cfg  promote.CopierConfig
	}{
		{"NoTable", promote.CopierConfig{}},
		{"MissingTable", promote.CopierConfig{Table: "nope"}},
		{"TextKey", promote.CopierConfig{Table: "texty"}},
		{"KeyNotUnique", promote.CopierConfig{Table: "nouniq"}},
		{"MissingKeyColumn", promote.CopierConfig{Table: "accounts", KeyColumn: "uid"}},
		{"ColumnMissingInOld", promote.CopierConfig{Table: "extra"}},
		{"ColumnsWithoutKey", promote.CopierConfig{Table: "accounts", Columns: []string{"email"}}},
		{"StripeBitsTooLarge", promote.CopierConfig{Table: "accounts", StripeBits: 60}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if _, err := promote.NewCopier(ctx, p.Old.Pool, p.New.Pool, &tc.cfg); err == nil {
				t.Fatalf("NewCopier(%+v): want an error", tc.cfg)
			}
		})
	}
}

func TestCopyRejectsInvalidKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, nil)
	if _, err := b.copier.CopyKeys(ctx, []int64{1, -2}); !errors.Is(err, tracker.ErrInvalidKey) {
		t.Fatalf("CopyKeys with a negative key: err = %v, want ErrInvalidKey", err)
	}
	if _, err := b.copier.CopyRange(ctx, 10, 5); !errors.Is(err, tracker.ErrInvalidKey) {
		t.Fatalf("CopyRange(10, 5): err = %v, want ErrInvalidKey", err)
	}
	if _, err := b.copier.CopyRange(ctx, 0, promote.MaxRangeKeys+1); err == nil {
		t.Fatal("CopyRange past MaxRangeKeys: want an error")
	}
	if n := len(rowsText(t, b.pair.New, "accounts")); n != 0 {
		t.Fatalf("NEW has %d rows after rejected copies, want 0", n)
	}
}

func TestCopyReportsOldUnavailable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, nil)
	b.pair.Old.Pool.Close() // OLD goes away
	_, err := b.copier.CopyKeys(ctx, []int64{1})
	if !errors.Is(err, promote.ErrOldUnavailable) {
		t.Fatalf("err = %v, want ErrOldUnavailable", err)
	}
}

var _ promote.Execer = pgx.Tx(nil)

// Table and column names are quoted as identifiers everywhere: mixed case,
// spaces, quotes and a schema of their own.
func TestCopyQuotesIdentifiers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := testenv.NewPair(t)
	const ddl = `CREATE SCHEMA "Odd Schema"; CREATE TABLE "Odd Schema"."My ""Table""" ("Key" bigint PRIMARY KEY, "select" text, "Mixed Case" int)`
	p.Old.Exec(t, ddl)
	p.New.Exec(t, ddl)
	p.Old.Exec(t, `INSERT INTO "Odd Schema"."My ""Table""" VALUES (1, 'a', 10), (2, 'b', 20)`)
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		t.Fatal(err)
	}
	cp, err := promote.NewCopier(ctx, p.Old.Pool, p.New.Pool, &promote.CopierConfig{
		Table: `"Odd Schema"."My ""Table"""`, KeyColumn: "Key",
	})
	if err != nil {
		t.Fatal(err)
	}
	if cp.TableID() != `"Odd Schema"."My ""Table"""` {
		t.Fatalf("TableID = %q", cp.TableID())
	}
	if res, err := cp.CopyKeys(ctx, []int64{1}); err != nil || res.Copied != 1 {
		t.Fatalf("CopyKeys = %+v, %v", res, err)
	}
	if res, err := cp.CopyRange(ctx, 0, 10); err != nil || res.Copied != 1 || res.Present != 1 {
		t.Fatalf("CopyRange = %+v, %v", res, err)
	}
	var n int
	if err := p.New.Pool.QueryRow(ctx, `SELECT sum("Mixed Case") FROM "Odd Schema"."My ""Table"""`).Scan(&n); err != nil || n != 30 {
		t.Fatalf("NEW sum = %d, %v; want 30", n, err)
	}
}
