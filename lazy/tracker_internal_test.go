package lazy

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func testRepo(t *testing.T) *Repo[int] {
	t.Helper()
	return &Repo[int]{
		cfg:   Config[int]{Table: "t", TrackerTimeout: time.Second},
		reads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "r", Help: "r"}, []string{"outcome"}),
		log:   slog.New(slog.DiscardHandler),
	}
}

func answered[V any](v V, err error) pending[V] {
	c := make(chan result[V], 1)
	c <- result[V]{v, err}
	return pending[V]{c: c, cancel: func() {}}
}

// A tracker call that failed because the caller gave up says nothing about
// Redis; it must not switch the tracker off for every other read.
func TestAwaitTrackerIgnoresCallerCancellation(t *testing.T) {
	t.Parallel()
	r := testRepo(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for range 50 { // the select between the answer and ctx.Done is random
		if _, ok := awaitTracker(ctx, r, answered(false, context.Canceled)); ok {
			t.Fatal("a failed tracker call reported an answer")
		}
	}
	if r.trackerDownUntil.Load() != 0 {
		t.Fatal("a cancelled request switched the tracker off")
	}
}

func TestAwaitTrackerBacksOffAfterFailure(t *testing.T) {
	t.Parallel()
	r := testRepo(t)
	ctx := context.Background()
	if _, ok := awaitTracker(ctx, r, answered(false, errors.New("connection refused"))); ok {
		t.Fatal("a failed tracker call reported an answer")
	}
	if r.trackerDownUntil.Load() <= time.Now().UnixNano() {
		t.Fatal("a failing tracker was not backed off")
	}
	asked := false
	p := askTracker(ctx, r, func(context.Context) (bool, error) { asked = true; return true, nil })
	if p.c != nil || asked {
		t.Fatal("the tracker was asked during its back-off")
	}
	if v, ok := awaitTracker(ctx, r, answered(true, nil)); !ok || !v {
		t.Fatal("an answer was not passed on")
	}
}

// The tracker query must not outlive the read that started it.
func TestAwaitTrackerCancelsQuery(t *testing.T) {
	t.Parallel()
	r := testRepo(t)
	r.cfg.TrackerTimeout = 10 * time.Millisecond
	r.cfg.Tracker = struct{ Tracker }{}
	done := make(chan error, 1)
	p := askTracker(context.Background(), r, func(ctx context.Context) (bool, error) {
		<-ctx.Done()
		done <- ctx.Err()
		return false, ctx.Err()
	})
	if _, ok := awaitTracker(context.Background(), r, p); ok {
		t.Fatal("a timed-out tracker call reported an answer")
	}
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("tracker query ended with %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the tracker query was still running 5s after the read gave up on it")
	}
}
