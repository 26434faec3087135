package coldsweep

import (
	"context"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/tracker"
)

// setupHeatmap returns a tracker of 1024-key segments in which keys
// [1000, 2500) and every multiple of 97 below 6000 are settled, and
// whether each key below 6000 is.
func setupHeatmap(t *testing.T) (*tracker.Tracker, func(k int64) bool) {
	t.Helper()
	ctx := context.Background()
	rdb, prefix := testenv.Redis(t)
	tr, err := tracker.New(rdb, "accounts", &tracker.Config{Prefix: prefix, SegmentBits: 10})
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.MarkRange(ctx, 1000, 2500); err != nil {
		t.Fatal(err)
	}
	var scattered []int64
	for k := int64(0); k < 6000; k += 97 {
		scattered = append(scattered, k)
	}
	if _, err := tr.Mark(ctx, scattered); err != nil {
		t.Fatal(err)
	}
	return tr, func(k int64) bool { return k >= 1000 && k < 2500 || k%97 == 0 }
}

// Cells partition the span, differ in size by one key at most, and count
// exactly the settled keys of their own range, across segment boundaries.
func TestHeatmap(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tr, settled := setupHeatmap(t)

	for _, c := range []struct {
		span  Span
		cells int
		want  int // cells
	}{
		{Span{0, 6000}, 7, 7},     // 857 or 858 keys each
		{Span{51, 3251}, 32, 32},  // 100 keys each
		{Span{990, 1010}, 64, 20}, // no more cells than keys
		{Span{0, 6000}, 5000, MaxHeatmapCells},
		{Span{2500, 2501}, 1, 1},
	} {
		t.Run(fmt.Sprintf("%v/%d", c.span, c.cells), func(t *testing.T) {
			t.Parallel()
			cells, err := Heatmap(ctx, tr, c.span, c.cells)
			if err != nil {
				t.Fatal(err)
			}
			if len(cells) != c.want {
				t.Fatalf("%d cells, want %d", len(cells), c.want)
			}
			small := c.span.Len() / int64(c.want)
			lo := c.span.Lo
			for i, cell := range cells {
				if cell.Lo != lo || cell.Len() != small && cell.Len() != small+1 {
					t.Fatalf("cell %d is %v after key %d; want it to start there with %d or %d keys", i, cell.Span, lo, small, small+1)
				}
				lo = cell.Hi
				var want int64
				for k := cell.Lo; k < cell.Hi; k++ {
					if settled(k) {
						want++
					}
				}
				if cell.Settled != want {
					t.Errorf("cell %d %v: %d settled, want %d", i, cell.Span, cell.Settled, want)
				}
			}
			if lo != c.span.Hi {
				t.Errorf("the cells end at %d, want %d", lo, c.span.Hi)
			}
		})
	}
}

func TestHeatmapEdges(t *testing.T) {
	t.Parallel()
	tr, _ := setupHeatmap(t)
	if cells, err := Heatmap(context.Background(), tr, Span{}, 64); err != nil || cells == nil || len(cells) != 0 {
		t.Errorf("empty span: %v, %v; want no cell", cells, err)
	}
	if _, err := Heatmap(context.Background(), tr, Span{0, 100}, 0); err == nil {
		t.Error("0 cells: no error")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if cells, err := Heatmap(ctx, tr, Span{0, 6000}, 64); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %d cells, %v; want context.Canceled", len(cells), err)
	}
}

func TestCellFraction(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		cell Cell
		want float64
	}{
		{Cell{Span{10, 20}, 0}, 0},
		{Cell{Span{10, 20}, 4}, 0.4},
		{Cell{Span{10, 20}, 10}, 1},
		{Cell{Span{10, 10}, 0}, 1},
	} {
		if got := c.cell.Fraction(); got != c.want {
			t.Errorf("%+v.Fraction() = %g, want %g", c.cell, got, c.want)
		}
	}
}

func TestProgressState(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	const stale = 10 * time.Second
	for _, c := range []struct {
		name string
		p    Progress
		want SweepState
	}{
		{"running", Progress{Chunks: 10, ChunksDone: 3, Updated: now.Add(-time.Second)}, SweepRunning},
		{"silent exactly staleAfter", Progress{Chunks: 10, Updated: now.Add(-stale)}, SweepRunning},
		{"held", Progress{Chunks: 10, Throttled: "paused", Updated: now}, SweepHeld},
		{"silent", Progress{Chunks: 10, Throttled: "paused", Updated: now.Add(-stale - 1)}, SweepStalled},
		{"interrupted", Progress{Chunks: 10, ChunksDone: 4, Finished: true, Updated: now.Add(-time.Hour)}, SweepStopped},
		{"finished", Progress{Chunks: 10, ChunksDone: 10, ChunksFailed: 2, Finished: true, Updated: now.Add(-time.Hour)}, SweepFinished},
	} {
		if got := c.p.State(now, stale); got != c.want {
			t.Errorf("%s: State = %q, want %q", c.name, got, c.want)
		}
	}
}

func TestSummarizeSweep(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	const stale = 10 * time.Second
	running := Progress{Shard: "0/3", Chunks: 100, ChunksDone: 40, KeysPerSec: 1000, RowsPerSec: 900,
		ETA: time.Minute, Updated: now.Add(-time.Second)}
	held := Progress{Shard: "1/3", Chunks: 100, ChunksDone: 20, KeysPerSec: 10, RowsPerSec: 5,
		ETA: 3 * time.Minute, Throttled: "replica lag", Updated: now}
	paused := held
	paused.Shard, paused.Throttled = "2/3", "paused"
	stalled := Progress{Shard: "2/3", Chunks: 100, ChunksDone: 70, KeysPerSec: 5000, ETA: time.Hour,
		Updated: now.Add(-time.Minute)}
	done := Progress{Shard: "2/3", Chunks: 100, ChunksDone: 100, ChunksFailed: 3, KeysPerSec: 800,
		Finished: true, Updated: now.Add(-2 * time.Second)}
	stopped := Progress{Shard: "1/3", Chunks: 100, ChunksDone: 50, KeysPerSec: 700, ETA: time.Hour,
		Finished: true, Updated: now.Add(-time.Hour)}

	for _, c := range []struct {
		name string
		ps   []Progress
		want SweepSummary
		frac float64
	}{
		{"none", nil, SweepSummary{State: SweepNotStarted}, 0},
		{"running and held", []Progress{running, held, done}, SweepSummary{
			State: SweepRunning, Shards: 3, Live: 2, Chunks: 300, ChunksDone: 160, ChunksFailed: 3,
			KeysPerSec: 1010, RowsPerSec: 905, ETA: 3 * time.Minute, Throttled: "replica lag", Updated: now,
		}, 160.0 / 300},
		{"all held", []Progress{held, paused}, SweepSummary{
			State: SweepHeld, Shards: 2, Live: 2, Chunks: 200, ChunksDone: 40,
			KeysPerSec: 20, RowsPerSec: 10, ETA: 3 * time.Minute, Throttled: "replica lag", Updated: now,
		}, 0.2},
		// A stalled shard's rates and ETA are not current: left out.
		{"stalled", []Progress{done, stalled}, SweepSummary{
			State: SweepStalled, Shards: 2, Chunks: 200, ChunksDone: 170, ChunksFailed: 3, Updated: done.Updated,
		}, 0.85},
		{"stopped", []Progress{done, stopped}, SweepSummary{
			State: SweepStopped, Shards: 2, Chunks: 200, ChunksDone: 150, ChunksFailed: 3, Updated: done.Updated,
		}, 0.75},
		{"finished", []Progress{done}, SweepSummary{
			State: SweepFinished, Shards: 1, Chunks: 100, ChunksDone: 100, ChunksFailed: 3, Updated: done.Updated,
		}, 1},
		{"finished, no chunks", []Progress{{Shard: "0/1", Finished: true, Updated: now}}, SweepSummary{
			State: SweepFinished, Shards: 1, Updated: now,
		}, 1},
	} {
		got := SummarizeSweep(c.ps, now, stale)
		if got != c.want {
			t.Errorf("%s:\n got %+v\nwant %+v", c.name, got, c.want)
		}
		if f := got.Fraction(); f != c.frac {
			t.Errorf("%s: Fraction = %g, want %g", c.name, f, c.frac)
		}
	}
}

// The ETA is the pace of copied chunks applied to the chunks left: the
// chunks skipped because they were settled do not make it shorter.
func TestEstimateETA(t *testing.T) {
	t.Parallel()
	const s = time.Second
	for _, c := range []struct {
		name              string
		left, copied      int64
		elapsed, cp, skip time.Duration
		want              time.Duration
	}{
		{"nothing copied yet", 90, 0, 5 * s, 0, 5 * s, 0},
		{"nothing left", 0, 100, 100 * s, 100 * s, 0, 0},
		{"copies only", 90, 10, 10 * s, 10 * s, 0, 90 * s},
		// 4 workers: 40s of chunk time in 10s.
		{"copies only, in parallel", 90, 40, 10 * s, 40 * s, 0, 22500 * time.Millisecond},
		// 900 settled chunks skipped in 1s, then 10 copied in 10s: each
		// of the 90 left takes 1s, not the 11s/910 chunks the pace of keys
		// promised.
		{"after a settled region", 90, 10, 11 * s, 10 * s, 1 * s, 90 * s},
		// Held half the time: the holds count, as they will likely go on.
		{"held", 10, 10, 20 * s, 10 * s, 0, 20 * s},
		{"too long to tell", math.MaxInt64 / 2, 1, time.Hour, time.Hour, 0, math.MaxInt64},
	} {
		if got := estimateETA(c.left, c.copied, c.elapsed, c.cp, c.skip); got != c.want {
			t.Errorf("%s: estimateETA = %v, want %v", c.name, got, c.want)
		}
	}
}

func ExampleSummarizeSweep() {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	// As LoadProgress returns them: two shards copying, one held.
	ps := []Progress{
		{Shard: "0/2", Chunks: 50, ChunksDone: 30, KeysPerSec: 20_000, ETA: 40 * time.Second, Updated: now},
		{Shard: "1/2", Chunks: 50, ChunksDone: 10, ETA: 2 * time.Minute, Throttled: "NEW is slow", Updated: now},
	}
	s := SummarizeSweep(ps, now, 10*time.Second)
	fmt.Printf("%s, %d of %d shards live, %.0f%% of chunks, %.0f keys/s, %v left\n",
		s.State, s.Live, s.Shards, 100*s.Fraction(), s.KeysPerSec, s.ETA)
	fmt.Println("held:", ps[1].State(now, 10*time.Second), "by", s.Throttled)
	// Output:
	// running, 2 of 2 shards live, 40% of chunks, 20000 keys/s, 2m0s left
	// held: held by NEW is slow
}
