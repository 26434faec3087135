package lazy_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/lazy"
)

// Invariant 7 for writes: with Redis down, the tracker cannot be marked,
// but NEW is the system of record and writes go on. Update and Migrate of
// a key NEW lacks promote it first; its copy commits, and the failure to
// mark it only leaves the tracker behind.
func TestWritesWithTrackerDown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dead := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = dead.Close() })
	b := setup(t, setupOpts{trackerRDB: dead, enqueueRDB: dead})
	repo := writeRepo(t, b, lazy.Config[Account]{})
	got, err := repo.Update(ctx, 9, func(a *Account) error { a.Name = "updated"; return nil })
	if err != nil || got.Name != "updated" {
		t.Fatalf("Update(9) of a key only in OLD, Redis down = %+v, %v", got, err)
	}
	if err := repo.Migrate(ctx, 11); err != nil {
		t.Fatalf("Migrate(11), Redis down: %v", err)
	}
	if err := repo.Delete(ctx, 12); err != nil {
		t.Fatalf("Delete(12), Redis down: %v", err)
	}
	if err := repo.Migrate(ctx, 12); !errors.Is(err, lazy.ErrNotFound) {
		t.Fatalf("Migrate(deleted 12), Redis down = %v, want ErrNotFound", err)
	}
	rows := tableText(t, b.pair.New)
	if _, ok := rows[11]; !ok || len(rows) != 2 {
		t.Fatalf("NEW holds keys %v, want 9 and 11", rows)
	}
}
