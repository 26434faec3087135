package coldsweep_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lazymigrate/lazymigrate/coldsweep"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/promote"
)

// sgSettle copies [lo, hi) to NEW and marks it settled, as promotions by
// reads would have done before the sweep.
func sgSettle(t *testing.T, b *sweepBundle, lo, hi int64) {
	t.Helper()
	ctx := context.Background()
	if lo >= hi {
		return
	}
	if _, err := b.copier.CopyRange(ctx, lo, hi); err != nil {
		t.Fatal(err)
	}
	if err := b.tracker.MarkRange(ctx, lo, hi); err != nil {
		t.Fatal(err)
	}
}

// sgSettledIn returns how many keys of [lo, hi) the tracker says are settled.
func sgSettledIn(t *testing.T, b *sweepBundle, lo, hi int64) int64 {
	t.Helper()
	n, err := b.tracker.CountRange(context.Background(), lo, hi)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// sgRows returns the count, smallest and largest key of accounts in db
// within [lo, hi).
func sgRows(t *testing.T, db *testenv.Database, lo, hi int64) (n, first, last int64) {
	t.Helper()
	if err := db.Pool.QueryRow(context.Background(),
		`SELECT count(*), coalesce(min(id), -1), coalesce(max(id), -1) FROM accounts WHERE id >= $1 AND id < $2`,
		lo, hi).Scan(&n, &first, &last); err != nil {
		t.Fatal(err)
	}
	return n, first, last
}

// Chunks mostly settled already are copied key by key (CopyRangeKeys): every
// unsettled key is copied, the first and last of the chunk included, even
// when it is the chunk's only unsettled key; chunks mostly unsettled are
// copied whole. Nothing outside the swept range is marked.
func TestSweepGuardKeysPathCopiesEveryUnsettledKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// OLD: [1, 999] less multiples of 7; chunks of 100: [1, 100), [100, 200),
	// ..., [900, 1000).
	b := setupSweep(t, 999)
	for c := int64(0); c < 4; c++ {
		// Unsettled: the chunk's first key, its middle one and its last.
		lo, hi := max(c*100, 1), c*100+100
		sgSettle(t, b, lo+1, lo+50)
		sgSettle(t, b, lo+51, hi-1)
	}
	sgSettle(t, b, 400, 499) // only its last key, 499, unsettled
	sgSettle(t, b, 501, 600) // only its first key, 500, unsettled
	// Chunks 600 to 999: nothing settled, copied whole.
	newBefore, _, _ := sgRows(t, b.pair.New, 0, 1<<20)

	sum := b.sweep(t, coldsweep.Config{Chunk: 100, Workers: 1})
	if sum.Range != (coldsweep.Span{Lo: 1, Hi: 1000}) || sum.Chunks != 10 || sum.ChunksDone != 10 || sum.ChunksSkipped != 0 {
		t.Fatalf("summary = %+v, want 10 chunks over [1, 1000), none skipped", sum.Progress)
	}
	for outcome, want := range map[string]float64{"keys": 6, "range": 4, "settled": 0, "failed": 0} {
		if got := testenv.CounterValue(t, b.reg, "lazymigrate_sweep_chunks_total", "outcome", outcome); got != want {
			t.Errorf("sweep_chunks_total{outcome=%q} = %v, want %v", outcome, got, want)
		}
	}
	newAfter, _, _ := sgRows(t, b.pair.New, 0, 1<<20)
	if int64(sum.Rows.Copied) != newAfter-newBefore {
		t.Errorf("summary says %d rows copied, NEW gained %d", sum.Rows.Copied, newAfter-newBefore)
	}
	for _, k := range []int64{1, 99, 100, 150, 399, 499, 500} {
		if k%7 == 0 {
			continue
		}
		var n int
		if err := b.pair.New.Pool.QueryRow(ctx, `SELECT count(*) FROM accounts WHERE id = $1`, k).Scan(&n); err != nil || n != 1 {
			t.Errorf("key %d: %d rows in NEW, %v; want it copied", k, n, err)
		}
	}
	b.requireComplete(t, sum.Range)
	if n := sgSettledIn(t, b, 0, 1) + sgSettledIn(t, b, 1000, 1<<20); n != 0 {
		t.Fatalf("%d keys outside the swept range [1, 1000) marked settled", n)
	}
}

// A sweep of a given range copies and marks that range, every key of it and
// nothing else, whether it starts and ends inside a chunk or on a chunk
// boundary.
func TestSweepGuardStaysInsideRange(t *testing.T) {
	t.Parallel()
	b := setupSweep(t, 1000)
	for _, tc := range []struct {
		span   coldsweep.Span
		chunks int64
	}{
		{coldsweep.Span{Lo: 150, Hi: 351}, 3}, // [150, 200), [200, 300), [300, 351)
		{coldsweep.Span{Lo: 400, Hi: 600}, 2}, // [400, 500), [500, 600)
	} {
		sum := b.sweep(t, coldsweep.Config{Chunk: 100, Workers: 2, Range: tc.span})
		if sum.Range != tc.span || sum.Chunks != tc.chunks || sum.ChunksDone != tc.chunks || sum.Keys != tc.span.Len() {
			t.Fatalf("sweep of %v: %+v; want %d chunks, all done, %d keys", tc.span, sum.Progress, tc.chunks, tc.span.Len())
		}
		if n := sgSettledIn(t, b, tc.span.Lo, tc.span.Hi); n != tc.span.Len() {
			t.Fatalf("sweep of %v: %d keys of it settled, want %d", tc.span, n, tc.span.Len())
		}
		oldN, oldMin, oldMax := sgRows(t, b.pair.Old, tc.span.Lo, tc.span.Hi)
		newN, newMin, newMax := sgRows(t, b.pair.New, tc.span.Lo, tc.span.Hi)
		if oldN != newN || oldMin != newMin || oldMax != newMax {
			t.Fatalf("sweep of %v: NEW holds %d rows [%d..%d] of it, OLD %d [%d..%d]", tc.span, newN, newMin, newMax, oldN, oldMin, oldMax)
		}
		rep := verify(t, b.pair.Old.Pool, b.pair.New.Pool, coldsweep.VerifyConfig{Chunk: 100, Range: tc.span})
		if !rep.Equal() {
			t.Fatalf("verify of %v: missing %v, different %v, extra %v", tc.span, rep.Missing, rep.Different, rep.Extra)
		}
	}
	// Outside the two ranges: nothing copied, nothing marked.
	for _, out := range []coldsweep.Span{{Lo: 0, Hi: 150}, {Lo: 351, Hi: 400}, {Lo: 600, Hi: 1 << 20}} {
		if n := sgSettledIn(t, b, out.Lo, out.Hi); n != 0 {
			t.Errorf("%d keys of %v, outside the swept ranges, marked settled", n, out)
		}
		if n, lo, hi := sgRows(t, b.pair.New, out.Lo, out.Hi); n != 0 {
			t.Errorf("NEW holds %d rows [%d..%d] of %v, outside the swept ranges", n, lo, hi, out)
		}
	}
}

// A shard that finished with chunks NEW refused has not covered its range:
// another layout is refused until it is run again and succeeds.
func TestSweepGuardLayoutKeptWhileAShardHasFailedChunks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupSweep(t, 2000)
	b.pair.New.Exec(t, `ALTER TABLE accounts ADD CONSTRAINT sg_no_450 CHECK (id <> 450)`) // chunk 4: shard 0/2's
	s, err := coldsweep.New(b.config(coldsweep.Config{Chunk: 100, Shard: coldsweep.Shard{I: 0, N: 2}, Retries: 2}))
	if err != nil {
		t.Fatal(err)
	}
	sum, err := s.Run(ctx)
	if !errors.Is(err, coldsweep.ErrChunksFailed) {
		t.Fatalf("shard 0/2: err = %v, want ErrChunksFailed", err)
	}
	if sum.ChunksDone != sum.Chunks || sum.ChunksFailed != 1 {
		t.Fatalf("shard 0/2 = %+v; want every chunk done, one failed", sum.Progress)
	}
	// Rows NEW refuses are refused again: the chunk is not retried.
	if got := testenv.CounterValue(t, b.reg, "lazymigrate_sweep_retries_total", "table", "accounts"); got != 0 {
		t.Fatalf("a rejected chunk was retried %v times, want none", got)
	}
	b.sweep(t, coldsweep.Config{Chunk: 100, Shard: coldsweep.Shard{I: 1, N: 2}})

	s, err = coldsweep.New(b.config(coldsweep.Config{Chunk: 200, Shard: coldsweep.Shard{I: 0, N: 2}}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Run(ctx); !errors.Is(err, coldsweep.ErrLayoutChanged) || !strings.Contains(err.Error(), "shards 0/2 have not finished") {
		t.Fatalf("shard 0/2 with another chunk size while its failed chunk is unsettled: err = %v, want ErrLayoutChanged naming 0/2", err)
	}
	b.pair.New.Exec(t, `ALTER TABLE accounts DROP CONSTRAINT sg_no_450`)
	b.sweep(t, coldsweep.Config{Chunk: 100, Shard: coldsweep.Shard{I: 0, N: 2}})
	b.requireComplete(t, coldsweep.Span{Lo: 1, Hi: 2001})
	b.sweep(t, coldsweep.Config{Chunk: 200, Shard: coldsweep.Shard{I: 0, N: 2}}) // done: the layout may change
}

// The row checksum tells NULL from an empty string and from a NULL in
// another column, and a separator inside a value from one between values;
// a key NEW alone holds before OLD's first is found.
func TestVerifyGuardNullsAndSeparators(t *testing.T) {
	t.Parallel()
	p := setupVerify(t, 1)
	for _, db := range []*testenv.Database{p.Old, p.New} {
		db.Exec(t, `CREATE TABLE sg_items (id bigint PRIMARY KEY, a text, b text)`)
	}
	p.Old.Exec(t, `INSERT INTO sg_items VALUES (1, NULL, 'x'), (2, '', 'y'), (3, 'a', NULL), (4, 'same', NULL), (5, 'a,b', 'c'), (6, NULL, NULL)`)
	p.New.Exec(t, `INSERT INTO sg_items VALUES (1, 'x', NULL), (2, NULL, 'y'), (3, 'a', ''), (4, 'same', NULL), (5, 'a', 'b,c'), (6, NULL, NULL)`)
	// And a key in NEW alone, before OLD's first: the range checked starts
	// at the smaller of the two sides' first keys.
	p.New.Exec(t, `INSERT INTO sg_items VALUES (0, NULL, NULL)`)
	rep := verify(t, p.Old.Pool, p.New.Pool, coldsweep.VerifyConfig{Table: "sg_items", Chunk: 100})
	wantKeys(t, rep, nil, []int64{1, 2, 3, 5}, []int64{0}, nil, nil)
	if rep.Equal() || rep.Range != (coldsweep.Span{Lo: 0, Hi: 7}) || rep.RowsOld != 6 || rep.RowsNew != 7 {
		t.Errorf("Equal() = %v, range %v, rows %d, %d; want false, [0, 7), 6, 7", rep.Equal(), rep.Range, rep.RowsOld, rep.RowsNew)
	}
}

// A shard stopped one chunk short of its end has not finished: another
// layout is still refused, until the shard is run to the end.
func TestSweepGuardLayoutKeptWhileAShardIsOneChunkShort(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupSweep(t, 400) // [1, 401): chunks 0 to 4 of 100; shard 1/2 owns 1 and 3
	b.sweep(t, coldsweep.Config{Chunk: 100, Shard: coldsweep.Shard{I: 0, N: 2}})

	// Shard 1/2 copies its first chunk and is stopped while its second
	// waits for the rate limiter (100 keys at 20 a second, after a burst
	// of one chunk).
	stop, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := coldsweep.New(b.config(coldsweep.Config{Chunk: 100, Workers: 1, Rate: 20, Shard: coldsweep.Shard{I: 1, N: 2},
		ProgressInterval: 5 * time.Millisecond,
		Progress: func(p coldsweep.Progress) {
			if p.ChunksDone >= 1 {
				cancel()
			}
		}}))
	if err != nil {
		t.Fatal(err)
	}
	sum, err := s.Run(stop)
	if !errors.Is(err, coldsweep.ErrInterrupted) {
		t.Fatalf("shard 1/2 stopped: err = %v, want ErrInterrupted", err)
	}
	if sum.Chunks != 2 || sum.ChunksDone != 1 {
		t.Fatalf("shard 1/2 stopped: %+v; want 1 of 2 chunks done", sum.Progress)
	}

	// The chunk stopped before it began is neither copied nor marked.
	if n := sgSettledIn(t, b, 300, 400); n != 0 {
		t.Fatalf("%d keys of the chunk stopped before it began marked settled", n)
	}
	if n, _, _ := sgRows(t, b.pair.New, 300, 400); n != 0 {
		t.Fatalf("NEW holds %d rows of the chunk stopped before it began", n)
	}

	s, err = coldsweep.New(b.config(coldsweep.Config{Chunk: 200, Shard: coldsweep.Shard{I: 0, N: 2}}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Run(ctx); !errors.Is(err, coldsweep.ErrLayoutChanged) || !strings.Contains(err.Error(), "shards 1/2 have not finished") {
		t.Fatalf("another layout while shard 1/2 is a chunk short: err = %v, want ErrLayoutChanged naming 1/2", err)
	}
	b.sweep(t, coldsweep.Config{Chunk: 100, Shard: coldsweep.Shard{I: 1, N: 2}})
	b.requireComplete(t, coldsweep.Span{Lo: 1, Hi: 401})
}

// sgFlakyOld is OLD for the copier, without the bulk path, whose reads of
// rows fail as a dropped connection does (an outage, retried) while failing
// is set.
type sgFlakyOld struct {
	pool    *pgxpool.Pool
	failing atomic.Bool
}

var _ promote.DB = (*sgFlakyOld)(nil)

func (f *sgFlakyOld) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return f.pool.Query(ctx, sql, args...)
}

func (f *sgFlakyOld) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return f.pool.QueryRow(ctx, sql, args...)
}

func (f *sgFlakyOld) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if f.failing.Load() {
		return failedBatch{errors.New("sg: connection reset by peer")}
	}
	return f.pool.SendBatch(ctx, b)
}

type sgResult struct {
	sum *coldsweep.Summary
	err error
}

// sgRun runs s in the background; the result arrives on the channel.
func sgRun(ctx context.Context, s *coldsweep.Sweeper) <-chan sgResult {
	done := make(chan sgResult, 1)
	go func() {
		sum, err := s.Run(ctx)
		done <- sgResult{sum, err}
	}()
	return done
}

// sgRequireInterruptedUnsettled waits for a stopped sweep of the single
// chunk span and checks it left the chunk for the next run: ErrInterrupted,
// no chunk done, no key marked, no row in NEW.
func sgRequireInterruptedUnsettled(t *testing.T, b *sweepBundle, done <-chan sgResult, span coldsweep.Span) {
	t.Helper()
	var r sgResult
	select {
	case r = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return within 20s of the stop")
	}
	if !errors.Is(r.err, coldsweep.ErrInterrupted) {
		t.Fatalf("Run = %v, want ErrInterrupted", r.err)
	}
	if r.sum.ChunksDone != 0 {
		t.Fatalf("%d chunks done, want none: %+v", r.sum.ChunksDone, r.sum.Progress)
	}
	if n := sgSettledIn(t, b, span.Lo, span.Hi); n != 0 {
		t.Fatalf("%d keys of the stopped chunk marked settled, want none", n)
	}
	if n, _, _ := sgRows(t, b.pair.New, span.Lo, span.Hi); n != 0 {
		t.Fatalf("NEW holds %d rows of the stopped chunk, want none", n)
	}
	// The next run sweeps it.
	b.sweep(t, coldsweep.Config{Chunk: span.Len(), Range: span})
	if n := sgSettledIn(t, b, span.Lo, span.Hi); n != span.Len() {
		t.Fatalf("after the next run %d of %d keys settled", n, span.Len())
	}
}

// A chunk whose copy failed for an outage, stopped while it waits to be
// retried, stays unsettled; the sweep reports the interruption.
func TestSweepGuardStopDuringRetryLeavesChunkUnsettled(t *testing.T) {
	t.Parallel()
	b := setupSweep(t, 300)
	span := coldsweep.Span{Lo: 1, Hi: 101}
	old := &sgFlakyOld{pool: b.pair.Old.Pool}
	cp, err := promote.NewCopier(context.Background(), old, b.pair.New.Pool, &promote.CopierConfig{Table: "accounts", NoBulk: true})
	if err != nil {
		t.Fatal(err)
	}
	flaky := *b
	flaky.copier = cp
	s, err := coldsweep.New(flaky.config(coldsweep.Config{Chunk: 100, Workers: 1, Range: span}))
	if err != nil {
		t.Fatal(err)
	}
	old.failing.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := sgRun(ctx, s)
	testenv.Eventually(t, 10*time.Second, "the chunk failed and waits to be retried", func() bool {
		return testenv.CounterValue(t, b.reg, "lazymigrate_sweep_retries_total", "table", "accounts") >= 1
	})
	cancel()
	old.failing.Store(false)
	sgRequireInterruptedUnsettled(t, b, done, span)
}

// A chunk still copying when StopTimeout ends is cut off and left
// unsettled: the sweep reports the interruption, not a failure.
func TestSweepGuardStopTimeoutLeavesChunkUnsettled(t *testing.T) {
	t.Parallel()
	b := setupSweep(t, 300)
	span := coldsweep.Span{Lo: 1, Hi: 101}
	entered := make(chan struct{})
	var once sync.Once
	cp, err := promote.NewCopier(context.Background(), b.pair.Old.Pool, b.pair.New.Pool, &promote.CopierConfig{Table: "accounts",
		Hooks: promote.Hooks{AfterLock: func(ctx context.Context, _, _ int64) {
			first := false
			once.Do(func() { first = true; close(entered) })
			if !first {
				return
			}
			select { // a COPY stuck until the sweep gives up on it
			case <-ctx.Done():
			case <-time.After(20 * time.Second):
			}
		}}})
	if err != nil {
		t.Fatal(err)
	}
	stuck := *b
	stuck.copier = cp
	s, err := coldsweep.New(stuck.config(coldsweep.Config{Chunk: 100, Workers: 1, Range: span, StopTimeout: 50 * time.Millisecond}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := sgRun(ctx, s)
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the chunk's copy never started")
	}
	cancel()
	sgRequireInterruptedUnsettled(t, b, done, span)
}
