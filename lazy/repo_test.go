package lazy_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

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

type testBundle struct {
	pair     *testenv.Pair
	rdb      *redis.Client
	tracker  *tracker.Tracker
	copier   *promote.Copier
	enqueuer *promote.Enqueuer
	repo     *lazy.Repo[Account]
	reg      *prometheus.Registry
	// oldPool and newPool count, in oldQueries and newQueries, the
	// statements sent through them; the repos of a test use them.
	oldPool, newPool       *pgxpool.Pool
	oldQueries, newQueries *atomic.Int64
}

type setupOpts struct {
	worker      bool                  // run an asynq worker with the promotion handler
	trackerRDB  redis.UniversalClient // tracker client, default the test's Redis
	enqueueRDB  redis.UniversalClient // asynq client, default the test's Redis
	trackerWait time.Duration
	askTracker  bool // Config.AskTrackerOnMiss
}

// setup gives OLD accounts [1, 101), an empty NEW, a tracker, an enqueuer
// and a repo over counting pools.
func setup(t *testing.T, o setupOpts) *testBundle {
	t.Helper()
	ctx := context.Background()
	p := testenv.NewPair(t)
	testenv.SeedAccounts(t, p.Old, 1, 101)
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		t.Fatal(err)
	}
	rdb, prefix := testenv.Redis(t)
	b := &testBundle{pair: p, rdb: rdb, reg: prometheus.NewRegistry(), oldQueries: new(atomic.Int64), newQueries: new(atomic.Int64)}
	trackerRDB := o.trackerRDB
	if trackerRDB == nil {
		trackerRDB = rdb
	}
	var err error
	if b.tracker, err = tracker.New(trackerRDB, "accounts", &tracker.Config{Prefix: prefix}); err != nil {
		t.Fatal(err)
	}
	if b.copier, err = promote.NewCopier(ctx, p.Old.Pool, p.New.Pool, &promote.CopierConfig{Table: "accounts", Marker: b.tracker}); err != nil {
		t.Fatal(err)
	}
	enqueueRDB := o.enqueueRDB
	if enqueueRDB == nil {
		enqueueRDB = rdb
	}
	queue := "lmtest-" + testenv.Suffix()
	client := asynq.NewClientFromRedisClient(enqueueRDB)
	if b.enqueuer, err = promote.NewEnqueuer(client, "accounts", &promote.EnqueuerConfig{Queue: queue, Registerer: b.reg}); err != nil {
		t.Fatal(err)
	}
	if err := b.enqueuer.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.enqueuer.Stop)
	if o.worker {
		startWorker(t, rdb, queue, b)
	}
	b.oldPool = countingPool(t, p.Old, b.oldQueries)
	b.newPool = countingPool(t, p.New, b.newQueries)
	b.repo, err = lazy.New(ctx, b.oldPool, b.newPool, &lazy.Config[Account]{
		Table:            "accounts",
		Tracker:          b.tracker,
		Scheduler:        b.enqueuer,
		Registerer:       b.reg,
		TrackerTimeout:   o.trackerWait,
		AskTrackerOnMiss: o.askTracker,
	})
	if err != nil {
		t.Fatal(err)
	}
	b.oldQueries.Store(0)
	b.newQueries.Store(0)
	return b
}

func startWorker(t *testing.T, rdb *redis.Client, queue string, b *testBundle) {
	t.Helper()
	h, err := promote.NewHandler([]*promote.Copier{b.copier}, &promote.HandlerConfig{
		Settled:    map[string]promote.SettledChecker{"accounts": b.tracker},
		Registerer: b.reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Queues: map[string]int{queue: 1}, Concurrency: 4,
		TaskCheckInterval: 20 * time.Millisecond, LogLevel: asynq.FatalLevel,
	})
	mux := asynq.NewServeMux()
	mux.Handle(promote.TaskType, h)
	if err := srv.Start(mux); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Shutdown()
		_ = asynq.NewInspectorFromRedisClient(rdb).DeleteQueue(queue, true)
	})
}

// countTracer counts the statements a pool sends.
type countTracer struct{ n *atomic.Int64 }

func (c countTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	return ctx
}
func (countTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func countingPool(t *testing.T, db *testenv.Database, n *atomic.Int64) *pgxpool.Pool {
	t.Helper()
	return db.NewPool(t, func(c *pgxpool.Config) { c.ConnConfig.Tracer = countTracer{n} })
}

// redisCounter counts the commands a Redis client sends, and can make them
// hang or fail, to inject faults into the real client.
type redisCounter struct {
	n    atomic.Int64
	hang atomic.Bool
}

func (h *redisCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *redisCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		if h.hang.Load() {
			<-ctx.Done()
			return ctx.Err()
		}
		return next(ctx, cmd)
	}
}
func (h *redisCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(int64(len(cmds)))
		if h.hang.Load() {
			<-ctx.Done()
			return ctx.Err()
		}
		return next(ctx, cmds)
	}
}

func (b *testBundle) newRows(t *testing.T) int {
	t.Helper()
	var n int
	if err := b.pair.New.Pool.QueryRow(context.Background(), `SELECT count(*) FROM accounts`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func (b *testBundle) metric(t *testing.T, name, outcome string) float64 {
	t.Helper()
	return testenv.CounterValue(t, b.reg, name, "outcome", outcome)
}

func TestGetHitServesNewWithoutRedisOrOld(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	trackerRDB, hook := countingRedis(t)
	b := setup(t, setupOpts{trackerRDB: trackerRDB})
	b.pair.New.Exec(t, `INSERT INTO accounts VALUES (7, 'new@example.com', 'In NEW', 1, 'active', now(), now())`)

	got, err := b.repo.Get(ctx, 7)
	if err != nil {
		t.Fatal(err)
	}
	if got.Email != "new@example.com" {
		t.Fatalf("Get(7) = %+v, want NEW's row", got)
	}
	if n := hook.n.Load(); n != 0 {
		t.Fatalf("hit path sent %d Redis commands, want 0", n)
	}
	if n := b.oldQueries.Load(); n != 0 {
		t.Fatalf("hit path sent %d OLD queries, want 0", n)
	}
	if n := b.newQueries.Load(); n != 1 {
		t.Fatalf("hit path sent %d NEW queries, want 1", n)
	}
	if got := b.metric(t, "lazymigrate_reads_total", "new"); got != 1 {
		t.Fatalf("reads_total{outcome=new} = %v, want 1", got)
	}
}

// countingRedis returns a client of the test Redis whose commands hook
// counts.
func countingRedis(t *testing.T) (*redis.Client, *redisCounter) {
	t.Helper()
	hook := &redisCounter{}
	rdb := redis.NewClient(&redis.Options{Addr: testenvRedisAddr(t)})
	rdb.AddHook(hook)
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb, hook
}

func testenvRedisAddr(t *testing.T) string {
	t.Helper()
	rdb, _ := testenv.Redis(t)
	return rdb.Options().Addr
}

func TestGetFallsBackToOldAndPromotes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{worker: true})

	got, err := b.repo.Get(ctx, 42)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != 42 || got.Email != "user42@example.com" {
		t.Fatalf("Get(42) = %+v, want OLD's row", got)
	}
	testenv.Eventually(t, 10*time.Second, "key 42 promoted into NEW", func() bool { return b.newRows(t) == 1 })
	testenv.Eventually(t, 10*time.Second, "key 42 settled", func() bool {
		ok, err := b.tracker.IsSettled(ctx, 42)
		return err == nil && ok
	})
	again, err := b.repo.Get(ctx, 42)
	if err != nil {
		t.Fatal(err)
	}
	if again != got {
		t.Fatalf("promoted record differs:\n OLD %+v\n NEW %+v", got, again)
	}
	if got := b.metric(t, "lazymigrate_reads_total", "old"); got != 1 {
		t.Fatalf("reads_total{outcome=old} = %v, want 1", got)
	}
	if got := b.metric(t, "lazymigrate_reads_total", "new"); got != 1 {
		t.Fatalf("reads_total{outcome=new} = %v, want 1", got)
	}
}

func TestGetNotFoundInEither(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	_, err := b.repo.Get(ctx, 5000)
	if !errors.Is(err, lazy.ErrNotFound) || !errors.Is(err, pgx.ErrNoRows) {
		t.Fatalf("Get(5000) err = %v, want ErrNotFound wrapping pgx.ErrNoRows", err)
	}
	if err := b.enqueuer.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := b.metric(t, "lazymigrate_promotions_total", "enqueued"); got != 0 {
		t.Fatalf("a key in neither database was scheduled (%v enqueued)", got)
	}
}

// Invariant 3 on the read path: a tombstoned key never reads as found, even
// with the tracker empty and OLD still holding the row.
func TestGetTombstonedKeyIsNotFoundWithEmptyTracker(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	b.pair.New.Exec(t, `INSERT INTO lazymigrate.tombstones (table_name, key) VALUES ('public.accounts', 9)`)
	if _, err := b.repo.Get(ctx, 9); !errors.Is(err, lazy.ErrNotFound) {
		t.Fatalf("Get(tombstoned 9) err = %v, want ErrNotFound", err)
	}
	got, err := b.repo.GetMany(ctx, []int64{8, 9})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := got[9]; ok || len(got) != 1 {
		t.Fatalf("GetMany returned %v; tombstoned key 9 must be absent", keysOf(got))
	}
	if err := b.enqueuer.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := b.metric(t, "lazymigrate_promotions_total", "enqueued"); got != 1 {
		t.Fatalf("enqueued = %v, want 1 (key 8 only)", got)
	}
}

// With AskTrackerOnMiss, a settled key never falls back to OLD, even
// without a tombstone.
func TestGetSettledKeyDoesNotFallBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{askTracker: true})
	// Settled but absent from NEW: e.g. swept while absent, or deleted and
	// its tombstone purged. OLD's stale row must not be served.
	if _, err := b.tracker.Mark(ctx, []int64{11}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.repo.Get(ctx, 11); !errors.Is(err, lazy.ErrNotFound) {
		t.Fatalf("Get(settled 11) err = %v, want ErrNotFound", err)
	}
	got, err := b.repo.GetMany(ctx, []int64{11, 12})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := got[11]; ok {
		t.Fatal("GetMany served settled key 11 from OLD")
	}
}

// Invariant 7, OLD down: settled keys keep being served; an unsettled key is
// an error that says OLD is unavailable, never "not found".
func TestGetWithOldDown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := testenv.NewPair(t)
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		t.Fatal(err)
	}
	p.New.Exec(t, `INSERT INTO accounts VALUES (1, 'a@example.com', 'A', 1, 'active', now(), now())`)
	p.New.Exec(t, `INSERT INTO lazymigrate.tombstones (table_name, key) VALUES ('public.accounts', 2)`)
	rdb, prefix := testenv.Redis(t)
	tr, err := tracker.New(rdb, "accounts", &tracker.Config{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Mark(ctx, []int64{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	oldPool := countingPool(t, p.Old, new(atomic.Int64))
	repo, err := lazy.New(ctx, oldPool, p.New.Pool, &lazy.Config[Account]{Table: "accounts", Tracker: tr})
	if err != nil {
		t.Fatal(err)
	}
	oldPool.Close() // OLD goes down after start-up

	if got, err := repo.Get(ctx, 1); err != nil || got.ID != 1 {
		t.Fatalf("Get(migrated 1) = %+v, %v; want it served from NEW", got, err)
	}
	for _, k := range []int64{2, 3} {
		if _, err := repo.Get(ctx, k); !errors.Is(err, lazy.ErrNotFound) {
			t.Fatalf("Get(settled %d) err = %v, want ErrNotFound", k, err)
		}
	}
	_, err = repo.Get(ctx, 4)
	if !errors.Is(err, lazy.ErrOldUnavailable) || errors.Is(err, lazy.ErrNotFound) {
		t.Fatalf("Get(unsettled 4) err = %v, want ErrOldUnavailable and not ErrNotFound", err)
	}
	got, err := repo.GetMany(ctx, []int64{1, 2, 3, 4})
	if !errors.Is(err, lazy.ErrOldUnavailable) {
		t.Fatalf("GetMany err = %v, want ErrOldUnavailable", err)
	}
	if len(got) != 1 || got[1].ID != 1 {
		t.Fatalf("GetMany returned %v, want key 1 only", keysOf(got))
	}
}

// Invariant 7, Redis down: reads are answered, promotions are counted as
// dropped, whether or not misses ask the tracker.
func TestGetWithRedisDown(t *testing.T) {
	t.Parallel()
	for _, ask := range []bool{false, true} {
		t.Run(fmt.Sprintf("AskTrackerOnMiss=%v", ask), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			dead := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
			t.Cleanup(func() { _ = dead.Close() })
			b := setup(t, setupOpts{trackerRDB: dead, enqueueRDB: dead, askTracker: ask})
			b.pair.New.Exec(t, `INSERT INTO accounts VALUES (7, 'new@example.com', 'In NEW', 1, 'active', now(), now())`)

			if got, err := b.repo.Get(ctx, 7); err != nil || got.ID != 7 {
				t.Fatalf("Get(7) = %+v, %v; want NEW's row", got, err)
			}
			if got, err := b.repo.Get(ctx, 8); err != nil || got.ID != 8 {
				t.Fatalf("Get(8) = %+v, %v; want OLD's row", got, err)
			}
			if got, err := b.repo.GetMany(ctx, []int64{7, 9, 5000}); err != nil || len(got) != 2 {
				t.Fatalf("GetMany = %v, %v; want keys 7 and 9", keysOf(got), err)
			}
			if _, err := b.repo.Get(ctx, 5000); !errors.Is(err, lazy.ErrNotFound) {
				t.Fatalf("Get(5000) err = %v, want ErrNotFound", err)
			}
			_ = b.enqueuer.Flush(ctx)
			if got := b.metric(t, "lazymigrate_promotions_total", "dropped"); got != 2 {
				t.Fatalf("dropped promotions = %v, want 2", got)
			}
			if got := b.metric(t, "lazymigrate_reads_total", "tracker_unavailable"); ask != (got >= 1) {
				t.Fatalf("tracker_unavailable = %v with AskTrackerOnMiss %v", got, ask)
			}
		})
	}
}

// A Redis that accepts connections but never answers must not stall reads
// beyond TrackerTimeout.
func TestGetWithRedisHanging(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	hook := &redisCounter{}
	hung := redis.NewClient(&redis.Options{Addr: testenvRedisAddr(t)})
	hung.AddHook(hook)
	t.Cleanup(func() { _ = hung.Close() })
	b := setup(t, setupOpts{trackerRDB: hung, trackerWait: 30 * time.Millisecond, askTracker: true})
	hook.hang.Store(true)

	for k := int64(1); k <= 5; k++ {
		reqCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		got, err := b.repo.Get(reqCtx, k)
		cancel()
		if err != nil || got.ID != k {
			t.Fatalf("Get(%d) = %+v, %v; want OLD's row despite the hung tracker", k, got, err)
		}
	}
	// After the first timeout the tracker is not waited for again for a
	// second, so five reads cost one timeout, not five.
	if got := b.metric(t, "lazymigrate_reads_total", "tracker_unavailable"); got != 1 {
		t.Fatalf("tracker_unavailable = %v, want 1", got)
	}
}

func TestGetManyUsesOneQueryPerSide(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{askTracker: true})
	b.pair.New.Exec(t, `INSERT INTO accounts SELECT * FROM (VALUES
		(1::bigint, 'n1@example.com', 'NEW 1', 1::bigint, 'active', now(), now()),
		(2, 'n2@example.com', 'NEW 2', 2, 'active', now(), now())) v`)
	b.pair.New.Exec(t, `INSERT INTO lazymigrate.tombstones (table_name, key) VALUES ('public.accounts', 3)`)
	if _, err := b.tracker.Mark(ctx, []int64{4}); err != nil {
		t.Fatal(err)
	}
	b.newQueries.Store(0)
	b.oldQueries.Store(0)

	ks := []int64{1, 2, 3, 4, 5, 6, 7, 5000, 6000, 2, 5}
	got, err := b.repo.GetMany(ctx, ks)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int64]string{1: "n1@example.com", 2: "n2@example.com", 5: "user5@example.com", 6: "user6@example.com", 7: "user7@example.com"}
	if len(got) != len(want) {
		t.Fatalf("GetMany returned keys %v, want %v", keysOf(got), want)
	}
	for k, email := range want {
		if got[k].Email != email || got[k].ID != k {
			t.Fatalf("GetMany[%d] = %+v, want email %s", k, got[k], email)
		}
	}
	if n := b.oldQueries.Load(); n != 1 {
		t.Fatalf("GetMany sent %d OLD queries, want 1", n)
	}
	// One read of NEW, one tombstone lookup, and one re-read of the key the
	// tracker calls settled but NEW lacked (4), in case its promotion
	// committed in between.
	if n := b.newQueries.Load(); n != 3 {
		t.Fatalf("GetMany sent %d NEW queries, want 3", n)
	}
	if err := b.enqueuer.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := b.metric(t, "lazymigrate_promotions_total", "enqueued"); got != 3 {
		t.Fatalf("enqueued = %v, want 3 (keys 5, 6, 7)", got)
	}
}

func TestInvalidKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	if _, err := b.repo.Get(ctx, -1); !errors.Is(err, lazy.ErrInvalidKey) {
		t.Fatalf("Get(-1) err = %v, want ErrInvalidKey", err)
	}
	if _, err := b.repo.GetMany(ctx, []int64{1, -1}); !errors.Is(err, lazy.ErrInvalidKey) {
		t.Fatalf("GetMany with -1: err = %v, want ErrInvalidKey", err)
	}
	if n := b.oldQueries.Load() + b.newQueries.Load(); n != 0 {
		t.Fatalf("invalid keys sent %d queries, want 0", n)
	}
}

// 200 goroutines missing the same unsettled key promote it once.
func TestConcurrentMissesPromoteOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{worker: true})
	var wg sync.WaitGroup
	var errs atomic.Int64
	start := make(chan struct{})
	for range 200 {
		wg.Go(func() {
			<-start
			if got, err := b.repo.Get(ctx, 77); err != nil || got.ID != 77 {
				errs.Add(1)
			}
		})
	}
	close(start)
	wg.Wait()
	if n := errs.Load(); n != 0 {
		t.Fatalf("%d of 200 reads failed", n)
	}
	testenv.Eventually(t, 10*time.Second, "key 77 promoted", func() bool { return b.newRows(t) == 1 })
	testenv.Eventually(t, 10*time.Second, "promotion task handled", func() bool {
		return b.metric(t, "lazymigrate_promote_tasks_total", "ok") >= 1
	})
	if got := b.metric(t, "lazymigrate_promotions_total", "enqueued"); got != 1 {
		t.Fatalf("enqueued = %v, want 1", got)
	}
	if got := b.metric(t, "lazymigrate_promote_tasks_total", "ok"); got != 1 {
		t.Fatalf("promotion tasks = %v, want 1", got)
	}
	if got := b.metric(t, "lazymigrate_promotions_total", "copied"); got != 1 {
		t.Fatalf("copied = %v, want 1", got)
	}
	old := b.metric(t, "lazymigrate_reads_total", "old")
	dedup := b.metric(t, "lazymigrate_promotions_total", "deduplicated")
	if old != dedup+1 {
		t.Fatalf("reads served by OLD = %v, deduplicated = %v: every OLD read but one must be deduplicated", old, dedup)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := testenv.NewPair(t)
	if _, err := lazy.New(ctx, p.Old.Pool, p.New.Pool, &lazy.Config[Account]{Table: "accounts"}); err == nil {
		t.Fatal("New before lazymigrate's schema exists in NEW: want an error")
	}
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		t.Fatal(err)
	}
	if _, err := lazy.New(ctx, p.Old.Pool, p.New.Pool, &lazy.Config[Account]{}); err == nil {
		t.Fatal("New without a table: want an error")
	}
	if _, err := lazy.New(ctx, p.Old.Pool, p.New.Pool, &lazy.Config[Account]{Table: "nope"}); err == nil {
		t.Fatal("New with a missing table: want an error")
	}
	if _, err := lazy.New(ctx, p.Old.Pool, p.New.Pool, &lazy.Config[Account]{Table: "accounts", KeyColumn: "email"}); err == nil {
		t.Fatal("New with a text key column: want an error")
	}
	if _, err := lazy.New(ctx, p.Old.Pool, p.New.Pool, &lazy.Config[string]{Table: "accounts"}); err == nil {
		t.Fatal("New with a non-struct record type and no Scan: want an error")
	}
	if _, err := lazy.New(ctx, p.Old.Pool, p.New.Pool, &lazy.Config[Account]{Table: "accounts", Columns: []string{"id", "nope"}}); err == nil {
		t.Fatal("New with an unknown column: want an error")
	}
}

func keysOf[T any](m map[int64]T) []int64 {
	out := make([]int64, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
