package main

import (
	"os"
	"testing"
	"time"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
)

// Ctrl-C of a rate-limited sweep takes about as long as the chunks being
// copied: workers only waiting for the rate limiter stop at once, rather
// than copying whole new chunks until --stop-timeout.
func TestInterruptDuringRateLimitWait(t *testing.T) {
	const chunk = 2_000
	b := setup(t, 60_000)
	before := b.settled(t)
	p := b.start(t, "run", "--chunk", "2000", "--rate", "300", "--stop-timeout", "20s", "--progress", "none", "--json")
	testenv.Eventually(t, time.Minute, "the first chunk is settled", func() bool { return b.settled(t) >= before+chunk-chunk/7-1 })
	start := time.Now()
	if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	r := p.wait(t)
	took := time.Since(start)
	if r.code != exitInterrupted {
		t.Fatalf("want exit 130: %v", r)
	}
	if took > 5*time.Second {
		t.Errorf("SIGINT took %v to stop a sweep whose only work in flight was waiting for the rate limiter (--stop-timeout 20s)", took.Round(time.Second))
	}
}

// Shards are chunk numbers mod n, so the shard processes must share --chunk
// (and n): a shard started with another --chunk while the sweep is
// unfinished would leave keys no shard owns, with every process reporting
// done. It is refused with one line; the same --chunk finishes the sweep.
func TestShardWithAnotherChunkIsRefused(t *testing.T) {
	const n = 8_000
	b := setup(t, n)
	if r := b.sweeper(t, "run", "--chunk", "1024", "--shard", "0/2", "--json", "--quiet"); r.code != 0 {
		t.Fatalf("shard 0/2: %v", r)
	}
	r := b.sweeper(t, "run", "--chunk", "2048", "--shard", "1/2", "--json", "--quiet")
	wantOneLineError(t, r, "differs from the unfinished sweep's")
	if r := b.sweeper(t, "run", "--chunk", "1024", "--shard", "1/2", "--json", "--quiet"); r.code != 0 {
		t.Fatalf("shard 1/2 with the sweep's chunk size: %v", r)
	}
	if st := b.status(t); st.Percent != 100 {
		t.Fatalf("status after both shards: %.1f%%, want 100", st.Percent)
	}
}
