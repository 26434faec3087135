package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/lazymigrate/lazymigrate/coldsweep"
)

// chromium returns the path of a Chromium to drive: $LM_CHROMIUM, or the
// first of Debian's chromium (which `make services` installs) and its
// usual other names on PATH. Without one the test is skipped, or fails
// under LM_REQUIRE_INTEGRATION=1.
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("LM_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "the status page test needs Chromium: apt-get install -y chromium, or set LM_CHROMIUM"
	if os.Getenv("LM_REQUIRE_INTEGRATION") == "1" {
		t.Fatalf("%s; LM_REQUIRE_INTEGRATION=1 turns this skip into a failure", msg)
	}
	t.Skip(msg)
	return ""
}

// browser starts a headless Chromium for the test and returns a context
// whose chromedp actions run in one of its tabs.
func browser(t *testing.T) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.NoSandbox, // tests may run as root
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(1200, 1000),
	)
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(alloc)
	ctx, cancelTimeout := context.WithTimeout(ctx, 2*time.Minute)
	t.Cleanup(func() {
		cancelTimeout()
		cancelTab()
		cancelAlloc() // waits for the browser to exit
	})
	return ctx
}

// fullCells counts the heatmap's cells shaded as wholly settled.
const fullCells = `[...document.querySelectorAll("#heatmap-accounts .cell")].filter(c => c.style.getPropertyValue("--f").trim() === "1.000").length`

// The status page in a real browser: the percent and the heatmap are
// visible, they agree with status.json, and the page refreshes itself as
// keys settle. A screenshot is left for humans in $TMPDIR/lazymigrate-status.png
// (and in testdata/status.png with LM_UPDATE_SCREENSHOT=1).
func TestStatusPageInChromium(t *testing.T) {
	t.Parallel()
	ctx := browser(t)
	b := setup(t, 20_000, serveConfig{Worker: true}) // 200 cells of 100 keys
	m := b.srv.m

	// Settle the first quarter of the key space, as a sweep would, and a
	// scatter of hot keys, as reads do.
	if _, err := m.copier.CopyRange(ctx, 1, 5001); err != nil {
		t.Fatal(err)
	}
	keys := newKeys(loadConfig{Rows: 20_000, ZipfS: 1.1, ZipfV: 1, Seed: 1}, 0)
	hot := make([]int64, 1500)
	for i := range hot {
		hot[i] = keys.next()
	}
	if _, err := m.copier.CopyKeys(ctx, hot); err != nil {
		t.Fatal(err)
	}
	settledText := func() string {
		n, err := m.tracker.CountRange(ctx, 1, 20_001)
		if err != nil {
			t.Fatal(err)
		}
		return fmtPercent(100 * float64(n) / 20_000)
	}
	want := settledText()

	err := chromedp.Do(ctx,
		chromedp.Navigate(b.http.URL+"/status"),
		chromedp.WaitVisible(chromedp.ID("percent-accounts")),
		chromedp.WaitVisible(chromedp.CSS("#heatmap-accounts .cell")),
	)
	if err != nil {
		t.Fatal(err)
	}
	percent := run1(t, ctx, chromedp.Text(chromedp.ID("percent-accounts")))
	cells := run1(t, ctx, chromedp.Evaluate[int](`document.querySelectorAll("#heatmap-accounts .cell").length`))
	full := run1(t, ctx, chromedp.Evaluate[int](fullCells))
	width := run1(t, ctx, chromedp.Evaluate[float64](`document.getElementById("heatmap-accounts").getBoundingClientRect().width`))
	background := run1(t, ctx, chromedp.Evaluate[string](`getComputedStyle(document.querySelector("#heatmap-accounts .cell")).backgroundColor`))
	empty := run1(t, ctx, chromedp.Evaluate[string](`getComputedStyle(document.querySelector("#heatmap-accounts .cell:last-child")).backgroundColor`))
	if percent != want {
		t.Errorf("the page shows %q settled, want %q", percent, want)
	}
	if cells != 200 || full < 50 || width < 600 {
		t.Errorf("heatmap: %d cells, %d of them full, %.0fpx wide; want 200 cells, at least the 50 of keys 1-5000 full, most of the page wide",
			cells, full, width)
	}
	if background == empty {
		t.Errorf("a settled cell and an unsettled one have the same colour, %s", background)
	}

	// More keys settle; the page follows without a reload.
	if _, err := m.copier.CopyRange(ctx, 5001, 8001); err != nil {
		t.Fatal(err)
	}
	want = settledText()
	err = chromedp.Do(ctx, chromedp.Poll[chromedp.Void](
		fmt.Sprintf(`document.getElementById("percent-accounts").textContent === %q`, want),
		chromedp.WithPollingTimeout(15*time.Second)))
	if err != nil {
		t.Fatalf("the page did not come to show %s by itself: %v", want, err)
	}
	full = run1(t, ctx, chromedp.Evaluate[int](fullCells))
	if full < 80 {
		t.Errorf("after settling keys 1-8000 the heatmap has %d full cells, want at least 80", full)
	}

	// A live picture for the screenshot: a sweep under way, and reads.
	sw, err := coldsweep.New(&coldsweep.Config{
		Copier: m.copier, Tracker: m.tracker, Redis: b.rdb, Prefix: b.prefix,
		Chunk: 500, Workers: 1, Rate: 1500,
	})
	if err != nil {
		t.Fatal(err)
	}
	sweepCtx, stopSweep := context.WithCancel(ctx)
	swept := make(chan error, 1)
	go func() {
		_, err := sw.Run(sweepCtx)
		swept <- err
	}()
	loaded := make(chan error, 1)
	go func() {
		_, err := load(ctx, loadConfig{Addr: b.http.URL, Duration: 4 * time.Second, Rate: 200, Rows: 20_000, ZipfS: 1.1, ZipfV: 1, Seed: 2})
		loaded <- err
	}()
	err = chromedp.Do(ctx,
		chromedp.Poll[chromedp.Void](`document.getElementById("sweep-state-accounts").textContent === "running" &&
			document.getElementById("reads-rate-accounts").textContent !== "0.0"`,
			chromedp.WithPollingTimeout(15*time.Second)),
		chromedp.Sleep(1500*time.Millisecond), // rates over a couple of seconds
	)
	var shot []byte
	if err == nil {
		shot, err = chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG
	}
	stopSweep()
	if err := <-swept; err != nil && !strings.Contains(err.Error(), "interrupted") {
		t.Errorf("sweep: %v", err)
	}
	if err := <-loaded; err != nil {
		t.Errorf("load: %v", err)
	}
	if err != nil {
		t.Fatalf("the page did not show the sweep and the reads: %v", err)
	}

	// For humans: the picture of the page, outside the checkout so that a
	// test run leaves the tree clean; LM_UPDATE_SCREENSHOT=1 also refreshes
	// the one kept with the example.
	path := filepath.Join(os.TempDir(), "lazymigrate-status.png")
	if err := writeFileAtomic(path, shot); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
	if os.Getenv("LM_UPDATE_SCREENSHOT") == "1" {
		if err := writeFileAtomic(filepath.Join("testdata", "status.png"), shot); err != nil {
			t.Fatal(err)
		}
	}
}

// run1 runs one chromedp action and returns its value.
func run1[T any](t *testing.T, ctx context.Context, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// writeFileAtomic replaces path with data, never leaving half a file.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".status-*.png")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
