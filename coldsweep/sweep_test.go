package coldsweep_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/coldsweep"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/lazy"
	"github.com/lazymigrate/lazymigrate/promote"
	"github.com/lazymigrate/lazymigrate/tracker"
)

type Account struct {
	ID           int64     `db:"id"`
	Email        string    `db:"email"`
	Name         string    `db:"name"`
	BalanceCents int64     `db:"balance_cents"`
	Status       string    `db:"status"`
	CreatedAt    time.Time `db:"created_at"`
	UpdatedAt    time.Time `db:"updated_at"`
}

// sweepBundle is a migration in progress: OLD seeded, NEW set up and empty,
// a tracker, a copier and a sweeper's config.
type sweepBundle struct {
	pair    *testenv.Pair
	rdb     *redis.Client
	prefix  string
	tracker *tracker.Tracker
	copier  *promote.Copier
	reg     *prometheus.Registry
}

// setupSweep seeds OLD with accounts [1, n] minus multiples of 7, as gaps.
func setupSweep(t *testing.T, n int64) *sweepBundle {
	t.Helper()
	ctx := context.Background()
	p := testenv.NewPair(t)
	testenv.SeedAccounts(t, p.Old, 1, n+1)
	p.Old.Exec(t, `DELETE FROM accounts WHERE id % 7 = 0`)
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		t.Fatal(err)
	}
	rdb, prefix := testenv.Redis(t)
	tr, err := tracker.New(rdb, "accounts", &tracker.Config{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	cp, err := promote.NewCopier(ctx, p.Old.Pool, p.New.Pool, &promote.CopierConfig{Table: "accounts", Marker: tr})
	if err != nil {
		t.Fatal(err)
	}
	return &sweepBundle{pair: p, rdb: rdb, prefix: prefix, tracker: tr, copier: cp, reg: prometheus.NewRegistry()}
}

func (b *sweepBundle) config(c coldsweep.Config) *coldsweep.Config {
	c.Copier, c.Tracker, c.Redis, c.Prefix, c.Registerer = b.copier, b.tracker, b.rdb, b.prefix, b.reg
	if c.Chunk == 0 {
		c.Chunk = 500
	}
	if c.Throttle == nil {
		// No latency signal: parallel tests under -race make SELECT 1 slow
		// at times, and a held sweep is tested on its own.
		c.Throttle = &coldsweep.ThrottleConfig{Old: b.pair.Old.Pool, New: b.pair.New.Pool, Interval: 20 * time.Millisecond, MaxLatency: -1}
	}
	return &c
}

func (b *sweepBundle) sweep(t *testing.T, c coldsweep.Config) *coldsweep.Summary {
	t.Helper()
	s, err := coldsweep.New(b.config(c))
	if err != nil {
		t.Fatal(err)
	}
	sum, err := s.Run(context.Background())
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return sum
}

func (b *sweepBundle) repo(t *testing.T) *lazy.Repo[Account] {
	t.Helper()
	repo, err := lazy.New(context.Background(), b.pair.Old.Pool, b.pair.New.Pool, &lazy.Config[Account]{
		Table: "accounts", Tracker: b.tracker, Copier: b.copier, RelayDelay: time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(repo.Close)
	return repo
}

// requireComplete checks invariant 5: verify finds no difference, the
// tracker counts the whole range settled, and no tombstoned key is in NEW.
func (b *sweepBundle) requireComplete(t *testing.T, span coldsweep.Span) {
	t.Helper()
	ctx := context.Background()
	rep := verify(t, b.pair.Old.Pool, b.pair.New.Pool, coldsweep.VerifyConfig{Chunk: 300})
	if !rep.Equal() {
		t.Fatalf("verify after the sweep: missing %v, different %v, extra %v, resurrected %v",
			rep.Missing, rep.Different, rep.Extra, rep.Resurrected)
	}
	n, err := b.tracker.CountRange(ctx, span.Lo, span.Hi)
	if err != nil {
		t.Fatal(err)
	}
	if n != span.Len() {
		t.Fatalf("tracker: %d of %d keys settled, want 100%%", n, span.Len())
	}
	var resurrected int
	if err := b.pair.New.Pool.QueryRow(ctx, `SELECT count(*) FROM accounts a JOIN lazymigrate.tombstones t
		ON t.table_name = 'public.accounts' AND t.key = a.id`).Scan(&resurrected); err != nil {
		t.Fatal(err)
	}
	if resurrected != 0 {
		t.Fatalf("%d tombstoned keys are in NEW", resurrected)
	}
}

func newAccount(id int64, name string) Account {
	ts := time.Date(2025, 1, 2, 3, 4, 5, 123456000, time.UTC)
	return Account{ID: id, Email: name + "@example.com", Name: name, BalanceCents: id, Status: "active", CreatedAt: ts, UpdatedAt: ts}
}

// Gaps in the ids, keys promoted by reads, keys deleted and keys rewritten
// through the library: after the sweep, verify is clean, the tracker says
// 100% and no tombstoned key is in NEW.
func TestSweepCompletesMigration(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupSweep(t, 3000)
	repo := b.repo(t)
	if _, err := b.copier.CopyKeys(ctx, []int64{5, 6, 1200, 2999}); err != nil { // promoted by reads
		t.Fatal(err)
	}
	for _, k := range []int64{8, 1201, 1500, 2000} {
		if err := repo.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []int64{9, 1202, 2998} {
		if _, err := repo.Put(ctx, k, newAccount(k, "rewritten")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := repo.Put(ctx, 3010, newAccount(3010, "new key past OLD's end")); err != nil {
		t.Fatal(err)
	}
	if _, err := repo.RelayOnce(ctx); err != nil {
		t.Fatal(err)
	}

	sum := b.sweep(t, coldsweep.Config{Workers: 3})
	if want := (coldsweep.Span{Lo: 1, Hi: 3011}); sum.Range != want {
		t.Fatalf("range = %v, want %v", sum.Range, want)
	}
	if sum.ChunksDone != sum.Chunks || sum.Chunks != 7 || sum.Finished != true {
		t.Fatalf("summary = %+v", sum.Progress)
	}
	// OLD: 3000 ids minus 428 multiples of 7, minus 4 deleted, plus 3010
	// (mirrored): 2569 rows, of which 4 promoted and 4 written were in NEW
	// before the sweep.
	if sum.Rows.Copied != 2569-8 {
		t.Fatalf("copied %d rows, want %d", sum.Rows.Copied, 2569-8)
	}
	b.requireComplete(t, sum.Range)
	if got := testenv.CounterValue(t, b.reg, "lazymigrate_sweep_rows_total", "outcome", "copied"); got != float64(sum.Rows.Copied) {
		t.Fatalf("sweep_rows_total{copied} = %v, want %d", got, sum.Rows.Copied)
	}

	// A second sweep finds everything settled and touches no database.
	again := b.sweep(t, coldsweep.Config{Workers: 3})
	if again.ChunksSkipped != again.Chunks || again.Rows != (promote.Result{}) {
		t.Fatalf("second sweep: %+v", again.Progress)
	}
	progress, err := coldsweep.LoadProgress(ctx, b.rdb, b.prefix, "accounts")
	if err != nil || len(progress) != 1 || !progress[0].Finished || progress[0].ChunksDone != 7 {
		t.Fatalf("LoadProgress = %+v, %v", progress, err)
	}
}

// A sweep stopped part way finishes the chunks in flight; the next one
// skips every chunk the first finished and copies no row twice.
func TestSweepInterruptedResumes(t *testing.T) {
	t.Parallel()
	b := setupSweep(t, 6000)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var copied atomic.Int64
	cfg := b.config(coldsweep.Config{Chunk: 200, Workers: 2, ProgressInterval: time.Millisecond,
		Progress: func(p coldsweep.Progress) {
			if p.ChunksDone >= 5 {
				cancel()
			}
		}})
	s, err := coldsweep.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	first, err := s.Run(ctx)
	if !errors.Is(err, coldsweep.ErrInterrupted) {
		t.Fatalf("Run after cancel: err = %v, want ErrInterrupted", err)
	}
	if first.ChunksDone < 5 || first.ChunksDone >= first.Chunks {
		t.Fatalf("first run did %d of %d chunks", first.ChunksDone, first.Chunks)
	}
	copied.Add(int64(first.Rows.Copied))

	second := b.sweep(t, coldsweep.Config{Chunk: 200, Workers: 2})
	copied.Add(int64(second.Rows.Copied))
	if second.ChunksSkipped < first.ChunksDone {
		t.Fatalf("second run skipped %d chunks, the first finished %d", second.ChunksSkipped, first.ChunksDone)
	}
	var inOld int64
	if err := b.pair.Old.Pool.QueryRow(context.Background(), `SELECT count(*) FROM accounts`).Scan(&inOld); err != nil {
		t.Fatal(err)
	}
	if copied.Load() != inOld {
		t.Fatalf("copied %d rows over two runs, OLD holds %d: rows were copied twice or lost", copied.Load(), inOld)
	}
	b.requireComplete(t, second.Range)
}

// Lazy reads, writes and deletes while the sweep runs keep every invariant:
// acknowledged writes are what NEW holds and reads return, deleted keys stay
// deleted, and verify is clean once the mirror has caught up.
func TestSweepUnderConcurrentTraffic(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const n = 4000
	b := setupSweep(t, n)
	repo := b.repo(t)

	var (
		mu      sync.Mutex
		last    = map[int64]*Account{} // nil: deleted
		stop    = make(chan struct{})
		traffic sync.WaitGroup
		errs    = make(chan error, 8)
	)
	// Each writer owns the keys congruent to its number, so the last
	// acknowledged operation of a key is well defined.
	for w := range 4 {
		traffic.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k := int64(rng.IntN(n/4))*4 + int64(w) + 1
				var err error
				switch rng.IntN(3) {
				case 0:
					a := newAccount(k, "w")
					a.BalanceCents = int64(i)
					if _, err = repo.Put(ctx, k, a); err == nil {
						mu.Lock()
						last[k] = &a
						mu.Unlock()
					}
				case 1:
					if err = repo.Delete(ctx, k); err == nil {
						mu.Lock()
						last[k] = nil
						mu.Unlock()
					}
				default:
					_, err = repo.Get(ctx, k)
					if errors.Is(err, lazy.ErrNotFound) {
						err = nil
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	// The rate limit makes the sweep last a couple of seconds, so that the
	// traffic overlaps it however fast the machine copies.
	s, err := coldsweep.New(b.config(coldsweep.Config{Chunk: 100, Workers: 2, Rate: 2000}))
	if err != nil {
		t.Fatal(err)
	}
	sum, err := s.Run(ctx)
	close(stop)
	traffic.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("traffic: %v", err)
	}
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, err := repo.RelayOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if len(last) < 100 {
		t.Fatalf("only %d keys written during the sweep: the test proves little", len(last))
	}
	for k, want := range last {
		got, err := repo.Get(ctx, k)
		switch {
		case want == nil && !errors.Is(err, lazy.ErrNotFound):
			t.Fatalf("deleted key %d: Get = %+v, %v; want ErrNotFound", k, got, err)
		case want != nil && (err != nil || got.BalanceCents != want.BalanceCents):
			t.Fatalf("key %d: Get = %+v, %v; want the acknowledged write %+v", k, got, err, *want)
		}
	}
	b.requireComplete(t, coldsweep.Span{Lo: sum.Range.Lo, Hi: sum.Range.Hi})
}

// Shards split a sweep into disjoint halves that together cover it.
func TestSweepShards(t *testing.T) {
	t.Parallel()
	b := setupSweep(t, 2000)
	var total int
	for i := range int64(2) {
		// [1, 2001) touches chunks 0..20: the even ones are shard 0's.
		sum := b.sweep(t, coldsweep.Config{Chunk: 100, Shard: coldsweep.Shard{I: i, N: 2}})
		if sum.Chunks != 11-i || sum.ChunksSkipped != 0 {
			t.Fatalf("shard %d/2: %+v", i, sum.Progress)
		}
		total += sum.Rows.Copied
	}
	if total != 2000-285 {
		t.Fatalf("shards copied %d rows, want %d", total, 2000-285)
	}
	b.requireComplete(t, coldsweep.Span{Lo: 1, Hi: 2001})
}

// A chunk NEW refuses rows of is reported and left unsettled; the others
// are swept.
func TestSweepReportsRejectedChunks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupSweep(t, 1000)
	b.pair.New.Exec(t, `ALTER TABLE accounts ADD CONSTRAINT no_450 CHECK (id <> 450)`)
	s, err := coldsweep.New(b.config(coldsweep.Config{Chunk: 100}))
	if err != nil {
		t.Fatal(err)
	}
	sum, err := s.Run(ctx)
	if !errors.Is(err, coldsweep.ErrChunksFailed) || !errors.Is(err, promote.ErrRowRejected) {
		t.Fatalf("err = %v, want ErrChunksFailed wrapping ErrRowRejected", err)
	}
	if sum.ChunksFailed != 1 || len(sum.Failed) != 1 || sum.Failed[0].Span != (coldsweep.Span{Lo: 400, Hi: 500}) {
		t.Fatalf("failed = %+v, %+v", sum.ChunksFailed, sum.Failed)
	}
	if sum.ChunksDone != sum.Chunks {
		t.Fatalf("%d of %d chunks done", sum.ChunksDone, sum.Chunks)
	}
	left, err := b.tracker.Unsettled(ctx, 1, 1001)
	if err != nil || len(left) != 100 || left[0] != 400 {
		t.Fatalf("unsettled: %d keys from %v, %v; want the failed chunk", len(left), left[:min(1, len(left))], err)
	}
}

// A paused sweep starts no chunk until it is resumed.
func TestSweepPauseResume(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupSweep(t, 1000)
	var last atomic.Value
	s, err := coldsweep.New(b.config(coldsweep.Config{Chunk: 100, ProgressInterval: 5 * time.Millisecond,
		Progress: func(p coldsweep.Progress) { last.Store(p) }}))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := s.Run(ctx); done <- err }()
	testenv.Eventually(t, 10*time.Second, "progress reports the pause", func() bool {
		p, ok := last.Load().(coldsweep.Progress)
		return ok && p.Throttled == "paused"
	})
	if p := last.Load().(coldsweep.Progress); p.ChunksDone != 0 {
		t.Fatalf("%d chunks done while paused", p.ChunksDone)
	}
	if paused, err := coldsweep.IsPaused(ctx, b.rdb, b.prefix, "accounts"); err != nil || !paused {
		t.Fatalf("IsPaused = %v, %v", paused, err)
	}
	if err := s.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := testenv.CounterValue(t, b.reg, "lazymigrate_sweep_throttled_seconds_total", "reason", "paused"); got <= 0 {
		t.Fatalf("throttled seconds (paused) = %v, want > 0", got)
	}
	b.requireComplete(t, coldsweep.Span{Lo: 1, Hi: 1001})
}

// The latency and lag signals hold the sweep and say why; the sweep ends
// promptly when its context ends while held.
func TestSweepThrottleSignals(t *testing.T) {
	t.Parallel()
	b := setupSweep(t, 500)
	for _, tc := range []struct {
		name string
		cfg  coldsweep.ThrottleConfig
		want string
	}{
		{"latency", coldsweep.ThrottleConfig{MaxLatency: time.Nanosecond, MaxLag: -1}, "new latency"},
		{"lag", coldsweep.ThrottleConfig{MaxLatency: -1, MaxLag: time.Second, LagQuery: `SELECT 12.5::float8`}, "new replication lag 12.5s > 1s"},
	} {
		tc.cfg.New, tc.cfg.Interval = b.pair.New.Pool, 5*time.Millisecond
		ctx, cancel := context.WithCancel(context.Background())
		s, err := coldsweep.New(b.config(coldsweep.Config{Chunk: 100, Throttle: &tc.cfg, ProgressInterval: 5 * time.Millisecond,
			Progress: func(p coldsweep.Progress) {
				if p.Throttled != "" {
					if !strings.Contains(p.Throttled, tc.want) {
						t.Errorf("%s: throttled %q, want it to mention %q", tc.name, p.Throttled, tc.want)
					}
					cancel()
				}
			}}))
		if err != nil {
			t.Fatal(err)
		}
		sum, err := s.Run(ctx)
		cancel()
		if !errors.Is(err, coldsweep.ErrInterrupted) || sum.ChunksDone != 0 {
			t.Fatalf("%s: Run = %+v, %v; want ErrInterrupted with nothing done", tc.name, sum.Progress, err)
		}
	}
}

// The rate limit spreads the copy over time.
func TestSweepRateLimit(t *testing.T) {
	t.Parallel()
	b := setupSweep(t, 2000)
	start := time.Now()
	b.sweep(t, coldsweep.Config{Chunk: 100, Rate: 4000})
	// 2000 keys at 4000 a second, after a first chunk granted at once.
	if took, least := time.Since(start), 1900*time.Second/4000; took < least {
		t.Fatalf("sweep took %v; at 4000 keys/s it cannot take less than %v", took, least)
	}
}

// An unreachable OLD stops the sweep with an error naming it, after the
// configured retries.
func TestSweepOldUnavailable(t *testing.T) {
	t.Parallel()
	b := setupSweep(t, 300)
	cfg := b.config(coldsweep.Config{Chunk: 100, Range: coldsweep.Span{Lo: 1, Hi: 301}, Retries: 1})
	b.pair.Old.Pool.Close()
	s, err := coldsweep.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Run(context.Background()); !errors.Is(err, promote.ErrOldUnavailable) {
		t.Fatalf("err = %v, want ErrOldUnavailable", err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	b := setupSweep(t, 10)
	for name, c := range map[string]coldsweep.Config{
		"chunk":   {Chunk: promote.MaxRangeKeys + 1},
		"workers": {Workers: -1},
		"rate":    {Rate: -5},
		"range":   {Range: coldsweep.Span{Lo: 10, Hi: 5}},
		"shard":   {Shard: coldsweep.Shard{I: 3, N: 2}},
	} {
		if _, err := coldsweep.New(b.config(c)); err == nil {
			t.Errorf("%s: New accepted %+v", name, c)
		}
	}
	if _, err := coldsweep.New(&coldsweep.Config{Tracker: b.tracker}); err == nil {
		t.Error("New accepted a config without a copier")
	}
}

// An error that retrying cannot fix stops the sweep at once: here a tracker
// whose segment layout differs from the bitmap already in Redis.
func TestSweepStopsOnPermanentError(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupSweep(t, 300)
	if err := b.tracker.MarkRange(ctx, 1, 2); err != nil { // claims the layout
		t.Fatal(err)
	}
	other, err := tracker.New(b.rdb, "accounts", &tracker.Config{Prefix: b.prefix, SegmentBits: 12})
	if err != nil {
		t.Fatal(err)
	}
	cfg := b.config(coldsweep.Config{Chunk: 100})
	cfg.Tracker = other
	s, err := coldsweep.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = s.Run(ctx)
	if !errors.Is(err, tracker.ErrLayoutMismatch) {
		t.Fatalf("err = %v, want ErrLayoutMismatch", err)
	}
	if got := testenv.CounterValue(t, b.reg, "lazymigrate_sweep_retries_total", "table", "accounts"); got != 0 {
		t.Fatalf("retried %v times (in %v), want none", got, time.Since(start))
	}
}

// Calls to Config.Progress never overlap, and the final one is the last,
// in the callback and in Redis. The sweep starts paused; the first report
// that sees the pause resumes it, then takes its time: it lasts until the
// final report starts, or a second. The sweep finishes meanwhile, and its
// final report must wait for it.
func TestSweepProgressCallsDoNotOverlap(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupSweep(t, 300)
	var (
		s          *coldsweep.Sweeper
		inflight   atomic.Int64
		overlapped atomic.Bool
		held       atomic.Bool
		final      = make(chan struct{})
		mu         sync.Mutex
		finished   []bool // Finished of each call, in the order they started
	)
	progress := func(p coldsweep.Progress) {
		if inflight.Add(1) > 1 {
			overlapped.Store(true)
		}
		defer inflight.Add(-1)
		mu.Lock()
		finished = append(finished, p.Finished)
		mu.Unlock()
		if p.Finished {
			close(final)
			return
		}
		if p.Throttled == "paused" && held.CompareAndSwap(false, true) {
			if err := s.Resume(ctx); err != nil {
				t.Error(err)
			}
			select { // a slow terminal or pushgateway
			case <-final:
			case <-time.After(time.Second):
			}
		}
	}
	var err error
	s, err = coldsweep.New(b.config(coldsweep.Config{Chunk: 100, Workers: 2, ProgressInterval: time.Millisecond, Progress: progress}))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	sum, err := s.Run(ctx)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	switch {
	case !held.Load():
		t.Fatalf("no report saw the pause (calls: %v)", finished)
	case overlapped.Load():
		t.Fatalf("Progress was called again before an earlier call returned (calls: %v)", finished)
	case !finished[len(finished)-1] || slices.Index(finished, true) != len(finished)-1:
		t.Fatalf("calls by Finished: %v, want one final call, the last", finished)
	}
	saved, err := coldsweep.LoadProgress(ctx, b.rdb, b.prefix, "accounts")
	if err != nil || len(saved) != 1 || !saved[0].Finished || saved[0].ChunksDone != sum.Chunks {
		t.Fatalf("saved progress = %+v, %v; want the final one", saved, err)
	}
}

// Without Config.Range, a sweep takes OLD's keys, and refuses, before
// sweeping anything, keys no range can hold: a negative key, and
// math.MaxInt64, past which a half-open range would have to end (its Hi
// wrapped around to math.MinInt64, and the sweep set out over the whole
// key space).
func TestSweepRefusesOldKeysNoRangeCanHold(t *testing.T) {
	t.Parallel()
	b := setupSweep(t, 20)
	for _, tc := range []struct {
		key  int64
		want func(error) bool
	}{
		{-5, func(err error) bool { return errors.Is(err, tracker.ErrInvalidKey) }},
		{math.MaxInt64, func(err error) bool { return strings.Contains(err.Error(), "9223372036854775806") }},
	} {
		b.pair.Old.Exec(t, `INSERT INTO accounts SELECT $1, email, name, balance_cents, status, created_at, updated_at
			FROM accounts WHERE id = 1`, tc.key)
		s, err := coldsweep.New(b.config(coldsweep.Config{Chunk: 1000}))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		sum, err := s.Run(ctx)
		cancel()
		if err == nil || !tc.want(err) || sum != nil {
			var planned any
			if sum != nil {
				planned = fmt.Sprintf("%d chunks over %v", sum.Chunks, sum.Range)
			}
			t.Fatalf("OLD holding key %d: Run = %v, %v; want an error saying so, and no sweep", tc.key, planned, err)
		}
		if n, err := b.tracker.CountRange(context.Background(), 0, 1<<20); err != nil || n != 0 {
			t.Fatalf("tracker: %d keys settled, %v; want none", n, err)
		}
		b.pair.Old.Exec(t, `DELETE FROM accounts WHERE id = $1`, tc.key)
	}
}

// faultyOld is OLD for the copier, without the bulk path. Once armed, the
// first read of rows stalls until its context ends, and the next fails as
// a revoked privilege does (SQLSTATE 42501): a failure that stops the
// sweep.
type faultyOld struct {
	pool    *pgxpool.Pool
	armed   atomic.Bool
	reads   atomic.Int64
	stalled chan struct{} // closed once the first read stalls
	cut     chan error    // the stalled read's context error
	release chan struct{} // closed to end the stalled read from the test
}

var _ promote.DB = (*faultyOld)(nil)

func newFaultyOld(pool *pgxpool.Pool) *faultyOld {
	return &faultyOld{pool: pool, stalled: make(chan struct{}), cut: make(chan error, 1), release: make(chan struct{})}
}

func (f *faultyOld) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return f.pool.Query(ctx, sql, args...)
}

func (f *faultyOld) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return f.pool.QueryRow(ctx, sql, args...)
}

func (f *faultyOld) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if !f.armed.Load() {
		return f.pool.SendBatch(ctx, b)
	}
	switch f.reads.Add(1) {
	case 1:
		close(f.stalled)
		select {
		case <-ctx.Done():
			f.cut <- ctx.Err()
			return failedBatch{ctx.Err()}
		case <-f.release:
			return failedBatch{errors.New("stalled read ended by the test")}
		}
	case 2:
		<-f.stalled
		return failedBatch{&pgconn.PgError{Severity: "ERROR", Code: "42501", Message: "permission denied for table accounts"}}
	}
	return f.pool.SendBatch(ctx, b)
}

// failedBatch is a batch whose every result is cause.
type failedBatch struct{ cause error }

func (b failedBatch) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, b.cause }
func (b failedBatch) Query() (pgx.Rows, error)         { return nil, b.cause }
func (b failedBatch) QueryRow() pgx.Row                { return errRow{b.cause} }
func (b failedBatch) Close() error                     { return b.cause }
func (b failedBatch) Tx() pgx.Tx                       { return nil }

// A chunk that fails for good stops the sweep, and the chunks still
// running in other workers get StopTimeout to finish, as after a cancel,
// not forever.
func TestSweepCutsChunksInFlightAfterFatalError(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupSweep(t, 300)
	old := newFaultyOld(b.pair.Old.Pool)
	cp, err := promote.NewCopier(ctx, old, b.pair.New.Pool, &promote.CopierConfig{Table: "accounts", NoBulk: true})
	if err != nil {
		t.Fatal(err)
	}
	b.copier = cp
	s, err := coldsweep.New(b.config(coldsweep.Config{Chunk: 100, Workers: 2, Range: coldsweep.Span{Lo: 1, Hi: 301},
		StopTimeout: 50 * time.Millisecond}))
	if err != nil {
		t.Fatal(err)
	}
	old.armed.Store(true)
	type result struct {
		sum *coldsweep.Summary
		err error
	}
	done := make(chan result, 1)
	go func() {
		sum, err := s.Run(ctx)
		done <- result{sum, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		close(old.release)
		<-done
		t.Fatal("Run did not return within 10s of a fatal error: the stalled chunk was never cut off")
	}
	var pgErr *pgconn.PgError
	if !errors.As(r.err, &pgErr) || pgErr.Code != "42501" {
		t.Fatalf("Run = %v; want the permission error", r.err)
	}
	select {
	case err := <-old.cut:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("stalled read ended with %v, want context.Canceled", err)
		}
	default:
		t.Fatal("the stalled read was not cancelled")
	}
	if r.sum.ChunksDone != 0 {
		t.Fatalf("%d chunks done, want none: %+v", r.sum.ChunksDone, r.sum.Progress)
	}
}

// stuckLag is a side for the throttle whose lag query does not answer
// until its context ends, as on a server stuck on a lock.
type stuckLag struct {
	coldsweep.Querier
	lagSQL string
}

func (q stuckLag) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if sql == q.lagSQL {
		<-ctx.Done()
		return errRow{ctx.Err()}
	}
	return q.Querier.QueryRow(ctx, sql, args...)
}

// A lag query that does not answer in time holds the sweep and says so,
// instead of holding up the throttle, and Run with it: the first reading
// is taken before any chunk starts.
func TestSweepThrottleHoldsOnLagQueryTimeout(t *testing.T) {
	t.Parallel()
	b := setupSweep(t, 200)
	const lagSQL = `SELECT 0::float8 AS stuck_lag`
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var held atomic.Value
	s, err := coldsweep.New(b.config(coldsweep.Config{Chunk: 100, ProgressInterval: 5 * time.Millisecond,
		Throttle: &coldsweep.ThrottleConfig{New: stuckLag{b.pair.New.Pool, lagSQL}, LagQuery: lagSQL,
			MaxLatency: 20 * time.Millisecond, MaxLag: time.Second, Interval: 5 * time.Millisecond},
		Progress: func(p coldsweep.Progress) {
			if strings.Contains(p.Throttled, "new replication lag unknown: no answer within 200ms") {
				held.Store(p.Throttled)
				cancel()
			}
		}}))
	if err != nil {
		t.Fatal(err)
	}
	sum, err := s.Run(ctx)
	if held.Load() == nil {
		t.Fatalf("no progress said the lag query timed out; Run = %v", err)
	}
	if !errors.Is(err, coldsweep.ErrInterrupted) || !errors.Is(err, context.Canceled) || sum.ChunksDone != 0 {
		t.Fatalf("Run = %+v, %v; want ErrInterrupted by the cancel, with nothing done", sum.Progress, err)
	}
}

// Shards own chunk numbers mod n: a shard with another chunk size than the
// unfinished sweep's would leave keys no shard owns, while every shard
// reported done. It is refused; an unsharded run, which covers the whole
// range, is not.
func TestSweepRefusesShardOfAnotherLayout(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupSweep(t, 2000)
	b.sweep(t, coldsweep.Config{Chunk: 100, Shard: coldsweep.Shard{I: 0, N: 2}})

	s, err := coldsweep.New(b.config(coldsweep.Config{Chunk: 200, Shard: coldsweep.Shard{I: 1, N: 2}}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Run(ctx); !errors.Is(err, coldsweep.ErrLayoutChanged) || !strings.Contains(err.Error(), "shards 1/2 have not finished") {
		t.Fatalf("shard 1/2 with another chunk size: err = %v, want ErrLayoutChanged naming shard 1/2", err)
	}
	b.sweep(t, coldsweep.Config{Chunk: 100, Shard: coldsweep.Shard{I: 1, N: 2}})
	b.requireComplete(t, coldsweep.Span{Lo: 1, Hi: 2001})

	// Once the sweep is done, or for an unsharded run, the layout may change.
	b.sweep(t, coldsweep.Config{Chunk: 300, Shard: coldsweep.Shard{I: 0, N: 3}})
	b.sweep(t, coldsweep.Config{Chunk: 700})
}

// A stop reaches chunks that only wait for the rate limiter at once: they
// have not begun, so they are left for the next run, not copied first.
func TestSweepStopsChunksWaitingForRateLimit(t *testing.T) {
	t.Parallel()
	b := setupSweep(t, 3000)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := coldsweep.New(b.config(coldsweep.Config{Chunk: 500, Workers: 3, Rate: 500, StopTimeout: time.Hour,
		ProgressInterval: 5 * time.Millisecond,
		Progress: func(p coldsweep.Progress) {
			if p.ChunksDone >= 1 {
				cancel()
			}
		}}))
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		sum *coldsweep.Summary
		err error
	}
	done := make(chan result, 1)
	go func() { sum, err := s.Run(ctx); done <- result{sum, err} }()
	select {
	case r := <-done:
		if !errors.Is(r.err, coldsweep.ErrInterrupted) {
			t.Fatalf("Run = %v, want ErrInterrupted", r.err)
		}
		if r.sum.ChunksDone > 2 {
			t.Fatalf("%d chunks done: chunks waiting for the limiter were copied after the stop", r.sum.ChunksDone)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return within 30 s of the stop: chunks waiting for the rate limiter held it (StopTimeout is an hour)")
	}
}

// A chunk whose first attempt committed part of its rows and then failed
// counts those rows as copied, not as found present by the retry.
func TestSweepRetryCountsRowsOfFailedAttempt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupSweep(t, 40_000)
	var failed atomic.Bool
	cp, err := promote.NewCopier(ctx, b.pair.Old.Pool, b.pair.New.Pool, &promote.CopierConfig{Table: "accounts",
		Hooks: promote.Hooks{AfterCommit: func(context.Context, []int64) error {
			if failed.CompareAndSwap(false, true) {
				return errors.New("simulated failure after the first part committed")
			}
			return nil
		}}})
	if err != nil {
		t.Fatal(err)
	}
	b.copier = cp
	// One chunk of 40,000 keys: two NEW transactions of up to 32 stripes.
	sum := b.sweep(t, coldsweep.Config{Chunk: 40_000, Workers: 1})
	var inOld int
	if err := b.pair.Old.Pool.QueryRow(ctx, `SELECT count(*) FROM accounts`).Scan(&inOld); err != nil {
		t.Fatal(err)
	}
	if !failed.Load() || sum.Rows.Copied != inOld || sum.Rows.Present != 0 {
		t.Fatalf("rows = %+v after a retry, want all %d copied and none present", sum.Rows, inOld)
	}
}

// When writers keep adding keys around the stripe locks, the bulk path ends
// on the row path; the range's tombstones outside OLD still count as
// tombstoned, not absent.
func TestBulkFallbackCountsTombstones(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupSweep(t, 100)
	b.pair.New.Exec(t, `INSERT INTO lazymigrate.tombstones (table_name, key) VALUES ('public.accounts', 7)`) // 7 is a gap in OLD
	var rogue atomic.Int64
	cp, err := promote.NewCopier(ctx, b.pair.Old.Pool, b.pair.New.Pool, &promote.CopierConfig{Table: "accounts",
		Hooks: promote.Hooks{AfterLock: func(context.Context, int64, int64) {
			k := 1 + rogue.Add(1) // 2, 3, 4: a writer around the locks, every time
			b.pair.New.Exec(t, `INSERT INTO accounts SELECT $1, 'rogue', 'Rogue', 1, 'active', now(), now()`, k)
		}}})
	if err != nil {
		t.Fatal(err)
	}
	res, err := cp.CopyRange(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	// OLD has 85 rows in [0, 100) (1..99 less 14 multiples of 7), 3 of them
	// the rogue keys; key 7 is tombstoned, and the other 14 keys absent.
	if want := (promote.Result{Copied: 82, Present: 3, Tombstoned: 1, Absent: 14}); res != want {
		t.Fatalf("result = %+v, want %+v", res, want)
	}
}
