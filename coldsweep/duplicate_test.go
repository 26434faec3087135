package coldsweep_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/lazymigrate/lazymigrate/coldsweep"
)

// A key OLD holds twice can never be copied: retrying cannot help. The sweep
// records the chunk as failed (ErrChunksFailed) and goes on; it does not
// take it for an outage, retry it, then stop the whole sweep.
func TestSweepDuplicateOldKeyFailsItsChunkOnly(t *testing.T) {
	b := setupSweep(t, 1000)
	b.pair.Old.Exec(t, `ALTER TABLE accounts DROP CONSTRAINT accounts_pkey`)
	b.pair.Old.Exec(t, `INSERT INTO accounts SELECT * FROM accounts WHERE id = 5`)
	s, err := coldsweep.New(b.config(coldsweep.Config{Chunk: 100, Workers: 1, Retries: 2}))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	sum, err := s.Run(context.Background())
	t.Logf("took %v, err %v", time.Since(start), err)
	if sum != nil {
		t.Logf("done %d/%d failed %d", sum.ChunksDone, sum.Chunks, sum.ChunksFailed)
	}
	if !errors.Is(err, coldsweep.ErrChunksFailed) {
		t.Fatalf("err = %v; want ErrChunksFailed with chunk [0,100) failed and the other chunks swept", err)
	}
}
