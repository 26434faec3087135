package coldsweep_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/lazymigrate/lazymigrate/coldsweep"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/promote"
	"github.com/lazymigrate/lazymigrate/tracker"
)

// BenchmarkSweep measures, interleaved in each iteration on one table
// (LM_BENCH_SWEEP_ROWS rows, 400k by default):
//
//   - raw: a binary COPY pipe of the whole table from OLD into an empty NEW,
//     the baseline;
//   - empty: a sweep into an empty NEW (target: at least 0.7x raw's rows/s);
//   - settled90: sweeps with 90% of the keys settled and in NEW (target: at
//     most 0.2x empty's time): scattered90 misses every tenth key, the
//     worst spread, where each row NEW takes lands in the middle of its
//     index; resumed90 misses the last tenth of the range, as when a sweep
//     stopped at 90% is started again;
//   - verify: Verify of the identical tables (target: at least 0.5x empty's
//     rows/s).
//
// Each iteration starts from a truncated, checkpointed NEW, so every copy
// pays the same writes.
func BenchmarkSweep(b *testing.B) {
	rows := int64(400_000)
	if s := os.Getenv("LM_BENCH_SWEEP_ROWS"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 1000 {
			b.Fatalf("LM_BENCH_SWEEP_ROWS=%q: want an integer >= 1000", s)
		}
		rows = n
	}
	ctx := context.Background()
	p := testenv.NewPair(b)
	testenv.SeedAccounts(b, p.Old, 1, rows+1)
	p.Old.Exec(b, `VACUUM ANALYZE accounts`)
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		b.Fatal(err)
	}
	rdb, prefix := testenv.Redis(b)
	tr, err := tracker.New(rdb, "accounts", &tracker.Config{Prefix: prefix})
	if err != nil {
		b.Fatal(err)
	}
	cp, err := promote.NewCopier(ctx, p.Old.Pool, p.New.Pool, &promote.CopierConfig{Table: "accounts", Marker: tr})
	if err != nil {
		b.Fatal(err)
	}
	sweep := func() time.Duration {
		s, err := coldsweep.New(&coldsweep.Config{Copier: cp, Tracker: tr})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		sum, err := s.Run(ctx)
		if err != nil {
			b.Fatal(err)
		}
		took := time.Since(start)
		if sum.ChunksDone != sum.Chunks {
			b.Fatalf("sweep: %+v", sum.Progress)
		}
		return took
	}
	fresh := func() {
		p.New.Exec(b, `TRUNCATE accounts`)
		p.New.Exec(b, `CHECKPOINT`)
		if err := tr.Reset(ctx); err != nil {
			b.Fatal(err)
		}
	}
	var nineTenths []int64
	for k := int64(1); k <= rows; k++ {
		if k%10 != 0 {
			nineTenths = append(nineTenths, k)
		}
	}
	// settle puts the rows source selects into NEW and marks keys settled,
	// as reads or an earlier sweep would have.
	settle := func(source string, mark func() error) {
		fresh()
		if _, err := rawCopyOf(ctx, p.Old.Pool, p.New.Pool, source, "accounts"); err != nil {
			b.Fatal(err)
		}
		p.New.Exec(b, `CHECKPOINT`)
		if err := mark(); err != nil {
			b.Fatal(err)
		}
	}

	var raw, empty, settled90, resumed90, verify []time.Duration
	b.ResetTimer()
	for range b.N {
		fresh()
		start := time.Now()
		if n, err := rawCopy(ctx, p.Old.Pool, p.New.Pool, "accounts"); err != nil || n != rows {
			b.Fatalf("raw COPY: %d rows, %v", n, err)
		}
		raw = append(raw, time.Since(start))

		fresh()
		empty = append(empty, sweep())

		start = time.Now()
		rep, err := coldsweep.Verify(ctx, p.Old.Pool, p.New.Pool, &coldsweep.VerifyConfig{Table: "accounts"})
		if err != nil || !rep.Equal() || rep.RowsNew != rows {
			b.Fatalf("Verify = %+v, %v", rep, err)
		}
		verify = append(verify, time.Since(start))

		// Keys promoted by reads reach NEW in no order, each appended to
		// the heap; so here the 90% are appended, and the tenth left.
		settle(`(SELECT * FROM accounts WHERE id % 10 <> 0)`, func() error {
			for part := range slices.Chunk(nineTenths, 100_000) {
				if _, err := tr.Mark(ctx, part); err != nil {
					return err
				}
			}
			return nil
		})
		settled90 = append(settled90, sweep())

		// A sweep stopped at 90% and started again.
		settle(fmt.Sprintf(`(SELECT * FROM accounts WHERE id <= %d)`, rows*9/10), func() error {
			return tr.MarkRange(ctx, 1, rows*9/10+1)
		})
		resumed90 = append(resumed90, sweep())
	}
	b.StopTimer()

	perSec := func(d time.Duration) float64 { return float64(rows) / d.Seconds() }
	rawM, emptyM, s90M, r90M, verM := median(raw), median(empty), median(settled90), median(resumed90), median(verify)
	b.ReportMetric(perSec(rawM), "raw-rows/s")
	b.ReportMetric(perSec(emptyM), "sweep-rows/s")
	b.ReportMetric(perSec(emptyM)/perSec(rawM), "sweep/raw")
	b.ReportMetric(s90M.Seconds()/emptyM.Seconds(), "scattered90/empty-time")
	b.ReportMetric(r90M.Seconds()/emptyM.Seconds(), "resumed90/empty-time")
	b.ReportMetric(perSec(verM)/perSec(emptyM), "verify/sweep")
	b.ReportMetric(0, "ns/op")
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
