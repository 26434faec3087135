package tracker_test

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/tracker"
)

// These tests put a Mark inside a Reset and a Reset inside a Mark, at every
// point between two of their commands, as Redis may interleave clients, and
// check that no segment is left unlisted: Count would never count its bits
// and no later Reset would delete them, so after a Reset to another
// SegmentBits they would be read at the wrong keys.

// touches reports whether one of cmds is on a key under prefix, which
// leaves out the commands go-redis sends on its own (HELLO, CLIENT SETINFO).
func touches(cmds []redis.Cmder, prefix string) bool {
	return slices.ContainsFunc(cmds, func(c redis.Cmder) bool {
		args := c.Args()
		key, ok := "", len(args) > 1
		if ok {
			key, ok = args[1].(string)
		}
		return ok && strings.HasPrefix(key, prefix)
	})
}

// afterRoundTrip calls fn once, right after the client's n-th round trip
// (a command or a pipeline) on keys under prefix returns.
type afterRoundTrip struct {
	prefix string
	n      int32
	fn     func()
	seen   atomic.Int32
}

func (h *afterRoundTrip) done(cmds []redis.Cmder) {
	if touches(cmds, h.prefix) && h.seen.Add(1) == h.n {
		h.fn()
	}
}

func (h *afterRoundTrip) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *afterRoundTrip) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h.done([]redis.Cmder{cmd})
		return err
	}
}

func (h *afterRoundTrip) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		h.done(cmds)
		return err
	}
}

// pipelineSplitter sends the client's first pipeline on keys under prefix
// in two parts, its first split commands then the rest, and calls between
// in the middle: another client's commands running between two commands
// of a pipeline, which Redis allows.
type pipelineSplitter struct {
	prefix  string
	split   int
	between func()
	once    sync.Once
	n       int // commands of the pipeline split, once it ran
}

func (h *pipelineSplitter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *pipelineSplitter) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (h *pipelineSplitter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		first := false
		if touches(cmds, h.prefix) {
			h.once.Do(func() { first = true })
		}
		if !first {
			return next(ctx, cmds)
		}
		h.n = len(cmds)
		i := min(h.split, len(cmds))
		if i > 0 {
			if err := next(ctx, cmds[:i]); err != nil {
				return err
			}
		}
		h.between()
		if i < len(cmds) {
			return next(ctx, cmds[i:])
		}
		return nil
	}
}

// hookedTracker returns a tracker of table "t" under b's prefix, with 1024
// keys per segment, on a client of its own with hook added.
func hookedTracker(t *testing.T, b testBundle, hook redis.Hook) *tracker.Tracker {
	t.Helper()
	opts, err := testenv.RedisOptions(testenv.Require(t, "LM_REDIS_ADDR"))
	if err != nil {
		t.Fatalf("RedisOptions: %v", err)
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { _ = rdb.Close() })
	rdb.AddHook(hook)
	tr, err := tracker.New(rdb, "t", &tracker.Config{Prefix: b.prefix, SegmentBits: 10})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return tr
}

// requireListed fails the test if a segment of table "t" exists in Redis
// that the segments index does not list.
func requireListed(t *testing.T, b testBundle) {
	t.Helper()
	ctx := testContext(t)
	base := b.prefix + ":tracker:t:b10:" // SegmentBits 10
	listed, err := b.rdb.SMembers(ctx, base+"segments").Result()
	if err != nil {
		t.Fatalf("SMEMBERS: %v", err)
	}
	for _, k := range b.redisKeys(t) {
		seg, ok := strings.CutPrefix(k, base)
		if _, err := strconv.Atoi(seg); !ok || err != nil {
			continue // the index or the layout marker
		}
		if !slices.Contains(listed, seg) {
			t.Errorf("segment %s exists but the index lists only %v: Count misses its bits, Reset never deletes them", seg, listed)
		}
	}
}

// requireResetEmpties runs a Reset with nothing racing it and checks that
// it deletes every key of the tracker.
func requireResetEmpties(t *testing.T, b testBundle) {
	t.Helper()
	if err := b.tr.Reset(testContext(t)); err != nil {
		t.Fatalf("Reset: %v", err)
	}
	if ks := b.redisKeys(t); len(ks) != 0 {
		t.Errorf("keys left by a quiet Reset after the race: %v", ks)
	}
}

// A Mark runs after each round trip of a Reset in turn (after it read the
// index, after it deleted the segments, after it took them out of the
// index, after it looked for segments written again). The Mark writes
// segment 0, which Reset deletes, and segment 4, which Reset has not seen.
// Whatever of it survives the Reset must stay listed.
func TestMarkDuringResetLeavesNoUnlistedSegment(t *testing.T) {
	t.Parallel()
	for n := int32(1); n <= 4; n++ {
		t.Run("after round trip "+strconv.Itoa(int(n)), func(t *testing.T) {
			t.Parallel()
			b := setup(t, 10)
			ctx := testContext(t)
			mustMark(t, b.tr, 1, 2000) // segments 0 and 1
			ran := false
			resetter := hookedTracker(t, b, &afterRoundTrip{prefix: b.prefix, n: n, fn: func() {
				ran = true
				marker, err := tracker.New(b.rdb, "t", &tracker.Config{Prefix: b.prefix, SegmentBits: 10})
				if err != nil {
					t.Errorf("New: %v", err)
					return
				}
				if _, err := marker.Mark(ctx, []int64{3, 5000}); err != nil {
					t.Errorf("Mark during Reset: %v", err)
				}
			}})
			if err := resetter.Reset(ctx); err != nil {
				t.Fatalf("Reset: %v", err)
			}
			if !ran {
				t.Fatalf("Reset made fewer than %d round trips", n)
			}
			requireListed(t, b)
			requireResetEmpties(t, b)
		})
	}
}

// A whole Reset runs between each two commands of a Mark's or MarkRange's
// pipeline in turn: after the Mark listed its segments, say, and before it
// wrote their bits. Segment 0 exists and is listed before the Mark (whose
// SADD then changes nothing); segment 4 is new.
func TestResetDuringMarkLeavesNoUnlistedSegment(t *testing.T) {
	t.Parallel()
	writes := map[string]func(context.Context, *tracker.Tracker) error{
		"Mark": func(ctx context.Context, tr *tracker.Tracker) error {
			_, err := tr.Mark(ctx, []int64{3, 5000})
			return err
		},
		"MarkRange": func(ctx context.Context, tr *tracker.Tracker) error {
			return tr.MarkRange(ctx, 900, 5000) // segments 0 to 4, partial bytes at both ends
		},
	}
	for name, write := range writes {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			for split := 0; ; split++ {
				var cmds int
				t.Run("after command "+strconv.Itoa(split), func(t *testing.T) {
					b := setup(t, 10)
					ctx := testContext(t)
					mustMark(t, b.tr, 1)
					h := &pipelineSplitter{prefix: b.prefix, split: split, between: func() {
						if err := b.tr.Reset(ctx); err != nil {
							t.Errorf("Reset during %s: %v", name, err)
						}
					}}
					if err := write(ctx, hookedTracker(t, b, h)); err != nil {
						t.Fatalf("%s: %v", name, err)
					}
					if cmds = h.n; cmds == 0 {
						t.Fatalf("%s sent no pipeline", name)
					}
					requireListed(t, b)
					requireResetEmpties(t, b)
				})
				if split >= cmds {
					break
				}
			}
		})
	}
}
