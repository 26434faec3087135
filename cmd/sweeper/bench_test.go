package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/promote"
)

// BenchmarkSweeperMemory runs the sweeper binary over a table of 1M rows
// and one of 10M (LM_BENCH_MEMORY_ROWS="small,large" to change them) and
// reports each run's peak resident set size. The target: the large run's
// peak within 1.2x the small one's, that is memory flat in table size.
// Seeding 10M rows and sweeping them takes a few minutes.
func BenchmarkSweeperMemory(b *testing.B) {
	sizes := []int64{1_000_000, 10_000_000}
	if s := os.Getenv("LM_BENCH_MEMORY_ROWS"); s != "" {
		sizes = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.ParseInt(f, 10, 64)
			if err != nil || n < 1 {
				b.Fatalf("LM_BENCH_MEMORY_ROWS=%q: want two row counts, e.g. 1000000,10000000", s)
			}
			sizes = append(sizes, n)
		}
		if len(sizes) != 2 {
			b.Fatalf("LM_BENCH_MEMORY_ROWS=%q: want two row counts", s)
		}
	}
	bin := binary(b)
	redisAddr := testenv.Require(b, "LM_REDIS_ADDR")
	var rss [2]float64
	for range b.N {
		for i, rows := range sizes {
			rss[i] = max(rss[i], sweepRSS(b, bin, redisAddr, rows))
		}
	}
	b.ReportMetric(rss[0]/(1<<20), "small-rss-MiB")
	b.ReportMetric(rss[1]/(1<<20), "large-rss-MiB")
	b.ReportMetric(rss[1]/rss[0], "large/small-rss")
	b.ReportMetric(0, "ns/op")
}

// sweepRSS seeds a fresh pair with rows accounts, sweeps it with the binary
// and returns the sweeper's peak RSS in bytes.
func sweepRSS(b *testing.B, bin, redisAddr string, rows int64) float64 {
	b.Helper()
	p := testenv.NewPair(b)
	testenv.SeedAccounts(b, p.Old, 1, rows+1)
	p.Old.Exec(b, `VACUUM ANALYZE accounts`)
	if err := promote.Setup(context.Background(), p.New.Pool); err != nil {
		b.Fatal(err)
	}
	_, prefix := testenv.Redis(b)
	cmd := exec.Command(bin, "run", "--old-dsn", p.Old.URL, "--new-dsn", p.New.URL, "--redis", redisAddr,
		"--prefix", prefix, "--table", "accounts", "--progress", "none", "--json")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("sweeper run over %d rows: %v\n%s\n%s", rows, err, out, stderr.String())
	}
	var sum struct {
		Rows struct{ Copied int64 } `json:"rows"`
	}
	if err := json.Unmarshal(out, &sum); err != nil || sum.Rows.Copied != rows {
		b.Fatalf("sweeper run over %d rows did not copy them all (%v):\n%s", rows, err, out)
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return float64(ru.Maxrss) * 1024 // kilobytes on Linux
}
