package coldsweep_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lazymigrate/lazymigrate/coldsweep"
	"github.com/lazymigrate/lazymigrate/lazy"
	"github.com/lazymigrate/lazymigrate/promote"
)

// A library Put racing the bulk copy of a chunk (Put takes no stripe lock)
// meets the COPY's rows. The sweep must not take that for rows NEW refuses
// (ErrChunksFailed, "fix the rows and run again"): the chunk is copied, the
// Put's row kept.
func TestSweepChunkWithRacingPut(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupSweep(t, 1000)
	var repo *lazy.Repo[Account]
	var calls atomic.Int64
	var putErr atomic.Value
	cp, err := promote.NewCopier(ctx, b.pair.Old.Pool, b.pair.New.Pool, &promote.CopierConfig{Table: "accounts",
		Hooks: promote.Hooks{AfterLock: func(context.Context, int64, int64) {
			n := calls.Add(1)
			if n > 3 {
				return
			}
			k := n // keys 1, 2, 3: in OLD, not yet in NEW
			if _, err := repo.Put(ctx, k, Account{ID: k, Email: "w@example.com", Name: "written", Status: "active",
				CreatedAt: time.Unix(0, 0).UTC(), UpdatedAt: time.Unix(0, 0).UTC()}); err != nil {
				putErr.Store(err)
			}
		}}})
	if err != nil {
		t.Fatal(err)
	}
	b.copier = cp
	repo = b.repo(t)
	cfg := coldsweep.Config{Chunk: 500, Workers: 1, Range: coldsweep.Span{Lo: 0, Hi: 500}}
	s, err := coldsweep.New(b.config(cfg))
	if err != nil {
		t.Fatal(err)
	}
	sum, err := s.Run(ctx)
	if e := putErr.Load(); e != nil {
		t.Fatalf("Put: %v", e)
	}
	if err != nil {
		again, err2 := s.Run(ctx)
		t.Fatalf("Run with 3 racing Puts: %v (failed chunks %d: %v); a second Run at once: err=%v, copied %d",
			err, sum.ChunksFailed, sum.Failed, err2, again.Rows.Copied)
	}
}
