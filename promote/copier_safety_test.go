package promote_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/promote"
)

// freshPool opens a pool after database-level settings changed, so that its
// sessions pick them up.
func freshPool(t *testing.T, db *testenv.Database) *pgxpool.Pool {
	t.Helper()
	return db.NewPool(t, nil)
}

func newCopier(t *testing.T, p *testenv.Pair, oldPool, newPool *pgxpool.Pool, cfg promote.CopierConfig) *promote.Copier {
	t.Helper()
	ctx := context.Background()
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		t.Fatal(err)
	}
	cp, err := promote.NewCopier(ctx, oldPool, newPool, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cp
}

// Values must mean the same in NEW whatever either server prints or parses
// by default: a European DateStyle, the float rounding of servers before
// Postgres 12, escape-format bytea, a non-C money locale.
func TestCopyIgnoresSessionSettings(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := testenv.NewPair(t)
	const ddl = `CREATE TABLE t (id bigint PRIMARY KEY, d date, ts timestamptz, tsl timestamp, f float8, iv interval, b bytea, m money)`
	p.Old.Exec(t, ddl)
	p.New.Exec(t, ddl)
	p.Old.Exec(t, `INSERT INTO t VALUES (1, '2024-02-01', '2024-02-01 10:00:00.5+03', '2024-02-01 10:00:00',
		0.1::float8 + 0.2::float8, '-1 day +02:03:04.5', '\x00ff', 12.34)`)
	for _, db := range []*testenv.Database{p.Old, p.New} {
		db.Exec(t, fmt.Sprintf(`ALTER DATABASE %q SET DateStyle = 'SQL, DMY'`, db.Name))
		db.Exec(t, fmt.Sprintf(`ALTER DATABASE %q SET IntervalStyle = 'sql_standard'`, db.Name))
		db.Exec(t, fmt.Sprintf(`ALTER DATABASE %q SET TimeZone = 'Asia/Kolkata'`, db.Name))
	}
	p.Old.Exec(t, fmt.Sprintf(`ALTER DATABASE %q SET extra_float_digits = 0`, p.Old.Name))
	p.Old.Exec(t, fmt.Sprintf(`ALTER DATABASE %q SET bytea_output = 'escape'`, p.Old.Name))
	cp := newCopier(t, p, freshPool(t, p.Old), freshPool(t, p.New), promote.CopierConfig{Table: "t"})
	if _, err := cp.CopyKeys(ctx, []int64{1}); err != nil {
		t.Fatal(err)
	}
	// Compare in a session with fixed settings.
	const q = `SET DateStyle = 'ISO'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET TimeZone = 'UTC'`
	p.Old.Exec(t, q)
	p.New.Exec(t, q)
	if o, n := rowsText(t, p.Old, "t"), rowsText(t, p.New, "t"); o[1] != n[1] {
		t.Fatalf("copy not faithful under OLD/NEW session settings:\n OLD %s\n NEW %s", o[1], n[1])
	}
	var exact bool
	if err := p.New.Pool.QueryRow(ctx, `SELECT f = 0.1::float8 + 0.2::float8 FROM t`).Scan(&exact); err != nil || !exact {
		t.Fatalf("float lost precision (exact=%v, err=%v)", exact, err)
	}
}

// A value too long for NEW's narrower column is an error, never a silent
// truncation.
func TestCopyRejectsValuesTooLongForNew(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := testenv.NewPair(t)
	p.Old.Exec(t, `CREATE TABLE t (id bigint PRIMARY KEY, s text)`)
	p.New.Exec(t, `CREATE TABLE t (id bigint PRIMARY KEY, s varchar(5))`)
	p.Old.Exec(t, `INSERT INTO t VALUES (1, 'abcdefghij'), (2, 'abc')`)
	cp := newCopier(t, p, p.Old.Pool, p.New.Pool, promote.CopierConfig{Table: "t"})
	_, err := cp.CopyKeys(ctx, []int64{1})
	if !errors.Is(err, promote.ErrRowRejected) {
		t.Fatalf("copying a 10-character value into varchar(5): err = %v, want ErrRowRejected", err)
	}
	if res, err := cp.CopyKeys(ctx, []int64{2}); err != nil || res.Copied != 1 {
		t.Fatalf("a value that fits: %+v, %v", res, err)
	}
	if n := len(rowsText(t, p.New, "t")); n != 1 {
		t.Fatalf("NEW holds %d rows, want 1", n)
	}
}

func TestCopyRefusesDuplicateOldKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := testenv.NewPair(t)
	p.Old.Exec(t, `CREATE TABLE t (id bigint, s text)`)
	p.New.Exec(t, `CREATE TABLE t (id bigint PRIMARY KEY, s text)`)
	p.Old.Exec(t, `INSERT INTO t VALUES (1, 'a'), (1, 'b'), (2, 'c')`)
	cp := newCopier(t, p, p.Old.Pool, p.New.Pool, promote.CopierConfig{Table: "t"})
	if _, err := cp.CopyKeys(ctx, []int64{1, 2}); err == nil {
		t.Fatal("copying a key OLD holds twice: want an error")
	}
	if n := len(rowsText(t, p.New, "t")); n != 0 {
		t.Fatalf("NEW holds %d rows after a refused copy, want 0", n)
	}
}

// Invariant 3 whatever NEW's default isolation: under REPEATABLE READ the
// snapshot would predate the lock wait and miss the tombstone.
func TestCopyWaitsForConcurrentDeleteUnderRepeatableReadDefault(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.pair.New.Exec(t, fmt.Sprintf(`ALTER DATABASE %q SET default_transaction_isolation = 'repeatable read'`, b.pair.New.Name))
	cp := newCopier(t, b.pair, b.pair.Old.Pool, freshPool(t, b.pair.New), promote.CopierConfig{Table: "accounts"})
	requireCopyWaitsForDelete(t, b, cp)
}

// Keys scattered over many stripes must not exhaust Postgres's shared lock
// table, even with several full-size tasks at once.
func TestCopyOfScatteredKeysBoundsLocks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, nil)
	testenv.SeedAccounts(t, b.pair.Old, 1<<20, 1<<20+100) // a few keys that exist far apart
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for w := range errs {
		wg.Go(func() {
			ks := make([]int64, promote.MaxTaskKeys)
			for i := range ks {
				ks[i] = int64(w*promote.MaxTaskKeys+i) << 10 // one stripe each
			}
			_, errs[w] = b.copier.CopyKeys(ctx, ks)
		})
	}
	wg.Wait()
	for w, err := range errs {
		if err != nil {
			t.Fatalf("task %d of %d scattered keys: %v", w, promote.MaxTaskKeys, err)
		}
	}
}

func TestTransformSeesExactJSONAndUnknownTypes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := testenv.NewPair(t)
	const ddl = `CREATE TYPE mood AS ENUM ('sad', 'ok');
		CREATE TABLE t (id bigint PRIMARY KEY, ts timestamptz, d date, j json, jb jsonb, ms mood[], m mood,
			tsl timestamp, tm time, c char(3), n numeric)`
	p.Old.Exec(t, ddl)
	p.New.Exec(t, ddl)
	p.Old.Exec(t, `INSERT INTO t VALUES
		(1, '2024-01-01 00:00:00.123456+00', '2024-01-01', '{"b":1,  "a":2}', '{"n": 12345678901234567890, "m": 0.10000000000000000001}',
		 '{sad,ok}', 'ok', '2024-01-01 10:00:00.5', '10:00:01.25', 'ab', 3.141592653589793238462643383279),
		(2, 'infinity', '-infinity', NULL, NULL, NULL, NULL, 'infinity', NULL, NULL, 'NaN')`)
	cp := newCopier(t, p, p.Old.Pool, p.New.Pool, promote.CopierConfig{
		Table:     "t",
		Transform: func(_ context.Context, old promote.Row) (promote.Row, error) { return old, nil },
	})
	if res, err := cp.CopyKeys(ctx, []int64{1, 2}); err != nil || res.Copied != 2 {
		t.Fatalf("CopyKeys = %+v, %v", res, err)
	}
	o, n := rowsText(t, p.Old, "t"), rowsText(t, p.New, "t")
	for k := range o {
		if o[k] != n[k] {
			t.Errorf("key %d through an identity transform:\n OLD %s\n NEW %s", k, o[k], n[k])
		}
	}
}

func TestTransformErrorRejectsRow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, nil)
	cp := newCopier(t, b.pair, b.pair.Old.Pool, b.pair.New.Pool, promote.CopierConfig{
		Table: "accounts",
		Transform: func(_ context.Context, old promote.Row) (promote.Row, error) {
			if old["id"].(int64) == 2 {
				return nil, errors.New("cannot convert")
			}
			return old, nil
		},
	})
	if _, err := cp.CopyKeys(ctx, []int64{1, 2}); !errors.Is(err, promote.ErrRowRejected) {
		t.Fatalf("err = %v, want ErrRowRejected", err)
	}
}

func TestStripeBitsMustAgree(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, nil) // registered accounts with the default, 10
	_, err := promote.NewCopier(ctx, b.pair.Old.Pool, b.pair.New.Pool, &promote.CopierConfig{Table: "accounts", StripeBits: 12})
	if err == nil {
		t.Fatal("a copier with another StripeBits than the table's: want an error")
	}
	if _, err := promote.NewCopier(ctx, b.pair.Old.Pool, b.pair.New.Pool, &promote.CopierConfig{Table: "public.accounts", StripeBits: 10}); err != nil {
		t.Fatalf("the same StripeBits under another spelling of the name: %v", err)
	}
}

func TestNewCopierRefusesTransactionForNew(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, nil)
	tx, err := b.pair.New.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := promote.NewCopier(ctx, b.pair.Old.Pool, tx, &promote.CopierConfig{Table: "accounts"}); err == nil {
		t.Fatal("NewCopier with a transaction for NEW: want an error")
	}
}

// The Transform path reads types pgx does not know (domains, composites)
// in text form: under OLD's own settings that text would be lossy (floats
// rounded) or ambiguous (IST is India to OLD, Israel to NEW).
func TestTransformPathIgnoresSessionSettings(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, ddl, insert, check string
	}{
		{"FloatDomain", `CREATE DOMAIN fd AS float8; CREATE TABLE u (id bigint PRIMARY KEY, f fd)`,
			`INSERT INTO u VALUES (1, 0.1::float8 + 0.2::float8)`, `SELECT f = 0.1::float8 + 0.2::float8 FROM u`},
		{"CompositeTimestamp", `CREATE TYPE ev AS (at timestamptz); CREATE TABLE u (id bigint PRIMARY KEY, e ev)`,
			`INSERT INTO u VALUES (1, ROW('2024-02-01 10:00:00.5+03'))`, `SELECT (e).at = '2024-02-01 07:00:00.5+00' FROM u`},
		{"TimestampDomain", `CREATE DOMAIN tsd AS timestamptz; CREATE TABLE u (id bigint PRIMARY KEY, ts tsd)`,
			`INSERT INTO u VALUES (1, '2024-02-01 10:00:00.5+03')`, `SELECT ts = '2024-02-01 07:00:00.5+00' FROM u`},
		{"Infinities", `CREATE TABLE u (id bigint PRIMARY KEY, a timestamp, b timestamptz, c date)`,
			`INSERT INTO u VALUES (1, 'infinity', '-infinity', 'infinity')`, `SELECT a = 'infinity' AND b = '-infinity' AND c = 'infinity' FROM u`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			p := testenv.NewPair(t)
			p.Old.Exec(t, tc.ddl)
			p.New.Exec(t, tc.ddl)
			p.Old.Exec(t, tc.insert)
			p.Old.Exec(t, fmt.Sprintf(`ALTER DATABASE %q SET DateStyle = 'Postgres, DMY'`, p.Old.Name))
			p.Old.Exec(t, fmt.Sprintf(`ALTER DATABASE %q SET TimeZone = 'Asia/Kolkata'`, p.Old.Name))
			p.Old.Exec(t, fmt.Sprintf(`ALTER DATABASE %q SET extra_float_digits = 0`, p.Old.Name))
			identity := func(_ context.Context, r promote.Row) (promote.Row, error) { return r, nil }
			cp := newCopier(t, p, freshPool(t, p.Old), p.New.Pool, promote.CopierConfig{Table: "u", Transform: identity})
			if _, err := cp.CopyKeys(ctx, []int64{1}); err != nil {
				t.Fatal(err)
			}
			var ok bool
			if err := p.New.Pool.QueryRow(ctx, tc.check).Scan(&ok); err != nil || !ok {
				t.Fatalf("copy not faithful (%v): %s", err, tc.check)
			}
		})
	}
}

// A copy must give up when its context does, even when NEW cannot give it
// a connection: nothing in the copy may wait without the caller's deadline.
func TestCopyHonoursDeadlineWhenNewIsUnavailable(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	small := b.pair.New.NewPool(t, func(c *pgxpool.Config) { c.MaxConns = 1 })
	cp, err := promote.NewCopier(context.Background(), b.pair.Old.Pool, small, &promote.CopierConfig{Table: "accounts"})
	if err != nil {
		t.Fatal(err)
	}
	held, err := small.Acquire(context.Background()) // NEW has nothing left to give
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { _, err := cp.CopyKeys(ctx, []int64{1, 2, 3}); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a copy without a NEW connection succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the copy was still running 10s after its 300ms deadline")
	}
}
