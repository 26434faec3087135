package main

import (
	"strings"
	"testing"
	"time"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
)

// 'rebuild-tracker --reset' deletes the bitmap and its layout record. A
// live sweeper would keep its cached layout and go on marking chunks
// settled, and other --segment-bits would mix two layouts in one bitmap
// (keys believed settled that are not). It refuses both, unless --force.
func TestResetRefusesLiveSweepAndOtherLayout(t *testing.T) {
	t.Parallel()
	b := setup(t, 2_000)
	if r := b.sweeper(t, "pause", "--force"); r.code != 0 {
		t.Fatal(r)
	}
	_, wait := background(b.args("run", "--quiet")...)
	testenv.Eventually(t, 30*time.Second, "status shows the sweep live", func() bool {
		st := b.status(t)
		return len(st.Shards) == 1 && st.Shards[0].State == "held"
	})
	for _, extra := range [][]string{{}, {"--segment-bits", "16"}} {
		r := b.sweeper(t, "rebuild-tracker", append([]string{"--reset"}, extra...)...)
		wantOneLineError(t, r, "rebuild-tracker: --reset: the sweep of accounts is live (shard 0/1 held; see 'sweeper status'): stop it first, or give --force")
	}
	if r := b.sweeper(t, "resume"); r.code != 0 {
		t.Fatal(r)
	}
	if r := wait(); r.code != 0 {
		t.Fatalf("run: %v", r)
	}
	if st := b.status(t); st.Percent != 100 {
		t.Fatalf("the sweep left keys unsettled: %+v", st)
	}

	// The sweep is done: a reset with the bitmap's layout goes through.
	if r := b.sweeper(t, "rebuild-tracker", "--reset"); r.code != 0 || !strings.Contains(r.stdout, "reset and rebuilt") {
		t.Fatalf("reset after the sweep: %v", r)
	}
	r := b.sweeper(t, "rebuild-tracker", "--reset", "--segment-bits", "16")
	wantOneLineError(t, r, "rebuild-tracker: --segment-bits 16: the tracker of accounts in Redis was written with 20: give --segment-bits 20, "+
		"or --force to change the layout, then restart every application and sweeper process of the table with 16")
	r = b.sweeper(t, "rebuild-tracker", "--reset", "--segment-bits", "16", "--force")
	if r.code != 0 || !strings.Contains(r.stdout, "reset and rebuilt") || !strings.Contains(r.stderr, "restart every application and sweeper process") {
		t.Errorf("reset --force to another layout: want it done, with a warning: %v", r)
	}
	if st := b.status(t, "--segment-bits", "16"); st.SettledKeys == 0 {
		t.Errorf("the tracker in the new layout is empty: %+v", st)
	}
}
