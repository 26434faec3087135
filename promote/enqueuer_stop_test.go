package promote_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/promote"
)

// holdFirst enqueues every task, but holds the first one until release is
// closed (or its context ends), so a test can act while a flush is under
// way.
type holdFirst struct {
	entered, release chan struct{}
	once             sync.Once
	mu               sync.Mutex
	got              []int64
}

func newHoldFirst() *holdFirst {
	return &holdFirst{entered: make(chan struct{}), release: make(chan struct{})}
}

func (h *holdFirst) EnqueueContext(ctx context.Context, task *asynq.Task, _ ...asynq.Option) (*asynq.TaskInfo, error) {
	var err error
	h.once.Do(func() {
		close(h.entered)
		select {
		case <-h.release:
		case <-ctx.Done():
			err = ctx.Err()
		}
	})
	if err != nil {
		return nil, err
	}
	p, err := promote.DecodePayload(task.Payload())
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	h.got = append(h.got, p.Keys...)
	h.mu.Unlock()
	return &asynq.TaskInfo{}, nil
}

func (h *holdFirst) keys() []int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Sorted(slices.Values(h.got))
}

// requireOutcomes checks that every key given to Schedule was counted once,
// as enqueued or dropped: a key counted as neither was lost.
func requireOutcomes(t *testing.T, reg *prometheus.Registry, enqueued, dropped float64) {
	t.Helper()
	gotEnqueued := testenv.CounterValue(t, reg, "lazymigrate_promotions_total", "outcome", "enqueued")
	gotDropped := testenv.CounterValue(t, reg, "lazymigrate_promotions_total", "outcome", "dropped")
	if gotEnqueued != enqueued || gotDropped != dropped {
		t.Fatalf("enqueued = %v, dropped = %v; want %v and %v", gotEnqueued, gotDropped, enqueued, dropped)
	}
}

// When Start's context ends, the loop's last flush takes the pending keys.
// Guards that Schedule refuses keys from before that flush takes them: a
// key accepted after it would never be enqueued, nor counted as dropped.
func TestEnqueuerScheduleDuringFinalFlushIsNotLost(t *testing.T) {
	t.Parallel()
	h := newHoldFirst()
	reg := prometheus.NewRegistry()
	e, err := promote.NewEnqueuer(h, "accounts", &promote.EnqueuerConfig{FlushInterval: time.Hour, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	e.Schedule(1)
	cancel()    // shutdown through the context, not Stop
	<-h.entered // the final flush has taken key 1
	accepted := e.Schedule(2)
	close(h.release)
	e.Stop() // waits for the loop to end
	if accepted != 0 {
		t.Errorf("Schedule(2) during the final flush accepted the key; enqueued %v", h.keys())
	}
	if got := h.keys(); !slices.Equal(got, []int64{1}) {
		t.Errorf("enqueued %v, want [1]", got)
	}
	requireOutcomes(t, reg, 1, 1)
}

// Guards the keys left pending when the last flush cannot take them: a
// caller's Flush stuck on Redis holds the flush slot past flushTimeout, so
// the loop's last flush gives up. The keys scheduled meanwhile must be
// counted as dropped, not left pending for good.
func TestEnqueuerStopDropsKeysItsLastFlushCannotTake(t *testing.T) {
	t.Parallel()
	h := newHoldFirst()
	reg := prometheus.NewRegistry()
	e, err := promote.NewEnqueuer(h, "accounts", &promote.EnqueuerConfig{FlushInterval: time.Hour, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.Schedule(1)
	flushed := make(chan error, 1)
	go func() { flushed <- e.Flush(context.Background()) }()
	<-h.entered // the caller's Flush holds the slot, enqueuing key 1
	if n := e.Schedule(2); n != 1 {
		t.Fatalf("Schedule(2) before Stop accepted %d, want 1", n)
	}
	e.Stop() // its last flush waits flushTimeout for the slot, then gives up
	close(h.release)
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	if got := h.keys(); !slices.Equal(got, []int64{1}) {
		t.Errorf("enqueued %v, want [1]", got)
	}
	requireOutcomes(t, reg, 1, 1)
}

// Guards Stop's promise to enqueue what is pending when it is called
// before Start: keys scheduled before Start must not be left uncounted.
func TestEnqueuerStopBeforeStartEnqueuesPending(t *testing.T) {
	t.Parallel()
	h := newHoldFirst()
	close(h.release)
	reg := prometheus.NewRegistry()
	e, err := promote.NewEnqueuer(h, "accounts", &promote.EnqueuerConfig{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	if n := e.Schedule(1, 2); n != 2 {
		t.Fatalf("Schedule before Start accepted %d, want 2", n)
	}
	e.Stop()
	if n := e.Schedule(3); n != 0 {
		t.Fatalf("Schedule after Stop accepted %d, want 0", n)
	}
	if err := e.Start(context.Background()); err == nil {
		t.Fatal("Start after Stop: want an error")
	}
	if got := h.keys(); !slices.Equal(got, []int64{1, 2}) {
		t.Errorf("enqueued %v, want [1 2]", got)
	}
	requireOutcomes(t, reg, 2, 1)
}
