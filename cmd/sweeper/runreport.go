package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/lazymigrate/lazymigrate/coldsweep"
)

// sweepReporter shows a sweep's progress on stderr: a bar on a terminal,
// or a line every interval.
type sweepReporter struct {
	c     *cli
	mode  string
	every time.Duration

	// At the last plain line.
	lastElapsed        time.Duration
	lastKeys, lastRows int64
}

func newSweepReporter(c *cli, p progressFlags) *sweepReporter {
	return &sweepReporter{c: c, mode: p.mode, every: p.every}
}

// update is coldsweep's Config.Progress: called from one goroutine.
func (r *sweepReporter) update(p coldsweep.Progress) {
	switch {
	case r.mode == progressBar && p.Finished:
		r.c.con.clearBar()
	case r.mode == progressBar:
		r.c.con.setBar(r.barLine(p, barWidth(r.c.con.columns())))
	case r.mode == progressPlain && !p.Finished && p.Elapsed-r.lastElapsed >= r.every-slack(r.every):
		r.c.con.line(r.plainLine(p))
	}
}

// slack lets a plain line come a little early rather than a whole progress
// interval late, when the progress ticks slightly before the interval ends.
func slack(every time.Duration) time.Duration { return min(every, time.Second) / 4 }

// etaString formats a time left, in whole seconds.
func etaString(d time.Duration) string {
	if d < time.Second {
		return "<1s"
	}
	return humanDuration(d.Round(time.Second))
}

// done removes the bar, if one is left.
func (r *sweepReporter) done() { r.c.con.clearBar() }

func sweepName(p coldsweep.Progress) string {
	if p.Shard != "" && p.Shard != "0/1" {
		return p.Table + " shard " + p.Shard
	}
	return p.Table
}

// barLine is the bar of p, fit to width columns. What does not fit goes,
// in this order: the rows/s, the reason the sweep is held ("held" stays),
// the chunk counts, the keys/s; the bar shrinks to fit meanwhile, and what
// still does not fit is cut.
func (r *sweepReporter) barLine(p coldsweep.Progress, width int) string {
	eta := "?"
	if p.ETA > 0 {
		eta = etaString(p.ETA)
	}
	pct := fmt.Sprintf(" %6s", percent(p.Fraction()))
	chunks := fmt.Sprintf("  %s/%s chunks", human(p.ChunksDone), human(p.Chunks))
	rows := "  " + humanRate(p.RowsPerSec) + " rows/s"
	keys := "  " + humanRate(p.KeysPerSec) + " keys/s"
	tail := "  ETA " + eta
	held, shortHeld := "", ""
	if p.Throttled != "" {
		held, shortHeld = "  held: "+p.Throttled, "  held"
	}
	return fitBar(width, sweepName(p)+" ", p.Fraction(),
		pct+chunks+rows+keys+tail+held,
		pct+chunks+keys+tail+held,
		pct+chunks+keys+tail+shortHeld,
		pct+keys+tail+shortHeld,
		pct+tail+shortHeld)
}

// Cells of a progress bar: up to maxBarCells, fewer when the terminal is
// narrow, but not fewer than minBarCells.
const (
	maxBarCells = 24
	minBarCells = 8
)

// fitBar returns head, a bar of fraction f, and the first of tails, from
// the longest to the shortest, with which the line fits width columns,
// shrinking the bar if need be. When none fits, the bar goes, then the
// line is cut to width.
func fitBar(width int, head string, f float64, tails ...string) string {
	headCols := utf8.RuneCountInString(head)
	for _, tail := range tails {
		cells := min(maxBarCells, width-headCols-utf8.RuneCountInString(tail)-2) // 2: the brackets
		if cells >= minBarCells {
			return head + bar(f, cells) + tail
		}
	}
	return fitLine(strings.TrimSuffix(head, " ")+tails[len(tails)-1], width)
}

// plainLine measures the rates since the previous line, which is steadier
// than the last second the bar shows.
func (r *sweepReporter) plainLine(p coldsweep.Progress) string {
	dt := (p.Elapsed - r.lastElapsed).Seconds()
	keysPerSec := float64(p.Keys-r.lastKeys) / dt
	rowsPerSec := float64(int64(p.Rows.Copied)-r.lastRows) / dt
	r.lastElapsed, r.lastKeys, r.lastRows = p.Elapsed, p.Keys, int64(p.Rows.Copied)
	// coldsweep's estimate counts the chunks left at copy speed: the rate
	// above includes chunks skipped at Redis speed.
	eta := "?"
	if p.ETA > 0 {
		eta = etaString(p.ETA)
	}
	s := fmt.Sprintf("progress: %s: %s/%s chunks (%s), %s keys, %s rows copied, %s rows/s, %s keys/s, ETA %s, elapsed %s",
		sweepName(p), human(p.ChunksDone), human(p.Chunks), percent(p.Fraction()), human(p.Keys), human(int64(p.Rows.Copied)),
		humanRate(rowsPerSec), humanRate(keysPerSec), eta, humanDuration(p.Elapsed))
	if p.Throttled != "" {
		s += ", held: " + p.Throttled
	}
	return s
}

// Outcomes of a run, as the JSON summary names them.
const (
	outcomeDone         = "done"
	outcomeInterrupted  = "interrupted"
	outcomeChunksFailed = "chunks_failed"
	outcomeError        = "error"
)

func outcome(code int) string {
	switch code {
	case exitOK:
		return outcomeDone
	case exitInterrupted:
		return outcomeInterrupted
	case exitDifferent:
		return outcomeChunksFailed
	}
	return outcomeError
}

// keyRange is an inclusive key range in JSON.
type keyRange struct {
	From int64 `json:"from"`
	To   int64 `json:"to"`
}

func jsonRange(s coldsweep.Span) *keyRange {
	if s.Len() <= 0 {
		return nil
	}
	return &keyRange{s.Lo, s.Hi - 1}
}

// runJSON is run's summary with --json.
type runJSON struct {
	Table         string    `json:"table"`
	Shard         string    `json:"shard"`
	Range         *keyRange `json:"range"` // null: nothing to sweep
	Outcome       string    `json:"outcome"`
	Error         string    `json:"error,omitempty"`
	Chunks        int64     `json:"chunks"`
	ChunksDone    int64     `json:"chunks_done"`
	ChunksSkipped int64     `json:"chunks_skipped"`
	ChunksFailed  int64     `json:"chunks_failed"`
	Keys          int64     `json:"keys"`
	Rows          struct {
		Copied     int `json:"copied"`
		Present    int `json:"present"`
		Tombstoned int `json:"tombstoned"`
		Absent     int `json:"absent"`
	} `json:"rows"`
	KeysPerSec       float64           `json:"keys_per_sec"`
	RowsPerSec       float64           `json:"rows_per_sec"`
	ElapsedSeconds   float64           `json:"elapsed_seconds"`
	ThrottledSeconds float64           `json:"throttled_seconds"`
	Failed           []failedChunkJSON `json:"failed,omitempty"`
}

type failedChunkJSON struct {
	From  int64  `json:"from"`
	To    int64  `json:"to"`
	Error string `json:"error"`
}

// printSummary writes the sweep's summary on stdout, as text or JSON.
func (c *cli) printSummary(sum *coldsweep.Summary, code int, runErr error, asJSON bool) error {
	if asJSON {
		out := runJSON{
			Table: sum.Table, Shard: sum.Shard, Range: jsonRange(sum.Range), Outcome: outcome(code),
			Chunks: sum.Chunks, ChunksDone: sum.ChunksDone, ChunksSkipped: sum.ChunksSkipped, ChunksFailed: sum.ChunksFailed,
			Keys: sum.Keys, KeysPerSec: sum.KeysPerSec, RowsPerSec: sum.RowsPerSec,
			ElapsedSeconds: sum.Elapsed.Seconds(), ThrottledSeconds: sum.ThrottledFor.Seconds(),
		}
		if runErr != nil {
			out.Error = oneLine(runErr.Error())
		}
		out.Rows.Copied, out.Rows.Present, out.Rows.Tombstoned, out.Rows.Absent =
			sum.Rows.Copied, sum.Rows.Present, sum.Rows.Tombstoned, sum.Rows.Absent
		for _, f := range sum.Failed {
			out.Failed = append(out.Failed, failedChunkJSON{f.Span.Lo, f.Span.Hi - 1, oneLine(f.Err.Error())})
		}
		return writeJSON(c.stdout, out)
	}
	writeSummary(c.stdout, sum, code)
	return nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func writeSummary(w io.Writer, sum *coldsweep.Summary, code int) {
	head := fmt.Sprintf("sweep of %s, %s", sweepName(sum.Progress), inclusive(sum.Range))
	took := humanDuration(sum.Elapsed)
	switch code {
	case exitOK:
		head += ": done in " + took
	case exitInterrupted:
		head += fmt.Sprintf(": interrupted after %s, %s of %s chunks done; run it again to go on", took, human(sum.ChunksDone), human(sum.Chunks))
	case exitDifferent:
		head += fmt.Sprintf(": done in %s, but NEW refused rows of %s chunks; fix them and run again", took, human(sum.ChunksFailed))
	default:
		head += ": stopped by an error after " + took
	}
	var b strings.Builder
	b.WriteString(head + "\n")
	row := func(name, format string, args ...any) {
		fmt.Fprintf(&b, "  %-10s %s\n", name, fmt.Sprintf(format, args...))
	}
	copied := sum.ChunksDone - sum.ChunksSkipped - sum.ChunksFailed
	row("chunks", "%s of %s done: %s copied, %s already settled, %s failed",
		human(sum.ChunksDone), human(sum.Chunks), human(copied), human(sum.ChunksSkipped), human(sum.ChunksFailed))
	row("keys", "%s (%s keys/s)", human(sum.Keys), humanRate(sum.KeysPerSec))
	row("rows", "%s copied (%s rows/s), %s already in NEW, %s tombstoned, %s absent from OLD",
		human(int64(sum.Rows.Copied)), humanRate(sum.RowsPerSec), human(int64(sum.Rows.Present)),
		human(int64(sum.Rows.Tombstoned)), human(int64(sum.Rows.Absent)))
	row("held", "%s of worker time, by the throttle or a pause", humanDuration(sum.ThrottledFor))
	for _, f := range sum.Failed {
		row("failed", "%s: %s", inclusive(f.Span), oneLine(f.Err.Error()))
	}
	_, _ = io.WriteString(w, b.String())
}
