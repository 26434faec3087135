package fallback_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazymigrate/lazymigrate/fallback"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
)

func TestNewShadowRejectsBadConfig(t *testing.T) {
	t.Parallel()
	if _, err := fallback.NewShadow("", nil); err == nil {
		t.Error("NewShadow without a table: no error")
	}
	for _, c := range []fallback.ShadowConfig{
		{Rate: 1.5},
		{MaxInFlight: -1},
		{Timeout: -time.Second},
		{RecheckDelay: -time.Second},
		{Timeout: time.Second, RecheckDelay: 2 * time.Second},
	} {
		if _, err := fallback.NewShadow("accounts", &c); err == nil {
			t.Errorf("NewShadow(%+v): no error", c)
		}
	}
}

func TestShadowSample(t *testing.T) {
	t.Parallel()
	var none *fallback.Shadow
	if none.Sample() {
		t.Error("a nil Shadow sampled a read")
	}
	count := func(rate float64) int {
		s, err := fallback.NewShadow("accounts", &fallback.ShadowConfig{Rate: rate})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for range 10_000 {
			if s.Sample() {
				n++
			}
		}
		return n
	}
	if n := count(1); n != 10_000 {
		t.Errorf("Rate 1 sampled %d of 10000 reads", n)
	}
	if n := count(-1); n != 0 {
		t.Errorf("a negative Rate sampled %d of 10000 reads", n)
	}
	if n := count(0.5); n < 4_000 || n > 6_000 {
		t.Errorf("Rate 0.5 sampled %d of 10000 reads", n)
	}
	if n := count(0); n < 30 || n > 300 {
		t.Errorf("the default Rate (1%%) sampled %d of 10000 reads", n)
	}
}

type shadowBundle struct {
	sh  *fallback.Shadow
	reg *prometheus.Registry
	log *testenv.SyncBuffer
}

func newShadow(t *testing.T, maxInFlight int) shadowBundle {
	t.Helper()
	b := shadowBundle{reg: prometheus.NewRegistry(), log: &testenv.SyncBuffer{}}
	var err error
	b.sh, err = fallback.NewShadow("accounts", &fallback.ShadowConfig{
		Rate: 1, MaxInFlight: maxInFlight, RecheckDelay: time.Millisecond,
		Registerer: b.reg, Logger: slog.New(slog.NewTextHandler(b.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.sh.Wait)
	return b
}

func (b shadowBundle) count(t *testing.T, outcome string) float64 {
	t.Helper()
	return testenv.CounterValue(t, b.reg, "lazymigrate_shadow_reads_total", "outcome", outcome)
}

func TestShadowOutcomes(t *testing.T) {
	t.Parallel()
	b := newShadow(t, 4)
	ctx := context.Background()
	boom := errors.New("OLD is down")
	cases := []struct {
		outcome string
		first   string
		recheck string
		err     error
	}{
		{outcome: "match"},
		{outcome: "match", first: "fields differ: Name"}, // a write between the reads
		{outcome: "mismatch", first: "fields differ: Name", recheck: "fields differ: Name, Status"},
		{outcome: "unmigrated", err: fallback.ErrNothingToCompare},
		{outcome: "error", err: boom},
	}
	for i, c := range cases {
		var calls, rechecks atomic.Int32
		b.sh.Compare(ctx, int64(i), fallback.ModeNew, func(ctx context.Context, first bool) (string, error) {
			calls.Add(1)
			if !first {
				rechecks.Add(1)
				return c.recheck, nil
			}
			return c.first, c.err
		})
		b.sh.Wait()
		if got := b.count(t, c.outcome); got != float64(countOutcome(cases[:i+1], c.outcome)) {
			t.Fatalf("case %d: %s counted %v times", i, c.outcome, got)
		}
		if want := int32(0); c.first != "" {
			want = 1
			if rechecks.Load() != want {
				t.Fatalf("case %d: %d rechecks, want %d", i, rechecks.Load(), want)
			}
		} else if calls.Load() != 1 {
			t.Fatalf("case %d: check called %d times, want once", i, calls.Load())
		}
	}
	log := b.log.String()
	if !strings.Contains(log, "shadow read differs") || !strings.Contains(log, "key=2") ||
		!strings.Contains(log, "Name, Status") || !strings.Contains(log, "served_by=new") {
		t.Errorf("log lacks the mismatch of key 2:\n%s", log)
	}
	if strings.Count(log, "shadow read differs") != 1 {
		t.Errorf("log reports a difference gone on recheck:\n%s", log)
	}
	if !strings.Contains(log, "OLD is down") {
		t.Errorf("log lacks the failed comparison:\n%s", log)
	}
}

func countOutcome(cases []struct {
	outcome string
	first   string
	recheck string
	err     error
}, outcome string) int {
	n := 0
	for _, c := range cases {
		if c.outcome == outcome {
			n++
		}
	}
	return n
}

// A read sampled while MaxInFlight comparisons run is not compared, and a
// comparison outlives the read's context.
func TestShadowBoundsComparisons(t *testing.T) {
	t.Parallel()
	b := newShadow(t, 1)
	release := make(chan struct{})
	started := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	ctxErr := make(chan error, 1)
	b.sh.Compare(ctx, 1, fallback.ModeOld, func(ctx context.Context, first bool) (string, error) {
		close(started)
		<-release
		ctxErr <- ctx.Err()
		return "", nil
	})
	<-started
	cancel() // the read returned
	b.sh.Compare(context.Background(), 2, fallback.ModeOld, func(context.Context, bool) (string, error) {
		t.Error("a second comparison ran beside the first, MaxInFlight is 1")
		return "", nil
	})
	if got := b.count(t, "busy"); got != 1 {
		t.Fatalf("busy = %v, want 1", got)
	}
	close(release)
	b.sh.Wait()
	if err := <-ctxErr; err != nil {
		t.Fatalf("the comparison's context ended with the read's: %v", err)
	}
	if got := b.count(t, "match"); got != 1 {
		t.Fatalf("match = %v, want 1", got)
	}
	// The slot is free again.
	b.sh.Compare(context.Background(), 3, fallback.ModeOld, func(context.Context, bool) (string, error) { return "", nil })
	b.sh.Wait()
	if got := b.count(t, "match"); got != 2 {
		t.Fatalf("match = %v after the slot freed, want 2", got)
	}
}
