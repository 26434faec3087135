package lazy_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/lazymigrate/lazymigrate/fallback"
	"github.com/lazymigrate/lazymigrate/internal/exampledb"
	"github.com/lazymigrate/lazymigrate/lazy"
	"github.com/lazymigrate/lazymigrate/promote"
	"github.com/lazymigrate/lazymigrate/tracker"
)

// keyLog stands in for a promote.Enqueuer so that the example can show
// which keys a read schedules for promotion.
type keyLog struct{ keys []int64 }

func (l *keyLog) Schedule(keys ...int64) int { l.keys = append(l.keys, keys...); return len(keys) }

// A Repo reads NEW first and falls back to OLD, scheduling what it finds
// there for promotion. Once promoted, the key is served by NEW.
func Example() {
	ctx := context.Background()
	db := exampledb.Open(ctx, 3) // OLD holds accounts 1..3; NEW is empty
	defer db.Close()

	if err := promote.Setup(ctx, db.New); err != nil {
		log.Fatal(err)
	}
	tr, err := tracker.New(db.Redis, "accounts", &tracker.Config{Prefix: db.Prefix})
	if err != nil {
		log.Fatal(err)
	}
	scheduled := &keyLog{} // in production: a *promote.Enqueuer feeding asynq workers
	repo, err := lazy.New(ctx, db.Old, db.New, &lazy.Config[Account]{
		Table: "accounts", Tracker: tr, Scheduler: scheduled,
	})
	if err != nil {
		log.Fatal(err)
	}

	a, err := repo.Get(ctx, 2)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("read:", a.Email, "- scheduled for promotion:", scheduled.keys)

	// What a promotion worker does with the scheduled keys.
	copier, err := promote.NewCopier(ctx, db.Old, db.New, &promote.CopierConfig{Table: "accounts", Marker: tr})
	if err != nil {
		log.Fatal(err)
	}
	res, err := copier.CopyKeys(ctx, scheduled.keys)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("promoted: %+v\n", res)

	if _, err := repo.Get(ctx, 2); err != nil {
		log.Fatal(err)
	}
	fmt.Println("scheduled after reading the promoted key again:", scheduled.keys)

	_, err = repo.Get(ctx, 99)
	fmt.Println("key 99 not found:", errors.Is(err, lazy.ErrNotFound))

	many, err := repo.GetMany(ctx, []int64{1, 2, 3, 99})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("GetMany found", len(many), "of 4 keys")
	// Output:
	// read: user2@example.com - scheduled for promotion: [2]
	// promoted: {Copied:1 Present:0 Tombstoned:0 Absent:0}
	// scheduled after reading the promoted key again: [2]
	// key 99 not found: true
	// GetMany found 3 of 4 keys
}

// Writes go to NEW and are mirrored to OLD, so reads can be rolled back to
// OLD at any moment without losing them.
func ExampleRepo_Put() {
	ctx := context.Background()
	db := exampledb.Open(ctx, 3) // OLD holds accounts 1..3; NEW is empty
	defer db.Close()

	if err := promote.Setup(ctx, db.New); err != nil {
		log.Fatal(err)
	}
	copier, err := promote.NewCopier(ctx, db.Old, db.New, &promote.CopierConfig{Table: "accounts"})
	if err != nil {
		log.Fatal(err)
	}
	mode, err := fallback.New(db.Redis, "accounts", &fallback.Config{Prefix: db.Prefix})
	if err != nil {
		log.Fatal(err)
	}
	repo, err := lazy.New(ctx, db.Old, db.New, &lazy.Config[Account]{Table: "accounts", Copier: copier, Mode: mode})
	if err != nil {
		log.Fatal(err)
	}
	defer repo.Close()

	a, err := repo.Get(ctx, 1)
	if err != nil {
		log.Fatal(err)
	}
	a.Name = "Renamed"
	if _, err := repo.Put(ctx, 1, a); err != nil {
		log.Fatal(err)
	}
	if _, err := repo.Update(ctx, 2, func(a *Account) error { a.BalanceCents += 50; return nil }); err != nil {
		log.Fatal(err)
	}
	if err := repo.Delete(ctx, 3); err != nil {
		log.Fatal(err)
	}

	// Roll reads back to OLD, for every process sharing the Redis key.
	if err := mode.Set(ctx, fallback.ModeOld); err != nil {
		log.Fatal(err)
	}
	one, _ := repo.Get(ctx, 1)
	two, _ := repo.Get(ctx, 2)
	_, err = repo.Get(ctx, 3)
	fmt.Println("from OLD:", one.Name, two.BalanceCents, errors.Is(err, lazy.ErrNotFound))
	// Output:
	// from OLD: Renamed 250 true
}
