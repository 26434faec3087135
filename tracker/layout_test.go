package tracker_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/tracker"
)

// readResult is what a read returned: its value, or its error.
type readResult struct {
	got any
	err error
}

func (r readResult) String() string {
	if r.err != nil {
		return "error: " + r.err.Error()
	}
	return fmt.Sprint(r.got)
}

// readOps calls every read of tr once, on keys of segments 0 and 4 of a
// tracker of 1024-key segments, and returns what each one returned.
func readOps(ctx context.Context, tr *tracker.Tracker) map[string]readResult {
	out := map[string]readResult{}
	b, err := tr.IsSettled(ctx, 5000)
	out["IsSettled"] = readResult{b, err}
	bs, err := tr.Settled(ctx, []int64{5, 5000})
	out["Settled"] = readResult{bs, err}
	ks, err := tr.Unsettled(ctx, 4998, 5002)
	out["Unsettled"] = readResult{ks, err}
	n, err := tr.CountRange(ctx, 0, 6000)
	out["CountRange"] = readResult{n, err}
	n, err = tr.Count(ctx)
	out["Count"] = readResult{n, err}
	return out
}

// Reads of a table nothing has written yet answer that no key is settled
// and leave Redis untouched, whatever their SegmentBits: an operator's
// 'sweeper status' with the wrong --segment-bits, run before the
// application first wrote, used to record its layout and lock the
// application out with ErrLayoutMismatch. Once a write has recorded the
// layout, the reader configured wrong is refused.
func TestReadsDoNotClaimLayout(t *testing.T) {
	t.Parallel()
	b := setup(t, 10) // the application's tracker, which writes later
	ctx := testContext(t)
	reader, err := tracker.New(b.rdb, "t", &tracker.Config{Prefix: b.prefix, SegmentBits: 12})
	if err != nil {
		t.Fatalf("New: %v", err)
	}

	none := map[string]string{
		"IsSettled":  "false",
		"Settled":    "[false false]",
		"Unsettled":  "[4998 4999 5000 5001]",
		"CountRange": "0",
		"Count":      "0",
	}
	for range 2 { // the second time, a cached answer would show
		for name, r := range readOps(ctx, reader) {
			if r.String() != none[name] {
				t.Errorf("%s before any write = %v, want %s", name, r, none[name])
			}
		}
	}
	if ks := b.redisKeys(t); len(ks) != 0 {
		t.Fatalf("reads before any write left keys in Redis: %v", ks)
	}

	if n, err := b.tr.Mark(ctx, []int64{5000}); err != nil || n != 1 {
		t.Fatalf("the application's Mark after the reads = %d, %v; want 1, nil", n, err)
	}
	for name, r := range readOps(ctx, reader) {
		if name == "Count" { // counts bits wherever they are
			continue
		}
		if !errors.Is(r.err, tracker.ErrLayoutMismatch) {
			t.Errorf("%s with other SegmentBits after the write = %v, want ErrLayoutMismatch", name, r)
		}
	}
	readsMatchModel(t, b.tr, model{5000: true}, 4990, 5010)
}

// While no layout is recorded, reads answer that no key is settled without
// reading bits, even where bits exist: a Mark racing Reset may leave some
// behind, and nothing says which SegmentBits placed them. Here segment 4
// of 1024-key segments holds key 5000; a tracker of 4096-key segments
// would take it for key 4<<12 + 904.
func TestReadsWithoutLayoutIgnoreBits(t *testing.T) {
	t.Parallel()
	b := setup(t, 10)
	ctx := testContext(t)
	mustMark(t, b.tr, 5000)
	if err := b.rdb.Del(ctx, b.prefix+":tracker:t:segment_bits").Err(); err != nil {
		t.Fatalf("DEL: %v", err)
	}

	wide, err := tracker.New(b.rdb, "t", &tracker.Config{Prefix: b.prefix, SegmentBits: 12})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	const alias = 4<<12 + 904
	if ok, err := wide.IsSettled(ctx, alias); err != nil || ok {
		t.Errorf("IsSettled(%d) with 4096-key segments and no layout recorded = %v, %v; want false", alias, ok, err)
	}
	if n, err := wide.CountRange(ctx, alias, alias+1); err != nil || n != 0 {
		t.Errorf("CountRange over key %d with no layout recorded = %d, %v; want 0", alias, n, err)
	}
	same, err := tracker.New(b.rdb, "t", &tracker.Config{Prefix: b.prefix, SegmentBits: 10})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if got := mustUnsettled(t, same, 4999, 5001); !slices.Equal(got, []int64{4999, 5000}) {
		t.Errorf("Unsettled(4999, 5001) with no layout recorded = %v, want both keys", got)
	}

	// A write records the layout again: the bits it agrees with count.
	mustMark(t, same, 7)
	readsMatchModel(t, same, model{7: true, 5000: true}, 0, 10)
	readsMatchModel(t, same, model{7: true, 5000: true}, 4990, 5010)
}

// roundTrips records, per round trip on keys under prefix, the names of
// the commands sent, comma-separated.
type roundTrips struct {
	prefix string
	mu     sync.Mutex
	trips  []string
}

func (h *roundTrips) record(cmds []redis.Cmder) {
	if !touches(cmds, h.prefix) {
		return
	}
	names := make([]string, len(cmds))
	for i, c := range cmds {
		names[i] = c.Name()
	}
	h.mu.Lock()
	h.trips = append(h.trips, strings.Join(names, ","))
	h.mu.Unlock()
}

// take returns the round trips recorded since the last call.
func (h *roundTrips) take() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.trips
	h.trips = nil
	return out
}

func (h *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.record([]redis.Cmder{cmd})
		return next(ctx, cmd)
	}
}

func (h *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.record(cmds)
		return next(ctx, cmds)
	}
}

// IsSettled is on lazy's read path: once a layout is recorded, only a
// Tracker's first read pays a round trip for the check. Until then, each
// read costs that one round trip and no other.
func TestReadsCheckLayoutOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, 10)
	ctx := testContext(t)
	h := &roundTrips{prefix: b.prefix}
	reader := hookedTracker(t, b, h)

	want := func(what string, trips ...string) {
		t.Helper()
		if got := h.take(); !slices.Equal(got, trips) {
			t.Errorf("%s: round trips %q, want %q", what, got, trips)
		}
	}
	for range 2 {
		if ok, err := reader.IsSettled(ctx, 5); err != nil || ok {
			t.Fatalf("IsSettled before any write = %v, %v; want false", ok, err)
		}
		want("IsSettled with no layout recorded", "get")
	}
	mustMark(t, b.tr, 5)
	for _, trips := range [][]string{{"get", "getbit"}, {"getbit"}, {"getbit"}} {
		if ok, err := reader.IsSettled(ctx, 5); err != nil || !ok {
			t.Fatalf("IsSettled after a write = %v, %v; want true", ok, err)
		}
		want("IsSettled with the layout recorded", trips...)
	}
}

// Bitmaps written with different SegmentBits never share a key. When the
// layout record is gone (Redis lost it while a process that had checked
// it kept writing), a tracker of other SegmentBits claims the layout and
// reads no bit of the other bitmap at the wrong key: it sees nothing
// settled, which costs copies but never skips one. A Reset with the new
// SegmentBits then removes both bitmaps.
func TestBitmapsOfOtherSegmentBitsDoNotMix(t *testing.T) {
	t.Parallel()
	b := setup(t, 10)
	ctx := testContext(t)
	mustMark(t, b.tr, 1, 2, 1025) // segments 0 and 1 of 1024 keys
	if err := b.rdb.Del(ctx, b.prefix+":tracker:t:segment_bits").Err(); err != nil {
		t.Fatal(err)
	}
	mustMark(t, b.tr, 1026) // the layout checked once: not recorded again
	other, err := tracker.New(b.rdb, "t", &tracker.Config{Prefix: b.prefix, SegmentBits: 12})
	if err != nil {
		t.Fatal(err)
	}
	if err := other.MarkRange(ctx, 8192, 8193); err != nil { // claims SegmentBits 12
		t.Fatal(err)
	}
	// Read with 4096-key segments, the first bitmap's segment 1 would
	// hold keys 4096.., and its bits 1 and 2 keys 4097 and 4098.
	for _, k := range []int64{1, 2, 1025, 1026, 4097, 4098} {
		if ok, err := other.IsSettled(ctx, k); err != nil || ok {
			t.Errorf("IsSettled(%d) with SegmentBits 12 = %v, %v; want false", k, ok, err)
		}
	}
	if n, err := other.Count(ctx); err != nil || n != 1 {
		t.Errorf("Count with SegmentBits 12 = %d, %v; want 1", n, err)
	}
	if err := other.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	if ks := b.redisKeys(t); len(ks) != 0 {
		t.Errorf("after Reset: Redis keys %v, want none", ks)
	}
}

// A bitmap written before segment keys carried their SegmentBits
// (<table>:<s>, listed in <table>:segments) reads as empty, which is safe,
// and Reset removes it, as a full Rebuild expects.
func TestResetRemovesTheBitmapOfUnnamedSegmentBits(t *testing.T) {
	t.Parallel()
	b := setup(t, 10)
	ctx := testContext(t)
	base := b.prefix + ":tracker:t:"
	if err := b.rdb.SetBit(ctx, base+"0", 1, 1).Err(); err != nil { // key 1, in the old names
		t.Fatal(err)
	}
	if err := b.rdb.SAdd(ctx, base+"segments", "0").Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.rdb.Set(ctx, base+"segment_bits", "10", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.tr.IsSettled(ctx, 1); err != nil || ok {
		t.Errorf("IsSettled(1), set only in the old names = %v, %v; want false", ok, err)
	}
	mustMark(t, b.tr, 2)
	if err := b.tr.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	if ks := b.redisKeys(t); len(ks) != 0 {
		t.Errorf("after Reset: Redis keys %v, want none", ks)
	}
}
