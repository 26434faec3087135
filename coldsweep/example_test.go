package coldsweep_test

import (
	"context"
	"fmt"
	"log"

	"github.com/lazymigrate/lazymigrate/coldsweep"
	"github.com/lazymigrate/lazymigrate/internal/exampledb"
	"github.com/lazymigrate/lazymigrate/promote"
	"github.com/lazymigrate/lazymigrate/tracker"
)

func ExampleSweeper() {
	ctx := context.Background()
	db := exampledb.Open(ctx, 50_000) // OLD holds accounts 1..50,000; NEW is empty
	defer db.Close()
	if err := promote.Setup(ctx, db.New); err != nil {
		log.Fatal(err)
	}
	tr, err := tracker.New(db.Redis, "accounts", &tracker.Config{Prefix: db.Prefix})
	if err != nil {
		log.Fatal(err)
	}
	copier, err := promote.NewCopier(ctx, db.Old, db.New, &promote.CopierConfig{Table: "accounts", Marker: tr})
	if err != nil {
		log.Fatal(err)
	}
	// Reads promoted a few keys already.
	if _, err := copier.CopyKeys(ctx, []int64{7, 12_345, 40_000}); err != nil {
		log.Fatal(err)
	}

	sweeper, err := coldsweep.New(&coldsweep.Config{
		Copier: copier, Tracker: tr, Redis: db.Redis, Prefix: db.Prefix,
		Throttle: &coldsweep.ThrottleConfig{Old: db.Old, New: db.New},
	})
	if err != nil {
		log.Fatal(err)
	}
	sum, err := sweeper.Run(ctx) // cancel ctx to stop after the chunks in flight
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("swept %v: %d chunks, %d rows copied, %d already in NEW\n",
		sum.Range, sum.Chunks, sum.Rows.Copied, sum.Rows.Present)

	settled, err := tr.CountRange(ctx, sum.Range.Lo, sum.Range.Hi)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("settled: %d of %d keys\n", settled, sum.Range.Len())

	again, err := sweeper.Run(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("a second run skips %d of %d chunks\n", again.ChunksSkipped, again.Chunks)
	// Output:
	// swept [1, 50001): 2 chunks, 49997 rows copied, 3 already in NEW
	// settled: 50000 of 50000 keys
	// a second run skips 2 of 2 chunks
}
