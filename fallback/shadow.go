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

// ErrNothingToCompare is returned by a ShadowCheck when the other database
// is not expected to hold the key yet: a key NEW has not received. It is
// counted as outcome "unmigrated", not as a mismatch.
var ErrNothingToCompare = errors.New("fallback: nothing to compare yet")

// A ShadowCheck compares one key across the two databases. It returns ""
// when they agree and otherwise a short description of the difference,
// which is logged: name fields, not values, which may be personal data.
// first is true for the first check, which may compare what the read
// already returned with the other side; a recheck must read both again.
type ShadowCheck func(ctx context.Context, first bool) (diff string, err error)

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
	table   string
	rate    float64
	timeout time.Duration
	recheck time.Duration
	log     *slog.Logger
	slots   chan struct{}
	wg      sync.WaitGroup
	total   *prometheus.CounterVec
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
		table:   table,
		rate:    max(c.Rate, 0),
		timeout: c.Timeout,
		recheck: c.RecheckDelay,
		log:     c.Logger,
		slots:   make(chan struct{}, c.MaxInFlight),
	}
	s.total = metrics.CounterVec(c.Registerer, "shadow_reads_total",
		"Reads compared with the database that did not serve them, by outcome: match, mismatch (still different on a recheck), "+
			"unmigrated (the key is not in NEW yet), error (a side could not be read), busy (sampled, but MaxInFlight comparisons were running).",
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
// comparisons are running (then it counts "busy" and returns). served
// names the database that served the read, for the log. The comparison
// keeps ctx's values but not its end: the read it shadows has returned.
func (s *Shadow) Compare(ctx context.Context, key int64, served Mode, check ShadowCheck) {
	select {
	case s.slots <- struct{}{}:
	default:
		s.total.WithLabelValues("busy").Inc()
		return
	}
	s.wg.Go(func() {
		defer func() { <-s.slots }()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
		defer cancel()
		outcome := s.compare(ctx, key, served, check)
		s.total.WithLabelValues(outcome).Inc()
	})
}

func (s *Shadow) compare(ctx context.Context, key int64, served Mode, check ShadowCheck) string {
	diff, err := check(ctx, true)
	if err == nil && diff != "" {
		t := time.NewTimer(s.recheck)
		select {
		case <-ctx.Done():
			t.Stop()
			err = ctx.Err()
		case <-t.C:
			diff, err = check(ctx, false)
		}
	}
	switch {
	case errors.Is(err, ErrNothingToCompare):
		return "unmigrated"
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

// Wait waits for the comparisons under way: before a process exits, and
// in tests.
func (s *Shadow) Wait() { s.wg.Wait() }
