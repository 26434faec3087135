package main

import (
	"context"
	"testing"
)

// status only reads the tracker, so it must leave the layout for the
// application's writes to record. Run with the wrong --segment-bits before
// the application ever wrote, it used to record its own, after which the
// application, with the default 20, failed every tracker call with
// ErrLayoutMismatch. Once the application has written, status with the
// wrong bits is refused and says which to give.
func TestStatusLeavesTrackerLayoutToTheApplication(t *testing.T) {
	t.Parallel()
	b := setup(t, 100)
	ctx := context.Background()
	for _, bits := range []string{"12", "20"} {
		if st := b.status(t, "--segment-bits", bits); st.SettledKeys != 0 {
			t.Errorf("status --segment-bits %s before any write: %d keys settled, want 0", bits, st.SettledKeys)
		}
	}
	if ks, err := b.rdb.Keys(ctx, b.prefix+":tracker:*").Result(); err != nil || len(ks) != 0 {
		t.Fatalf("status left tracker keys in Redis: %v (%v)", ks, err)
	}

	if _, err := b.tr.Mark(ctx, []int64{1, 2}); err != nil {
		t.Fatalf("the application's Mark after status: %v", err)
	}
	wantOneLineError(t, b.sweeper(t, "status", "--segment-bits", "12"),
		"status: --segment-bits 12: the tracker of accounts in Redis was written with 20 (give --segment-bits 20, ")
	if st := b.status(t); st.SettledKeys != 2 {
		t.Errorf("status after the application's Mark: %d keys settled, want 2", st.SettledKeys)
	}
}
