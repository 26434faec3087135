package promote_test

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/promote"
	"github.com/lazymigrate/lazymigrate/tracker"
)

const (
	benchRows = 600_000
	// rawFrom splits the table: the pipeline promotes keys in [1, rawFrom],
	// the per-key baseline copies keys above it.
	rawFrom = benchRows - 100_000
)

// BenchmarkPromotion measures keys/s through the whole promotion pipeline,
// Schedule -> asynq -> Handler -> Copier -> NEW and tracker, until every
// key is settled, and, in the same run, a plain per-key copy loop (SELECT
// from OLD, INSERT ... ON CONFLICT DO NOTHING into NEW) over other keys.
//
// Pipeline promotes keys 1..N, so a task's keys share a few lock stripes;
// PipelineScattered promotes a random sample of the table, as reads would,
// so a 500-key task spans a dozen stripe groups (NEW transactions).
func BenchmarkPromotion(b *testing.B) {
	ctx := context.Background()
	p := testenv.NewPair(b)
	testenv.SeedAccounts(b, p.Old, 1, benchRows+1)
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
	h, err := promote.NewHandler([]*promote.Copier{cp}, &promote.HandlerConfig{
		Settled: map[string]promote.SettledChecker{"accounts": tr},
	})
	if err != nil {
		b.Fatal(err)
	}
	queue := "lmbench-" + testenv.Suffix()
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Queues: map[string]int{queue: 1}, Concurrency: 4,
		TaskCheckInterval: 5 * time.Millisecond, LogLevel: asynq.FatalLevel,
	})
	mux := asynq.NewServeMux()
	mux.Handle(promote.TaskType, h)
	if err := srv.Start(mux); err != nil {
		b.Fatal(err)
	}
	client := asynq.NewClientFromRedisClient(rdb)
	b.Cleanup(func() {
		srv.Shutdown()
		_ = asynq.NewInspectorFromRedisClient(rdb).DeleteQueue(queue, true)
	})

	const sel = `SELECT id, email, name, balance_cents, status, created_at, updated_at FROM accounts WHERE id = $1`
	const ins = `INSERT INTO accounts VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING`
	perKey := func(k int64) error {
		var id, bal int64
		var email, name, status string
		var created, updated time.Time
		if err := p.Old.Pool.QueryRow(ctx, sel, k).Scan(&id, &email, &name, &bal, &status, &created, &updated); err != nil {
			return err
		}
		_, err := p.New.Pool.Exec(ctx, ins, id, email, name, bal, status, created, updated)
		return err
	}

	run := func(b *testing.B, scattered bool) {
		if b.N >= rawFrom {
			b.Fatalf("b.N = %d needs more than the %d keys seeded for the pipeline; use a smaller -benchtime", b.N, rawFrom)
		}
		p.New.Exec(b, `TRUNCATE accounts`)
		if err := tr.Reset(ctx); err != nil {
			b.Fatal(err)
		}
		// A fresh enqueuer: an old one would rightly refuse keys it scheduled
		// within its dedupe window.
		enq, err := promote.NewEnqueuer(client, "accounts", &promote.EnqueuerConfig{Queue: queue, MaxPending: benchRows})
		if err != nil {
			b.Fatal(err)
		}
		if err := enq.Start(ctx); err != nil {
			b.Fatal(err)
		}
		defer enq.Stop()
		ks := make([]int64, b.N)
		if scattered {
			for i, k := range rand.Perm(rawFrom)[:b.N] {
				ks[i] = int64(k + 1)
			}
		} else {
			for i := range ks {
				ks[i] = int64(i + 1)
			}
		}

		b.ResetTimer()
		start := time.Now()
		enq.Schedule(ks...)
		for {
			n, err := tr.Count(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if n == int64(b.N) {
				break
			}
			if time.Since(start) > time.Minute {
				b.Fatalf("only %d of %d keys promoted after a minute", n, b.N)
			}
			time.Sleep(2 * time.Millisecond)
		}
		elapsed := time.Since(start)
		b.StopTimer()
		var inNew, same int64
		err = p.New.Pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE email = 'user'||id||'@example.com') FROM accounts`).Scan(&inNew, &same)
		if err != nil || inNew != int64(b.N) || same != inNew {
			b.Fatalf("NEW holds %d rows (%d as in OLD), want %d: %v", inNew, same, b.N, err)
		}

		rawN := min(max(200, b.N/20), 20_000)
		rawStart := time.Now()
		for i := range rawN {
			if err := perKey(int64(rawFrom + 1 + i)); err != nil {
				b.Fatal(err)
			}
		}
		rawElapsed := time.Since(rawStart)

		keysPerSec := float64(b.N) / elapsed.Seconds()
		rawPerSec := float64(rawN) / rawElapsed.Seconds()
		b.ReportMetric(keysPerSec, "keys/s")
		b.ReportMetric(rawPerSec, "raw-keys/s")
		b.ReportMetric(keysPerSec/rawPerSec, "speedup")
	}
	b.Run("Pipeline", func(b *testing.B) { run(b, false) })
	b.Run("PipelineScattered", func(b *testing.B) { run(b, true) })
}
