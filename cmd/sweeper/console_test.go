package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/lazymigrate/lazymigrate/coldsweep"
	"github.com/lazymigrate/lazymigrate/promote"
)

// TestProgressBar draws the bar as on a terminal: redrawn in place, and
// moved below each log line.
func TestProgressBar(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	c := &cli{con: &console{w: &out, tty: true}}
	r := newSweepReporter(c, progressFlags{mode: progressBar, every: time.Second}, 1000)
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
// the previous line.
func TestPlainProgress(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	c := &cli{con: &console{w: &out}}
	r := newSweepReporter(c, progressFlags{mode: progressPlain, every: 10 * time.Second}, 1000)
	p := coldsweep.Progress{Table: "accounts", Shard: "0/1", Chunks: 100, ChunksDone: 20, Keys: 20_000,
		Rows: promote.Result{Copied: 15_000}, Elapsed: 5 * time.Second}
	r.update(p) // before the first interval: nothing
	p.Elapsed, p.ChunksDone, p.Keys, p.Rows.Copied = 10*time.Second, 40, 40_000, 30_000
	r.update(p)
	p.Elapsed, p.ChunksDone, p.Keys, p.Rows.Copied = 20*time.Second, 50, 50_000, 30_000
	r.update(p)
	want := "progress: accounts: 40/100 chunks (40.0%), 40,000 keys, 30,000 rows copied, 3.0k rows/s, 4.0k keys/s, ETA 15s, elapsed 10s\n" +
		"progress: accounts: 50/100 chunks (50.0%), 50,000 keys, 30,000 rows copied, 0 rows/s, 1.0k keys/s, ETA 50s, elapsed 20s\n"
	if out.String() != want {
		t.Errorf("plain progress:\n got %q\nwant %q", out.String(), want)
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
