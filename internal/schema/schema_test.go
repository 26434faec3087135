package schema_test

import (
	"context"
	"errors"
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
		_ = db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting)
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

// A schema set up before lazymigrate.tables had closed_at is reported as
// not set up (copies would fail on the missing column), and Setup brings
// it up to date, keeping what it holds.
func TestSetupUpgradesSchemaWithoutClosedAt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDatabase(t, "upgrade")
	db.Exec(t, `CREATE SCHEMA lazymigrate`)
	db.Exec(t, `CREATE TABLE lazymigrate.tombstones (table_name text NOT NULL, key bigint NOT NULL, deleted_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (table_name, key))`)
	db.Exec(t, `CREATE TABLE lazymigrate.outbox (id bigserial PRIMARY KEY, table_name text NOT NULL, key bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`)
	db.Exec(t, `CREATE TABLE lazymigrate.tables (table_name text PRIMARY KEY, stripe_bits integer NOT NULL, registered_at timestamptz NOT NULL DEFAULT now())`)
	db.Exec(t, `INSERT INTO lazymigrate.tables (table_name, stripe_bits) VALUES ('public.t', 12)`)
	db.Exec(t, `INSERT INTO lazymigrate.tombstones (table_name, key) VALUES ('public.t', 7), ('public.u', 8)`)
	if err := schema.Check(ctx, db.Pool); !errors.Is(err, schema.ErrNotSetUp) {
		t.Fatalf("Check of a schema without closed_at = %v, want ErrNotSetUp", err)
	}
	for range 2 {
		if err := schema.Setup(ctx, db.Pool); err != nil {
			t.Fatal(err)
		}
	}
	if err := schema.Check(ctx, db.Pool); err != nil {
		t.Fatalf("Check after Setup: %v", err)
	}
	if got, err := schema.RegisterStripeBits(ctx, db.Pool, "public.t", 0); err != nil || got != 12 {
		t.Fatalf("registration after the upgrade = %d, %v; want the recorded 12", got, err)
	}
	// Closing deletes the table's tombstones only, and records the closure,
	// for a registered table and for one never registered.
	for _, table := range []string{"public.t", "public.u"} {
		tag, err := db.Pool.Exec(ctx, schema.CloseSQL, table, int(schema.DefaultStripeBits))
		if err != nil || tag.RowsAffected() != 1 {
			t.Fatalf("close %s: %v, %v tombstones deleted; want 1", table, err, tag.RowsAffected())
		}
	}
	var closed int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM lazymigrate.tables WHERE closed_at IS NOT NULL`).Scan(&closed); err != nil || closed != 2 {
		t.Fatalf("closed tables: %d, %v; want 2", closed, err)
	}
}
