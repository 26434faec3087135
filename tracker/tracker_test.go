package tracker_test

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/internal/pgtable"
	"github.com/lazymigrate/lazymigrate/internal/schema"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/tracker"
)

var _ tracker.Querier = (*pgxpool.Pool)(nil)

type testBundle struct {
	rdb    *redis.Client
	prefix string
	tr     *tracker.Tracker
}

// setup returns a tracker for table "t" under a Redis prefix of the test's
// own, with segments of 2^segmentBits keys.
func setup(t *testing.T, segmentBits uint) testBundle {
	t.Helper()
	rdb, prefix := testenv.Redis(t)
	tr, err := tracker.New(rdb, "t", &tracker.Config{Prefix: prefix, SegmentBits: segmentBits})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return testBundle{rdb: rdb, prefix: prefix, tr: tr}
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// redisKeys lists the Redis keys under the test's prefix.
func (b testBundle) redisKeys(t *testing.T) []string {
	t.Helper()
	ks, err := b.rdb.Keys(context.Background(), b.prefix+"*").Result()
	if err != nil {
		t.Fatalf("KEYS: %v", err)
	}
	slices.Sort(ks)
	return ks
}

func mustMark(t *testing.T, tr *tracker.Tracker, ks ...int64) int {
	t.Helper()
	n, err := tr.Mark(testContext(t), ks)
	if err != nil {
		t.Fatalf("Mark(%v): %v", ks, err)
	}
	return n
}

func mustUnsettled(t *testing.T, tr *tracker.Tracker, lo, hi int64) []int64 {
	t.Helper()
	ks, err := tr.Unsettled(testContext(t), lo, hi)
	if err != nil {
		t.Fatalf("Unsettled(%d, %d): %v", lo, hi, err)
	}
	return ks
}

func mustCount(t *testing.T, tr *tracker.Tracker) int64 {
	t.Helper()
	n, err := tr.Count(testContext(t))
	if err != nil {
		t.Fatalf("Count: %v", err)
	}
	return n
}

func mustCountRange(t *testing.T, tr *tracker.Tracker, lo, hi int64) int64 {
	t.Helper()
	n, err := tr.CountRange(testContext(t), lo, hi)
	if err != nil {
		t.Fatalf("CountRange(%d, %d): %v", lo, hi, err)
	}
	return n
}

func keyRange(lo, hi int64) []int64 {
	var ks []int64
	for k := lo; k < hi; k++ {
		ks = append(ks, k)
	}
	return ks
}

func TestNew(t *testing.T) {
	t.Parallel()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:0"}) // never dialled
	t.Cleanup(func() { _ = rdb.Close() })

	tests := []struct {
		name    string
		rdb     redis.UniversalClient
		table   string
		cfg     *tracker.Config
		wantErr string
	}{
		{name: "nil config", rdb: rdb, table: "accounts"},
		{name: "defaults", rdb: rdb, table: "accounts", cfg: &tracker.Config{}},
		{name: "bounds", rdb: rdb, table: "accounts", cfg: &tracker.Config{SegmentBits: 28}},
		{name: "no client", table: "accounts", wantErr: "Redis client"},
		{name: "no table", rdb: rdb, wantErr: "table name"},
		{name: "segments too small", rdb: rdb, table: "a", cfg: &tracker.Config{SegmentBits: 9}, wantErr: "Config.SegmentBits"},
		{name: "segments too big", rdb: rdb, table: "a", cfg: &tracker.Config{SegmentBits: 29}, wantErr: "Config.SegmentBits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tr, err := tracker.New(tt.rdb, tt.table, tt.cfg)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				if tr.Table() != tt.table {
					t.Fatalf("Table() = %q, want %q", tr.Table(), tt.table)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New: err = %v, want one mentioning %q", err, tt.wantErr)
			}
		})
	}
}

func TestRoundTripAcrossSegments(t *testing.T) {
	t.Parallel()
	b := setup(t, 10)
	ctx := testContext(t)

	marked := []int64{0, 1, 1023, 1024, 1025, 2047, 2048, 5000}
	if n := mustMark(t, b.tr, marked...); n != len(marked) {
		t.Fatalf("Mark = %d, want %d", n, len(marked))
	}

	probe := []int64{0, 1, 2, 1022, 1023, 1024, 1025, 1026, 2047, 2048, 2049, 4999, 5000, 5001, 1 << 40}
	got, err := b.tr.Settled(ctx, probe)
	if err != nil {
		t.Fatalf("Settled: %v", err)
	}
	for i, k := range probe {
		if want := slices.Contains(marked, k); got[i] != want {
			t.Errorf("Settled: key %d = %v, want %v", k, got[i], want)
		}
		one, err := b.tr.IsSettled(ctx, k)
		if err != nil {
			t.Fatalf("IsSettled(%d): %v", k, err)
		}
		if one != got[i] {
			t.Errorf("IsSettled(%d) = %v, Settled says %v", k, one, got[i])
		}
	}

	var want []int64
	for k := int64(0); k < 6000; k++ {
		if !slices.Contains(marked, k) {
			want = append(want, k)
		}
	}
	if got := mustUnsettled(t, b.tr, 0, 6000); !slices.Equal(got, want) {
		t.Errorf("Unsettled(0, 6000) has %d keys, want %d", len(got), len(want))
	}
	if got := mustUnsettled(t, b.tr, 1022, 1027); !slices.Equal(got, []int64{1022, 1026}) {
		t.Errorf("Unsettled(1022, 1027) = %v, want [1022 1026]", got)
	}
	if n := mustCount(t, b.tr); n != int64(len(marked)) {
		t.Errorf("Count = %d, want %d", n, len(marked))
	}
	if n := mustCountRange(t, b.tr, 1000, 2049); n != 5 {
		t.Errorf("CountRange(1000, 2049) = %d, want 5", n)
	}
}

func TestMarkReportsNewlyMarked(t *testing.T) {
	t.Parallel()
	b := setup(t, 10)

	settled := map[int64]bool{}
	steps := []struct {
		name string
		keys []int64
	}{
		{"fresh", []int64{1, 2, 3}},
		{"overlap", []int64{2, 3, 4}},
		{"all marked", []int64{1, 2, 3, 4}},
		{"duplicates", []int64{5, 5, 6, 5}},
		{"unsorted", []int64{900, 7, 300, 8}},
		{"run over marked keys", keyRange(0, 200)},
		{"run across segments and 63-bit ops", keyRange(950, 1300)},
		{"run again", keyRange(0, 1300)},
	}
	for _, s := range steps {
		want := 0
		for _, k := range s.keys {
			if !settled[k] {
				settled[k] = true
				want++
			}
		}
		if got := mustMark(t, b.tr, s.keys...); got != want {
			t.Errorf("%s: Mark = %d, want %d", s.name, got, want)
		}
	}
	if n := mustCount(t, b.tr); n != int64(len(settled)) {
		t.Errorf("Count = %d, want %d", n, len(settled))
	}
}

func TestMarkSplitsLargeBatches(t *testing.T) {
	t.Parallel()
	b := setup(t, 16)

	// Every third key, so that no two are adjacent: one BITFIELD op per key,
	// more than one command's worth (4096) in a single segment.
	var ks []int64
	for k := int64(0); k < 30_000; k += 3 {
		ks = append(ks, k)
	}
	if n := mustMark(t, b.tr, ks...); n != len(ks) {
		t.Fatalf("Mark = %d, want %d", n, len(ks))
	}
	if n := mustCount(t, b.tr); n != int64(len(ks)) {
		t.Fatalf("Count = %d, want %d", n, len(ks))
	}
	un := mustUnsettled(t, b.tr, 0, 30_000)
	if len(un) != 30_000-len(ks) || slices.ContainsFunc(un, func(k int64) bool { return k%3 == 0 }) {
		t.Fatalf("Unsettled returned %d keys, want %d, none a multiple of 3", len(un), 30_000-len(ks))
	}
}

func TestMarkRange(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		bits   uint
		lo, hi int64
	}{
		{"inside one byte", 10, 3, 6},
		{"one whole byte", 10, 8, 16},
		{"byte edges", 10, 7, 17},
		{"single key", 10, 1030, 1031},
		{"across a segment edge", 10, 1023, 1025},
		{"exactly one segment", 10, 1024, 2048},
		{"unaligned across segments", 10, 5, 1029},
		{"several segments", 10, 1000, 5100},
		{"long range", 10, 3, 70_003},
		{"several SETRANGE chunks", 20, 3, 1<<20 + 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, tt.bits)
			ctx := testContext(t)

			if err := b.tr.MarkRange(ctx, tt.lo, tt.hi); err != nil {
				t.Fatalf("MarkRange: %v", err)
			}
			if un := mustUnsettled(t, b.tr, tt.lo, tt.hi); len(un) != 0 {
				t.Errorf("Unsettled(%d, %d) = %d keys (first %d), want none", tt.lo, tt.hi, len(un), un[0])
			}
			// The neighbours on each side stay unsettled.
			around := mustUnsettled(t, b.tr, max(0, tt.lo-20), tt.hi+20)
			want := append(keyRange(max(0, tt.lo-20), tt.lo), keyRange(tt.hi, tt.hi+20)...)
			if !slices.Equal(around, want) {
				t.Errorf("Unsettled around the range = %v, want %v", around, want)
			}
			if n := mustCountRange(t, b.tr, tt.lo, tt.hi); n != tt.hi-tt.lo {
				t.Errorf("CountRange = %d, want %d", n, tt.hi-tt.lo)
			}
			if n := mustCount(t, b.tr); n != tt.hi-tt.lo {
				t.Errorf("Count = %d, want %d", n, tt.hi-tt.lo)
			}
			// A later Mark of keys inside the range finds them settled.
			if n := mustMark(t, b.tr, tt.lo, tt.hi-1); n != 0 {
				t.Errorf("Mark inside the range = %d, want 0", n)
			}
		})
	}
}

func TestMarkRangeKeepsMarks(t *testing.T) {
	t.Parallel()
	b := setup(t, 10)
	ctx := testContext(t)

	mustMark(t, b.tr, 2, 11, 3000)
	if err := b.tr.MarkRange(ctx, 5, 2000); err != nil {
		t.Fatalf("MarkRange: %v", err)
	}
	if err := b.tr.MarkRange(ctx, 7, 7); err != nil { // empty
		t.Fatalf("MarkRange(7, 7): %v", err)
	}
	if n, want := mustCount(t, b.tr), int64(2+(2000-5)); n != want {
		t.Errorf("Count = %d, want %d", n, want)
	}
	got, err := b.tr.Settled(ctx, []int64{2, 4, 5, 1999, 2000, 3000})
	if err != nil {
		t.Fatalf("Settled: %v", err)
	}
	if want := []bool{true, false, true, true, false, true}; !slices.Equal(got, want) {
		t.Errorf("Settled = %v, want %v", got, want)
	}
}

func TestMarkRangeConcurrentWithMark(t *testing.T) {
	t.Parallel()
	b := setup(t, 10)
	ctx := testContext(t)

	// Mark and MarkRange race over the same bytes; both may only add bits.
	const n = 20_000
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Go(func() {
		for lo := int64(0); lo < n; lo += 333 {
			if err := b.tr.MarkRange(ctx, lo, min(n, lo+333)); err != nil {
				errs <- err
				return
			}
		}
	})
	wg.Go(func() {
		for lo := int64(0); lo < 2*n; lo += 500 {
			var ks []int64
			for k := lo + 1; k < lo+500; k += 7 {
				ks = append(ks, k)
			}
			if _, err := b.tr.Mark(ctx, ks); err != nil {
				errs <- err
				return
			}
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	var want []int64
	for k := int64(n); k < 2*n; k++ {
		if k%500 == 0 || (k%500-1)%7 != 0 {
			want = append(want, k)
		}
	}
	if got := mustUnsettled(t, b.tr, 0, 2*n); !slices.Equal(got, want) {
		t.Fatalf("Unsettled after the race: %d keys, want %d", len(got), len(want))
	}
}

// TestAgainstModel checks every read against an in-memory bitmap after
// random marks.
func TestAgainstModel(t *testing.T) {
	t.Parallel()
	b := setup(t, 10)
	ctx := testContext(t)
	rng := rand.New(rand.NewPCG(1, 2))
	const space = 5000
	var model [space]bool

	for i := range 150 {
		if i%3 == 0 {
			lo := rng.Int64N(space)
			hi := lo + rng.Int64N(min(space-lo, 700)+1)
			if err := b.tr.MarkRange(ctx, lo, hi); err != nil {
				t.Fatalf("MarkRange: %v", err)
			}
			for k := lo; k < hi; k++ {
				model[k] = true
			}
			continue
		}
		var ks []int64
		start := rng.Int64N(space)
		for range rng.IntN(100) + 1 {
			if rng.IntN(2) == 0 {
				ks = append(ks, rng.Int64N(space)) // scattered
			} else {
				ks = append(ks, min(space-1, start)) // a run, repeated at the end
				start++
			}
		}
		want := 0
		for _, k := range ks {
			if !model[k] {
				model[k] = true
				want++
			}
		}
		if got := mustMark(t, b.tr, ks...); got != want {
			t.Fatalf("step %d: Mark = %d, want %d", i, got, want)
		}
	}

	for range 50 {
		lo := rng.Int64N(space)
		hi := lo + rng.Int64N(space-lo+1)
		var wantUn []int64
		var wantCount int64
		for k := lo; k < hi; k++ {
			if model[k] {
				wantCount++
			} else {
				wantUn = append(wantUn, k)
			}
		}
		if got := mustUnsettled(t, b.tr, lo, hi); !slices.Equal(got, wantUn) {
			t.Fatalf("Unsettled(%d, %d) differs from the model", lo, hi)
		}
		if got := mustCountRange(t, b.tr, lo, hi); got != wantCount {
			t.Fatalf("CountRange(%d, %d) = %d, want %d", lo, hi, got, wantCount)
		}
	}

	probe := make([]int64, 3000)
	for i := range probe {
		probe[i] = rng.Int64N(space + 100)
	}
	got, err := b.tr.Settled(ctx, probe)
	if err != nil {
		t.Fatalf("Settled: %v", err)
	}
	var total int64
	for i, k := range probe {
		if want := k < space && model[k]; got[i] != want {
			t.Fatalf("Settled: key %d = %v, want %v", k, got[i], want)
		}
	}
	for _, s := range model {
		if s {
			total++
		}
	}
	if n := mustCount(t, b.tr); n != total {
		t.Fatalf("Count = %d, want %d", n, total)
	}
}

func TestInvalidKeys(t *testing.T) {
	t.Parallel()
	b := setup(t, 10)
	ctx := testContext(t)

	calls := []struct {
		name string
		call func() error
	}{
		{"Mark negative", func() error { _, err := b.tr.Mark(ctx, []int64{1, -1, 2}); return err }},
		{"Mark min int", func() error { _, err := b.tr.Mark(ctx, []int64{math.MinInt64}); return err }},
		{"MarkRange lo > hi", func() error { return b.tr.MarkRange(ctx, 10, 5) }},
		{"MarkRange negative lo", func() error { return b.tr.MarkRange(ctx, -3, 5) }},
		{"IsSettled negative", func() error { _, err := b.tr.IsSettled(ctx, -1); return err }},
		{"Settled negative", func() error { _, err := b.tr.Settled(ctx, []int64{3, -7}); return err }},
		{"Unsettled lo > hi", func() error { _, err := b.tr.Unsettled(ctx, 2, 1); return err }},
		{"Unsettled negative", func() error { _, err := b.tr.Unsettled(ctx, -1, 1); return err }},
		{"CountRange lo > hi", func() error { _, err := b.tr.CountRange(ctx, 9, 8); return err }},
	}
	for _, c := range calls {
		err := c.call()
		if !errors.Is(err, tracker.ErrInvalidKey) {
			t.Errorf("%s: err = %v, want ErrInvalidKey", c.name, err)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "tracker: ") {
			t.Errorf("%s: err = %q, want it to start with the package name", c.name, err)
		}
	}
	if ks := b.redisKeys(t); len(ks) != 0 {
		t.Errorf("invalid calls wrote to Redis: %v", ks)
	}
}

func TestEmptyInputsDoNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, 10)
	ctx := testContext(t)

	if n, err := b.tr.Mark(ctx, nil); n != 0 || err != nil {
		t.Errorf("Mark(nil) = %d, %v", n, err)
	}
	if err := b.tr.MarkRange(ctx, 4, 4); err != nil {
		t.Errorf("MarkRange(4, 4) = %v", err)
	}
	if got, err := b.tr.Settled(ctx, []int64{}); len(got) != 0 || err != nil {
		t.Errorf("Settled([]) = %v, %v", got, err)
	}
	if got, err := b.tr.Unsettled(ctx, 4, 4); len(got) != 0 || err != nil {
		t.Errorf("Unsettled(4, 4) = %v, %v", got, err)
	}
	if n, err := b.tr.CountRange(ctx, 4, 4); n != 0 || err != nil {
		t.Errorf("CountRange(4, 4) = %d, %v", n, err)
	}
	if ks := b.redisKeys(t); len(ks) != 0 {
		t.Errorf("empty calls wrote to Redis: %v", ks)
	}
}

func TestSettledDuplicatesAndOrder(t *testing.T) {
	t.Parallel()
	b := setup(t, 10)
	mustMark(t, b.tr, 3, 5000, 1024)

	tests := []struct {
		name string
		keys []int64
		want []bool
	}{
		{"one segment", []int64{3, 4, 3}, []bool{true, false, true}},
		{"unsorted, duplicated, across segments",
			[]int64{5000, 3, 5000, 1024, 3, 7, 0, 1 << 50, 1023},
			[]bool{true, true, true, true, true, false, false, false, false}},
	}
	for _, tt := range tests {
		got, err := b.tr.Settled(testContext(t), tt.keys)
		if err != nil {
			t.Fatalf("%s: Settled: %v", tt.name, err)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s: Settled(%v) = %v, want %v", tt.name, tt.keys, got, tt.want)
		}
	}
}

func TestHighKeyAllocatesOnlyItsSegment(t *testing.T) {
	t.Parallel()
	b := setup(t, 0) // the default, 2^20 keys per segment
	ctx := testContext(t)

	const high = 3_000_000_000 // past 2^31: one plain bitmap would need a 358 MiB string
	mustMark(t, b.tr, high)
	seg := b.prefix + ":tracker:t:b20:" + strconv.Itoa(high>>20)
	n, err := b.rdb.StrLen(ctx, seg).Result()
	if err != nil {
		t.Fatalf("STRLEN: %v", err)
	}
	if n == 0 || n > 1<<20/8 {
		t.Errorf("STRLEN %s = %d, want 1..%d", seg, n, 1<<20/8)
	}
	want := []string{seg, b.prefix + ":tracker:t:segment_bits", b.prefix + ":tracker:t:b20:segments"}
	slices.Sort(want)
	if got := b.redisKeys(t); !slices.Equal(got, want) {
		t.Errorf("Redis keys = %v, want %v", got, want)
	}

	// The largest int64 key works too (a single bitmap could not hold it).
	mustMark(t, b.tr, math.MaxInt64)
	if ok, err := b.tr.IsSettled(ctx, math.MaxInt64); err != nil || !ok {
		t.Errorf("IsSettled(MaxInt64) = %v, %v", ok, err)
	}
	if got := mustUnsettled(t, b.tr, math.MaxInt64-3, math.MaxInt64); !slices.Equal(got, keyRange(math.MaxInt64-3, math.MaxInt64)) {
		t.Errorf("Unsettled just below MaxInt64 = %v", got)
	}
	if n := mustCount(t, b.tr); n != 2 {
		t.Errorf("Count = %d, want 2", n)
	}
}

func TestUnsettledPastEndOfSegment(t *testing.T) {
	t.Parallel()
	b := setup(t, 10)

	if got := mustUnsettled(t, b.tr, 5, 9); !slices.Equal(got, []int64{5, 6, 7, 8}) {
		t.Errorf("Unsettled on an empty tracker = %v", got)
	}
	// Marking key 10 makes segment 0 two bytes long; the rest of the
	// segment reads as zeros.
	mustMark(t, b.tr, 10)
	got := mustUnsettled(t, b.tr, 0, 1024)
	if len(got) != 1023 || slices.Contains(got, 10) {
		t.Errorf("Unsettled(0, 1024) = %d keys, want 1023 without 10", len(got))
	}
}

func TestReset(t *testing.T) {
	t.Parallel()
	b := setup(t, 10)
	ctx := testContext(t)

	mustMark(t, b.tr, 1, 2000, 90_000)
	if err := b.tr.MarkRange(ctx, 100, 5000); err != nil {
		t.Fatalf("MarkRange: %v", err)
	}
	if err := b.tr.Reset(ctx); err != nil {
		t.Fatalf("Reset: %v", err)
	}
	if ks := b.redisKeys(t); len(ks) != 0 {
		t.Fatalf("keys left after Reset: %v", ks)
	}
	if n := mustCount(t, b.tr); n != 0 {
		t.Fatalf("Count after Reset = %d", n)
	}
	if n := mustMark(t, b.tr, 1, 2000); n != 2 {
		t.Fatalf("Mark after Reset = %d, want 2", n)
	}
}

func TestLayoutMismatch(t *testing.T) {
	t.Parallel()
	b := setup(t, 10)
	ctx := testContext(t)
	mustMark(t, b.tr, 5)

	other, err := tracker.New(b.rdb, "t", &tracker.Config{Prefix: b.prefix, SegmentBits: 12})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if _, err := other.IsSettled(ctx, 5); !errors.Is(err, tracker.ErrLayoutMismatch) {
		t.Fatalf("IsSettled with other SegmentBits: err = %v, want ErrLayoutMismatch", err)
	}
	if _, err := other.Mark(ctx, []int64{5}); !errors.Is(err, tracker.ErrLayoutMismatch) {
		t.Fatalf("Mark with other SegmentBits: err = %v, want ErrLayoutMismatch", err)
	}
	// Another table under the same prefix has its own layout.
	third, err := tracker.New(b.rdb, "u", &tracker.Config{Prefix: b.prefix, SegmentBits: 12})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	mustMark(t, third, 5)

	if err := b.tr.Reset(ctx); err != nil {
		t.Fatalf("Reset: %v", err)
	}
	if n := mustMark(t, other, 5); n != 1 {
		t.Fatalf("Mark after Reset = %d, want 1", n)
	}
}

func TestRebuild(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, "tracker_rebuild")
	ctx := testContext(t)
	if err := schema.Setup(ctx, db.Pool); err != nil {
		t.Fatalf("schema.Setup: %v", err)
	}
	// 70 000 rows: more than one 64k batch. Keys 0 and 70 001..79 999 are
	// absent; 80 000 and 80 001 were deleted; 90 000 is another table's.
	db.Exec(t, `
		CREATE TABLE accounts (id bigint PRIMARY KEY, name text NOT NULL);
		INSERT INTO accounts SELECT g, 'n' || g FROM generate_series(1, 70000) g;
		INSERT INTO lazymigrate.tombstones (table_name, key) VALUES
			('public.accounts', 80000), ('public.accounts', 80001), ('public.other', 90000);
		CREATE TABLE events (k integer, note text);
		INSERT INTO events VALUES (3, 'a'), (3, 'b'), (NULL, 'c'), (9, 'd');
		CREATE TABLE negative (id bigint PRIMARY KEY);
		INSERT INTO negative VALUES (1), (-5);`)

	t.Run("keys and tombstones", func(t *testing.T) {
		t.Parallel()
		b := setup(t, 10)
		marked, err := b.tr.Rebuild(ctx, db.Pool, "accounts", "id")
		if err != nil {
			t.Fatalf("Rebuild: %v", err)
		}
		if marked != 70_002 {
			t.Errorf("Rebuild marked %d, want 70002", marked)
		}
		if n := mustCount(t, b.tr); n != 70_002 {
			t.Errorf("Count = %d, want 70002", n)
		}
		want := append([]int64{0}, keyRange(70_001, 80_000)...)
		want = append(want, keyRange(80_002, 100_000)...)
		if got := mustUnsettled(t, b.tr, 0, 100_000); !slices.Equal(got, want) {
			t.Errorf("Unsettled after Rebuild: %d keys, want %d", len(got), len(want))
		}
		// Rebuild is additive: running it again marks nothing new.
		if again, err := b.tr.Rebuild(ctx, db.Pool, "public.accounts", "id"); err != nil || again != 0 {
			t.Errorf("second Rebuild = %d, %v; want 0, nil", again, err)
		}
	})

	t.Run("nullable non-unique integer column", func(t *testing.T) {
		t.Parallel()
		b := setup(t, 10)
		marked, err := b.tr.Rebuild(ctx, db.Pool, "events", "k")
		if err != nil {
			t.Fatalf("Rebuild: %v", err)
		}
		if marked != 2 {
			t.Errorf("Rebuild marked %d, want 2", marked)
		}
		if got := mustUnsettled(t, b.tr, 0, 10); !slices.Equal(got, []int64{0, 1, 2, 4, 5, 6, 7, 8}) {
			t.Errorf("Unsettled = %v", got)
		}
	})

	errorCases := []struct {
		name, table, column string
		want                error
	}{
		{"missing table", "nope", "id", pgtable.ErrNotFound},
		{"missing column", "accounts", "nope", pgtable.ErrBadKey},
		{"non-integer key column", "accounts", "name", pgtable.ErrBadKey},
		{"negative key", "negative", "id", tracker.ErrInvalidKey},
	}
	for _, tc := range errorCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, 10)
			_, err := b.tr.Rebuild(ctx, db.Pool, tc.table, tc.column)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Rebuild(%s, %s): err = %v, want %v", tc.table, tc.column, err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "tracker: rebuild t from "+tc.table) {
				t.Errorf("error lacks context: %q", err)
			}
		})
	}

	t.Run("schema not set up", func(t *testing.T) {
		t.Parallel()
		bare := testenv.NewDatabase(t, "tracker_bare")
		bare.Exec(t, `CREATE TABLE accounts (id bigint PRIMARY KEY)`)
		b := setup(t, 10)
		_, err := b.tr.Rebuild(ctx, bare.Pool, "accounts", "id")
		if !errors.Is(err, tracker.ErrNotSetUp) || !strings.Contains(err.Error(), "setup") {
			t.Fatalf("Rebuild without schema: err = %v, want ErrNotSetUp telling to run setup", err)
		}
		if ks := b.redisKeys(t); len(ks) != 0 {
			t.Errorf("failed Rebuild wrote to Redis: %v", ks)
		}
	})
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	rdb, prefix := testenv.Redis(t)
	ctx := testContext(t)
	reg := prometheus.NewRegistry()
	cfg := &tracker.Config{Prefix: prefix, SegmentBits: 10, Registerer: reg}

	tr, err := tracker.New(rdb, "accounts", cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	mustMark(t, tr, 1, 2, 3, 3)
	if err := tr.MarkRange(ctx, 100, 2100); err != nil {
		t.Fatalf("MarkRange: %v", err)
	}
	// A second tracker of the same table on the same registry shares the
	// counter instead of failing to register.
	again, err := tracker.New(rdb, "accounts", cfg)
	if err != nil {
		t.Fatalf("second New: %v", err)
	}
	mustMark(t, again, 3, 4)
	// Another table gets its own series.
	other, err := tracker.New(rdb, "orders", cfg)
	if err != nil {
		t.Fatalf("New(orders): %v", err)
	}
	mustMark(t, other, 7)

	want := `
# HELP lazymigrate_tracker_marked_keys_total Keys this process marked as settled that were not settled before (Mark and Rebuild; MarkRange is not counted).
# TYPE lazymigrate_tracker_marked_keys_total counter
lazymigrate_tracker_marked_keys_total{table="accounts"} 4
lazymigrate_tracker_marked_keys_total{table="orders"} 1
# HELP lazymigrate_tracker_settled_keys Keys whose truth lives in NEW, as recorded in the tracker bitmap.
# TYPE lazymigrate_tracker_settled_keys gauge
lazymigrate_tracker_settled_keys{table="accounts"} 2004
lazymigrate_tracker_settled_keys{table="orders"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}

	// Without Redis the gauge is left out, and the scrape still succeeds.
	down := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	t.Cleanup(func() { _ = down.Close() })
	reg2 := prometheus.NewRegistry()
	if _, err := tracker.New(down, "accounts", &tracker.Config{Registerer: reg2}); err != nil {
		t.Fatalf("New: %v", err)
	}
	if n, err := testutil.GatherAndCount(reg2); err != nil || n != 1 {
		t.Fatalf("scrape with Redis down: %d series, err %v; want 1, nil", n, err)
	}
}
