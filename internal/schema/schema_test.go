package schema_test

import (
	"context"
	"testing"
	"time"

	"github.com/lazymigrate/lazymigrate/internal/schema"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
)

// Two processes registering a table at once must both succeed: the second
// insert waits for the first, and must then see its row.
func TestRegisterStripeBitsConcurrently(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDatabase(t, "reg")
	if err := schema.Setup(ctx, db.Pool); err != nil {
		t.Fatal(err)
	}
	if err := schema.Check(ctx, db.Pool); err != nil {
		t.Fatal(err)
	}
	tx, err := db.Pool.Begin(ctx) // process A, mid-registration
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := schema.RegisterStripeBits(ctx, tx, "public.t", 12); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { _, err := schema.RegisterStripeBits(ctx, db.Pool, "public.t", 12); errc <- err }() // process B
	testenv.Eventually(t, 10*time.Second, "B waits for A's insert", func() bool {
		var waiting int
		_ = db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE NOT granted`).Scan(&waiting)
		return waiting > 0
	})
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("second registration: %v", err)
	}
	if _, err := schema.RegisterStripeBits(ctx, db.Pool, "public.t", 11); err == nil {
		t.Fatal("registering another StripeBits: want an error")
	}
	// 0 takes the recorded width, or the default for a new table.
	if got, err := schema.RegisterStripeBits(ctx, db.Pool, "public.t", 0); err != nil || got != 12 {
		t.Fatalf("RegisterStripeBits(0) = %d, %v; want the recorded 12", got, err)
	}
	if got, err := schema.RegisterStripeBits(ctx, db.Pool, "public.u", 0); err != nil || got != schema.DefaultStripeBits {
		t.Fatalf("RegisterStripeBits(0) of a new table = %d, %v; want the default", got, err)
	}
}

func TestCheckReportsMissingSetup(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, "nosetup")
	if err := schema.Check(context.Background(), db.Pool); err == nil {
		t.Fatal("Check before Setup: want ErrNotSetUp")
	}
}
