package coldsweep_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/lazymigrate/lazymigrate/coldsweep"
)

// Shard 0/4 of a sweep has started (claimed its layout) but has not saved
// progress yet (the first save is one ProgressInterval away). A
// misconfigured shard 0/2 starting now is refused with ErrLayoutChanged:
// the shard count comes from the recorded layout, not from progress records.
func TestSweepLayoutClaimedBeforeFirstProgress(t *testing.T) {
	b := setupSweep(t, 400)
	ctx := context.Background()
	// Hold both sweeps so that nothing finishes.
	if err := coldsweep.SetPaused(ctx, b.rdb, b.prefix, "accounts", true); err != nil {
		t.Fatal(err)
	}
	s1, err := coldsweep.New(b.config(coldsweep.Config{Chunk: 50, Shard: coldsweep.Shard{I: 0, N: 4}, ProgressInterval: time.Hour}))
	if err != nil {
		t.Fatal(err)
	}
	ctx1, cancel1 := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { _, err := s1.Run(ctx1); done <- err }()
	time.Sleep(300 * time.Millisecond) // s1 has claimed "chunk=50 shards=4"
	if got, _ := b.rdb.Get(ctx, b.prefix+":sweep:accounts:layout").Result(); got != "chunk=50 shards=4" {
		t.Fatalf("layout %q", got)
	}

	s2, err := coldsweep.New(b.config(coldsweep.Config{Chunk: 50, Shard: coldsweep.Shard{I: 0, N: 2}, ProgressInterval: time.Hour}))
	if err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel2()
	_, err2 := s2.Run(ctx2)
	cancel1()
	<-done
	got, _ := b.rdb.Get(ctx, b.prefix+":sweep:accounts:layout").Result()
	if !errors.Is(err2, coldsweep.ErrLayoutChanged) {
		t.Fatalf("shard 0/2 started while shard 0/4 runs: err = %v, want ErrLayoutChanged; layout now %q", err2, got)
	}
}
