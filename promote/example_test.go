package promote_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/hibiken/asynq"

	"github.com/lazymigrate/lazymigrate/internal/exampledb"
	"github.com/lazymigrate/lazymigrate/promote"
	"github.com/lazymigrate/lazymigrate/tracker"
)

// Promotion end to end: reads schedule keys on an Enqueuer, an asynq worker
// runs the Handler, and the Copier moves the rows into NEW and marks them in
// the tracker.
func Example() {
	ctx := context.Background()
	db := exampledb.Open(ctx, 1000) // OLD holds accounts 1..1000; NEW is empty
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

	// The worker side: register the handler on an asynq server.
	queue := db.Prefix // a queue of the example's own
	handler, err := promote.NewHandler([]*promote.Copier{copier}, &promote.HandlerConfig{
		Settled: map[string]promote.SettledChecker{"accounts": tr},
	})
	if err != nil {
		log.Fatal(err)
	}
	srv := asynq.NewServerFromRedisClient(db.Redis, asynq.Config{
		Queues: map[string]int{queue: 1}, TaskCheckInterval: 10 * time.Millisecond, LogLevel: asynq.FatalLevel,
	})
	mux := asynq.NewServeMux()
	mux.Handle(promote.TaskType, handler)
	if err := srv.Start(mux); err != nil {
		log.Fatal(err)
	}
	defer srv.Shutdown()
	defer asynq.NewInspectorFromRedisClient(db.Redis).DeleteQueue(queue, true)

	// The read side: an enqueuer batches scheduled keys into tasks.
	enq, err := promote.NewEnqueuer(asynq.NewClientFromRedisClient(db.Redis), "accounts", &promote.EnqueuerConfig{Queue: queue})
	if err != nil {
		log.Fatal(err)
	}
	if err := enq.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer enq.Stop()

	fmt.Println("accepted:", enq.Schedule(5, 6, 7, 5, 5))
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if n, _ := tr.Count(ctx); n == 3 || time.Now().After(deadline) {
			break
		}
	}
	settled, err := tr.Settled(ctx, []int64{5, 6, 7, 8})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("settled 5, 6, 7, 8:", settled)

	// A copy is idempotent: running it again finds the rows present.
	res, err := copier.CopyKeys(ctx, []int64{5, 6, 7, 8})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("copy again: %+v\n", res)
	// Output:
	// accepted: 3
	// settled 5, 6, 7, 8: [true true true false]
	// copy again: {Copied:1 Present:3 Tombstoned:0 Absent:0}
}
