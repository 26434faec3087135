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
	type answer struct {
		diff string
		err  error
	}
	cases := []struct {
		outcome string
		answers []answer // the first check's, then the recheck's
	}{
		{"match", []answer{{}}},
		{"match", []answer{{diff: "fields differ: Name"}, {}}}, // a write between the reads
		{"mismatch", []answer{{diff: "fields differ: Name"}, {diff: "fields differ: Name, Status"}}},
		{"pending", []answer{{diff: "fields differ: Name"}, {err: fallback.ErrPending}}},
		{"pending", []answer{{err: fallback.ErrPending}}},
		{"unmigrated", []answer{{err: fallback.ErrNothingToCompare}}},
		{"error", []answer{{err: boom}}},
		{"error", []answer{{diff: "fields differ: Name"}, {err: boom}}},
	}
	want := map[string]float64{}
	for i, c := range cases {
		var calls atomic.Int32
		b.sh.Compare(ctx, int64(i), fallback.ModeNew, func(ctx context.Context) (string, error) {
			n := int(calls.Add(1))
			if n > len(c.answers) {
				t.Errorf("case %d: check called %d times, want %d", i, n, len(c.answers))
				return "", nil
			}
			return c.answers[n-1].diff, c.answers[n-1].err
		})
		b.sh.Wait()
		want[c.outcome]++
		if got := b.count(t, c.outcome); got != want[c.outcome] {
			t.Fatalf("case %d: %s counted %v times, want %v", i, c.outcome, got, want[c.outcome])
		}
		if n := int(calls.Load()); n != len(c.answers) {
			t.Fatalf("case %d: check called %d times, want %d", i, n, len(c.answers))
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

// A read sampled while MaxInFlight comparisons run is not compared, and a
// comparison outlives the read's context.
func TestShadowBoundsComparisons(t *testing.T) {
	t.Parallel()
	b := newShadow(t, 1)
	release := make(chan struct{})
	started := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	ctxErr := make(chan error, 1)
	b.sh.Compare(ctx, 1, fallback.ModeOld, func(ctx context.Context) (string, error) {
		close(started)
		<-release
		ctxErr <- ctx.Err()
		return "", nil
	})
	<-started
	cancel() // the read returned
	b.sh.Compare(context.Background(), 2, fallback.ModeOld, func(context.Context) (string, error) {
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
	b.sh.Compare(context.Background(), 3, fallback.ModeOld, func(context.Context) (string, error) { return "", nil })
	b.sh.Wait()
	if got := b.count(t, "match"); got != 2 {
		t.Fatalf("match = %v after the slot freed, want 2", got)
	}
}

// A check that hangs ends with Timeout, as an error; one that panics is an
// error too, and the process goes on.
func TestShadowSurvivesHangsAndPanics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	var log testenv.SyncBuffer
	sh, err := fallback.NewShadow("accounts", &fallback.ShadowConfig{
		Rate: 1, Timeout: 50 * time.Millisecond, RecheckDelay: time.Millisecond,
		Registerer: reg, Logger: slog.New(slog.NewTextHandler(&log, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sh.Close()
	sh.Compare(context.Background(), 1, fallback.ModeNew, func(ctx context.Context) (string, error) {
		<-ctx.Done()
		return "", ctx.Err()
	})
	sh.Compare(context.Background(), 2, fallback.ModeNew, func(context.Context) (string, error) {
		panic("a record type's Equal failed")
	})
	sh.Wait()
	if got := testenv.CounterValue(t, reg, "lazymigrate_shadow_reads_total", "outcome", "error"); got != 2 {
		t.Fatalf("error = %v, want 2 (a hang, a panic)", got)
	}
	if !strings.Contains(log.String(), "shadow check panicked") || !strings.Contains(log.String(), "key=2") {
		t.Fatalf("log lacks the panic:\n%s", log.String())
	}
}

// Close stops new comparisons and waits for those under way.
func TestShadowClose(t *testing.T) {
	t.Parallel()
	b := newShadow(t, 4)
	release := make(chan struct{})
	b.sh.Compare(context.Background(), 1, fallback.ModeNew, func(context.Context) (string, error) {
		<-release
		return "", nil
	})
	closed := make(chan struct{})
	go func() { b.sh.Close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close returned while a comparison was under way")
	case <-time.After(20 * time.Millisecond):
	}
	close(release)
	<-closed
	b.sh.Compare(context.Background(), 2, fallback.ModeNew, func(context.Context) (string, error) {
		t.Error("a comparison ran after Close")
		return "", nil
	})
	b.sh.Wait()
	if got := b.count(t, "match"); got != 1 {
		t.Fatalf("match = %v, want 1", got)
	}
}
