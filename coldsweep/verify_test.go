package coldsweep_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazymigrate/lazymigrate/coldsweep"
	"github.com/lazymigrate/lazymigrate/internal/exampledb"
	"github.com/lazymigrate/lazymigrate/internal/pgtable"
	"github.com/lazymigrate/lazymigrate/internal/schema"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/promote"
)

// setupVerify returns OLD and NEW holding the same accounts [1, n], with
// lazymigrate's schema in NEW.
func setupVerify(t *testing.T, n int64) *testenv.Pair {
	t.Helper()
	p := testenv.NewPair(t)
	testenv.SeedAccounts(t, p.Old, 1, n+1)
	testenv.SeedAccounts(t, p.New, 1, n+1)
	if err := promote.Setup(context.Background(), p.New.Pool); err != nil {
		t.Fatal(err)
	}
	return p
}

// verify runs coldsweep.Verify on the pair's pools and fails t on error;
// cfg.Table defaults to accounts.
func verify(t *testing.T, oldDB, newDB coldsweep.Querier, cfg coldsweep.VerifyConfig) *coldsweep.Report {
	t.Helper()
	if cfg.Table == "" {
		cfg.Table = "accounts"
	}
	rep, err := coldsweep.Verify(context.Background(), oldDB, newDB, &cfg)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return rep
}

func tombstone(t *testing.T, db *testenv.Database, keys ...int64) {
	t.Helper()
	db.Exec(t, `INSERT INTO `+schema.Tombstones+` (table_name, key) SELECT 'public.accounts', unnest($1::bigint[])`, keys)
}

// wantKeys compares a report's key lists with the expected ones (nil and
// empty alike) and checks each count matches its list.
func wantKeys(t *testing.T, rep *coldsweep.Report, missing, different, extra, tombstoned, resurrected []int64) {
	t.Helper()
	for _, c := range []struct {
		name      string
		got, want []int64
		count     int64
	}{
		{"Missing", rep.Missing, missing, rep.MissingCount},
		{"Different", rep.Different, different, rep.DifferentCount},
		{"Extra", rep.Extra, extra, rep.ExtraCount},
		{"Tombstoned", rep.Tombstoned, tombstoned, rep.TombstonedCount},
		{"Resurrected", rep.Resurrected, resurrected, rep.ResurrectedCount},
	} {
		if !slices.Equal(c.got, c.want) || c.count != int64(len(c.want)) {
			t.Errorf("%s = %v (count %d), want %v", c.name, c.got, c.count, c.want)
		}
	}
}

func TestVerifyClassifiesKeys(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// change makes NEW (or OLD) differ behind lazymigrate's back.
		change                                             func(t *testing.T, p *testenv.Pair)
		missing, different, extra, tombstoned, resurrected []int64
		equal, closed                                      bool
		rowsOld, rowsNew                                   int64
	}{
		{
			name:   "identical",
			change: func(*testing.T, *testenv.Pair) {},
			equal:  true, rowsOld: 2000, rowsNew: 2000,
		},
		{
			name: "changed in NEW",
			change: func(t *testing.T, p *testenv.Pair) {
				p.New.Exec(t, `UPDATE accounts SET name = 'changed' WHERE id = 777`)
				p.New.Exec(t, `UPDATE accounts SET updated_at = updated_at + interval '1 microsecond' WHERE id = 1999`)
			},
			different: []int64{777, 1999}, rowsOld: 2000, rowsNew: 2000,
		},
		{
			name:    "missing from NEW",
			change:  func(t *testing.T, p *testenv.Pair) { p.New.Exec(t, `DELETE FROM accounts WHERE id IN (1, 42, 2000)`) },
			missing: []int64{1, 42, 2000}, rowsOld: 2000, rowsNew: 1997,
		},
		{
			name: "only in NEW, past OLD's last key too",
			change: func(t *testing.T, p *testenv.Pair) {
				p.Old.Exec(t, `DELETE FROM accounts WHERE id = 100`)
				testenv.SeedAccounts(t, p.New, 5000, 5001)
			},
			extra: []int64{100, 5000}, rowsOld: 1999, rowsNew: 2001,
		},
		{
			name: "deleted through lazymigrate",
			change: func(t *testing.T, p *testenv.Pair) {
				// 300 is still in OLD (unmirrored); 301 is gone from both.
				p.New.Exec(t, `DELETE FROM accounts WHERE id IN (300, 301)`)
				p.Old.Exec(t, `DELETE FROM accounts WHERE id = 301`)
				tombstone(t, p.New, 300, 301)
			},
			tombstoned: []int64{300}, equal: true, rowsOld: 1999, rowsNew: 1998,
		},
		{
			name: "deleted through lazymigrate, then purged",
			change: func(t *testing.T, p *testenv.Pair) {
				p.New.Exec(t, `DELETE FROM accounts WHERE id = 300`)
				tombstone(t, p.New, 300)
				p.New.Exec(t, schema.CloseSQL, "public.accounts", int(schema.DefaultStripeBits))
			},
			missing: []int64{300}, closed: true, rowsOld: 2000, rowsNew: 1999,
		},
		{
			name: "tombstoned key back in NEW",
			change: func(t *testing.T, p *testenv.Pair) {
				// 400 in both sides; 2500 in NEW alone.
				testenv.SeedAccounts(t, p.New, 2500, 2501)
				tombstone(t, p.New, 400, 2500)
			},
			resurrected: []int64{400, 2500}, rowsOld: 2000, rowsNew: 2001,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := setupVerify(t, 2000)
			tc.change(t, p)
			reg := prometheus.NewRegistry()
			rep := verify(t, p.Old.Pool, p.New.Pool, coldsweep.VerifyConfig{Chunk: 500, Registerer: reg})
			wantKeys(t, rep, tc.missing, tc.different, tc.extra, tc.tombstoned, tc.resurrected)
			if rep.Equal() != tc.equal || rep.Closed != tc.closed {
				t.Errorf("Equal(), Closed = %v, %v; want %v, %v", rep.Equal(), rep.Closed, tc.equal, tc.closed)
			}
			if rep.RowsOld != tc.rowsOld || rep.RowsNew != tc.rowsNew {
				t.Errorf("RowsOld, RowsNew = %d, %d, want %d, %d", rep.RowsOld, rep.RowsNew, tc.rowsOld, tc.rowsNew)
			}
			if rep.Range.Lo != 1 || rep.Chunks != (rep.Range.Hi-1)/500-rep.Range.Lo/500+1 {
				t.Errorf("Range %v, %d chunks", rep.Range, rep.Chunks)
			}
			differing := testenv.CounterValue(t, reg, "lazymigrate_verify_chunks_total", "outcome", "different")
			equal := testenv.CounterValue(t, reg, "lazymigrate_verify_chunks_total", "outcome", "equal")
			if int64(differing) != rep.DifferingChunks || int64(differing+equal) != rep.Chunks {
				t.Errorf("chunks_total: %v different, %v equal; report: %d of %d differ", differing, equal, rep.DifferingChunks, rep.Chunks)
			}
			for kind, n := range map[string]int64{
				"missing": rep.MissingCount, "different": rep.DifferentCount, "extra": rep.ExtraCount,
				"tombstoned": rep.TombstonedCount, "resurrected": rep.ResurrectedCount,
			} {
				if got := testenv.CounterValue(t, reg, "lazymigrate_verify_keys_total", "kind", kind); int64(got) != n {
					t.Errorf("verify_keys_total{kind=%q} = %v, want %d", kind, got, n)
				}
			}
		})
	}
}

func TestVerifyRangeAndShard(t *testing.T) {
	t.Parallel()
	p := setupVerify(t, 1000)
	p.New.Exec(t, `DELETE FROM accounts WHERE id IN (50, 150, 250, 950)`)
	for _, tc := range []struct {
		name    string
		cfg     coldsweep.VerifyConfig
		missing []int64
		chunks  int64
	}{
		{"whole table", coldsweep.VerifyConfig{}, []int64{50, 150, 250, 950}, 11},
		{"range", coldsweep.VerifyConfig{Range: coldsweep.Span{Lo: 100, Hi: 300}}, []int64{150, 250}, 2},
		{"odd chunks", coldsweep.VerifyConfig{Shard: coldsweep.Shard{I: 1, N: 2}}, []int64{150, 950}, 5},
		{"even chunks", coldsweep.VerifyConfig{Shard: coldsweep.Shard{I: 0, N: 2}}, []int64{50, 250}, 6},
		{"range and shard", coldsweep.VerifyConfig{Range: coldsweep.Span{Lo: 0, Hi: 500}, Shard: coldsweep.Shard{I: 0, N: 2}}, []int64{50, 250}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := tc.cfg
			cfg.Chunk = 100
			rep := verify(t, p.Old.Pool, p.New.Pool, cfg)
			wantKeys(t, rep, tc.missing, nil, nil, nil, nil)
			if rep.Chunks != tc.chunks {
				t.Errorf("Chunks = %d, want %d", rep.Chunks, tc.chunks)
			}
		})
	}
}

// Lists keep the smallest keys, across chunks checked in parallel; counts
// stay exact. Progress calls never overlap and count up to the total.
func TestVerifyMaxListedAndProgress(t *testing.T) {
	t.Parallel()
	p := setupVerify(t, 3000)
	p.New.Exec(t, `DELETE FROM accounts WHERE id % 7 = 0`)
	var (
		calls  []coldsweep.VerifyProgress
		inCall bool
	)
	rep := verify(t, p.Old.Pool, p.New.Pool, coldsweep.VerifyConfig{
		Chunk: 100, Workers: 4, MaxListed: 10,
		Progress: func(pr coldsweep.VerifyProgress) {
			// No lock: the race detector checks the calls are serialized.
			if inCall {
				t.Error("Progress called while another call runs")
			}
			inCall = true
			calls = append(calls, pr)
			inCall = false
		},
	})
	want := []int64{7, 14, 21, 28, 35, 42, 49, 56, 63, 70}
	if rep.DifferentCount+rep.ExtraCount+rep.TombstonedCount+rep.ResurrectedCount != 0 {
		t.Fatalf("only missing keys expected: %+v", rep)
	}
	if !slices.Equal(rep.Missing, want) || rep.MissingCount != 3000/7 {
		t.Fatalf("Missing = %v (count %d), want %v (count %d)", rep.Missing, rep.MissingCount, want, 3000/7)
	}
	if int64(len(calls)) != rep.Chunks || rep.Chunks != 31 {
		t.Fatalf("%d Progress calls, %d chunks, want 31", len(calls), rep.Chunks)
	}
	for i, c := range calls {
		if c.ChunksDone != int64(i+1) || c.Chunks != rep.Chunks || c.Table != "accounts" {
			t.Fatalf("Progress call %d: %+v", i, c)
		}
	}
	if last := calls[len(calls)-1]; last.Differences != rep.MissingCount || last.RowsOld != 3000 || last.DifferingChunks != rep.DifferingChunks {
		t.Fatalf("last Progress %+v, report %+v", last, rep)
	}
}

// Values compare by meaning, not by how each server prints them: OLD and
// NEW run with different TimeZone, DateStyle, IntervalStyle, float digits
// and bytea output, and OLD's key is an integer where NEW's is a bigint.
func TestVerifyIgnoresSessionSettings(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := testenv.NewPair(t)
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		t.Fatal(err)
	}
	const cols = `ts timestamptz, d date, tsl timestamp, iv interval, f float8, n numeric, j jsonb, js json,
		b bytea, s text, arr timestamptz[], tz timetz`
	p.Old.Exec(t, `CREATE TABLE t (id integer PRIMARY KEY, `+cols+`)`)
	p.New.Exec(t, `CREATE TABLE t (id bigint PRIMARY KEY, `+cols+`)`)
	const rows = `INSERT INTO t VALUES
		(1, '2024-02-01 10:00:00.123456+03', '2024-02-01', '2024-02-01 10:00:00', '-1 day +02:03:04.5',
		 0.1::float8 + 0.2::float8, 1.50, '{"b": 1, "a": [1, 2.0, 12345678901234567890]}', '{"b":1,  "a":2}',
		 '\x00ff27', 'comma, "quote" (paren)', '{2024-02-01 10:00:00+00,infinity}', '10:00:00+05:30'),
		(2, 'infinity', '0044-03-15 BC', '1999-12-31 23:59:59.999999', '1 year 2 mons', 'NaN', 'NaN', 'null', '[]',
		 '', '', '{}', '00:00:00+00'),
		(3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)`
	p.Old.Exec(t, rows)
	p.New.Exec(t, rows)
	for db, settings := range map[*testenv.Database][]string{
		p.Old: {`TimeZone = 'Asia/Tokyo'`, `DateStyle = 'SQL, DMY'`, `IntervalStyle = 'sql_standard'`,
			`extra_float_digits = 0`, `bytea_output = 'escape'`},
		p.New: {`TimeZone = 'America/New_York'`, `DateStyle = 'German'`, `IntervalStyle = 'iso_8601'`},
	} {
		for _, s := range settings {
			db.Exec(t, fmt.Sprintf(`ALTER DATABASE %q SET %s`, db.Name, s))
		}
	}
	oldPool, newPool := p.Old.NewPool(t, nil), p.New.NewPool(t, nil)
	var oldTZ, newTZ string
	if err := oldPool.QueryRow(ctx, `SHOW TimeZone`).Scan(&oldTZ); err != nil || oldTZ != "Asia/Tokyo" {
		t.Fatalf("OLD's TimeZone = %q, %v: the database setting did not apply", oldTZ, err)
	}
	if err := newPool.QueryRow(ctx, `SHOW TimeZone`).Scan(&newTZ); err != nil || newTZ != "America/New_York" {
		t.Fatalf("NEW's TimeZone = %q, %v: the database setting did not apply", newTZ, err)
	}

	rep := verify(t, oldPool, newPool, coldsweep.VerifyConfig{Table: "t"})
	if !rep.Equal() || rep.RowsOld != 3 || rep.RowsNew != 3 || rep.DifferingChunks != 0 {
		t.Fatalf("identical rows under different settings: %+v", rep)
	}

	// The comparison still sees a microsecond, and NULL apart from ''.
	p.New.Exec(t, `UPDATE t SET ts = ts + interval '1 microsecond' WHERE id = 1`)
	p.New.Exec(t, `UPDATE t SET s = NULL WHERE id = 2`)
	p.New.Exec(t, `UPDATE t SET b = '' WHERE id = 3`)
	rep = verify(t, oldPool, newPool, coldsweep.VerifyConfig{Table: "t"})
	wantKeys(t, rep, nil, []int64{1, 2, 3}, nil, nil, nil)
}

// recheckHook wraps a pool and runs before once, before the first query of
// verify's recheck (a query by key list).
type recheckHook struct {
	*pgxpool.Pool
	once   sync.Once
	before func()
}

func (h *recheckHook) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if strings.Contains(sql, "= ANY($1::bigint[])") {
		h.once.Do(h.before)
	}
	return h.Pool.Query(ctx, sql, args...)
}

// A key written while verify runs (NEW committed, the mirror to OLD not
// yet landed when the chunk was compared) is not reported once the recheck
// finds the sides equal; a key that stays different is.
func TestVerifyRechecksBeforeReporting(t *testing.T) {
	t.Parallel()
	p := setupVerify(t, 100)
	p.New.Exec(t, `UPDATE accounts SET name = 'written' WHERE id IN (5, 6)`)
	p.New.Exec(t, `DELETE FROM accounts WHERE id = 7`)
	oldDB := &recheckHook{Pool: p.Old.Pool, before: func() {
		// The mirror of 5 lands, and 7's deletion with its tombstone.
		p.Old.Exec(t, `UPDATE accounts SET name = 'written' WHERE id = 5`)
		p.Old.Exec(t, `DELETE FROM accounts WHERE id = 7`)
		tombstone(t, p.New, 7)
	}}
	rep := verify(t, oldDB, p.New.Pool, coldsweep.VerifyConfig{RecheckAfter: -1})
	wantKeys(t, rep, nil, []int64{6}, nil, nil, nil)
	if rep.DifferingChunks != 1 {
		t.Fatalf("DifferingChunks = %d, want 1", rep.DifferingChunks)
	}
}

func TestVerifyEmptyTables(t *testing.T) {
	t.Parallel()
	p := testenv.NewPair(t)
	if err := promote.Setup(context.Background(), p.New.Pool); err != nil {
		t.Fatal(err)
	}
	rep := verify(t, p.Old.Pool, p.New.Pool, coldsweep.VerifyConfig{})
	if !rep.Equal() || rep.Chunks != 0 {
		t.Fatalf("both empty: %+v", rep)
	}
	testenv.SeedAccounts(t, p.New, 10, 13)
	rep = verify(t, p.Old.Pool, p.New.Pool, coldsweep.VerifyConfig{})
	wantKeys(t, rep, nil, nil, []int64{10, 11, 12}, nil, nil)
	if rep.Range != (coldsweep.Span{Lo: 10, Hi: 13}) {
		t.Fatalf("Range = %v, want NEW's keys [10, 13)", rep.Range)
	}
}

// A smallint key whose last value is the type's largest: the range ends
// past what the key's type can hold.
func TestVerifySmallintKey(t *testing.T) {
	t.Parallel()
	p := testenv.NewPair(t)
	if err := promote.Setup(context.Background(), p.New.Pool); err != nil {
		t.Fatal(err)
	}
	p.Old.Exec(t, `CREATE TABLE s (id smallint PRIMARY KEY, v text)`)
	p.New.Exec(t, `CREATE TABLE s (id integer PRIMARY KEY, v text)`)
	p.Old.Exec(t, `INSERT INTO s VALUES (1, 'a'), (32767, 'z')`)
	p.New.Exec(t, `INSERT INTO s VALUES (1, 'a'), (32767, 'Z')`)
	rep := verify(t, p.Old.Pool, p.New.Pool, coldsweep.VerifyConfig{Table: "s", RecheckAfter: -1})
	wantKeys(t, rep, nil, []int64{32767}, nil, nil, nil)
	if rep.Range != (coldsweep.Span{Lo: 1, Hi: 32768}) {
		t.Fatalf("Range = %v", rep.Range)
	}
}

// failing wraps a pool and fails every checksum query, as a database that
// went away in the middle of verify would.
type failing struct{ *pgxpool.Pool }

var errInjected = errors.New("injected: connection reset")

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

func (f failing) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if strings.Contains(sql, "hashtextextended") {
		return errRow{errInjected}
	}
	return f.Pool.QueryRow(ctx, sql, args...)
}

func TestVerifyReportsWhichSideFailed(t *testing.T) {
	t.Parallel()
	p := setupVerify(t, 1000)
	unreachable, err := pgxpool.New(context.Background(), "postgres://postgres@127.0.0.1:1/nowhere?sslmode=disable&connect_timeout=5")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unreachable.Close)
	for _, tc := range []struct {
		name           string
		oldDB, newDB   coldsweep.Querier
		side           string
		want, wantNone error
	}{
		{"OLD unreachable", unreachable, p.New.Pool, "OLD", promote.ErrOldUnavailable, promote.ErrNewUnavailable},
		{"NEW unreachable", p.Old.Pool, unreachable, "NEW", promote.ErrNewUnavailable, promote.ErrOldUnavailable},
		{"OLD fails midway", failing{p.Old.Pool}, p.New.Pool, "OLD", promote.ErrOldUnavailable, promote.ErrNewUnavailable},
		{"NEW fails midway", p.Old.Pool, failing{p.New.Pool}, "NEW", promote.ErrNewUnavailable, promote.ErrOldUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rep, err := coldsweep.Verify(context.Background(), tc.oldDB, tc.newDB, &coldsweep.VerifyConfig{Table: "accounts", Chunk: 100})
			if err == nil || rep != nil {
				t.Fatalf("Verify = %+v, %v; want an error", rep, err)
			}
			if !errors.Is(err, tc.want) || errors.Is(err, tc.wantNone) || !strings.Contains(err.Error(), tc.side) {
				t.Fatalf("err = %v; want one naming %s that wraps %v", err, tc.side, tc.want)
			}
			if strings.Contains(tc.name, "midway") && !errors.Is(err, errInjected) {
				t.Fatalf("err = %v; want it to wrap the cause", err)
			}
		})
	}
}

func TestVerifyStopsWhenCancelled(t *testing.T) {
	t.Parallel()
	p := setupVerify(t, 5000)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var calls int
	start := time.Now()
	rep, err := coldsweep.Verify(ctx, p.Old.Pool, p.New.Pool, &coldsweep.VerifyConfig{
		Table: "accounts", Chunk: 10, Workers: 3,
		Progress: func(coldsweep.VerifyProgress) {
			calls++
			if calls == 3 {
				cancel()
			}
		},
	})
	if !errors.Is(err, context.Canceled) || rep != nil {
		t.Fatalf("Verify = %+v, %v; want context.Canceled", rep, err)
	}
	// 500 chunks; a few more may finish while the cancellation spreads.
	if calls > 3+3 {
		t.Fatalf("%d chunks checked after cancelling at the 3rd", calls-3)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("Verify took %s to stop", d)
	}
}

func TestVerifyRejectsBadConfig(t *testing.T) {
	t.Parallel()
	// No promote.Setup in NEW: every config error must come first.
	p := testenv.NewPair(t)
	p.Old.Exec(t, `CREATE TABLE other (id bigint PRIMARY KEY, a text)`)
	p.New.Exec(t, `CREATE TABLE other (id bigint PRIMARY KEY, b text)`)
	for _, tc := range []struct {
		name   string
		cfg    *coldsweep.VerifyConfig
		is     error
		saying string
	}{
		{"no config", nil, nil, "VerifyConfig.Table is required"},
		{"no table in NEW", &coldsweep.VerifyConfig{Table: "nope"}, pgtable.ErrNotFound, "VerifyConfig.Table: NEW"},
		{"no table in OLD", &coldsweep.VerifyConfig{Table: "accounts", OldTable: "nope"}, pgtable.ErrNotFound, "VerifyConfig.OldTable: OLD"},
		{"text key", &coldsweep.VerifyConfig{Table: "accounts", KeyColumn: "email"}, pgtable.ErrBadKey, "VerifyConfig.KeyColumn"},
		{"no key column", &coldsweep.VerifyConfig{Table: "accounts", KeyColumn: "nope"}, pgtable.ErrBadKey, "VerifyConfig.KeyColumn"},
		{"unknown column", &coldsweep.VerifyConfig{Table: "accounts", Columns: []string{"email", "nope"}}, nil, `VerifyConfig.Columns: NEW table public.accounts has no column "nope"`},
		{"column only in NEW", &coldsweep.VerifyConfig{Table: "other", Columns: []string{"b"}}, nil, `VerifyConfig.Columns: OLD table public.other has no column "b"`},
		{"no common column", &coldsweep.VerifyConfig{Table: "other"}, nil, "no column in common"},
		{"bad range", &coldsweep.VerifyConfig{Table: "accounts", Range: coldsweep.Span{Lo: 5, Hi: 3}}, nil, "VerifyConfig.Range"},
		{"bad shard", &coldsweep.VerifyConfig{Table: "accounts", Shard: coldsweep.Shard{I: 2, N: 2}}, nil, "VerifyConfig.Shard"},
		{"negative chunk", &coldsweep.VerifyConfig{Table: "accounts", Chunk: -1}, nil, "VerifyConfig.Chunk"},
		{"schema not set up", &coldsweep.VerifyConfig{Table: "accounts"}, schema.ErrNotSetUp, "promote.Setup"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rep, err := coldsweep.Verify(context.Background(), p.Old.Pool, p.New.Pool, tc.cfg)
			if err == nil || rep != nil {
				t.Fatalf("Verify = %+v, %v; want an error", rep, err)
			}
			if (tc.is != nil && !errors.Is(err, tc.is)) || !strings.Contains(err.Error(), tc.saying) {
				t.Fatalf("err = %v; want %v saying %q", err, tc.is, tc.saying)
			}
		})
	}
}

// Verify after a sweep: a report lists what NEW lacks, then what differs.
func ExampleVerify() {
	ctx := context.Background()
	db := exampledb.Open(ctx, 1000) // OLD holds accounts 1..1000; NEW is empty
	defer db.Close()
	if err := promote.Setup(ctx, db.New); err != nil {
		log.Fatal(err)
	}
	copier, err := promote.NewCopier(ctx, db.Old, db.New, &promote.CopierConfig{Table: "accounts"})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := copier.CopyRange(ctx, 1, 991); err != nil { // a sweep that is not done yet
		log.Fatal(err)
	}

	cfg := &coldsweep.VerifyConfig{Table: "accounts", Chunk: 250}
	rep, err := coldsweep.Verify(ctx, db.Old, db.New, cfg)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("equal: %v; %d chunks, %d differ; %d missing, from %d\n",
		rep.Equal(), rep.Chunks, rep.DifferingChunks, rep.MissingCount, rep.Missing[0])

	if _, err := copier.CopyRange(ctx, 991, 1001); err != nil {
		log.Fatal(err)
	}
	// A change behind lazymigrate's back.
	if _, err := db.New.Exec(ctx, `UPDATE accounts SET balance_cents = 0 WHERE id = 42`); err != nil {
		log.Fatal(err)
	}
	if rep, err = coldsweep.Verify(ctx, db.Old, db.New, cfg); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("equal: %v; missing %v, different %v\n", rep.Equal(), rep.Missing, rep.Different)
	// Output:
	// equal: false; 5 chunks, 2 differ; 10 missing, from 991
	// equal: false; missing [], different [42]
}

// BenchmarkVerify measures rows/s through Verify of two identical 200k-row
// tables, and, in the same run, the raw baseline it is held to: a binary
// COPY of the same table from OLD into NEW (which also fills NEW).
// x-copy is Verify's rows/s over the copy's; the target is at least 0.5.
func BenchmarkVerify(b *testing.B) {
	const rows = 200_000
	ctx := context.Background()
	p := testenv.NewPair(b)
	testenv.SeedAccounts(b, p.Old, 1, rows+1)
	p.Old.Exec(b, `VACUUM ANALYZE accounts`)
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	n, err := rawCopy(ctx, p.Old.Pool, p.New.Pool, "accounts")
	if err != nil || n != rows {
		b.Fatalf("raw COPY: %d rows, %v", n, err)
	}
	copyPerSec := rows / time.Since(start).Seconds()
	p.New.Exec(b, `VACUUM ANALYZE accounts`)

	b.Run("Identical", func(b *testing.B) {
		cfg := &coldsweep.VerifyConfig{Table: "accounts"}
		start := time.Now()
		for range b.N {
			rep, err := coldsweep.Verify(ctx, p.Old.Pool, p.New.Pool, cfg)
			if err != nil || !rep.Equal() || rep.RowsOld != rows || rep.RowsNew != rows {
				b.Fatalf("Verify = %+v, %v", rep, err)
			}
		}
		perSec := float64(rows*b.N) / time.Since(start).Seconds()
		b.ReportMetric(perSec, "rows/s")
		b.ReportMetric(copyPerSec, "copy-rows/s")
		b.ReportMetric(perSec/copyPerSec, "x-copy")
	})
}

// rawCopy streams table from one database into the other with binary COPY.
func rawCopy(ctx context.Context, from, to *pgxpool.Pool, table string) (int64, error) {
	return rawCopyOf(ctx, from, to, table, table)
}

// rawCopyOf streams the rows of source (a table, or a query in parentheses)
// into table with binary COPY.
func rawCopyOf(ctx context.Context, from, to *pgxpool.Pool, source, table string) (int64, error) {
	src, err := from.Acquire(ctx)
	if err != nil {
		return 0, err
	}
	defer src.Release()
	dst, err := to.Acquire(ctx)
	if err != nil {
		return 0, err
	}
	defer dst.Release()
	pr, pw := io.Pipe()
	copied := make(chan error, 1)
	go func() {
		_, err := src.Conn().PgConn().CopyTo(ctx, pw, "COPY "+source+" TO STDOUT (FORMAT binary)")
		pw.CloseWithError(err)
		copied <- err
	}()
	tag, err := dst.Conn().PgConn().CopyFrom(ctx, pr, "COPY "+table+" FROM STDIN (FORMAT binary)")
	pr.CloseWithError(io.ErrClosedPipe) // unblocks the reader of OLD if NEW failed
	if errOld := <-copied; err == nil {
		err = errOld
	}
	return tag.RowsAffected(), err
}

// A key no range can hold is the data's fault, not an outage: the error
// names it and does not say the database is unavailable.
func TestVerifyRefusesKeyNoRangeCanHold(t *testing.T) {
	t.Parallel()
	p := setupVerify(t, 3)
	p.Old.Exec(t, `INSERT INTO accounts SELECT 9223372036854775807, email, name, balance_cents, status, created_at, updated_at FROM accounts WHERE id = 1`)
	_, err := coldsweep.Verify(context.Background(), p.Old.Pool, p.New.Pool, &coldsweep.VerifyConfig{Table: "accounts"})
	if err == nil || errors.Is(err, promote.ErrOldUnavailable) || !strings.Contains(err.Error(), "in OLD: key out of range: largest key is 9223372036854775807") {
		t.Fatalf("err = %v, want the key named, not OLD unavailable", err)
	}
}
