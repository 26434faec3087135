package coldsweep

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultLagQuery measures, on a primary, how far its slowest replica is
// behind in replaying WAL, in seconds (0 without replicas, or when the role
// may not see pg_stat_replication's lag columns).
const DefaultLagQuery = `SELECT coalesce(extract(epoch FROM max(replay_lag)), 0)::float8 FROM pg_stat_replication`

// ThrottleConfig sets when a sweep holds back. As in gh-ost, any one signal
// over its threshold holds every worker before its next chunk, and nothing
// overrides it; the chunks in flight finish. Signals are read in the
// background, never on a chunk's path.
type ThrottleConfig struct {
	// Old and New are probed for latency and replication lag. A nil side
	// is not probed.
	Old, New Querier
	// Interval is the time between two readings of the signals. Defaults
	// to 1 second.
	Interval time.Duration
	// MaxLatency holds the sweep while a trivial query (SELECT 1) takes
	// longer than this on OLD or NEW: a sign that the server is saturated.
	// Defaults to 200ms; negative turns the signal off. The latency probe
	// and the lag query are each given ten times MaxLatency (2s when the
	// signal is off) to answer; one that does not answer in time holds the
	// sweep.
	MaxLatency time.Duration
	// MaxLag holds the sweep while a replica of OLD or NEW lags further
	// than this behind its primary. Defaults to 10s; negative turns the
	// signal off.
	MaxLag time.Duration
	// LagQuery returns the lag in seconds (one float8), within the time
	// MaxLatency gives a query. Defaults to DefaultLagQuery; a heartbeat
	// table read on the replica is the more precise alternative.
	LagQuery string
	// Nice makes each worker rest after each chunk for Nice times the time
	// the chunk took (gh-ost's nice-ratio): 1 halves the sweep's load.
	Nice float64
}

// throttle holds the signals' last reading and lets workers wait on it.
type throttle struct {
	cfg      ThrottleConfig
	rdb      redis.UniversalClient
	pauseKey string
	m        *sweepMetrics
	log      *slog.Logger
	// timeout bounds each query of a probe, so that a database that does
	// not answer neither blocks Run (the first check runs before any chunk)
	// nor stops the pause flag being read.
	timeout time.Duration

	mu      sync.Mutex
	why     string        // "" when not throttled
	changed chan struct{} // closed when why changes
	held    time.Duration // total time workers waited
}

func newThrottle(cfg ThrottleConfig, rdb redis.UniversalClient, pauseKey string, m *sweepMetrics, log *slog.Logger) *throttle {
	cfg.Interval = cmp.Or(cfg.Interval, time.Second)
	cfg.MaxLatency = cmp.Or(cfg.MaxLatency, 200*time.Millisecond)
	cfg.MaxLag = cmp.Or(cfg.MaxLag, 10*time.Second)
	cfg.LagQuery = cmp.Or(cfg.LagQuery, DefaultLagQuery)
	timeout := 10 * cfg.MaxLatency
	if cfg.MaxLatency < 0 {
		timeout = 2 * time.Second // ten times the default MaxLatency
	}
	return &throttle{cfg: cfg, rdb: rdb, pauseKey: pauseKey, m: m, log: log, timeout: timeout, changed: make(chan struct{})}
}

// run reads the signals every Interval until ctx ends.
func (t *throttle) run(ctx context.Context) {
	tick := time.NewTicker(t.cfg.Interval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			t.check(ctx)
		case <-ctx.Done():
			return
		}
	}
}

// check reads every signal once and publishes the verdict.
func (t *throttle) check(ctx context.Context) {
	var reasons []string
	if t.rdb != nil {
		n, err := t.rdb.Exists(ctx, t.pauseKey).Result()
		switch {
		case err != nil && ctx.Err() == nil:
			// Keep a pause in force through a blip: resuming is the
			// operator's call, not Redis's.
			t.log.WarnContext(ctx, "throttle cannot read the pause flag", "err", err)
			if strings.HasPrefix(t.reason(), "paused") {
				reasons = append(reasons, "paused")
			}
		case n > 0:
			reasons = append(reasons, "paused")
		}
	}
	for _, side := range []struct {
		name string
		db   Querier
	}{{"old", t.cfg.Old}, {"new", t.cfg.New}} {
		if side.db == nil {
			continue
		}
		if why := t.probe(ctx, side.name, side.db); why != "" {
			reasons = append(reasons, why)
		}
	}
	t.set(strings.Join(reasons, "; "))
}

// probe measures one side's latency and replication lag and says why they
// hold the sweep, if they do.
func (t *throttle) probe(ctx context.Context, side string, db Querier) string {
	var reasons []string
	if t.cfg.MaxLatency > 0 {
		// A probe that cannot answer within ten times the limit is over it.
		pctx, cancel := context.WithTimeout(ctx, t.timeout)
		start := time.Now()
		var one int
		err := db.QueryRow(pctx, `SELECT 1`).Scan(&one)
		took := time.Since(start)
		cancel()
		t.m.latency.WithLabelValues(side).Set(took.Seconds())
		switch {
		case ctx.Err() != nil:
			return ""
		case err != nil && !errors.Is(err, context.DeadlineExceeded):
			// An unreachable database fails the chunks, which retry.
			t.log.WarnContext(ctx, "throttle probe failed", "side", side, "err", err)
		case took > t.cfg.MaxLatency:
			reasons = append(reasons, fmt.Sprintf("%s latency %v > %v", side, took.Round(time.Millisecond), t.cfg.MaxLatency))
		}
	}
	if t.cfg.MaxLag > 0 {
		// A lag that cannot be read in time may be over the limit: as a
		// slow latency probe, it holds the sweep.
		qctx, cancel := context.WithTimeout(ctx, t.timeout)
		var secs float64
		err := db.QueryRow(qctx, t.cfg.LagQuery).Scan(&secs)
		late := errors.Is(qctx.Err(), context.DeadlineExceeded)
		cancel()
		switch {
		case ctx.Err() != nil:
			return ""
		case err != nil && late:
			reasons = append(reasons, fmt.Sprintf("%s replication lag unknown: no answer within %v", side, t.timeout))
		case err != nil:
			t.log.WarnContext(ctx, "throttle cannot read replication lag", "side", side, "err", err)
		default:
			t.m.lag.WithLabelValues(side).Set(secs)
			if lag := time.Duration(secs * float64(time.Second)); lag > t.cfg.MaxLag {
				reasons = append(reasons, fmt.Sprintf("%s replication lag %v > %v", side, lag.Round(time.Millisecond), t.cfg.MaxLag))
			}
		}
	}
	return strings.Join(reasons, "; ")
}

func (t *throttle) set(why string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if why == t.why {
		return
	}
	if why != "" {
		t.log.Info("sweep throttled", "reason", why)
	} else {
		t.log.Info("sweep no longer throttled")
	}
	t.why = why
	close(t.changed)
	t.changed = make(chan struct{})
	if why != "" {
		t.m.throttled.Set(1)
	} else {
		t.m.throttled.Set(0)
	}
}

func (t *throttle) reason() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.why
}

func (t *throttle) total() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.held
}

// wait returns once the sweep is not held back, or ctx's error.
func (t *throttle) wait(ctx context.Context) error {
	for {
		t.mu.Lock()
		why, changed := t.why, t.changed
		t.mu.Unlock()
		if why == "" {
			return ctx.Err()
		}
		start := time.Now()
		select {
		case <-changed:
		case <-ctx.Done():
		}
		held := time.Since(start)
		t.mu.Lock()
		t.held += held
		t.mu.Unlock()
		t.m.throttledSeconds.WithLabelValues(reasonKind(why)).Add(held.Seconds())
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// rest sleeps Nice times took, or until ctx ends.
func (t *throttle) rest(ctx context.Context, took time.Duration) {
	if t.cfg.Nice <= 0 {
		return
	}
	timer := time.NewTimer(time.Duration(t.cfg.Nice * float64(took)))
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-ctx.Done():
	}
}

// reasonKind reduces a reason to a bounded metric label.
func reasonKind(why string) string {
	switch {
	case strings.HasPrefix(why, "paused"):
		return "paused"
	case strings.Contains(why, "lag"):
		return "lag"
	default:
		return "latency"
	}
}
