package tracker_test

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/tracker"
)

// Each benchmark of the tracker sits next to the raw go-redis call it is
// built on, so that one `go test -bench` run shows the tracker's overhead.

func benchTracker(b *testing.B) (*tracker.Tracker, *redis.Client, string) {
	b.Helper()
	rdb, prefix := testenv.Redis(b)
	tr, err := tracker.New(rdb, "bench", &tracker.Config{Prefix: prefix})
	if err != nil {
		b.Fatal(err)
	}
	return tr, rdb, prefix
}

// sparseKeys returns n keys two apart, so that Mark cannot merge neighbours
// and sends one "SET u1" per key, as the raw baseline does.
func sparseKeys(n int) []int64 {
	ks := make([]int64, n)
	for i := range ks {
		ks[i] = int64(2 * i)
	}
	return ks
}

func reportKeys(b *testing.B, perOp int) {
	b.ReportMetric(float64(b.N*perOp)/b.Elapsed().Seconds(), "keys/s")
}

func BenchmarkMark1000(b *testing.B) {
	tr, _, _ := benchTracker(b)
	ctx := context.Background()
	ks := sparseKeys(1000)
	for b.Loop() {
		if _, err := tr.Mark(ctx, ks); err != nil {
			b.Fatal(err)
		}
	}
	reportKeys(b, len(ks))
}

// BenchmarkMark1000Dense marks 1000 consecutive keys, which Mark sends as
// 16 wide BITFIELD ops instead of 1000.
func BenchmarkMark1000Dense(b *testing.B) {
	tr, _, _ := benchTracker(b)
	ctx := context.Background()
	ks := make([]int64, 1000)
	for i := range ks {
		ks[i] = int64(i)
	}
	for b.Loop() {
		if _, err := tr.Mark(ctx, ks); err != nil {
			b.Fatal(err)
		}
	}
	reportKeys(b, len(ks))
}

func BenchmarkRawBITFIELD1000(b *testing.B) {
	_, rdb, prefix := benchTracker(b)
	ctx := context.Background()
	key := prefix + ":raw"
	args := make([]any, 0, 4000)
	for _, k := range sparseKeys(1000) {
		args = append(args, "SET", "u1", k, 1)
	}
	for b.Loop() {
		if err := rdb.BitField(ctx, key, args...).Err(); err != nil {
			b.Fatal(err)
		}
	}
	reportKeys(b, 1000)
}

func BenchmarkIsSettled(b *testing.B) {
	tr, _, _ := benchTracker(b)
	ctx := context.Background()
	if _, err := tr.Mark(ctx, []int64{12345}); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := tr.IsSettled(ctx, 12345); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRawGETBIT(b *testing.B) {
	_, rdb, prefix := benchTracker(b)
	ctx := context.Background()
	key := prefix + ":raw"
	if err := rdb.SetBit(ctx, key, 12345, 1).Err(); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := rdb.GetBit(ctx, key, 12345).Err(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUnsettled10k reads a 10k-key range in which every other key is
// settled, so that decoding returns 5000 keys.
func BenchmarkUnsettled10k(b *testing.B) {
	tr, _, _ := benchTracker(b)
	ctx := context.Background()
	if _, err := tr.Mark(ctx, sparseKeys(5000)); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		ks, err := tr.Unsettled(ctx, 0, 10_000)
		if err != nil {
			b.Fatal(err)
		}
		if len(ks) != 5000 {
			b.Fatalf("Unsettled returned %d keys, want 5000", len(ks))
		}
	}
	reportKeys(b, 10_000)
}

func BenchmarkRawGETRANGE1250(b *testing.B) {
	_, rdb, prefix := benchTracker(b)
	ctx := context.Background()
	key := prefix + ":raw"
	args := make([]any, 0, 4*5000)
	for _, k := range sparseKeys(5000) {
		args = append(args, "SET", "u1", k, 1)
	}
	if err := rdb.BitField(ctx, key, args...).Err(); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := rdb.GetRange(ctx, key, 0, 1249).Err(); err != nil {
			b.Fatal(err)
		}
	}
	reportKeys(b, 10_000)
}
