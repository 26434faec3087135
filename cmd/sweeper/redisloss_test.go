package main

import (
	"context"
	"testing"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/promote"
	"github.com/lazymigrate/lazymigrate/tracker"
)

// After Redis loses its keys, an application's tracker that checked the
// layout before goes on writing without recording it again, and the
// sweeper's layout guard finds nothing to compare its --segment-bits
// with. Run with other segment bits than the application's, the rebuild
// and the sweep must still copy every key only OLD holds: the
// application's bits, written for 2^16-key segments, must not read as
// bits of 2^20-key segments, where they would mark keys never copied.
func TestSweepAfterRedisLossWithOtherSegmentBits(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, 100)
	testenv.SeedAccounts(t, b.pair.Old, 65536, 65546)    // segment 1 of 2^16 keys
	testenv.SeedAccounts(t, b.pair.Old, 1<<20, 1<<20+10) // segment 1 of 2^20 keys

	app, err := tracker.New(b.rdb, "accounts", &tracker.Config{Prefix: b.prefix, SegmentBits: 16})
	if err != nil {
		t.Fatal(err)
	}
	cp, err := promote.NewCopier(ctx, b.pair.Old.Pool, b.pair.New.Pool, &promote.CopierConfig{Table: "accounts", Marker: app})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cp.CopyKeys(ctx, []int64{1}); err != nil { // records SegmentBits 16
		t.Fatal(err)
	}
	testenv.DeletePrefix(ctx, b.rdb, b.prefix) // Redis restarts empty
	// Reads promote keys 65536..65545: bits 0..9 of the application's
	// segment 1, and no layout recorded.
	if _, err := cp.CopyKeys(ctx, []int64{65536, 65537, 65538, 65539, 65540, 65541, 65542, 65543, 65544, 65545}); err != nil {
		t.Fatal(err)
	}
	// The operator follows OPERATING.md, without --segment-bits.
	if r := b.sweeper(t, "rebuild-tracker"); r.code != 0 {
		t.Fatalf("rebuild-tracker: %v", r)
	}
	if r := b.sweeper(t, "run", "--quiet", "--chunk", "1024", "--from", "1048576"); r.code != 0 {
		t.Fatalf("run: %v", r)
	}
	if n := count(t, b.pair.New, `SELECT count(*) FROM accounts WHERE id >= $1`, int64(1<<20)); n != 10 {
		t.Errorf("NEW holds %d of the 10 keys from 2^20 only OLD held, after a sweep that exited 0; verify: %v", n, b.sweeper(t, "verify"))
	}
}
