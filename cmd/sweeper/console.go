package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// console is stderr, shared by the logger and the progress display. On a
// terminal the progress is a bar redrawn in place on the last line; a log
// line first clears it, then the bar is drawn again below.
type console struct {
	mu  sync.Mutex
	w   io.Writer
	tty bool
	bar string // the bar on screen, "" when none
	// cols is the terminal's width; 0 asks the terminal at each redraw,
	// as the window may be resized (see columns).
	cols int
}

func newConsole(w io.Writer) *console {
	return &console{w: w, tty: isTerminal(w)}
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

const clearLine = "\r\x1b[K"

// Write writes log output (one record per call) above the bar.
func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bar != "" {
		_, _ = io.WriteString(c.w, clearLine)
	}
	n, err := c.w.Write(p)
	if c.bar != "" {
		_, _ = io.WriteString(c.w, c.bar)
	}
	return n, err
}

// line prints one line of progress, above the bar if there is one.
func (c *console) line(s string) { _, _ = c.Write([]byte(s + "\n")) }

// defaultColumns is the width assumed when the terminal's is unknown.
const defaultColumns = 80

// columns returns the terminal's width: the window's, else $COLUMNS, else
// 80 columns.
func (c *console) columns() int {
	if c.cols > 0 {
		return c.cols
	}
	if n, ok := terminalColumns(c.w); ok {
		return n
	}
	if n, err := strconv.Atoi(os.Getenv("COLUMNS")); err == nil && n > 0 {
		return n
	}
	return defaultColumns
}

// barWidth is the most a bar may take of a terminal cols wide: all but the
// last column, as a line that fills the row leaves some terminals on the
// next one.
func barWidth(cols int) int { return max(cols-1, 1) }

// fitLine cuts s to at most width columns, ending it with "…" when cut.
// Each rune takes a column: the progress is ASCII and block elements.
func fitLine(s string, width int) string {
	if utf8.RuneCountInString(s) <= width {
		return s
	}
	r := []rune(s)
	return string(r[:max(width-1, 0)]) + "…"
}

// setBar draws s in place of the bar. "\r\x1b[K" clears only the row the
// cursor is on, so s is cut to the terminal's width: a bar that wrapped
// would leave its head on screen at each redraw.
func (c *console) setBar(s string) {
	s = fitLine(s, barWidth(c.columns()))
	c.mu.Lock()
	defer c.mu.Unlock()
	_, _ = io.WriteString(c.w, clearLine+s)
	c.bar = s
}

// clearBar removes the bar.
func (c *console) clearBar() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bar != "" {
		_, _ = io.WriteString(c.w, clearLine)
		c.bar = ""
	}
}

// Progress display modes.
const (
	progressNone  = "none"
	progressBar   = "bar"
	progressPlain = "plain"
	progressAuto  = "auto"
)

// minInterval is the shortest --interval: run also saves its progress to
// Redis every --interval (at most every second).
const minInterval = 100 * time.Millisecond

// progressFlags choose how progress is shown on stderr.
type progressFlags struct {
	mode  string
	every time.Duration
}

func (c *cli) progressFlags(p *progressFlags) {
	c.stringFlag(&p.mode, "progress", progressAuto, "progress on stderr: `mode` bar (redrawn in place), plain (a line per --interval), none, or auto (bar on a terminal, else plain)")
	c.fs.DurationVar(&p.every, "interval", 0, "time between two progress lines, at least 100ms (default 10s; the bar is redrawn every second)")
}

// check resolves the mode: auto by the terminal, none under --quiet.
func (p *progressFlags) check(c *cli) error {
	switch p.mode {
	case progressAuto, progressBar, progressPlain, progressNone:
	default:
		return flagError("progress", p.mode, "want auto, bar, plain or none")
	}
	if p.every != 0 && p.every < minInterval {
		return flagError("interval", p.every, "must be at least %v", minInterval)
	}
	switch {
	case c.quiet:
		p.mode = progressNone
	case p.mode == progressAuto && c.con.tty:
		p.mode = progressBar
	case p.mode == progressAuto:
		p.mode = progressPlain
	}
	if p.every == 0 {
		p.every = 10 * time.Second
		if p.mode == progressBar {
			p.every = time.Second
		}
	}
	return nil
}

// bar draws a progress bar of width cells for fraction f.
func bar(f float64, width int) string {
	f = min(max(f, 0), 1)
	full := int(f * float64(width))
	if f < 1 && full == width {
		full--
	}
	return "[" + strings.Repeat("█", full) + strings.Repeat("░", width-full) + "]"
}

// percent formats a fraction as a percentage that reads 100% only when it
// is exactly 1.
func percent(f float64) string {
	p := math.Floor(f*1000) / 10
	return strconv.FormatFloat(p, 'f', 1, 64) + "%"
}

// human formats a count with thousands separators: 1,234,567.
func human(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// humanRate formats a per-second rate compactly: 950, 52.1k, 1.25M.
func humanRate(f float64) string {
	switch {
	case f >= 1e6:
		return fmt.Sprintf("%.2fM", f/1e6)
	case f >= 1e3:
		return fmt.Sprintf("%.1fk", f/1e3)
	default:
		return fmt.Sprintf("%.0f", f)
	}
}

// humanDuration formats d at a precision that suits its size.
func humanDuration(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	default:
		return d.Round(time.Minute).String()
	}
}
