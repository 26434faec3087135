package coldsweep_test

import (
	"context"
	"errors"
	"testing"

	"github.com/lazymigrate/lazymigrate/coldsweep"
	"github.com/lazymigrate/lazymigrate/internal/schema"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/promote"
)

// A sweep of a table whose migration was closed (its tombstones purged)
// stops at once with ErrClosed: retrying cannot help, and copying would
// bring deleted rows back.
func TestSweepOfAClosedTableStops(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupSweep(t, 300)
	if _, err := b.pair.New.Pool.Exec(ctx, schema.CloseSQL, "public.accounts", int(schema.DefaultStripeBits)); err != nil {
		t.Fatal(err)
	}
	s, err := coldsweep.New(b.config(coldsweep.Config{Chunk: 100}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Run(ctx); !errors.Is(err, promote.ErrClosed) {
		t.Fatalf("sweep of a closed table: err = %v, want ErrClosed", err)
	}
	if got := testenv.CounterValue(t, b.reg, "lazymigrate_sweep_retries_total", "table", "accounts"); got != 0 {
		t.Errorf("retried %v times, want none", got)
	}
	if n, err := b.tracker.CountRange(ctx, 1, 301); err != nil || n != 0 {
		t.Errorf("the refused sweep marked %d keys settled (%v), want none", n, err)
	}
}
