package promote_test

import (
	"context"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/promote"
)

// The bulk path holds at most BulkBytes of OLD's rows at once: a range of
// wide rows is read again in halves, not held whole (and the rows NEW lacks
// are sent from where they lie, not copied). 32 rows of 4 MiB (128 MiB)
// with an 8 MiB bound must not grow the heap by half the payload.
func TestBulkCopyOfWideRowsIsBounded(t *testing.T) {
	ctx := context.Background()
	p := testenv.NewPair(t)
	for _, db := range []*testenv.Database{p.Old, p.New} {
		db.Exec(t, `CREATE TABLE wide (id bigint PRIMARY KEY, payload text)`)
	}
	p.Old.Exec(t, `INSERT INTO wide SELECT g, repeat(md5(g::text), (4<<20)/32) FROM generate_series(1, 32) g`)
	p.New.Exec(t, `INSERT INTO wide VALUES (1, 'already in NEW')`)
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		t.Fatal(err)
	}
	cp, err := promote.NewCopier(ctx, p.Old.Pool, p.New.Pool, &promote.CopierConfig{Table: "wide", BulkBytes: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	const payload = 32 << 22
	// Collect garbage eagerly, so that the peak measures what is held, not
	// what the collector has yet to free. (The test is not parallel.)
	defer debug.SetGCPercent(debug.SetGCPercent(10))
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		var ms runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > peak.Load() {
				peak.Store(ms.HeapAlloc)
			}
		}
	})
	res, err := cp.CopyRange(ctx, 0, 100)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	grow := int64(peak.Load()) - int64(base.HeapAlloc)
	t.Logf("result %+v; payload %d MiB; heap peak +%d MiB; allocated %d MiB", res, payload>>20, grow>>20, (after.TotalAlloc-base.TotalAlloc)>>20)
	if grow > payload/2 {
		t.Fatalf("heap grew by %d MiB to copy %d MiB with an 8 MiB bound: the chunk is held whole", grow>>20, payload>>20)
	}
	if res.Copied != 31 || res.Present != 1 {
		t.Fatalf("result %+v, want 31 copied and 1 present", res)
	}
}
