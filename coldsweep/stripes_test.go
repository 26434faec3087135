package coldsweep_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lazymigrate/lazymigrate/coldsweep"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/promote"
)

// Neighbouring chunks of the default size share no lock stripe: two workers
// hold their chunks' NEW transactions open at once. (With 10,000-key
// chunks, the stripe across each boundary made every worker wait for the
// one before it.)
func TestDefaultChunksDoNotWaitForEachOther(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupSweep(t, 10)
	b.pair.Old.Exec(t, `INSERT INTO accounts SELECT id + $1, email, name, balance_cents, status, created_at, updated_at
		FROM accounts`, coldsweep.DefaultChunk-5) // rows on both sides of the boundary

	var mu sync.Mutex
	inside, waited := 0, false
	both := make(chan struct{})
	cp, err := promote.NewCopier(ctx, b.pair.Old.Pool, b.pair.New.Pool, &promote.CopierConfig{Table: "accounts",
		Hooks: promote.Hooks{AfterLock: func(context.Context, int64, int64) {
			mu.Lock()
			inside++
			if inside == 2 {
				close(both)
			}
			mu.Unlock()
			select { // each holds its locks until the other holds its own
			case <-both:
			case <-time.After(10 * time.Second):
				mu.Lock()
				waited = true
				mu.Unlock()
			}
		}}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := b.config(coldsweep.Config{Chunk: coldsweep.DefaultChunk, Workers: 2,
		Range: coldsweep.Span{Lo: 0, Hi: 2 * coldsweep.DefaultChunk}})
	cfg.Copier = cp
	s, err := coldsweep.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Run(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if inside != 2 || waited {
		t.Fatalf("%d chunk transactions, waited %v: the second chunk's waited for the first's locks", inside, waited)
	}
	var n int
	if err := b.pair.New.Pool.QueryRow(ctx, `SELECT count(*) FROM accounts`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if want := 2 * 9; n != want { // 1..10 but 7, twice
		t.Fatalf("NEW holds %d rows, want %d", n, want)
	}
}

// A chunk that is not a multiple of the lock stripe is accepted, with a
// warning saying what it costs.
func TestChunkAcrossStripesWarns(t *testing.T) {
	t.Parallel()
	b := setupSweep(t, 10)
	for chunk, warns := range map[int64]bool{10_000: true, 0: false, 4096: false} {
		var log testenv.SyncBuffer
		cfg := b.config(coldsweep.Config{Logger: slog.New(slog.NewTextHandler(&log, nil))})
		cfg.Chunk = chunk
		if _, err := coldsweep.New(cfg); err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(log.String(), "chunks share lock stripes"); got != warns {
			t.Errorf("Chunk %d: warned %v, want %v; log: %q", chunk, got, warns, log.String())
		}
	}
}
