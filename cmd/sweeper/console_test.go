package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/lazymigrate/lazymigrate/coldsweep"
	"github.com/lazymigrate/lazymigrate/promote"
)

// TestProgressBar draws the bar as on a terminal: redrawn in place, and
// moved below each log line.
func TestProgressBar(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	c := &cli{con: &console{w: &out, tty: true, cols: 120}}
	r := newSweepReporter(c, progressFlags{mode: progressBar, every: time.Second})
	p := coldsweep.Progress{
		Table: "accounts", Shard: "1/4", Chunks: 40, ChunksDone: 10, Keys: 10_000,
		Rows: promote.Result{Copied: 8_000}, RowsPerSec: 52_100, KeysPerSec: 61_300, ETA: 12 * time.Second,
	}
	r.update(p)
	want := clearLine + "accounts shard 1/4 [██████░░░░░░░░░░░░░░░░░░]  25.0%  10/40 chunks  52.1k rows/s  61.3k keys/s  ETA 12s"
	if out.String() != want {
		t.Errorf("bar:\n got %q\nwant %q", out.String(), want)
	}
	out.Reset()
	c.con.line("a log line")
	if want := clearLine + "a log line\n" + strings.TrimPrefix(want, clearLine); out.String() != want {
		t.Errorf("log line under a bar:\n got %q\nwant %q", out.String(), want)
	}
	out.Reset()
	p.Throttled = "paused"
	r.update(p)
	if !strings.HasSuffix(out.String(), "ETA 12s  held: paused") {
		t.Errorf("held bar: %q", out.String())
	}
	out.Reset()
	p.Finished = true
	r.update(p)
	if out.String() != clearLine {
		t.Errorf("finished: the bar should be cleared: %q", out.String())
	}
}

// TestPlainProgress prints a line per interval with rates measured since
// the previous line, and the sweep's own ETA.
func TestPlainProgress(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	c := &cli{con: &console{w: &out}}
	r := newSweepReporter(c, progressFlags{mode: progressPlain, every: 10 * time.Second})
	p := coldsweep.Progress{Table: "accounts", Shard: "0/1", Chunks: 100, ChunksDone: 20, Keys: 20_000,
		Rows: promote.Result{Copied: 15_000}, Elapsed: 5 * time.Second}
	r.update(p) // before the first interval: nothing
	p.Elapsed, p.ChunksDone, p.Keys, p.Rows.Copied, p.ETA = 10*time.Second, 40, 40_000, 30_000, 15*time.Second
	r.update(p)
	p.Elapsed, p.ChunksDone, p.Keys, p.Rows.Copied, p.ETA = 20*time.Second, 50, 50_000, 30_000, 0
	r.update(p)
	want := "progress: accounts: 40/100 chunks (40.0%), 40,000 keys, 30,000 rows copied, 3.0k rows/s, 4.0k keys/s, ETA 15s, elapsed 10s\n" +
		"progress: accounts: 50/100 chunks (50.0%), 50,000 keys, 30,000 rows copied, 0 rows/s, 1.0k keys/s, ETA ?, elapsed 20s\n"
	if out.String() != want {
		t.Errorf("plain progress:\n got %q\nwant %q", out.String(), want)
	}
}

// The plain line's ETA is coldsweep's, which counts the chunks left at copy
// speed. The keys/s of the last interval would promise minutes for hours
// of copying while a resumed sweep skips its settled head at Redis speed.
func TestPlainProgressETACountsSkippedChunksApart(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	c := &cli{con: &console{w: &out}}
	r := newSweepReporter(c, progressFlags{mode: progressPlain, every: 10 * time.Second})
	// 10s in: 9,000 settled chunks of 10,000 keys skipped, 10 copied;
	// coldsweep estimates the 990 chunks left at copy speed: 16m.
	r.update(coldsweep.Progress{Table: "accounts", Shard: "0/1", Chunks: 10_000, ChunksDone: 9_010, ChunksSkipped: 9_000,
		Keys: 90_100_000, Rows: promote.Result{Copied: 100_000}, Elapsed: 10 * time.Second, ETA: 16 * time.Minute})
	if !strings.Contains(out.String(), ", ETA 16m0s,") {
		t.Errorf("plain ETA is not the sweep's estimate (16m):\n%s", out.String())
	}
}

// A bar wider than the terminal wraps, and "\r\x1b[K" clears only the row
// the cursor is on: each redraw would leave the head of the previous bar
// behind. The bar fits the terminal, dropping the rows/s and the reason
// of a hold first, and keeping the ETA and that the sweep is held.
func TestProgressBarFitsTheTerminal(t *testing.T) {
	t.Parallel()
	p := coldsweep.Progress{
		Table: "public.accounts", Shard: "3/16", Chunks: 100_000, ChunksDone: 45_321,
		Rows: promote.Result{Copied: 400_000_000}, RowsPerSec: 1_250_000, KeysPerSec: 1_300_000,
		ETA: 2*time.Hour + 13*time.Minute, Throttled: "NEW replication lag 12.345s > 10s",
	}
	for _, tc := range []struct {
		cols       int
		want, lose []string
	}{
		{200, []string{"45,321/100,000 chunks", "1.25M rows/s", "ETA 2h13m0s  held: NEW replication lag"}, nil},
		{140, []string{"45,321/100,000 chunks", "1.30M keys/s", "ETA 2h13m0s  held: NEW replication lag"}, []string{"rows/s"}},
		{120, []string{"45,321/100,000 chunks", "1.30M keys/s", "ETA 2h13m0s  held"}, []string{"rows/s", "replication lag"}},
		{80, []string{"45.3%", "ETA 2h13m0s  held"}, []string{"rows/s", "replication lag"}},
		{60, []string{"45.3%", "ETA 2h13m0s  held"}, []string{"rows/s", "keys/s", "replication lag"}},
		{56, []string{"45.3%", "ETA 2h13m0s  held"}, []string{"[", "rows/s", "keys/s", "replication lag"}},
		{30, []string{"public.accounts shard 3/16", "…"}, nil},
	} {
		var out bytes.Buffer
		c := &cli{con: &console{w: &out, tty: true, cols: tc.cols}}
		newSweepReporter(c, progressFlags{mode: progressBar, every: time.Second}).update(p)
		line := strings.TrimPrefix(out.String(), clearLine)
		if w := utf8.RuneCountInString(line); w >= tc.cols {
			t.Errorf("%d columns: the bar is %d columns wide; it would wrap:\n%s", tc.cols, w, line)
		}
		for _, want := range tc.want {
			if !strings.Contains(line, want) {
				t.Errorf("%d columns: the bar lacks %q:\n%s", tc.cols, want, line)
			}
		}
		for _, lose := range tc.lose {
			if strings.Contains(line, lose) {
				t.Errorf("%d columns: the bar still has %q:\n%s", tc.cols, lose, line)
			}
		}
	}
}

// A console that is not a terminal, or whose terminal does not tell its
// width, takes $COLUMNS, else 80.
func TestConsoleColumns(t *testing.T) { // not parallel: it sets $COLUMNS
	c := &console{w: &bytes.Buffer{}}
	t.Setenv("COLUMNS", "132")
	if n := c.columns(); n != 132 {
		t.Errorf("COLUMNS=132: %d columns", n)
	}
	t.Setenv("COLUMNS", "")
	if n := c.columns(); n != 80 {
		t.Errorf("no COLUMNS: %d columns, want 80", n)
	}
}

// verify's workers wait for its progress after every chunk: the bar is
// drawn at most once per --interval, not after each of hundreds of chunks
// a second (flicker, and verify bound to the speed of an SSH session).
func TestVerifyBarIsRateLimited(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	c := &cli{con: &console{w: &out, tty: true, cols: 120}}
	r := newVerifyReporter(c, progressFlags{mode: progressBar, every: time.Second})
	p := coldsweep.VerifyProgress{Table: "accounts", Chunks: 100_000}
	for i := range 1000 { // 1000 chunks checked within 100ms
		p.ChunksDone, p.Elapsed = int64(i+1), time.Duration(i)*100*time.Microsecond
		r.update(p)
	}
	if n := strings.Count(out.String(), clearLine); n != 1 {
		t.Errorf("the verify bar was drawn %d times in 100ms of work; want once per --interval (1s)", n)
	}
	p.ChunksDone, p.Elapsed = 5000, time.Second
	r.update(p)
	if n := strings.Count(out.String(), clearLine); n != 2 || !strings.HasSuffix(out.String(), "5,000/100,000 chunks  0 differing  0 keys differ") {
		t.Errorf("the bar is not redrawn after an interval:\n%q", out.String())
	}
}

func TestFormatting(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ got, want string }{
		{human(0), "0"},
		{human(999), "999"},
		{human(1000), "1,000"},
		{human(-1234567), "-1,234,567"},
		{percent(0.9999), "99.9%"},
		{percent(1), "100.0%"},
		{humanRate(950), "950"},
		{humanRate(52_149), "52.1k"},
		{humanRate(1_250_000), "1.25M"},
		{humanDuration(1500 * time.Millisecond), "1.5s"},
		{humanDuration(3*time.Hour + 4*time.Minute + 5*time.Second), "3h4m0s"},
		{inclusive(coldsweep.Span{Lo: 1, Hi: 20_001}), "keys 1..20,000"},
		{inclusive(coldsweep.Span{}), "no keys"},
		{oneLine("failed to connect:\n\thost: refused\n\thost: refused\n"), "failed to connect: host: refused; host: refused"},
		{bar(0.5, 4), "[██░░]"},
		{bar(0.99, 4), "[███░]"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

// FuzzRangeFlags feeds --from, --to and --shard values from outside: they
// are refused with an error or give a valid range and shard, never a panic.
func FuzzRangeFlags(f *testing.F) {
	f.Add("1", "100", "0/4")
	f.Add("10", "5", "")
	f.Add("-1", "9223372036854775807", "3/2")
	f.Add("0", "0", "1/1")
	f.Fuzz(func(t *testing.T, from, to, shard string) {
		c := &cli{name: "run", stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
		var r rangeFlags
		c.flags("", "")
		c.rangeFlags(&r, true)
		if err := c.parse([]string{"--from", from, "--to", to, "--shard", shard}); err != nil {
			return
		}
		if err := r.check(); err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error on several lines: %q", err)
			}
			return
		}
		span, ok, err := r.span(func() (int64, int64, bool, error) { panic("bounds read with both ends given") })
		if err != nil || !ok || span.Lo < 0 || span.Hi <= span.Lo || span.Lo != r.from.v || span.Hi-1 != r.to.v {
			t.Errorf("--from %q --to %q: span %v, %v, %v", from, to, span, ok, err)
		}
		if shard != "" && (r.sh.N < 1 || r.sh.I < 0 || r.sh.I >= r.sh.N) {
			t.Errorf("--shard %q accepted as %+v", shard, r.sh)
		}
	})
}
