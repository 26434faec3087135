package tracker_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/tracker"
)

var errInjected = errors.New("injected fault: Redis is unreachable")

// faultHook injects faults into a real client. While down is set every
// command and pipeline fails without reaching Redis; while pipelinesDown is
// set only pipelines do. failLayoutOnce fails
// the next check of a layout marker (the SET of a write or the GET of a
// read, of a key ending in ":segment_bits") without sending it, then lets
// everything through.
type faultHook struct {
	down           atomic.Bool
	pipelinesDown  atomic.Bool
	failLayoutOnce atomic.Bool
	layoutFailed   atomic.Int32 // layout commands failed so far
}

var _ redis.Hook = (*faultHook)(nil)

func (h *faultHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *faultHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.down.Load() {
			cmd.SetErr(errInjected)
			return errInjected
		}
		if isLayoutCmd(cmd) && h.failLayoutOnce.CompareAndSwap(true, false) {
			h.layoutFailed.Add(1)
			cmd.SetErr(errInjected)
			return errInjected
		}
		return next(ctx, cmd)
	}
}

func (h *faultHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if h.down.Load() || h.pipelinesDown.Load() {
			for _, cmd := range cmds {
				cmd.SetErr(errInjected)
			}
			return errInjected
		}
		return next(ctx, cmds)
	}
}

func isLayoutCmd(cmd redis.Cmder) bool {
	args := cmd.Args()
	if (cmd.Name() != "set" && cmd.Name() != "get") || len(args) < 2 {
		return false
	}
	key, ok := args[1].(string)
	return ok && strings.HasSuffix(key, ":segment_bits")
}

// faultyClient returns a client of its own on LM_REDIS_ADDR with a
// faultHook added.
func faultyClient(t *testing.T) (*redis.Client, *faultHook) {
	t.Helper()
	opts, err := testenv.RedisOptions(testenv.Require(t, "LM_REDIS_ADDR"))
	if err != nil {
		t.Fatalf("RedisOptions: %v", err)
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { _ = rdb.Close() })
	h := &faultHook{}
	rdb.AddHook(h)
	return rdb, h
}

// readsMatchModel checks every read of tr over [lo, hi) against m, key by
// key.
func readsMatchModel(t *testing.T, tr *tracker.Tracker, m model, lo, hi int64) {
	t.Helper()
	ctx := testContext(t)
	probe := keyRange(lo, hi)
	got, err := tr.Settled(ctx, probe)
	if err != nil {
		t.Fatalf("Settled: %v", err)
	}
	wrong := 0
	for i, k := range probe {
		one, err := tr.IsSettled(ctx, k)
		if err != nil {
			t.Fatalf("IsSettled(%d): %v", k, err)
		}
		if got[i] != m[k] || one != m[k] {
			t.Errorf("key %d: Settled says %v, IsSettled %v, want %v", k, got[i], one, m[k])
			if wrong++; wrong == 5 {
				t.Fatalf("and maybe more keys in [%d, %d)", lo, hi)
			}
		}
	}
	if got, want := mustUnsettled(t, tr, lo, hi), m.unsettled(lo, hi); !slices.Equal(got, want) {
		t.Errorf("Unsettled(%d, %d) = %v, want %v", lo, hi, got, want)
	}
	if got, want := mustCountRange(t, tr, lo, hi), m.countRange(lo, hi); got != want {
		t.Errorf("CountRange(%d, %d) = %d, want %d", lo, hi, got, want)
	}
	if got, want := mustCount(t, tr), int64(len(m)); got != want {
		t.Errorf("Count = %d, want %d", got, want)
	}
}

// TestMarkSparseKeys marks sets with gaps between keys (never a run) and
// checks that only the given keys are settled: a gap must not be filled by
// the run-merging of Mark.
func TestMarkSparseKeys(t *testing.T) {
	t.Parallel()
	every := func(lo, hi, step int64) []int64 {
		var ks []int64
		for k := lo; k < hi; k += step {
			ks = append(ks, k)
		}
		return ks
	}
	tests := []struct {
		name  string
		marks [][]int64 // successive Mark calls
	}{
		{"gap of 2", [][]int64{{10, 12}}},
		{"gap of 3", [][]int64{{30, 33, 36}}},
		{"every other key", [][]int64{every(0, 40, 2)}},
		{"every other key past one op", [][]int64{every(1, 300, 2)}},
		{"runs and gaps", [][]int64{{100, 102, 103, 104, 106, 109, 110, 112}}},
		{"gaps at the segment edge", [][]int64{{1020, 1022, 1024, 1026}}},
		{"gaps across the segment edge", [][]int64{{1019, 1021, 1023, 1025, 1027}}},
		{"every other key over three segments", [][]int64{every(1000, 3100, 2)}},
		{"unsorted with duplicates", [][]int64{{12, 10, 14, 10, 1025, 1023}}},
		{"gap over an already settled key", [][]int64{{11}, {10, 12}}},
		{"filling gaps later", [][]int64{{10, 12, 14}, {11, 13, 15}, {20, 22}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, 10)
			m := model{}
			lo, hi := int64(1<<62), int64(0)
			for _, ks := range tt.marks {
				want := 0
				for _, k := range ks {
					if !m[k] {
						m[k] = true
						want++
					}
					lo, hi = min(lo, k), max(hi, k+1)
				}
				if got := mustMark(t, b.tr, ks...); got != want {
					t.Errorf("Mark(%v) = %d, want %d", ks, got, want)
				}
			}
			readsMatchModel(t, b.tr, m, max(0, lo-8), hi+8)
		})
	}
}

// TestResetReleasesLayout checks that a Reset forgets the layout it had
// claimed, so that the next call claims it again: another SegmentBits must
// still be refused after Reset and a Mark.
func TestResetReleasesLayout(t *testing.T) {
	t.Parallel()
	b := setup(t, 10)
	ctx := testContext(t)

	mustMark(t, b.tr, 1, 1500)
	if err := b.tr.Reset(ctx); err != nil {
		t.Fatalf("Reset: %v", err)
	}
	if n := mustMark(t, b.tr, 2, 1500); n != 2 {
		t.Fatalf("Mark after Reset = %d, want 2", n)
	}

	other, err := tracker.New(b.rdb, "t", &tracker.Config{Prefix: b.prefix, SegmentBits: 12})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	calls := map[string]func() error{
		"IsSettled": func() error { _, err := other.IsSettled(ctx, 2); return err },
		"Settled":   func() error { _, err := other.Settled(ctx, []int64{2}); return err },
		"Mark":      func() error { _, err := other.Mark(ctx, []int64{7}); return err },
		"MarkRange": func() error { return other.MarkRange(ctx, 3000, 5000) },
		"Unsettled": func() error { _, err := other.Unsettled(ctx, 0, 10); return err },
		"CountRange": func() error {
			_, err := other.CountRange(ctx, 0, 10)
			return err
		},
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, tracker.ErrLayoutMismatch) {
			t.Errorf("%s with other SegmentBits after Reset and Mark: err = %v, want ErrLayoutMismatch", name, err)
		}
	}
	if t.Failed() {
		return
	}
	// The refused calls wrote nothing: the bitmap is the one Mark left.
	readsMatchModel(t, b.tr, model{2: true, 1500: true}, 0, 1600)
}

// TestLayoutReadError checks that a failure to read the layout marker is
// returned as such, not taken for a mismatch nor for agreement, and that
// the check is made again on the next call.
func TestLayoutReadError(t *testing.T) {
	t.Parallel()

	t.Run("mismatch", func(t *testing.T) {
		t.Parallel()
		b := setup(t, 12) // claims SegmentBits 12 below
		ctx := testContext(t)
		mustMark(t, b.tr, 5)

		rdb, fault := faultyClient(t)
		tr, err := tracker.New(rdb, "t", &tracker.Config{Prefix: b.prefix, SegmentBits: 10})
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		fault.failLayoutOnce.Store(true)
		_, err = tr.IsSettled(ctx, 5)
		if n := fault.layoutFailed.Load(); n != 1 {
			t.Fatalf("the layout read was failed %d times, want 1", n)
		}
		if !errors.Is(err, errInjected) || errors.Is(err, tracker.ErrLayoutMismatch) {
			t.Fatalf("IsSettled while the layout cannot be read: err = %v, want the injected fault and no mismatch", err)
		}
		// The fault is gone: the layout is read again and found different.
		if _, err := tr.IsSettled(ctx, 5); !errors.Is(err, tracker.ErrLayoutMismatch) {
			t.Fatalf("IsSettled after the fault: err = %v, want ErrLayoutMismatch", err)
		}
		if _, err := tr.Mark(ctx, []int64{9}); !errors.Is(err, tracker.ErrLayoutMismatch) {
			t.Fatalf("Mark after the fault: err = %v, want ErrLayoutMismatch", err)
		}
		readsMatchModel(t, b.tr, model{5: true}, 0, 20)
	})

	t.Run("match", func(t *testing.T) {
		t.Parallel()
		b := setup(t, 10)
		ctx := testContext(t)
		mustMark(t, b.tr, 5)

		rdb, fault := faultyClient(t)
		tr, err := tracker.New(rdb, "t", &tracker.Config{Prefix: b.prefix, SegmentBits: 10})
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		fault.failLayoutOnce.Store(true)
		if n, err := tr.Mark(ctx, []int64{6}); !errors.Is(err, errInjected) || errors.Is(err, tracker.ErrLayoutMismatch) || n != 0 {
			t.Fatalf("Mark while the layout cannot be read = %d, %v; want 0 and the injected fault", n, err)
		}
		if n := fault.layoutFailed.Load(); n != 1 {
			t.Fatalf("the layout read was failed %d times, want 1", n)
		}
		// Nothing was written past the failed check.
		readsMatchModel(t, b.tr, model{5: true}, 0, 20)
		if n := mustMark(t, tr, 6); n != 1 {
			t.Fatalf("Mark after the fault = %d, want 1", n)
		}
		readsMatchModel(t, tr, model{5: true, 6: true}, 0, 20)
	})
}

// opErrors calls every operation of tr on keys of segment 0 (and of segment
// 1 for the writes) and returns, per operation, its error; an operation
// that returned no error but a value says so in the error.
func opErrors(ctx context.Context, tr *tracker.Tracker) map[string]error {
	errs := map[string]error{}
	n, err := tr.Mark(ctx, []int64{1, 3, 4, 5, 1030})
	errs["Mark"] = orValue(err, n)
	errs["MarkRange"] = tr.MarkRange(ctx, 2, 1100)
	b, err := tr.IsSettled(ctx, 1)
	errs["IsSettled"] = orValue(err, b)
	bs, err := tr.Settled(ctx, []int64{1, 2, 1030})
	errs["Settled"] = orValue(err, bs)
	ks, err := tr.Unsettled(ctx, 0, 20)
	errs["Unsettled"] = orValue(err, ks)
	c, err := tr.Count(ctx)
	errs["Count"] = orValue(err, c)
	c, err = tr.CountRange(ctx, 0, 20)
	errs["CountRange"] = orValue(err, c)
	return errs
}

func orValue(err error, v any) error {
	if err != nil {
		return err
	}
	return fmt.Errorf("no error, returned %v", v)
}

// TestRedisErrorsAreReturned checks that no operation turns a Redis failure
// into an answer: not an unreachable server, not a connection failing once
// the layout has been checked, not an error reply from Redis itself.
func TestRedisErrorsAreReturned(t *testing.T) {
	t.Parallel()

	t.Run("unreachable", func(t *testing.T) {
		t.Parallel()
		rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
		t.Cleanup(func() { _ = rdb.Close() })
		tr, err := tracker.New(rdb, "t", &tracker.Config{Prefix: "lmtest:unreachable", SegmentBits: 10})
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		for op, err := range opErrors(testContext(t), tr) {
			if err == nil || errors.Is(err, tracker.ErrLayoutMismatch) || !strings.Contains(err.Error(), "127.0.0.1:1") {
				t.Errorf("%s on an unreachable Redis: err = %v, want the dial error", op, err)
			}
		}
		if err := tr.Reset(testContext(t)); err == nil {
			t.Error("Reset on an unreachable Redis returned nil")
		}
	})

	// The layout is checked and cached first, so that each operation's own
	// commands are the ones failing.
	t.Run("connection lost after the layout check", func(t *testing.T) {
		t.Parallel()
		b := setup(t, 10)
		rdb, fault := faultyClient(t)
		tr, err := tracker.New(rdb, "t", &tracker.Config{Prefix: b.prefix, SegmentBits: 10})
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		mustMark(t, tr, 1, 3)

		fault.down.Store(true)
		for op, err := range opErrors(testContext(t), tr) {
			if !errors.Is(err, errInjected) {
				t.Errorf("%s with Redis gone: err = %v, want the injected fault", op, err)
			}
		}
		if err := tr.Reset(testContext(t)); !errors.Is(err, errInjected) {
			t.Errorf("Reset with Redis gone: err = %v, want the injected fault", err)
		}
		fault.down.Store(false)
		readsMatchModel(t, tr, model{1: true, 3: true}, 0, 20)
	})

	// Single commands (the index read, the layout check) still work: the
	// pipeline that follows them fails.
	t.Run("pipelines fail", func(t *testing.T) {
		t.Parallel()
		b := setup(t, 10)
		ctx := testContext(t)
		rdb, fault := faultyClient(t)
		tr, err := tracker.New(rdb, "t", &tracker.Config{Prefix: b.prefix, SegmentBits: 10})
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		mustMark(t, tr, 1, 3, 1030)

		fault.pipelinesDown.Store(true)
		if n, err := tr.Count(ctx); !errors.Is(err, errInjected) {
			t.Errorf("Count with pipelines failing = %d, %v; want the injected fault", n, err)
		}
		if err := tr.Reset(ctx); !errors.Is(err, errInjected) {
			t.Errorf("Reset with pipelines failing: err = %v, want the injected fault", err)
		}
		fault.pipelinesDown.Store(false)
		// The failed Reset deleted nothing.
		readsMatchModel(t, b.tr, model{1: true, 3: true, 1030: true}, 0, 1040)
	})

	// Segment 0 is replaced by a list: every command on it gets WRONGTYPE
	// from Redis, inside a pipeline whose other commands succeed.
	t.Run("error reply", func(t *testing.T) {
		t.Parallel()
		b := setup(t, 10)
		ctx := testContext(t)
		mustMark(t, b.tr, 1, 3, 1030)
		seg0 := b.prefix + ":tracker:t:b10:0"
		if err := b.rdb.Del(ctx, seg0).Err(); err != nil {
			t.Fatalf("DEL: %v", err)
		}
		if err := b.rdb.RPush(ctx, seg0, "not a bitmap").Err(); err != nil {
			t.Fatalf("RPUSH: %v", err)
		}
		for op, err := range opErrors(ctx, b.tr) {
			if err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
				t.Errorf("%s on a segment of the wrong type: err = %v, want WRONGTYPE", op, err)
			}
		}
		if typ := b.rdb.Type(ctx, seg0).Val(); typ != "list" {
			t.Errorf("segment 0 is a %s after the failed calls, want the list left alone", typ)
		}
	})
}
