package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/coldsweep"
	"github.com/lazymigrate/lazymigrate/fallback"
	"github.com/lazymigrate/lazymigrate/tracker"
)

const statusHelp = `
Shows how far a table's migration is: the settled keys of the key range
(OLD's smallest to largest key, or --from..--to) according to the tracker,
the state and rate of the sweeps that reported to the same Redis and
--prefix, whether the sweep is paused, the read mode ('sweeper mode'),
and a heatmap of the key range in
which each cell says how much of its keys are settled:

  · none   ▁▂▃▄▅▆▇ some, by eighths   █ all

Settled counts every key whose truth lives in NEW: copied, written or
deleted through lazymigrate, or found absent from OLD by a sweep.`

// Heatmap cells, by settled eighths; full is reserved for cells whose
// every key is settled, empty for cells with none.
const (
	cellEmpty = "·"
	cellFull  = "█"
)

var cellParts = []string{"▁", "▂", "▃", "▄", "▅", "▆", "▇"}

type statusFlags struct {
	conns
	tableFlags
	rangeFlags
	prefix      string
	segmentBits uint
	cells       int
	stale       time.Duration
	json        bool
}

func cmdStatus(ctx context.Context, c *cli, args []string) (int, error) {
	var f statusFlags
	c.flags("--table NAME [flags]", statusHelp)
	c.oldFlag(&f.conns)
	c.redisFlag(&f.conns)
	c.tableFlags(&f.tableFlags, true)
	c.rangeFlags(&f.rangeFlags, false)
	c.prefixFlag(&f.prefix)
	c.segmentBitsFlag(&f.segmentBits)
	c.fs.IntVar(&f.cells, "cells", 64, "`number` of cells of the heatmap")
	c.fs.DurationVar(&f.stale, "stale-after", defaultStaleAfter, "a sweep silent for this long is reported stale (killed, or cut off from Redis)")
	c.fs.BoolVar(&f.json, "json", false, "print the status as JSON on stdout")
	if err := c.parse(args); err != nil {
		return exitError, err
	}
	if err := f.check(); err != nil {
		return exitError, err
	}

	rdb, err := c.openRedis(ctx, f.conns)
	if err != nil {
		return exitError, err
	}
	defer func() { _ = rdb.Close() }()
	// OLD is read only for the ends of the range not given.
	span, ok, err := f.span(func() (int64, int64, bool, error) {
		old, err := c.openOld(ctx, f.conns, 0)
		if err != nil {
			return 0, 0, false, err
		}
		defer old.Close()
		ot, err := describe(ctx, old, "OLD", f.oldTableFlag, f.oldTable, f.key, false)
		if err != nil {
			return 0, 0, false, err
		}
		return keyBounds(ctx, old, "OLD", ot, f.key)
	})
	if err != nil {
		return exitError, err
	}
	if !ok {
		span = coldsweep.Span{}
	}
	tr, err := newTracker(ctx, rdb, f.table, f.prefix, f.segmentBits, nil)
	if err != nil {
		return exitError, err
	}
	st, err := readStatus(ctx, rdb, tr, f, span)
	if err != nil {
		return exitError, err
	}
	if f.json {
		return exitOK, writeJSON(c.stdout, st)
	}
	writeStatus(c, st)
	return exitOK, nil
}

func (f *statusFlags) check() error {
	if err := f.tableFlags.check(); err != nil {
		return err
	}
	if err := f.rangeFlags.check(); err != nil {
		return err
	}
	switch {
	case f.cells < 1 || f.cells > coldsweep.MaxHeatmapCells:
		return flagError("cells", f.cells, "must be between 1 and %d", coldsweep.MaxHeatmapCells)
	case f.stale <= 0:
		return flagError("stale-after", f.stale, "must be positive")
	}
	if err := checkPrefix(f.prefix); err != nil {
		return err
	}
	return checkSegmentBits(f.segmentBits)
}

// statusJSON is the status, as --json prints it.
type statusJSON struct {
	Table       string    `json:"table"`
	Range       *keyRange `json:"range"` // null: no key
	TotalKeys   int64     `json:"total_keys"`
	SettledKeys int64     `json:"settled_keys"`
	Percent     float64   `json:"percent"`
	Paused      bool      `json:"paused"`
	// ReadMode is the read policy set for the table under the same prefix
	// ('sweeper mode'): "" while none is set, "invalid" for a value that
	// is no policy.
	ReadMode   string                 `json:"read_mode"`
	KeysPerSec float64                `json:"keys_per_sec"` // of the running sweeps
	RowsPerSec float64                `json:"rows_per_sec"`
	Shards     []shardJSON            `json:"shards"`
	Heatmap    heatmapJSON            `json:"heatmap"`
	now        time.Time              // when it was read
	sweep      coldsweep.SweepSummary // for the text output
	progress   []shardState
}

type shardJSON struct {
	Shard        string    `json:"shard"`
	State        string    `json:"state"`
	Chunks       int64     `json:"chunks"`
	ChunksDone   int64     `json:"chunks_done"`
	ChunksFailed int64     `json:"chunks_failed"`
	Percent      float64   `json:"percent"`
	KeysPerSec   float64   `json:"keys_per_sec"`
	RowsPerSec   float64   `json:"rows_per_sec"`
	ETASeconds   float64   `json:"eta_seconds"`
	Throttled    string    `json:"throttled,omitempty"`
	Updated      time.Time `json:"updated"`
}

type heatmapJSON struct {
	// CellKeys is the number of keys per cell (some cells hold one more,
	// spread over the range); Cells the settled fraction of each, from the
	// range's start.
	CellKeys int64     `json:"cell_keys"`
	Cells    []float64 `json:"cells"`
	Text     string    `json:"text"`
}

type shardState struct {
	coldsweep.Progress
	state coldsweep.SweepState
}

// shardStateName is a shard's state as status prints it: running, held,
// stale, stopped, failed (finished, but NEW refused rows of some chunks)
// or done.
func shardStateName(s shardState) string {
	switch s.state {
	case coldsweep.SweepStalled:
		return "stale"
	case coldsweep.SweepFinished:
		if s.ChunksFailed > 0 {
			return "failed"
		}
		return "done"
	}
	return string(s.state)
}

func readStatus(ctx context.Context, rdb redis.UniversalClient, tr *tracker.Tracker, f statusFlags, span coldsweep.Span) (*statusJSON, error) {
	st := &statusJSON{Table: f.table, Range: jsonRange(span), TotalKeys: max(span.Len(), 0), now: time.Now(), Shards: []shardJSON{}}
	// The heatmap's cells partition the range; their counts add up to the
	// settled keys.
	cells, err := coldsweep.Heatmap(ctx, tr, span, f.cells)
	if err != nil {
		return nil, err
	}
	st.Heatmap.Cells = make([]float64, 0, len(cells))
	if len(cells) > 0 {
		st.Heatmap.CellKeys = st.TotalKeys / int64(len(cells))
	}
	var text strings.Builder
	for _, c := range cells {
		st.SettledKeys += c.Settled
		frac := c.Fraction()
		st.Heatmap.Cells = append(st.Heatmap.Cells, frac)
		switch {
		case c.Settled == 0:
			text.WriteString(cellEmpty)
		case c.Settled == c.Len():
			text.WriteString(cellFull)
		default:
			text.WriteString(cellParts[min(int(frac*float64(len(cellParts))), len(cellParts)-1)])
		}
	}
	st.Heatmap.Text = text.String()
	st.Percent = 100
	if st.TotalKeys > 0 {
		st.Percent = 100 * float64(st.SettledKeys) / float64(st.TotalKeys)
	}

	if st.Paused, err = coldsweep.IsPaused(ctx, rdb, f.prefix, f.table); err != nil {
		return nil, err
	}
	switch p, err := readPolicy(ctx, rdb, f.prefix+":mode:"+f.table); {
	case errors.Is(err, fallback.ErrInvalidMode):
		st.ReadMode = "invalid"
	case err != nil:
		return nil, err
	case p != nil:
		st.ReadMode = p.String()
	}
	progress, err := coldsweep.LoadProgress(ctx, rdb, f.prefix, f.table)
	if err != nil {
		return nil, err
	}
	st.sweep = coldsweep.SummarizeSweep(progress, st.now, f.stale)
	st.KeysPerSec, st.RowsPerSec = st.sweep.KeysPerSec, st.sweep.RowsPerSec
	for _, p := range progress {
		s := shardState{p, p.State(st.now, f.stale)}
		st.progress = append(st.progress, s)
		st.Shards = append(st.Shards, shardJSON{
			Shard: p.Shard, State: shardStateName(s), Chunks: p.Chunks, ChunksDone: p.ChunksDone, ChunksFailed: p.ChunksFailed,
			Percent: 100 * p.Fraction(), KeysPerSec: p.KeysPerSec, RowsPerSec: p.RowsPerSec, ETASeconds: p.ETA.Seconds(),
			Throttled: p.Throttled, Updated: p.Updated,
		})
	}
	return st, nil
}

func writeStatus(c *cli, st *statusJSON) {
	var b strings.Builder
	row := func(name, format string, args ...any) {
		fmt.Fprintf(&b, "%-10s %s\n", name, fmt.Sprintf(format, args...))
	}
	rng := "no key (OLD's table is empty, or holds none in the range given)"
	if st.Range != nil {
		rng = fmt.Sprintf("keys %s..%s", human(st.Range.From), human(st.Range.To))
	}
	row("table", "%s, %s", st.Table, rng)
	row("settled", "%s of %s keys (%s)", human(st.SettledKeys), human(st.TotalKeys), percent(st.Percent/100))
	paused := "no"
	if st.Paused {
		paused = "yes: sweepers hold until 'sweeper resume'"
	}
	row("paused", "%s", paused)
	switch st.ReadMode {
	case "":
		row("read mode", "not set: each process serves its fallback.Config.Default")
	case "invalid":
		row("read mode", "an invalid value: processes keep their last mode ('sweeper mode' shows it)")
	default:
		row("read mode", "%s", st.ReadMode)
	}
	switch {
	case st.sweep.Shards == 0:
		row("sweep", "none has reported to this Redis and prefix")
	case st.sweep.Live > 0:
		row("sweep", "%d of %d shards running: %s keys/s, %s rows/s", st.sweep.Live, st.sweep.Shards,
			humanRate(st.KeysPerSec), humanRate(st.RowsPerSec))
	default:
		row("sweep", "not running")
	}
	for _, s := range st.progress {
		line := fmt.Sprintf("shard %s: %s, %s/%s chunks (%s)", s.Shard, shardStateName(s), human(s.ChunksDone), human(s.Chunks), percent(s.Fraction()))
		if s.state.Live() {
			line += fmt.Sprintf(", %s keys/s", humanRate(s.KeysPerSec))
			if s.ETA > 0 {
				line += ", ETA " + etaString(s.ETA)
			}
		}
		if s.Throttled != "" && s.state == coldsweep.SweepHeld {
			line += ", held: " + s.Throttled
		}
		if s.ChunksFailed > 0 {
			line += fmt.Sprintf(", %s chunks failed", human(s.ChunksFailed))
		}
		line += ", updated " + humanDuration(st.now.Sub(s.Updated).Round(time.Second)) + " ago"
		row("", "%s", line)
	}
	if st.Range != nil {
		row("heatmap", "%s cells of %s keys from key %s (%s all settled, %s none)",
			human(int64(len(st.Heatmap.Cells))), human(st.Heatmap.CellKeys), human(st.Range.From), cellFull, cellEmpty)
		row("", "%s", st.Heatmap.Text)
	}
	_, _ = fmt.Fprint(c.stdout, b.String())
}
