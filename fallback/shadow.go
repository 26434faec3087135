package fallback

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazymigrate/lazymigrate/internal/metrics"
)

// Errors a ShadowCheck returns for a key it cannot judge yet. They are
// counted as outcomes of their own, not as mismatches.
var (
	// ErrNothingToCompare: the other database is not expected to hold the
	// key yet, as NEW before the key is migrated. Outcome "unmigrated".
	ErrNothingToCompare = errors.New("fallback: nothing to compare yet")
	// ErrPending: the two databases differ, but a change is on its way to
	// the one behind (a mirror still in the outbox). Outcome "pending".
	ErrPending = errors.New("fallback: a change is still on its way")
)

// A ShadowCheck reads one key from both databases and compares the two.
// It returns "" when they agree and otherwise a short description of the
// difference, which is logged: name fields, not values, which may be
// personal data. A check that finds a difference is called again after
// ShadowConfig.RecheckDelay, and must then read both sides again.
type ShadowCheck func(ctx context.Context) (diff string, err error)

// ShadowConfig configures a Shadow. The zero value compares 1% of reads.
type ShadowConfig struct {
	// Rate is the share of reads compared, from 0 to 1. Defaults to 0.01;
	// set a negative Rate to compare none (for a Shadow switched off
	// without removing it).
	Rate float64
	// MaxInFlight bounds the comparisons running at once: a read sampled
	// while that many run is not compared, and is counted as "busy", so
	// that a slow database never piles up goroutines. Defaults to 4.
	MaxInFlight int
	// Timeout bounds one comparison, its recheck included. Defaults to 5s.
	Timeout time.Duration
	// RecheckDelay is how long a comparison that found a difference waits
	// before reading both sides again; only a difference that is still
	// there counts as a mismatch. A write lands in NEW a moment before its
	// mirror reaches OLD, and a read can fall between the two. Defaults
	// to 100ms.
	RecheckDelay time.Duration
	// Logger receives each mismatch (Warn, with the key and the
	// difference) and failed comparisons (Debug). Defaults to discarding.
	Logger *slog.Logger
	// Registerer receives lazymigrate_shadow_reads_total{table,outcome}.
	// Defaults to none.
	Registerer prometheus.Registerer
}

// Shadow compares a sample of a table's reads with the database that did
// not serve them, in the background: reads from NEW with OLD, reads from
// OLD (mode old) with NEW. A mismatch means OLD would not answer as NEW
// does, so that a rollback, or a switch to new, would change what callers
// see. Reads never wait for it. Safe for concurrent use.
type Shadow struct {
	table       string
	rate        float64
	timeout     time.Duration
	recheck     time.Duration
	maxInFlight int
	log         *slog.Logger
	total       *prometheus.CounterVec

	mu       sync.Mutex
	idle     sync.Cond // signalled when inFlight drops to 0
	inFlight int
	closed   bool
}

// NewShadow returns the shadow comparison of table, which names it in
// metrics and logs. cfg may be nil.
func NewShadow(table string, cfg *ShadowConfig) (*Shadow, error) {
	if table == "" {
		return nil, errors.New("fallback: NewShadow needs a table name")
	}
	var c ShadowConfig
	if cfg != nil {
		c = *cfg
	}
	c.Rate = cmp.Or(c.Rate, 0.01)
	c.MaxInFlight = cmp.Or(c.MaxInFlight, 4)
	c.Timeout = cmp.Or(c.Timeout, 5*time.Second)
	c.RecheckDelay = cmp.Or(c.RecheckDelay, 100*time.Millisecond)
	switch {
	case c.Rate > 1 || c.Rate != c.Rate:
		return nil, fmt.Errorf("fallback: ShadowConfig.Rate is a share of reads, at most 1, not %v", c.Rate)
	case c.MaxInFlight < 0 || c.Timeout < 0 || c.RecheckDelay < 0:
		return nil, errors.New("fallback: ShadowConfig.MaxInFlight, Timeout and RecheckDelay must not be negative")
	case c.RecheckDelay >= c.Timeout:
		return nil, fmt.Errorf("fallback: ShadowConfig.RecheckDelay (%s) must be shorter than Timeout (%s)", c.RecheckDelay, c.Timeout)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Shadow{
		table:       table,
		rate:        max(c.Rate, 0),
		timeout:     c.Timeout,
		recheck:     c.RecheckDelay,
		maxInFlight: c.MaxInFlight,
		log:         c.Logger,
	}
	s.idle.L = &s.mu
	s.total = metrics.CounterVec(c.Registerer, "shadow_reads_total",
		"Reads compared with the database that did not serve them, by outcome: match, mismatch (still different on a recheck), "+
			"pending (different, with a change on its way), unmigrated (the key is not in NEW yet), "+
			"error (a side could not be read), busy (sampled, but MaxInFlight comparisons were running).",
		"table", "outcome").MustCurryWith(prometheus.Labels{"table": table})
	return s, nil
}

// Sample reports whether to compare this read: true for a share Rate of
// calls, at random. It is cheap enough for every read, and a nil Shadow
// never samples.
func (s *Shadow) Sample() bool {
	return s != nil && s.rate > 0 && rand.Float64() < s.rate
}

// Compare runs check for key in the background, unless MaxInFlight
// comparisons are running (then it counts "busy" and returns) or the
// Shadow is closed. served names the database that served the read (ModeNew
// or ModeOld), for the log. The comparison keeps ctx's values but not its
// end, since the read it shadows has returned, and ends within Timeout.
func (s *Shadow) Compare(ctx context.Context, key int64, served Mode, check ShadowCheck) {
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return
	case s.inFlight >= s.maxInFlight:
		s.mu.Unlock()
		s.total.WithLabelValues("busy").Inc()
		return
	}
	s.inFlight++
	s.mu.Unlock()
	go func() {
		defer s.done()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
		defer cancel()
		s.total.WithLabelValues(s.compare(ctx, key, served, check)).Inc()
	}()
}

func (s *Shadow) done() {
	s.mu.Lock()
	if s.inFlight--; s.inFlight == 0 {
		s.idle.Broadcast()
	}
	s.mu.Unlock()
}

func (s *Shadow) compare(ctx context.Context, key int64, served Mode, check ShadowCheck) (outcome string) {
	defer func() {
		// A panic in a check (a record type's Equal, say) must not take
		// the process down for a comparison nobody waits for.
		if p := recover(); p != nil {
			s.log.ErrorContext(ctx, "lazymigrate: shadow check panicked", "table", s.table, "key", key, "panic", fmt.Sprint(p))
			outcome = "error"
		}
	}()
	diff, err := check(ctx)
	if err == nil && diff != "" {
		t := time.NewTimer(s.recheck)
		select {
		case <-ctx.Done():
			t.Stop()
			err = ctx.Err()
		case <-t.C:
			diff, err = check(ctx)
		}
	}
	switch {
	case errors.Is(err, ErrNothingToCompare):
		return "unmigrated"
	case errors.Is(err, ErrPending):
		return "pending"
	case err != nil:
		s.log.DebugContext(ctx, "lazymigrate: shadow read failed", "table", s.table, "key", key, "error", err)
		return "error"
	case diff != "":
		s.log.WarnContext(ctx, "lazymigrate: shadow read differs", "table", s.table, "key", key,
			"served_by", served, "difference", diff)
		return "mismatch"
	}
	return "match"
}

// Wait waits until no comparison is under way: in tests, and before
// reading the metrics.
func (s *Shadow) Wait() {
	s.mu.Lock()
	for s.inFlight > 0 {
		s.idle.Wait()
	}
	s.mu.Unlock()
}

// Close stops new comparisons and waits for those under way, at most
// Timeout each: call it at shutdown.
func (s *Shadow) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.Wait()
}
