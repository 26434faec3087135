package promote_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/promote"
	"github.com/lazymigrate/lazymigrate/tracker"
)

func TestDecodePayload(t *testing.T) {
	t.Parallel()
	good, err := promote.DecodePayload([]byte(`{"table":"accounts","keys":[1,2,3]}`))
	if err != nil {
		t.Fatal(err)
	}
	if good.Table != "accounts" || len(good.Keys) != 3 {
		t.Fatalf("decoded %+v", good)
	}
	for _, bad := range []string{
		``, `null`, `[]`, `{"table":"accounts"}`, `{"keys":[1]}`,
		`{"table":"accounts","keys":[]}`, `{"table":"accounts","keys":[-1]}`,
		`{"table":"accounts","keys":[1.5]}`, `{"table":"accounts","keys":["1"]}`,
		`{"table":"accounts","keys":[1],"extra":true}`, `{"table":"accounts","keys":[1]} {}`,
		`{"table":"accounts","keys":[99999999999999999999]}`,
	} {
		_, err := promote.DecodePayload([]byte(bad))
		if !errors.Is(err, promote.ErrBadPayload) || !errors.Is(err, asynq.SkipRetry) {
			t.Errorf("DecodePayload(%q) = %v, want ErrBadPayload and SkipRetry", bad, err)
		}
	}
}

func FuzzDecodePayload(f *testing.F) {
	f.Add([]byte(`{"table":"accounts","keys":[1,2,3]}`))
	f.Add([]byte(`{"table":"","keys":[-1]}`))
	f.Add([]byte(`{"table":"a","keys":[1]}garbage`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := promote.DecodePayload(b)
		if err != nil {
			if !errors.Is(err, promote.ErrBadPayload) {
				t.Fatalf("error does not wrap ErrBadPayload: %v", err)
			}
			return
		}
		if p.Table == "" || len(p.Keys) == 0 || len(p.Keys) > promote.MaxTaskKeys {
			t.Fatalf("accepted invalid payload %+v", p)
		}
		for _, k := range p.Keys {
			if k < 0 {
				t.Fatalf("accepted negative key %d", k)
			}
		}
	})
}

// worker runs a real asynq server on a queue of its own for one test.
type worker struct {
	queue     string
	client    *asynq.Client
	inspector *asynq.Inspector
}

func startWorker(t *testing.T, rdb *redis.Client, h asynq.Handler) *worker {
	t.Helper()
	queue := "lmtest-" + testenv.Suffix()
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Queues:            map[string]int{queue: 1},
		Concurrency:       4,
		TaskCheckInterval: 20 * time.Millisecond,
		RetryDelayFunc:    func(int, error, *asynq.Task) time.Duration { return 50 * time.Millisecond },
		LogLevel:          asynq.FatalLevel,
	})
	mux := asynq.NewServeMux()
	mux.Handle(promote.TaskType, h)
	if err := srv.Start(mux); err != nil {
		t.Fatal(err)
	}
	w := &worker{queue: queue, client: asynq.NewClientFromRedisClient(rdb), inspector: asynq.NewInspectorFromRedisClient(rdb)}
	t.Cleanup(func() {
		srv.Shutdown()
		_ = w.inspector.DeleteQueue(queue, true)
	})
	return w
}

func TestHandlerArchivesBadPayloadWithoutRetry(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	rdb, _ := testenv.Redis(t)
	reg := prometheus.NewRegistry()
	h, err := promote.NewHandler([]*promote.Copier{b.copier}, &promote.HandlerConfig{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	w := startWorker(t, rdb, h)
	task := asynq.NewTask(promote.TaskType, []byte(`{"table":"accounts","keys":[-5]}`))
	if _, err := w.client.Enqueue(task, asynq.Queue(w.queue), asynq.MaxRetry(10)); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "bad task archived", func() bool {
		info, err := w.inspector.GetQueueInfo(w.queue)
		return err == nil && info.Archived == 1
	})
	archived, err := w.inspector.ListArchivedTasks(w.queue)
	if err != nil {
		t.Fatal(err)
	}
	if len(archived) != 1 || archived[0].Retried != 0 {
		t.Fatalf("archived = %+v, want one task never retried", archived)
	}
	if got := testenv.CounterValue(t, reg, "lazymigrate_promote_tasks_total", "outcome", "bad_payload"); got != 1 {
		t.Fatalf("bad_payload tasks = %v, want 1", got)
	}
}

func TestPromotionEndToEnd(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, nil)
	rdb, _ := testenv.Redis(t)
	reg := prometheus.NewRegistry()
	h, err := promote.NewHandler([]*promote.Copier{b.copier}, &promote.HandlerConfig{
		Settled:    map[string]promote.SettledChecker{"accounts": b.tracker},
		Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	w := startWorker(t, rdb, h)
	e, err := promote.NewEnqueuer(w.client, "accounts", &promote.EnqueuerConfig{Queue: w.queue, BatchSize: 7, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Stop)

	var all []int64
	for k := int64(1); k <= 100; k++ {
		all = append(all, k)
	}
	if n := e.Schedule(all...); n != 100 {
		t.Fatalf("Schedule accepted %d keys, want 100", n)
	}
	testenv.Eventually(t, 20*time.Second, "all OLD keys promoted", func() bool {
		return len(rowsText(t, b.pair.New, "accounts")) == 90
	})
	if !mapsEqual(rowsText(t, b.pair.Old, "accounts"), rowsText(t, b.pair.New, "accounts")) {
		t.Fatal("NEW differs from OLD after promotion")
	}
	testenv.Eventually(t, 10*time.Second, "keys in OLD marked settled", func() bool {
		n, err := b.tracker.Count(ctx)
		return err == nil && n == 90
	})
	if got := testenv.CounterValue(t, reg, "lazymigrate_promotions_total", "outcome", "enqueued"); got != 100 {
		t.Fatalf("enqueued = %v, want 100", got)
	}
	testenv.Eventually(t, 10*time.Second, "handler counted the copies", func() bool {
		return testenv.CounterValue(t, reg, "lazymigrate_promotions_total", "outcome", "copied") == 90
	})

	// A task for settled keys is skipped by the tracker check.
	if n := e.Schedule(1); n != 0 {
		t.Fatalf("Schedule(1) within the dedupe window accepted %d, want 0", n)
	}
}

// A hot key missed by many concurrent requests is promoted once.
func TestEnqueuerDeduplicatesHotKey(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	reg := prometheus.NewRegistry()
	e, err := promote.NewEnqueuer(rec, "accounts", &promote.EnqueuerConfig{Registerer: reg, FlushInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 200 {
		wg.Go(func() {
			for range 5 {
				e.Schedule(42)
				time.Sleep(time.Millisecond) // spread the calls over many flushes
			}
		})
	}
	wg.Wait()
	e.Stop()
	e.Stop() // safe twice
	if got := rec.keys(); len(got) != 1 || got[0] != 42 {
		t.Fatalf("enqueued keys = %v, want [42] once", got)
	}
	if got := testenv.CounterValue(t, reg, "lazymigrate_promotions_total", "outcome", "deduplicated"); got != 999 {
		t.Fatalf("deduplicated = %v, want 999", got)
	}
}

func TestEnqueuerDropsWhenRedisFailsAndForgets(t *testing.T) {
	t.Parallel()
	rec := &recorder{fail: true}
	reg := prometheus.NewRegistry()
	e, err := promote.NewEnqueuer(rec, "accounts", &promote.EnqueuerConfig{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	e.Schedule(1, 2, 3)
	if err := e.Flush(context.Background()); err == nil {
		t.Fatal("Flush with Redis failing: want an error")
	}
	if got := testenv.CounterValue(t, reg, "lazymigrate_promotions_total", "outcome", "dropped"); got != 3 {
		t.Fatalf("dropped = %v, want 3", got)
	}
	// Dropped keys are forgotten, so the next miss schedules them again.
	rec.setFail(false)
	if n := e.Schedule(1, 2, 3); n != 3 {
		t.Fatalf("re-Schedule after a drop accepted %d, want 3", n)
	}
	if err := e.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := rec.keys(); len(got) != 3 {
		t.Fatalf("enqueued %v, want 3 keys", got)
	}
}

func TestEnqueuerCapsPending(t *testing.T) {
	t.Parallel()
	e, err := promote.NewEnqueuer(&recorder{}, "accounts", &promote.EnqueuerConfig{MaxPending: 10})
	if err != nil {
		t.Fatal(err)
	}
	ks := make([]int64, 25)
	for i := range ks {
		ks[i] = int64(i)
	}
	if n := e.Schedule(ks...); n != 10 {
		t.Fatalf("Schedule accepted %d keys past MaxPending 10", n)
	}
}

func TestNewEnqueuerRejectsBadConfig(t *testing.T) {
	t.Parallel()
	for _, cfg := range []promote.EnqueuerConfig{
		{BatchSize: promote.MaxTaskKeys + 1}, {BatchSize: -1}, {FlushInterval: -time.Second}, {MaxPending: -1},
	} {
		if _, err := promote.NewEnqueuer(&recorder{}, "accounts", &cfg); err == nil {
			t.Errorf("NewEnqueuer(%+v): want an error", cfg)
		}
	}
	if _, err := promote.NewEnqueuer(&recorder{}, "", nil); err == nil {
		t.Error("NewEnqueuer without a table: want an error")
	}
}

// recorder stands in for the asynq client to inject enqueue failures; it
// decodes what it is given exactly as a worker would.
type recorder struct {
	mu    sync.Mutex
	fail  bool
	delay time.Duration // per enqueue, to let Stop land mid-flush
	got   []int64
}

func (r *recorder) setFail(v bool) { r.mu.Lock(); r.fail = v; r.mu.Unlock() }

func (r *recorder) keys() []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]int64(nil), r.got...)
}

func (r *recorder) EnqueueContext(ctx context.Context, task *asynq.Task, _ ...asynq.Option) (*asynq.TaskInfo, error) {
	if r.delay > 0 {
		select {
		case <-time.After(r.delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail {
		return nil, errors.New("redis: connection refused")
	}
	p, err := promote.DecodePayload(task.Payload())
	if err != nil {
		return nil, err
	}
	r.got = append(r.got, p.Keys...)
	return &asynq.TaskInfo{}, nil
}

// Invariant 6 for tasks: the same promotion task run twice changes nothing
// beyond the first run, with or without a tracker to skip settled keys, and
// with a tracker that is down.
func TestHandlerRunsTaskTwice(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, nil)
	dead := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	t.Cleanup(func() { _ = dead.Close() })
	deadTracker, err := tracker.New(dead, "accounts", nil)
	if err != nil {
		t.Fatal(err)
	}
	task, err := promote.NewTask("accounts", []int64{1, 2, 3, 10})
	if err != nil {
		t.Fatal(err)
	}
	var first map[int64]string
	for _, tc := range []struct {
		name    string
		settled promote.SettledChecker
	}{
		{"WithTracker", b.tracker},
		{"WithTrackerAgain", b.tracker},
		{"WithoutTracker", nil},
		{"WithTrackerDown", deadTracker},
	} {
		reg := prometheus.NewRegistry()
		cfg := &promote.HandlerConfig{Registerer: reg}
		if tc.settled != nil {
			cfg.Settled = map[string]promote.SettledChecker{"accounts": tc.settled}
		}
		h, err := promote.NewHandler([]*promote.Copier{b.copier}, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.ProcessTask(ctx, task); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got := rowsText(t, b.pair.New, "accounts")
		if first == nil {
			first = got
			if len(first) != 3 {
				t.Fatalf("first run copied %d rows, want 3", len(first))
			}
			continue
		}
		if !mapsEqual(got, first) {
			t.Fatalf("%s: a second run changed NEW", tc.name)
		}
		if copied := testenv.CounterValue(t, reg, "lazymigrate_promotions_total", "outcome", "copied"); copied != 0 {
			t.Fatalf("%s: copied %v rows on a rerun", tc.name, copied)
		}
	}
}

// Stop must finish the flush it interrupts: the keys a flush has taken are
// enqueued, not dropped.
func TestEnqueuerStopFinishesFlushUnderWay(t *testing.T) {
	t.Parallel()
	rec := &recorder{delay: 20 * time.Millisecond}
	e, err := promote.NewEnqueuer(rec, "accounts", &promote.EnqueuerConfig{BatchSize: 10, FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ks := make([]int64, 200)
	for i := range ks {
		ks[i] = int64(i)
	}
	e.Schedule(ks...) // a full batch wakes the loop: 20 tasks of 20ms each
	testenv.Eventually(t, 5*time.Second, "the flush started", func() bool { return len(rec.keys()) > 0 })
	e.Stop()
	if got := len(rec.keys()); got != 200 {
		t.Fatalf("enqueued %d of 200 accepted keys", got)
	}
}

func TestEnqueuerRefusesKeysAfterStop(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	reg := prometheus.NewRegistry()
	e, err := promote.NewEnqueuer(rec, "accounts", &promote.EnqueuerConfig{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.Stop()
	if n := e.Schedule(1, 2, 3); n != 0 {
		t.Fatalf("Schedule after Stop accepted %d keys that will never be enqueued", n)
	}
	if got := testenv.CounterValue(t, reg, "lazymigrate_promotions_total", "outcome", "dropped"); got != 3 {
		t.Fatalf("dropped = %v, want 3", got)
	}
}

// A key scheduled longer than a window ago is scheduled again, even after
// an idle period.
func TestEnqueuerForgetsAfterIdleWindow(t *testing.T) {
	t.Parallel()
	e, err := promote.NewEnqueuer(&recorder{}, "accounts", &promote.EnqueuerConfig{DedupeWindow: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if n := e.Schedule(42); n != 1 {
		t.Fatalf("first Schedule accepted %d", n)
	}
	if n := e.Schedule(42); n != 0 {
		t.Fatalf("Schedule within the window accepted %d", n)
	}
	time.Sleep(120 * time.Millisecond) // the window is what is under test
	if n := e.Schedule(42); n != 1 {
		t.Fatal("a key scheduled more than a window ago was still deduplicated")
	}
}

// One row NEW refuses must not hold back the others in its task: the
// handler isolates it, copies the rest, and fails the task without retry,
// naming the rejected keys.
func TestHandlerIsolatesRejectedRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// Keys 7 and 13 hold values too long for NEW's varchar(5).
	p, h, reg, task := rejectingTask(t, 20, "CASE WHEN i IN (7, 13) THEN 'much too long' ELSE 'ok' END", 5, promote.Hooks{})
	err := h.ProcessTask(ctx, task)
	if !errors.Is(err, promote.ErrRowRejected) || !errors.Is(err, asynq.SkipRetry) {
		t.Fatalf("err = %v, want ErrRowRejected and SkipRetry", err)
	}
	if !strings.Contains(err.Error(), "among them [7 13]") {
		t.Fatalf("error does not name the rejected keys: %v", err)
	}
	got := rowsText(t, p.New, "t")
	if len(got) != 18 {
		t.Fatalf("NEW holds %d rows, want the 18 that fit", len(got))
	}
	if _, ok := got[7]; ok {
		t.Fatal("rejected key 7 is in NEW")
	}
	if n := testenv.CounterValue(t, reg, "lazymigrate_promotions_total", "outcome", "rejected"); n != 2 {
		t.Fatalf("rejected = %v, want 2", n)
	}
	if n := testenv.CounterValue(t, reg, "lazymigrate_promotions_total", "outcome", "copied"); n != 18 {
		t.Fatalf("copied = %v, want 18", n)
	}
}

// An Enqueuer whose Start context ended enqueues nothing more, so it must
// refuse keys rather than accept and lose them.
func TestEnqueuerRefusesKeysAfterStartContextEnds(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	e, err := promote.NewEnqueuer(&recorder{}, "accounts", &promote.EnqueuerConfig{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	k := int64(0)
	testenv.Eventually(t, 5*time.Second, "Schedule refuses keys once the loop has ended", func() bool {
		k++
		return e.Schedule(k) == 0
	})
	e.Stop()
	if got := testenv.CounterValue(t, reg, "lazymigrate_promotions_total", "outcome", "dropped"); got < 1 {
		t.Fatal("refused keys were not counted as dropped")
	}
}

// A task whose every row NEW rejects must not spend twice as many copies
// as keys isolating them.
func TestHandlerBoundsIsolationOfRejectedBatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var copies atomic.Int64
	_, h, reg, task := rejectingTask(t, 500, "'too long'", 1,
		promote.Hooks{AfterRead: func(context.Context, []int64) { copies.Add(1) }})
	if err := h.ProcessTask(ctx, task); !errors.Is(err, promote.ErrRowRejected) || !errors.Is(err, asynq.SkipRetry) {
		t.Fatalf("err = %v, want ErrRowRejected and SkipRetry", err)
	}
	if n := copies.Load(); n > 64 {
		t.Fatalf("%d copies to isolate an all-bad batch of 500", n)
	}
	if n := testenv.CounterValue(t, reg, "lazymigrate_promotions_total", "outcome", "rejected"); n != 500 {
		t.Fatalf("rejected = %v, want 500", n)
	}
}

// rejectingTask makes OLD t(id, s text) with n rows whose s is the SQL
// expression value (over i, the key), NEW t with s varchar(width), and a
// handler and task to promote all n keys.
func rejectingTask(t *testing.T, n int, value string, width int, hooks promote.Hooks) (*testenv.Pair, *promote.Handler, *prometheus.Registry, *asynq.Task) {
	t.Helper()
	ctx := context.Background()
	p := testenv.NewPair(t)
	p.Old.Exec(t, `CREATE TABLE t (id bigint PRIMARY KEY, s text)`)
	p.New.Exec(t, fmt.Sprintf(`CREATE TABLE t (id bigint PRIMARY KEY, s varchar(%d))`, width))
	p.Old.Exec(t, fmt.Sprintf(`INSERT INTO t SELECT i, %s FROM generate_series(1, %d) i`, value, n))
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		t.Fatal(err)
	}
	cp, err := promote.NewCopier(ctx, p.Old.Pool, p.New.Pool, &promote.CopierConfig{Table: "t", Hooks: hooks})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	h, err := promote.NewHandler([]*promote.Copier{cp}, &promote.HandlerConfig{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ks := make([]int64, n)
	for i := range ks {
		ks[i] = int64(i + 1)
	}
	task, err := promote.NewTask("t", ks)
	if err != nil {
		t.Fatal(err)
	}
	return p, h, reg, task
}

// gate blocks each enqueue until it is opened, then fails it.
type gate struct {
	entered chan struct{}
	open    chan struct{}
	once    sync.Once
}

func (g *gate) EnqueueContext(ctx context.Context, _ *asynq.Task, _ ...asynq.Option) (*asynq.TaskInfo, error) {
	g.once.Do(func() { close(g.entered) })
	select {
	case <-g.open:
	case <-ctx.Done():
	}
	return nil, errors.New("redis: connection refused")
}

// Flush returns only once every key scheduled before it is enqueued or
// dropped, including keys the background loop took and is still enqueuing:
// a caller that flushes before shutting down, or before reading the
// metrics, must not find them in flight.
func TestFlushWaitsForFlushUnderWay(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	g := &gate{entered: make(chan struct{}), open: make(chan struct{})}
	e, err := promote.NewEnqueuer(g, "accounts", &promote.EnqueuerConfig{FlushInterval: time.Millisecond, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	release := sync.OnceFunc(func() { close(g.open) })
	t.Cleanup(func() { release(); e.Stop() })
	e.Schedule(1, 2)
	<-g.entered // the background loop has taken the keys and is enqueuing them

	flushed := make(chan error, 1)
	go func() { flushed <- e.Flush(ctx) }()
	select {
	case <-flushed:
		t.Fatal("Flush returned while the keys scheduled before it were still being enqueued")
	case <-time.After(200 * time.Millisecond):
	}
	release()
	if err := <-flushed; err != nil {
		t.Fatalf("Flush: %v (it had nothing left of its own to enqueue)", err)
	}
	if got := testenv.CounterValue(t, reg, "lazymigrate_promotions_total", "outcome", "dropped"); got != 2 {
		t.Fatalf("dropped = %v once Flush returned, want 2", got)
	}
}
