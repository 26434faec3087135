package tracker_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/lazymigrate/lazymigrate/internal/exampledb"
	"github.com/lazymigrate/lazymigrate/tracker"
)

// A sweeper's view of the tracker: promotions mark single keys, a swept
// chunk is marked as a range, and what is left of a range is what still
// needs copying.
func Example() {
	ctx := context.Background()
	rdb := exampledb.Redis()
	defer rdb.Close()

	// A prefix of its own keeps concurrent runs of this example apart.
	prefix := fmt.Sprintf("lmexample:%d", time.Now().UnixNano())
	tr, err := tracker.New(rdb, "accounts", &tracker.Config{Prefix: prefix})
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Reset(ctx)

	// Reads promoted keys 3 and 7; key 3 is promoted twice.
	newly, err := tr.Mark(ctx, []int64{3, 7, 3})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("newly marked:", newly)

	// The sweeper copied the chunk [10, 20).
	if err := tr.MarkRange(ctx, 10, 20); err != nil {
		log.Fatal(err)
	}

	left, err := tr.Unsettled(ctx, 0, 12)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("still to copy in [0, 12):", left)

	settled, err := tr.Settled(ctx, []int64{7, 8})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("7 and 8 settled:", settled)

	n, err := tr.Count(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("settled keys:", n)

	// Output:
	// newly marked: 2
	// still to copy in [0, 12): [0 1 2 4 5 6 8 9]
	// 7 and 8 settled: [true false]
	// settled keys: 12
}
