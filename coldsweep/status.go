package coldsweep

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lazymigrate/lazymigrate/tracker"
)

// MaxHeatmapCells is the most cells Heatmap counts, whatever it is asked
// for: it bounds the Redis calls of one heatmap.
const MaxHeatmapCells = 1024

// heatmapParallel is how many cells Heatmap counts at a time.
const heatmapParallel = 8

// Cell is one cell of a heatmap: the keys of Span, Settled of which are
// settled according to the tracker.
type Cell struct {
	Span
	Settled int64
}

// Fraction returns the settled share of the cell's keys, in [0, 1]; 1 for
// a cell without keys, which has nothing left to settle.
func (c Cell) Fraction() float64 {
	if c.Len() <= 0 {
		return 1
	}
	return float64(c.Settled) / float64(c.Len())
}

// Heatmap cuts span into cells of equal size, in key order, and counts the
// settled keys of each. There are min(cells, MaxHeatmapCells, span.Len())
// cells of span.Len()/n keys, the remainder spread one key each over cells
// across the span; they partition span, so their Settled add up to the
// settled keys of span. An empty span has no cells.
//
// Each cell costs one Tracker.CountRange: a pipelined round trip to Redis
// with one BITCOUNT per tracker segment the cell overlaps. Heatmap runs at
// most 8 at a time, so a heatmap costs at most MaxHeatmapCells round trips
// and (cells + segments of span) BITCOUNTs, each over at most one segment,
// whatever the size of span. Like Tracker.Count, keep it off hot paths.
func Heatmap(ctx context.Context, tr *tracker.Tracker, span Span, cells int) ([]Cell, error) {
	if cells < 1 {
		return nil, errors.New("coldsweep: a heatmap needs at least 1 cell")
	}
	total := span.Len()
	if total <= 0 {
		return []Cell{}, nil
	}
	n := min(int64(min(cells, MaxHeatmapCells)), total)
	start := func(i int64) int64 { // span.Lo + i*total/n, without overflow
		return span.Lo + total/n*i + total%n*i/n
	}
	out := make([]Cell, n)
	for i := range out {
		out[i].Span = Span{start(int64(i)), start(int64(i) + 1)}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		next     atomic.Int64
		errOnce  sync.Once
		firstErr error
	)
	for range min(heatmapParallel, len(out)) {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < n && ctx.Err() == nil; i = next.Add(1) - 1 {
				c := &out[i]
				settled, err := tr.CountRange(ctx, c.Lo, c.Hi)
				if err != nil {
					errOnce.Do(func() { firstErr = err })
					cancel()
					return
				}
				c.Settled = settled
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr // the tracker's error names the table and range
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("coldsweep: heatmap: %w", err)
	}
	return out, nil
}

// SweepState is what a sweep, or one shard of it, is doing, as told by the
// progress its shards saved in Redis.
type SweepState string

// States of a sweep. A shard is in one of Running, Held, Stalled, Stopped
// and Finished; a sweep as a whole also may be NotStarted.
const (
	// SweepNotStarted: no shard has saved progress.
	SweepNotStarted SweepState = "not started"
	// SweepRunning: copying chunks.
	SweepRunning SweepState = "running"
	// SweepHeld: running, but held back by the throttle or a pause
	// (Progress.Throttled says why).
	SweepHeld SweepState = "held"
	// SweepStalled: not finished, but silent for longer than staleAfter:
	// its process was killed, or cut off from Redis.
	SweepStalled SweepState = "stalled"
	// SweepStopped: ended before all its chunks were done, interrupted or
	// after a fatal error. Running it again continues.
	SweepStopped SweepState = "stopped"
	// SweepFinished: every chunk done (some possibly failed, see
	// ChunksFailed).
	SweepFinished SweepState = "finished"
)

// Live reports whether a shard in state s is under way (running or held),
// so that its rates and ETA are current.
func (s SweepState) Live() bool { return s == SweepRunning || s == SweepHeld }

// State returns what the shard that saved p is doing at now. A shard that
// saved nothing for longer than staleAfter is stalled; sweepers save their
// progress every Config.ProgressInterval (1s by default), so a few of
// those is a fair staleAfter.
func (p Progress) State(now time.Time, staleAfter time.Duration) SweepState {
	switch {
	case !p.Finished && now.Sub(p.Updated) > staleAfter:
		return SweepStalled
	case !p.Finished && p.Throttled != "":
		return SweepHeld
	case !p.Finished:
		return SweepRunning
	case p.ChunksDone < p.Chunks:
		return SweepStopped
	}
	return SweepFinished
}

// SweepSummary sums up a sweep from the progress of its shards.
type SweepSummary struct {
	// State is the sweep's as a whole: running while any shard is running,
	// held while shards are under way but all held, then stalled if any
	// shard is, stopped if any is, and finished once every shard is.
	// Shards that never saved progress are not known: a sharded sweep
	// whose reported shards all finished is finished.
	State SweepState
	// Shards counts the shards that saved progress; Live those running or
	// held, whose rates and ETA the summary adds up.
	Shards int
	Live   int
	// Chunks, ChunksDone and ChunksFailed add up every shard's.
	Chunks       int64
	ChunksDone   int64
	ChunksFailed int64
	// KeysPerSec and RowsPerSec are the sums of the live shards' rates.
	KeysPerSec float64
	RowsPerSec float64
	// ETA is the longest of the live shards' ETAs (they run side by side);
	// 0 when unknown or no shard is live.
	ETA time.Duration
	// Throttled says why the first held shard is held; "" when none is.
	Throttled string
	// Updated is the last time a shard saved its progress; zero when none
	// has.
	Updated time.Time
}

// Fraction returns the share of the sweep's chunks done, in [0, 1]: 0 when
// no shard has reported, 1 when the reported shards have no chunks.
func (s SweepSummary) Fraction() float64 {
	switch {
	case s.Shards == 0:
		return 0
	case s.Chunks == 0:
		return 1
	}
	return float64(s.ChunksDone) / float64(s.Chunks)
}

// SummarizeSweep sums up the progress of a sweep's shards, as LoadProgress
// returns it, at now. staleAfter is how long a shard may save nothing
// before it counts as stalled (see Progress.State).
func SummarizeSweep(ps []Progress, now time.Time, staleAfter time.Duration) SweepSummary {
	s := SweepSummary{State: SweepNotStarted, Shards: len(ps)}
	count := map[SweepState]int{}
	for _, p := range ps {
		st := p.State(now, staleAfter)
		count[st]++
		s.Chunks += p.Chunks
		s.ChunksDone += p.ChunksDone
		s.ChunksFailed += p.ChunksFailed
		if p.Updated.After(s.Updated) {
			s.Updated = p.Updated
		}
		if !st.Live() {
			continue
		}
		s.Live++
		s.KeysPerSec += p.KeysPerSec
		s.RowsPerSec += p.RowsPerSec
		s.ETA = max(s.ETA, p.ETA)
		if st == SweepHeld && s.Throttled == "" {
			s.Throttled = p.Throttled
		}
	}
	for _, st := range []SweepState{SweepRunning, SweepHeld, SweepStalled, SweepStopped, SweepFinished} {
		if count[st] > 0 {
			s.State = st
			break
		}
	}
	return s
}
