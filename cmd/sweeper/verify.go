package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/lazymigrate/lazymigrate/coldsweep"
)

const verifyHelp = `
Compares NEW's table with OLD's, chunk by chunk. Each chunk costs one scan
on each side that returns a row count and a checksum computed inside the
database; only chunks whose checksums differ are compared key by key, and
their suspect keys are read again after --recheck-after so that writes in
flight are not reported. It lists the keys that are:

  missing      in OLD and not in NEW (not swept yet, or lost)
  different    on both sides with different values
  extra        in NEW only (written behind lazymigrate's back, or not mirrored)
  resurrected  deleted through lazymigrate yet back in NEW
  tombstoned   deleted through lazymigrate and still in OLD: expected, listed
               for information only

The range defaults to every key either side holds. Verify is meaningful
while writes are mirrored to OLD (the default) or stopped.

Exit codes: 0 NEW matches OLD; 1 they differ; 2 an error.`

type verifyFlags struct {
	conns
	tableFlags
	rangeFlags
	progressFlags
	columns   string
	chunk     int64
	workers   int
	maxListed int
	recheck   time.Duration
	json      bool
}

func cmdVerify(ctx context.Context, c *cli, args []string) (int, error) {
	var f verifyFlags
	c.flags("--table NAME [flags]", verifyHelp)
	c.oldFlag(&f.conns)
	c.newFlag(&f.conns)
	c.tableFlags(&f.tableFlags, true)
	c.rangeFlags(&f.rangeFlags, true)
	c.progressFlags(&f.progressFlags)
	c.stringFlag(&f.columns, "columns", "", "comma-separated `names` of the columns to compare (default: every NEW column OLD also has)")
	c.fs.Int64Var(&f.chunk, "chunk", 10_000, "`keys` checked at a time; a differing chunk's keys and row hashes are held in memory")
	c.fs.IntVar(&f.workers, "workers", 2, "`number` of chunks checked at once")
	c.fs.IntVar(&f.maxListed, "max-listed", 1000, "list at most this many `keys` of each kind (the counts are exact)")
	c.fs.DurationVar(&f.recheck, "recheck-after", 100*time.Millisecond, "wait this long before reading suspect keys again")
	c.fs.BoolVar(&f.json, "json", false, "print the report as JSON on stdout")
	if err := c.parse(args); err != nil {
		return exitError, err
	}
	if err := f.check(c); err != nil {
		return exitError, err
	}

	conns := int32(f.workers) + 2
	old, err := c.openOld(ctx, f.conns, conns)
	if err != nil {
		return exitError, err
	}
	defer old.Close()
	nw, err := c.openNew(ctx, f.conns, conns)
	if err != nil {
		return exitError, err
	}
	defer nw.Close()
	nt, err := describe(ctx, nw, "NEW", "table", f.table, f.key, false)
	if err != nil {
		return exitError, err
	}
	ot, err := describe(ctx, old, "OLD", f.oldTableFlag, f.oldTable, f.key, false)
	if err != nil {
		return exitError, err
	}
	if err := checkSchema(ctx, nw); err != nil {
		return exitError, err
	}

	var span coldsweep.Span // zero: coldsweep takes both sides' keys
	if f.from.set || f.to.set {
		var ok bool
		span, ok, err = f.span(func() (lo, hi int64, ok bool, err error) {
			olo, ohi, ook, err := keyBounds(ctx, old, "OLD", ot, f.key)
			if err != nil {
				return 0, 0, false, err
			}
			nlo, nhi, nok, err := keyBounds(ctx, nw, "NEW", nt, f.key)
			switch {
			case err != nil:
				return 0, 0, false, err
			case ook && nok:
				return min(olo, nlo), max(ohi, nhi), true, nil
			case ook:
				return olo, ohi, true, nil
			}
			return nlo, nhi, nok, nil
		})
		if err != nil {
			return exitError, err
		}
		if !ok {
			rep := &coldsweep.Report{Table: f.table}
			return exitOK, c.printReport(rep, f.sh, f.json)
		}
	}

	var cols []string
	if f.columns != "" {
		for col := range strings.SplitSeq(f.columns, ",") {
			cols = append(cols, strings.TrimSpace(col))
		}
	}
	rep := newVerifyReporter(c, f.progressFlags)
	report, err := coldsweep.Verify(ctx, old, nw, &coldsweep.VerifyConfig{
		Table: f.table, OldTable: f.oldTable, KeyColumn: f.key, Columns: cols,
		Chunk: f.chunk, Workers: f.workers, Range: span, Shard: f.sh, MaxListed: f.maxListed,
		RecheckAfter: orOff(f.recheck), Logger: c.log, Progress: rep.update,
	})
	rep.done()
	if err != nil {
		return exitError, err
	}
	if err := c.printReport(report, f.sh, f.json); err != nil {
		return exitError, err
	}
	if !report.Equal() {
		return exitDifferent, nil
	}
	return exitOK, nil
}

func (f *verifyFlags) check(c *cli) error {
	if err := f.tableFlags.check(); err != nil {
		return err
	}
	if err := f.rangeFlags.check(); err != nil {
		return err
	}
	switch {
	case f.chunk < 1:
		return flagError("chunk", f.chunk, "must be at least 1")
	case f.workers < 1 || f.workers > maxWorkers:
		return flagError("workers", f.workers, "must be between 1 and %d", maxWorkers)
	case f.maxListed < 1:
		return flagError("max-listed", f.maxListed, "must be at least 1")
	case f.recheck < 0:
		return flagError("recheck-after", f.recheck, "must not be negative (0 rechecks at once)")
	}
	if f.columns != "" {
		for col := range strings.SplitSeq(f.columns, ",") {
			if strings.TrimSpace(col) == "" {
				return flagError("columns", f.columns, "an empty column name")
			}
		}
	}
	return f.progressFlags.check(c)
}

// verifyReporter shows verify's progress on stderr. Verify's workers wait
// for it, after every chunk: it draws at most once per interval, like run's.
type verifyReporter struct {
	c           *cli
	mode        string
	every       time.Duration
	drawn       bool          // whether the bar was drawn yet
	lastElapsed time.Duration // at the last bar or line
}

func newVerifyReporter(c *cli, p progressFlags) *verifyReporter {
	return &verifyReporter{c: c, mode: p.mode, every: p.every}
}

// update is VerifyConfig.Progress: never called twice at once.
func (r *verifyReporter) update(p coldsweep.VerifyProgress) {
	frac := 1.0
	if p.Chunks > 0 {
		frac = float64(p.ChunksDone) / float64(p.Chunks)
	}
	due := p.Elapsed-r.lastElapsed >= r.every-slack(r.every)
	switch {
	case r.mode == progressBar && (due || !r.drawn):
		r.drawn, r.lastElapsed = true, p.Elapsed
		pct := fmt.Sprintf(" %6s", percent(frac))
		counts := fmt.Sprintf("  %s/%s chunks", human(p.ChunksDone), human(p.Chunks))
		differing := fmt.Sprintf("  %s differing", human(p.DifferingChunks))
		keys := fmt.Sprintf("  %s keys differ", human(p.Differences))
		r.c.con.setBar(fitBar(barWidth(r.c.con.columns()), "verify "+p.Table+" ", frac,
			pct+counts+differing+keys, pct+counts+keys, pct+keys))
	case r.mode == progressPlain && due:
		r.lastElapsed = p.Elapsed
		r.c.con.line(fmt.Sprintf("progress: verify %s: %s/%s chunks (%s), %s differing, %s keys differ, elapsed %s",
			p.Table, human(p.ChunksDone), human(p.Chunks), percent(frac), human(p.DifferingChunks), human(p.Differences),
			humanDuration(p.Elapsed)))
	}
}

func (r *verifyReporter) done() { r.c.con.clearBar() }

// keysJSON is one kind of key of the report.
type keysJSON struct {
	Count int64   `json:"count"`
	Keys  []int64 `json:"keys"`
}

func listJSON(count int64, ks []int64) keysJSON {
	if ks == nil {
		ks = []int64{}
	}
	return keysJSON{count, ks}
}

type verifyJSON struct {
	Table           string    `json:"table"`
	Range           *keyRange `json:"range"`
	Shard           string    `json:"shard"`
	Equal           bool      `json:"equal"`
	Chunks          int64     `json:"chunks"`
	DifferingChunks int64     `json:"differing_chunks"`
	RowsOld         int64     `json:"rows_old"`
	RowsNew         int64     `json:"rows_new"`
	Missing         keysJSON  `json:"missing"`
	Different       keysJSON  `json:"different"`
	Extra           keysJSON  `json:"extra"`
	Resurrected     keysJSON  `json:"resurrected"`
	Tombstoned      keysJSON  `json:"tombstoned"`
	Closed          bool      `json:"closed"`
	DurationSeconds float64   `json:"duration_seconds"`
}

func (c *cli) printReport(r *coldsweep.Report, sh coldsweep.Shard, asJSON bool) error {
	if asJSON {
		return writeJSON(c.stdout, verifyJSON{
			Table: r.Table, Range: jsonRange(r.Range), Shard: sh.String(), Equal: r.Equal(),
			Chunks: r.Chunks, DifferingChunks: r.DifferingChunks, RowsOld: r.RowsOld, RowsNew: r.RowsNew,
			Missing:         listJSON(r.MissingCount, r.Missing),
			Different:       listJSON(r.DifferentCount, r.Different),
			Extra:           listJSON(r.ExtraCount, r.Extra),
			Resurrected:     listJSON(r.ResurrectedCount, r.Resurrected),
			Tombstoned:      listJSON(r.TombstonedCount, r.Tombstoned),
			Closed:          r.Closed,
			DurationSeconds: r.Duration.Seconds(),
		})
	}
	writeReport(c.stdout, r, sh)
	return nil
}

func writeReport(w io.Writer, r *coldsweep.Report, sh coldsweep.Shard) {
	var b strings.Builder
	name := r.Table
	if sh.N > 1 {
		name += " shard " + sh.String()
	}
	verdict := "NEW matches OLD"
	if !r.Equal() {
		verdict = "NEW differs from OLD"
	}
	fmt.Fprintf(&b, "verify of %s, %s: %s (%s chunks, %s differed, %s)\n", name, inclusive(r.Range), verdict,
		human(r.Chunks), human(r.DifferingChunks), humanDuration(r.Duration))
	fmt.Fprintf(&b, "  %-12s OLD %s (tombstoned keys included), NEW %s\n", "rows", human(r.RowsOld), human(r.RowsNew))
	for _, kind := range []struct {
		name  string
		count int64
		keys  []int64
		note  string
	}{
		{"missing", r.MissingCount, r.Missing, ""},
		{"different", r.DifferentCount, r.Different, ""},
		{"extra", r.ExtraCount, r.Extra, ""},
		{"resurrected", r.ResurrectedCount, r.Resurrected, ""},
		{"tombstoned", r.TombstonedCount, r.Tombstoned, " (deleted through lazymigrate: expected absent from NEW)"},
	} {
		fmt.Fprintf(&b, "  %-12s %s%s\n", kind.name, keyList(kind.count, kind.keys), kind.note)
	}
	if r.Closed {
		b.WriteString("  note: the migration of this table is closed and its tombstones purged; a key deleted\n" +
			"        through lazymigrate that OLD still holds now shows as missing\n")
	}
	_, _ = io.WriteString(w, b.String())
}

// keyList prints a count and the keys listed: "3: 7 14 21", with the
// number of keys not listed.
func keyList(count int64, ks []int64) string {
	if count == 0 {
		return "0"
	}
	parts := make([]string, len(ks))
	for i, k := range ks {
		parts[i] = strconv.FormatInt(k, 10)
	}
	s := human(count) + ": " + strings.Join(parts, " ")
	if more := count - int64(len(ks)); more > 0 {
		s += fmt.Sprintf(" … and %s more", human(more))
	}
	return s
}
