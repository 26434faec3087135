package coldsweep

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"

	"github.com/lazymigrate/lazymigrate/promote"
	"github.com/lazymigrate/lazymigrate/tracker"
)

// Defaults of Config. Each worker waits on a database most of the time
// (locks, COPY, commit), so two per core keep a 2-core machine busy: 4
// workers swept 1.1-1.25x faster than 2 in BenchmarkSweep.
//
// A chunk of 32,768 keys is 32 lock stripes at promote's default width:
// one NEW transaction, and no stripe shared with the next chunk, which
// would make the two workers wait for each other. Where most keys are
// settled, what is left costs per chunk (a statement on each side and a
// commit) as much as per row: 10,000-key chunks swept 90%-settled
// scattered keys in 0.27x the time of an empty sweep, 32,768-key ones in
// 0.19-0.21x. A concurrent Delete of a key in a chunk being written waits
// for that chunk's transaction.
const (
	DefaultChunk   = 1 << 15
	DefaultWorkers = 4
)

// ErrInterrupted is returned by Run when its context ended before the sweep
// did. The chunks in flight were finished and marked; running the sweep
// again continues where this one stopped.
var ErrInterrupted = errors.New("coldsweep: sweep interrupted")

// ErrChunksFailed is returned by Run when it swept everything it could but
// NEW refused rows of some chunks (see Summary.Failed). Those chunks stay
// unsettled; fix the rows and run again.
var ErrChunksFailed = errors.New("coldsweep: some chunks failed")

// Config configures a Sweeper.
type Config struct {
	// Copier copies the rows; the one promotion uses, so that tombstones
	// and no-overwrite hold. Required.
	Copier *promote.Copier
	// Tracker is the table's bitmap of settled keys. Required.
	Tracker *tracker.Tracker
	// Redis, when set, carries the sweep's progress (for Status, from any
	// machine) and its pause flag (see Pause). It is normally the tracker's
	// Redis. Without it the sweep runs, but Status and a pause from another
	// process cannot see it.
	Redis redis.UniversalClient
	// Prefix starts the Redis keys of the progress and the pause flag.
	// Defaults to "lazymigrate", as the tracker's.
	Prefix string

	// Range is the key range to sweep. The zero value is [min, max] of
	// OLD's keys, read when Run starts.
	Range Span
	// Chunk is the number of keys per chunk, at most promote.MaxRangeKeys.
	// Defaults to DefaultChunk.
	Chunk int64
	// Workers is the number of chunks copied concurrently. Defaults to
	// DefaultWorkers.
	Workers int
	// Shard restricts the sweep to one of several disjoint sets of chunks,
	// so that several processes can share one sweep.
	Shard Shard
	// Rate caps the keys copied per second (the unsettled keys of each
	// chunk, whether OLD has them or not); 0 means no cap.
	Rate float64
	// KeysThreshold chooses how a chunk is copied: when at most this share
	// of its keys is unsettled, only those keys are copied (promote's
	// CopyRangeKeys); above it, the whole range, skipping what NEW has
	// (CopyRange). Both use binary COPY when the copier can. Defaults to
	// 0.5.
	KeysThreshold float64
	// Throttle holds the sweep back while the databases are under
	// pressure. Nil: the defaults of ThrottleConfig.
	Throttle *ThrottleConfig
	// Retries is how many times a chunk whose database was unavailable is
	// tried again, with a growing pause, before the sweep gives up.
	// Defaults to 8: pauses of 1, 2, 4, 8, 16, 30, 30 and 30 seconds,
	// about 2 minutes in all.
	Retries int
	// StopTimeout bounds how long chunks in flight may take to finish once
	// the sweep is stopping: Run's context has ended, or a chunk failed in
	// a way that stops the sweep. Chunks still running then are cancelled
	// and left unsettled. Defaults to 1 minute.
	StopTimeout time.Duration
	// ProgressInterval is how often Progress is called and the progress
	// written to Redis. Defaults to 1 second.
	ProgressInterval time.Duration
	// Progress, when set, receives the progress every ProgressInterval and
	// once at the end. Calls never overlap, and the final one (Finished)
	// is the last.
	Progress func(Progress)

	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Progress is a snapshot of a running sweep.
type Progress struct {
	Table string `json:"table"`
	Shard string `json:"shard"`
	// Layout is the sweep's chunk size and shard count, "chunk=C shards=N":
	// shards of one sweep share it.
	Layout string `json:"layout"`
	Range  Span   `json:"range"`
	// Chunks counts the chunks of the sweep (of its shard); ChunksDone
	// those finished, of which ChunksSkipped were already settled and
	// ChunksFailed could not be copied.
	Chunks        int64 `json:"chunks"`
	ChunksDone    int64 `json:"chunks_done"`
	ChunksSkipped int64 `json:"chunks_skipped"`
	ChunksFailed  int64 `json:"chunks_failed"`
	// Keys counts the keys of the finished chunks; Rows what the copier
	// did with the keys it was given.
	Keys int64          `json:"keys"`
	Rows promote.Result `json:"rows"`
	// RowsPerSec and KeysPerSec are measured over the last interval.
	RowsPerSec float64       `json:"rows_per_sec"`
	KeysPerSec float64       `json:"keys_per_sec"`
	Elapsed    time.Duration `json:"elapsed_ns"`
	// ETA is the time the chunks left should take, at the pace chunks
	// were copied so far (see estimateETA); 0 when unknown.
	ETA time.Duration `json:"eta_ns"`
	// Throttled names why the sweep is held back ("" when it is not).
	Throttled string    `json:"throttled,omitempty"`
	Finished  bool      `json:"finished"`
	Updated   time.Time `json:"updated"`
}

// Fraction returns the share of chunks done, in [0, 1].
func (p Progress) Fraction() float64 {
	if p.Chunks == 0 {
		return 1
	}
	return float64(p.ChunksDone) / float64(p.Chunks)
}

// ChunkError is a chunk the sweep could not copy.
type ChunkError struct {
	Span Span
	Err  error
}

func (e ChunkError) Error() string { return fmt.Sprintf("chunk %v: %v", e.Span, e.Err) }

func (e ChunkError) Unwrap() error { return e.Err }

// MarshalJSON writes the error as its message.
func (e ChunkError) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Span  Span   `json:"span"`
		Error string `json:"error"`
	}{e.Span, e.Err.Error()})
}

// Summary is what a finished (or stopped) sweep did.
type Summary struct {
	Progress
	// Failed lists the chunks NEW refused rows of (at most 100).
	Failed []ChunkError `json:"failed,omitempty"`
	// Throttled is the time workers spent held back by the throttle.
	ThrottledFor time.Duration `json:"throttled_ns"`
}

// Sweeper walks a table's key range chunk by chunk and copies what the
// tracker says is unsettled.
type Sweeper struct {
	cfg      Config
	table    string
	log      *slog.Logger
	metrics  *sweepMetrics
	throttle *throttle
}

// New checks cfg and returns a Sweeper.
func New(cfg *Config) (*Sweeper, error) {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if c.Copier == nil {
		return nil, errors.New("coldsweep: Config.Copier is required")
	}
	if c.Tracker == nil {
		return nil, errors.New("coldsweep: Config.Tracker is required")
	}
	c.Chunk = cmp.Or(c.Chunk, DefaultChunk)
	if c.Chunk < 1 || c.Chunk > promote.MaxRangeKeys {
		return nil, fmt.Errorf("coldsweep: Config.Chunk must be between 1 and %d, got %d", promote.MaxRangeKeys, c.Chunk)
	}
	c.Workers = cmp.Or(c.Workers, DefaultWorkers)
	if c.Workers < 1 {
		return nil, fmt.Errorf("coldsweep: Config.Workers must be at least 1, got %d", c.Workers)
	}
	if c.Rate < 0 {
		return nil, fmt.Errorf("coldsweep: Config.Rate must not be negative, got %g", c.Rate)
	}
	if c.Range != (Span{}) && (c.Range.Lo < 0 || c.Range.Hi < c.Range.Lo) {
		return nil, fmt.Errorf("coldsweep: Config.Range %v: want 0 <= Lo <= Hi", c.Range)
	}
	if c.Shard.N > 1 && (c.Shard.I < 0 || c.Shard.I >= c.Shard.N) {
		return nil, fmt.Errorf("coldsweep: Config.Shard %d/%d: want 0 <= i < n", c.Shard.I, c.Shard.N)
	}
	c.KeysThreshold = cmp.Or(c.KeysThreshold, 0.5)
	c.Retries = cmp.Or(c.Retries, 8)
	c.StopTimeout = cmp.Or(c.StopTimeout, time.Minute)
	c.ProgressInterval = cmp.Or(c.ProgressInterval, time.Second)
	c.Prefix = cmp.Or(c.Prefix, "lazymigrate")
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	// The sweep marks each chunk whole once it is done.
	c.Copier = c.Copier.WithMarker(nil)
	s := &Sweeper{cfg: c, table: c.Copier.Table(), log: c.Logger.With("table", c.Copier.Table())}
	if stripe := int64(1) << c.Copier.StripeBits(); stripe <= promote.MaxRangeKeys && c.Chunk%stripe != 0 {
		s.log.Warn("chunks share lock stripes: workers copying neighbouring chunks will wait for each other; "+
			"make the chunk a multiple of the stripe", "chunk", c.Chunk, "stripe", stripe)
	}
	s.metrics = newSweepMetrics(c.Registerer, s.table)
	var tc ThrottleConfig
	if c.Throttle != nil {
		tc = *c.Throttle
	}
	s.throttle = newThrottle(tc, c.Redis, pauseKey(c.Prefix, s.table), s.metrics, s.log)
	return s, nil
}

// Pause holds the sweep (this process's and every other's following the
// same Redis) after the chunks in flight. It needs Config.Redis.
func (s *Sweeper) Pause(ctx context.Context) error {
	return SetPaused(ctx, s.cfg.Redis, s.cfg.Prefix, s.table, true)
}

// Resume lets a paused sweep go on.
func (s *Sweeper) Resume(ctx context.Context) error {
	return SetPaused(ctx, s.cfg.Redis, s.cfg.Prefix, s.table, false)
}

// Run sweeps the range and returns what it did. When ctx ends, Run stops
// taking new chunks, lets those in flight finish (within StopTimeout) and
// returns ErrInterrupted: the tracker holds everything done, so running
// again continues from there. Chunks NEW refused rows of are reported in
// the summary and make Run return ErrChunksFailed after the rest is done.
//
// Without Config.Range, Run sweeps OLD's keys, and fails before sweeping
// anything when OLD holds a negative key (an error wrapping
// tracker.ErrInvalidKey) or the key math.MaxInt64, which no half-open
// range can hold.
func (s *Sweeper) Run(ctx context.Context) (*Summary, error) {
	span := s.cfg.Range
	if span == (Span{}) {
		lo, hi, ok, err := s.cfg.Copier.OldBounds(ctx)
		if err != nil {
			return nil, fmt.Errorf("coldsweep: key range of %s: %w", s.table, err)
		}
		if ok {
			if span, err = inclusiveSpan(lo, hi); err != nil {
				return nil, fmt.Errorf("coldsweep: key range of %s: %w", s.table, err)
			}
		}
	}
	r := &run{
		Sweeper: s,
		span:    span,
		start:   time.Now(),
		chunks:  countChunks(span, s.cfg.Chunk, s.cfg.Shard),
	}
	// This shard's record says it runs before it claims the layout, not
	// one ProgressInterval later: until then the record would be the last
	// run's, finished, and a shard of another layout claiming meanwhile
	// would take the layout for done (see claimLayout).
	r.mu.Lock()
	first := r.snapshotLocked(false)
	r.mu.Unlock()
	if err := saveProgress(ctx, s.cfg.Redis, s.cfg.Prefix, first); err != nil {
		return nil, fmt.Errorf("coldsweep: record the start of %s's sweep: %w", s.table, err)
	}
	if err := s.claimLayout(ctx); err != nil {
		// A run that never started leaves no record to mix with the
		// sweep's.
		_ = forgetProgress(context.WithoutCancel(ctx), s.cfg.Redis, s.cfg.Prefix, first)
		return nil, err
	}
	if s.cfg.Rate > 0 {
		r.limiter = rate.NewLimiter(rate.Limit(s.cfg.Rate), int(s.cfg.Chunk))
	}
	s.log.InfoContext(ctx, "sweep starting", "range", span.String(), "chunks", r.chunks, "chunk", s.cfg.Chunk,
		"workers", s.cfg.Workers, "shard", s.cfg.Shard.String(), "rate", s.cfg.Rate)
	s.metrics.chunksTotal.Set(float64(r.chunks))
	return r.run(ctx)
}

// run is the state of one Run.
type run struct {
	*Sweeper
	span    Span
	start   time.Time
	chunks  int64
	limiter *rate.Limiter

	mu       sync.Mutex
	prog     Progress
	failed   []ChunkError
	fatal    error
	lastKeys int64
	lastRows int64
	lastAt   time.Time
	// copyTime and skipTime add up the time workers spent on chunks they
	// copied (or tried to) and on chunks already settled, for the ETA.
	copyTime time.Duration
	skipTime time.Duration
}

func (r *run) run(ctx context.Context) (*Summary, error) {
	// Workers finish their chunk after ctx ends: work is what stops them
	// taking the next one, when ctx ends or a chunk fails for good; hard is
	// what cancels the chunks still running StopTimeout after that.
	hard, cancelHard := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHard()
	work, stopWork := context.WithCancel(ctx)
	defer stopWork()
	go func() {
		select {
		case <-work.Done():
		case <-hard.Done():
			return
		}
		t := time.NewTimer(r.cfg.StopTimeout)
		defer t.Stop()
		select {
		case <-t.C:
			cancelHard()
		case <-hard.Done():
		}
	}()

	r.throttle.check(work) // a paused sweep starts no chunk
	throttleDone := make(chan struct{})
	go func() { defer close(throttleDone); r.throttle.run(work) }()

	todo := make(chan Span)
	go func() {
		defer close(todo)
		for ch := range chunks(r.span, r.cfg.Chunk, r.cfg.Shard) {
			select {
			case todo <- ch:
			case <-work.Done():
				return
			}
		}
	}()

	var wg sync.WaitGroup
	for range r.cfg.Workers {
		wg.Go(func() {
			for ch := range todo {
				if err := r.throttle.wait(work); err != nil {
					return // stopping
				}
				start := time.Now()
				if err := r.chunk(work, hard, ch); err != nil {
					r.mu.Lock()
					if r.fatal == nil {
						r.fatal = err
					}
					r.mu.Unlock()
					stopWork()
					return
				}
				r.throttle.rest(work, time.Since(start))
			}
		})
	}

	// The reporter stops before the final report, so that calls to
	// Config.Progress never overlap and the final progress is the last one
	// saved. stopReport lets a report in flight finish: its save runs
	// under hard, not under reporting.
	reporting, stopReport := context.WithCancel(hard)
	defer stopReport()
	reportDone := make(chan struct{})
	go func() {
		defer close(reportDone)
		t := time.NewTicker(r.cfg.ProgressInterval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				r.report(hard, false)
			case <-reporting.Done():
				return
			}
		}
	}()
	wg.Wait()
	stopWork()
	<-throttleDone
	stopReport()
	<-reportDone

	sum := r.summary()
	sum.Progress = r.report(context.WithoutCancel(ctx), true)

	switch {
	case r.fatal != nil:
		return sum, r.fatal
	case ctx.Err() != nil && sum.ChunksDone < sum.Chunks:
		return sum, fmt.Errorf("%w after %d of %d chunks: %w", ErrInterrupted, sum.ChunksDone, sum.Chunks, context.Cause(ctx))
	case len(r.failed) > 0:
		return sum, fmt.Errorf("%w: %d chunks; the first: %w", ErrChunksFailed, sum.ChunksFailed, r.failed[0])
	}
	r.log.InfoContext(ctx, "sweep finished", "chunks", sum.Chunks, "skipped", sum.ChunksSkipped, "copied", sum.Rows.Copied,
		"elapsed", sum.Elapsed.Round(time.Millisecond))
	return sum, nil
}

// chunk sweeps one chunk. It returns an error only when the sweep must
// stop; a chunk NEW refuses is recorded and skipped.
func (r *run) chunk(work, hard context.Context, ch Span) error {
	start := time.Now()
	var (
		res     promote.Result
		outcome string
		err     error
	)
	paid := false // the rate limiter is paid once per chunk, not per attempt
	earlier := 0  // rows failed attempts committed, which a retry finds present
	for attempt := 0; ; attempt++ {
		res, outcome, err = r.copyChunk(work, hard, ch, &paid)
		if errors.Is(err, errStopping) {
			return nil // stopped before it began: unsettled, for the next run
		}
		if err == nil {
			moved := min(earlier, res.Present)
			res.Copied, res.Present = res.Copied+moved, res.Present-moved
		}
		if err == nil || permanent(err) || attempt >= r.cfg.Retries || hard.Err() != nil {
			break
		}
		earlier += res.Copied
		pause := 30 * time.Second
		if attempt < 5 { // 1, 2, 4, 8, 16 s; a shift past 33 would overflow
			pause = time.Second << attempt
		}
		r.log.WarnContext(hard, "chunk failed; retrying", "chunk", ch.String(), "attempt", attempt+1, "in", pause, "err", err)
		r.metrics.retries.Inc()
		select {
		case <-time.After(pause):
		case <-work.Done():
			// Stopping: the chunk stays unsettled for the next run.
			return nil
		}
	}
	took := time.Since(start)
	r.metrics.chunkSeconds.Observe(took.Seconds())
	if err != nil && !errors.Is(err, promote.ErrRowRejected) {
		// An outage that outlasted the retries, or a permanent error: the
		// sweep stops.
		if hard.Err() != nil {
			return nil // cut short by StopTimeout; the next run redoes it
		}
		return fmt.Errorf("coldsweep: chunk %v: %w", ch, err)
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	r.prog.ChunksDone++
	if outcome == "settled" {
		r.skipTime += took
	} else {
		r.copyTime += took
	}
	if err != nil {
		r.prog.ChunksFailed++
		if len(r.failed) < 100 {
			r.failed = append(r.failed, ChunkError{ch, err})
		}
		r.metrics.chunks.WithLabelValues("failed").Inc()
		r.log.ErrorContext(hard, "chunk rejected; left unsettled", "chunk", ch.String(), "err", err)
		return nil
	}
	if outcome == "settled" {
		r.prog.ChunksSkipped++
	}
	r.prog.Keys += ch.Len()
	r.prog.Rows = r.prog.Rows.Add(res)
	r.metrics.chunks.WithLabelValues(outcome).Inc()
	r.metrics.rows.WithLabelValues("copied").Add(float64(res.Copied))
	r.metrics.rows.WithLabelValues("present").Add(float64(res.Present))
	r.metrics.rows.WithLabelValues("tombstoned").Add(float64(res.Tombstoned))
	r.metrics.rows.WithLabelValues("absent").Add(float64(res.Absent))
	r.metrics.keys.Add(float64(ch.Len()))
	r.metrics.chunksDone.Set(float64(r.prog.ChunksDone))
	return nil
}

// copyChunk asks the tracker what is left of ch and copies it: nothing
// when all is settled (one Redis call), the unsettled keys alone when they
// are few, or the whole range. The chunk is then marked whole, keys absent
// from OLD included, so that a finished range counts as done. Unless *paid,
// it first takes the unsettled keys from the rate limiter, and sets *paid:
// a chunk tried again is not charged again. A chunk still waiting for the
// rate limiter when work ends returns errStopping: only chunks under way
// are finished after a stop.
func (r *run) copyChunk(work, ctx context.Context, ch Span, paid *bool) (promote.Result, string, error) {
	left, err := r.cfg.Tracker.Unsettled(ctx, ch.Lo, ch.Hi)
	if err != nil {
		return promote.Result{}, "", fmt.Errorf("ask tracker: %w", err)
	}
	if len(left) == 0 {
		return promote.Result{}, "settled", nil
	}
	if !*paid {
		if err := r.wait(work, len(left)); err != nil {
			return promote.Result{}, "", errStopping
		}
		*paid = true
	}
	var res promote.Result
	outcome := "range"
	if float64(len(left)) <= r.cfg.KeysThreshold*float64(ch.Len()) {
		outcome = "keys"
		res, err = r.cfg.Copier.CopyRangeKeys(ctx, ch.Lo, ch.Hi, left)
	} else {
		res, err = r.cfg.Copier.CopyRange(ctx, ch.Lo, ch.Hi)
	}
	if err != nil {
		return res, "", err
	}
	if err := r.cfg.Tracker.MarkRange(ctx, ch.Lo, ch.Hi); err != nil {
		return res, "", fmt.Errorf("mark: %w", err)
	}
	return res, outcome, nil
}

// errStopping ends a chunk that had not begun when the sweep was stopped.
var errStopping = errors.New("coldsweep: stopping")

// permanent reports whether trying a chunk again cannot help: the rows are
// refused, the table's migration is closed, the tracker's layout differs,
// or Postgres refuses the statement
// itself (SQLSTATE classes 0A, 28, 3D, 3F, 42: feature, authorization,
// missing database or schema, syntax or access). Anything else, an outage
// first, may pass.
func permanent(err error) bool {
	if errors.Is(err, promote.ErrRowRejected) || errors.Is(err, promote.ErrClosed) ||
		errors.Is(err, tracker.ErrLayoutMismatch) || errors.Is(err, tracker.ErrInvalidKey) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code[:2] {
		case "0A", "28", "3D", "3F", "42":
			return true
		}
	}
	return false
}

// wait takes n rows from the rate limiter, in bursts it can grant.
func (r *run) wait(ctx context.Context, n int) error {
	if r.limiter == nil {
		return nil
	}
	for n > 0 {
		k := min(n, r.limiter.Burst())
		if err := r.limiter.WaitN(ctx, k); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

func (r *run) snapshotLocked(finished bool) Progress {
	p := r.prog
	now := time.Now()
	p.Table, p.Shard, p.Layout, p.Range, p.Chunks = r.table, r.cfg.Shard.String(), r.layout(), r.span, r.chunks
	p.Elapsed = now.Sub(r.start)
	p.Updated = now
	p.Finished = finished
	p.Throttled = r.throttle.reason()
	since := r.lastAt
	if since.IsZero() {
		since = r.start
	}
	lastKeys, lastRows := r.lastKeys, r.lastRows
	if finished { // the final rates are averages over the whole run
		since, lastKeys, lastRows = r.start, 0, 0
	}
	if dt := now.Sub(since).Seconds(); dt > 0 {
		p.KeysPerSec = float64(p.Keys-lastKeys) / dt
		p.RowsPerSec = float64(int64(p.Rows.Copied)-lastRows) / dt
	}
	p.ETA = estimateETA(p.Chunks-p.ChunksDone, p.ChunksDone-p.ChunksSkipped, p.Elapsed, r.copyTime, r.skipTime)
	return p
}

// estimateETA returns how long the sweep should take over its left chunks,
// having copied (or tried to copy) copied chunks in elapsed, while its
// workers spent copyTime on those and skipTime on chunks already settled.
// It returns 0 while no chunk was copied: nothing tells the pace yet.
//
// A settled chunk costs one Redis call, a copied one a round of COPY
// through both databases, so the time goes to the copies. The pace of keys
// (KeysPerSec) counts the keys of skipped chunks too, and right after a
// settled region would promise a small fraction of the real time. Here the
// time of a chunk is elapsed, less the share of the workers' time spent
// skipping, over the chunks copied; the time held by the throttle, a pause
// or the rate limit stays in, as the sweep will likely be held as much
// again. And every chunk left is taken to need a copy: whole settled
// chunks come mostly from an earlier run of the sweep, which walked the
// same chunks in the same order, so they lie behind the sweep, not ahead
// (a key promoted here and there still leaves its chunk to copy). When
// settled chunks do lie ahead the ETA errs long, and shrinks as they are
// skipped; a settled region never makes it err short.
func estimateETA(left, copied int64, elapsed, copyTime, skipTime time.Duration) time.Duration {
	if left <= 0 || copied <= 0 || copyTime <= 0 || elapsed <= 0 {
		return 0
	}
	copying := float64(elapsed) * float64(copyTime) / float64(copyTime+skipTime)
	eta := copying / float64(copied) * float64(left)
	if eta >= math.MaxInt64 {
		return math.MaxInt64
	}
	return time.Duration(eta)
}

// report publishes the progress, and returns it: to Config.Progress, to the
// metrics and to Redis for Status.
func (r *run) report(ctx context.Context, finished bool) Progress {
	r.mu.Lock()
	p := r.snapshotLocked(finished)
	if !finished {
		r.lastKeys, r.lastRows, r.lastAt = p.Keys, int64(p.Rows.Copied), p.Updated
	}
	r.mu.Unlock()
	r.metrics.progress.Set(p.Fraction())
	if r.cfg.Progress != nil {
		r.cfg.Progress(p)
	}
	if err := saveProgress(ctx, r.cfg.Redis, r.cfg.Prefix, p); err != nil {
		r.log.WarnContext(ctx, "cannot save sweep progress to Redis", "err", err)
	}
	return p
}

func (r *run) summary() *Summary {
	r.mu.Lock()
	defer r.mu.Unlock()
	return &Summary{Failed: slices.Clone(r.failed), ThrottledFor: r.throttle.total()}
}
