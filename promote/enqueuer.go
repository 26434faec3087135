package promote

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazymigrate/lazymigrate/internal/metrics"
)

// TaskEnqueuer is the part of asynq's client the Enqueuer uses.
// *asynq.Client implements it.
type TaskEnqueuer interface {
	EnqueueContext(ctx context.Context, task *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error)
}

var _ TaskEnqueuer = (*asynq.Client)(nil)

// EnqueuerConfig configures an Enqueuer.
type EnqueuerConfig struct {
	// Queue is the asynq queue for promotion tasks. Defaults to "lazymigrate".
	Queue string
	// BatchSize is the most keys one task carries; a full batch is enqueued
	// at once. Defaults to 500; at most MaxTaskKeys.
	BatchSize int
	// FlushInterval is the longest a scheduled key waits before its batch is
	// enqueued. Defaults to 10ms.
	FlushInterval time.Duration
	// MaxPending caps the keys waiting for a flush; past it, Schedule drops
	// keys (counted; the sweeper copies them later). Defaults to 100,000.
	MaxPending int
	// DedupeWindow is how long a scheduled key is not scheduled again by
	// this process: long enough for its task to run. Defaults to 1 minute.
	DedupeWindow time.Duration
	// DedupeKeys caps the keys remembered for deduplication, which bounds
	// memory. Defaults to 1,000,000 (about 40 MB at most).
	DedupeKeys int
	// MaxRetry is asynq's retry limit for promotion tasks. A task that fails
	// for good leaves its keys to the sweeper. Defaults to 5.
	MaxRetry int
	// Timeout bounds one attempt of a task. Defaults to 1 minute.
	Timeout time.Duration
	// Logger defaults to discarding.
	Logger *slog.Logger
	// Registerer receives lazymigrate_promotions_total. Defaults to none.
	Registerer prometheus.Registerer
}

// promotionsHelp describes lazymigrate_promotions_total, which the Enqueuer
// and the Handler share: one text, or the registry would refuse the second.
const promotionsHelp = "Keys through the promotion pipeline, by outcome: enqueued, deduplicated or dropped when scheduled; " +
	"settled (skipped), copied, present, tombstoned, absent or rejected when handled."

// Enqueuer schedules promotion of keys of one table. Schedule never touches
// the network: keys are deduplicated and batched in memory and a background
// loop enqueues one asynq task per batch, so a read that misses NEW pays no
// Redis round trip, and a hot key missed by many requests is promoted once.
type Enqueuer struct {
	client TaskEnqueuer
	table  string
	cfg    EnqueuerConfig
	opts   []asynq.Option

	// flushing is held by the flush under way: Flush waits for it, so that
	// keys the background loop took are enqueued or dropped before Flush
	// returns.
	flushing chan struct{}

	mu      sync.Mutex
	pending []int64
	recent  *window
	wake    chan struct{}

	stopOnce sync.Once
	started  bool
	stopped  bool // under mu: Schedule refuses keys once set
	cancel   context.CancelFunc
	done     chan struct{}

	outcomes *prometheus.CounterVec
	log      *slog.Logger
}

// NewEnqueuer returns an Enqueuer for table (the Copier's table name). Call
// Start to begin enqueuing.
func NewEnqueuer(client TaskEnqueuer, table string, cfg *EnqueuerConfig) (*Enqueuer, error) {
	var c EnqueuerConfig
	if cfg != nil {
		c = *cfg
	}
	if client == nil {
		return nil, errors.New("promote: NewEnqueuer needs an asynq client")
	}
	if table == "" {
		return nil, errors.New("promote: NewEnqueuer needs a table name")
	}
	c.Queue = cmp.Or(c.Queue, "lazymigrate")
	c.BatchSize = cmp.Or(c.BatchSize, 500)
	c.FlushInterval = cmp.Or(c.FlushInterval, 10*time.Millisecond)
	c.MaxPending = cmp.Or(c.MaxPending, 100_000)
	c.DedupeWindow = cmp.Or(c.DedupeWindow, time.Minute)
	c.DedupeKeys = cmp.Or(c.DedupeKeys, 1_000_000)
	c.MaxRetry = cmp.Or(c.MaxRetry, 5)
	c.Timeout = cmp.Or(c.Timeout, time.Minute)
	switch {
	case c.BatchSize < 0 || c.BatchSize > MaxTaskKeys:
		return nil, fmt.Errorf("promote: EnqueuerConfig.BatchSize must be in [1, %d], got %d", MaxTaskKeys, c.BatchSize)
	case c.FlushInterval < 0, c.DedupeWindow < 0, c.Timeout < 0:
		return nil, errors.New("promote: EnqueuerConfig durations must not be negative")
	case c.MaxPending < 0, c.DedupeKeys < 0, c.MaxRetry < 0:
		return nil, errors.New("promote: EnqueuerConfig.MaxPending, DedupeKeys and MaxRetry must not be negative")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	e := &Enqueuer{
		client:   client,
		table:    table,
		cfg:      c,
		opts:     []asynq.Option{asynq.Queue(c.Queue), asynq.MaxRetry(c.MaxRetry), asynq.Timeout(c.Timeout)},
		recent:   newWindow(c.DedupeWindow, c.DedupeKeys),
		wake:     make(chan struct{}, 1),
		flushing: make(chan struct{}, 1),
		done:     make(chan struct{}),
		log:      c.Logger,
	}
	e.outcomes = metrics.CounterVec(c.Registerer, "promotions_total", promotionsHelp,
		"table", "outcome").MustCurryWith(prometheus.Labels{"table": table})
	return e, nil
}

// Schedule asks for keys to be promoted and returns how many were accepted.
// Keys scheduled within DedupeWindow are skipped; when MaxPending keys are
// waiting, or once the Enqueuer stops (Stop is called, or the loop sees
// Start's context end), the rest are dropped (and counted). It does no I/O
// and never blocks on the network. Negative keys are ignored; callers
// validate keys before reading.
func (e *Enqueuer) Schedule(ks ...int64) int {
	now := time.Now()
	accepted, dup, dropped := 0, 0, 0
	e.mu.Lock()
	for _, k := range ks {
		switch {
		case k < 0:
			continue
		case e.stopped:
			dropped++
		case e.recent.has(k, now):
			dup++
		case len(e.pending) >= e.cfg.MaxPending:
			dropped++
		default:
			e.recent.add(k, now)
			e.pending = append(e.pending, k)
			accepted++
		}
	}
	full := len(e.pending) >= e.cfg.BatchSize
	e.mu.Unlock()

	if full {
		select {
		case e.wake <- struct{}{}:
		default:
		}
	}
	if dup > 0 {
		e.outcomes.WithLabelValues("deduplicated").Add(float64(dup))
	}
	if dropped > 0 {
		e.outcomes.WithLabelValues("dropped").Add(float64(dropped))
	}
	return accepted
}

// Start begins the background loop that enqueues scheduled keys. It returns
// at once; the loop runs until ctx ends or Stop is called, and either way
// ends as Stop describes.
func (e *Enqueuer) Start(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.started {
		return errors.New("promote: Enqueuer already started")
	}
	e.started = true
	ctx, e.cancel = context.WithCancel(ctx)
	go e.run(ctx)
	return nil
}

// Stop ends the loop after enqueuing what is pending, waiting at most
// flushTimeout for Redis; keys it could not enqueue by then, and keys
// scheduled afterwards, are dropped. It is safe to call more than once, and
// before Start, when it enqueues the keys scheduled so far itself.
func (e *Enqueuer) Stop() {
	e.stopOnce.Do(func() {
		e.mu.Lock()
		started := e.started
		e.started = true // a Start after Stop must not run
		e.stopped = true
		e.mu.Unlock()
		if !started {
			e.finish(context.Background())
			return
		}
		e.cancel()
		<-e.done
	})
}

// flushTimeout bounds one flush: a Redis that hangs must not hold Stop, or
// the keys behind the flush, forever.
const flushTimeout = 5 * time.Second

// run enqueues pending keys until ctx ends. ctx is only the stop signal:
// each flush runs under a context of its own, so that stopping never
// cancels a flush half done and drops the keys it had taken.
func (e *Enqueuer) run(ctx context.Context) {
	defer close(e.done)
	t := time.NewTicker(e.cfg.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			e.finish(ctx)
			return
		case <-t.C:
		case <-e.wake:
		}
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), flushTimeout)
		_ = e.Flush(fctx)
		cancel()
	}
}

// finish is the last flush: once it returns, every key Schedule accepted
// is enqueued or counted as dropped.
func (e *Enqueuer) finish(ctx context.Context) {
	// Refuse keys before the flush takes pending, not after: a key accepted
	// in between would never be enqueued, nor counted. Stop has set it
	// already, but Start's context ending has not.
	e.mu.Lock()
	e.stopped = true
	e.mu.Unlock()
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), flushTimeout)
	defer cancel()
	err := e.Flush(fctx)
	// The flush gives up without taking pending if a caller's Flush, stuck
	// on Redis, holds the slot past flushTimeout; nothing would take these
	// keys after it.
	e.mu.Lock()
	left := e.pending
	e.pending = nil
	e.mu.Unlock()
	if len(left) > 0 {
		_ = e.drop(fctx, left, err)
	}
}

// Flush enqueues every pending key now, in tasks of at most BatchSize keys,
// and returns once every key scheduled before it is enqueued or dropped
// (waiting, within ctx, for a flush of the background loop under way). Keys
// whose task could not be enqueued are counted as dropped and forgotten by
// the dedupe window, so a later read schedules them again.
func (e *Enqueuer) Flush(ctx context.Context) error {
	select {
	case e.flushing <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("promote: flush of %s: %w", e.table, ctx.Err())
	}
	defer func() { <-e.flushing }()
	e.mu.Lock()
	batch := e.pending
	e.pending = nil
	e.mu.Unlock()

	var errs []error
	for len(batch) > 0 {
		n := min(len(batch), e.cfg.BatchSize)
		if err := e.enqueue(ctx, batch[:n]); err != nil {
			errs = append(errs, err)
		}
		batch = batch[n:]
	}
	return errors.Join(errs...)
}

func (e *Enqueuer) enqueue(ctx context.Context, ks []int64) error {
	task, err := NewTask(e.table, ks, e.opts...)
	if err == nil {
		_, err = e.client.EnqueueContext(ctx, task)
	}
	if err != nil {
		return e.drop(ctx, ks, err)
	}
	e.outcomes.WithLabelValues("enqueued").Add(float64(len(ks)))
	return nil
}

// drop counts keys that will not be enqueued and forgets them, so that a
// later read schedules them again.
func (e *Enqueuer) drop(ctx context.Context, ks []int64, err error) error {
	e.mu.Lock()
	e.recent.forget(ks)
	e.mu.Unlock()
	e.outcomes.WithLabelValues("dropped").Add(float64(len(ks)))
	e.log.WarnContext(ctx, "lazymigrate: promotion dropped; the sweeper will copy these keys",
		"table", e.table, "num_keys", len(ks), "error", err)
	return fmt.Errorf("promote: enqueue %d keys of %s: %w", len(ks), e.table, err)
}

// window remembers keys for about ttl, in two generations: a key is recent
// if either holds it. Rotating generations costs O(1) and bounds memory to
// two maps of at most max/2 keys each.
type window struct {
	ttl       time.Duration
	max       int
	cur, prev map[int64]struct{}
	rotated   time.Time
}

func newWindow(ttl time.Duration, max int) *window {
	return &window{ttl: ttl, max: max, cur: map[int64]struct{}{}, prev: map[int64]struct{}{}, rotated: time.Now()}
}

func (w *window) has(k int64, now time.Time) bool {
	w.maybeRotate(now)
	if _, ok := w.cur[k]; ok {
		return true
	}
	_, ok := w.prev[k]
	return ok
}

func (w *window) add(k int64, now time.Time) {
	w.maybeRotate(now)
	w.cur[k] = struct{}{}
}

func (w *window) forget(ks []int64) {
	for _, k := range ks {
		delete(w.cur, k)
		delete(w.prev, k)
	}
}

func (w *window) maybeRotate(now time.Time) {
	age := now.Sub(w.rotated)
	switch {
	case age >= w.ttl:
		// Idle for a whole window: everything remembered is older than it.
		clear(w.prev)
		clear(w.cur)
	case age >= w.ttl/2 || len(w.cur) >= w.max/2:
		w.prev, w.cur = w.cur, make(map[int64]struct{}, len(w.cur))
	default:
		return
	}
	w.rotated = now
}
