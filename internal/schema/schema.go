// Package schema owns the objects lazymigrate keeps in the NEW database (the
// "lazymigrate" schema, its tombstone table and its table registry) and
// creates them idempotently.
package schema

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Tombstones is the quoted name of the tombstone table. A row (table_name,
// key) says the key was deleted through lazymigrate and must never be copied
// into NEW again. table_name is pgtable.Table.ID.
const Tombstones = `lazymigrate.tombstones`

// Outbox is the quoted name of the mirror outbox: a row (table_name, key)
// is written in the same NEW transaction as a change of the key and removed
// once OLD has the change, so that the intent to mirror survives a crash.
const Outbox = `lazymigrate.outbox`

// Tables is the quoted name of the registry of migrated tables: settings
// every process must agree on, such as the lock stripe width.
const Tables = `lazymigrate.tables`

// ErrNotSetUp is returned when lazymigrate's objects are missing from NEW.
var ErrNotSetUp = errors.New("lazymigrate schema is not set up in NEW: run promote.Setup (or `sweeper init`) on NEW first")

// setupLock serializes concurrent Setup calls: CREATE ... IF NOT EXISTS is
// not safe against itself running in parallel.
const setupLock = 0x6c617a796d6967 // "lazymig"

var statements = []string{
	`CREATE SCHEMA IF NOT EXISTS lazymigrate`,
	`CREATE TABLE IF NOT EXISTS lazymigrate.tombstones (
		table_name text        NOT NULL,
		key        bigint      NOT NULL,
		deleted_at timestamptz NOT NULL DEFAULT now(),
		PRIMARY KEY (table_name, key)
	)`,
	`CREATE TABLE IF NOT EXISTS lazymigrate.outbox (
		id         bigserial   PRIMARY KEY,
		table_name text        NOT NULL,
		key        bigint      NOT NULL,
		created_at timestamptz NOT NULL DEFAULT now()
	)`,
	`CREATE INDEX IF NOT EXISTS outbox_table_key ON lazymigrate.outbox (table_name, key)`,
	`CREATE INDEX IF NOT EXISTS outbox_table_created ON lazymigrate.outbox (table_name, created_at)`,
	`CREATE TABLE IF NOT EXISTS lazymigrate.tables (
		table_name    text        PRIMARY KEY,
		stripe_bits   integer     NOT NULL,
		registered_at timestamptz NOT NULL DEFAULT now()
	)`,
	// Added after the table: schemas set up before it gain it here. The
	// check keeps a Setup of a current schema from taking the ALTER's
	// exclusive lock, which copies would queue behind.
	`DO $$ BEGIN
		IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'lazymigrate.tables'::regclass AND attname = 'closed_at' AND NOT attisdropped) THEN
			ALTER TABLE lazymigrate.tables ADD COLUMN closed_at timestamptz;
		END IF;
	END $$`,
}

// GoneSQL tells whether key $2 of the table $1 (a pgtable.Table.ID) that
// NEW lacks is gone for good: deleted through lazymigrate (tombstoned), or
// any key at all once the table's migration is closed, when tombstones are
// purged and OLD may still hold deleted rows. Reads fall back to OLD only
// for a key that is not gone.
const GoneSQL = `SELECT ` + GoneCond

// GoneCond is GoneSQL's condition, for statements that fold it into a
// read of NEW. $1 is text and $2 bigint.
const GoneCond = `EXISTS (SELECT 1 FROM lazymigrate.tombstones WHERE table_name = $1 AND key = $2)
	OR ` + ClosedSQL

// GoneKeysSQL returns the keys among $2 (bigint[]) of the table $1 that are
// gone for good, as GoneSQL.
const GoneKeysSQL = `SELECT key FROM lazymigrate.tombstones WHERE table_name = $1 AND key = ANY($2::bigint[])
	UNION ALL
	SELECT k FROM unnest($2::bigint[]) AS k WHERE ` + ClosedSQL

// ClosedSQL is an SQL condition, true once the migration of the table $1
// is closed (see CloseSQL).
const ClosedSQL = `EXISTS (SELECT 1 FROM lazymigrate.tables WHERE table_name = $1 AND closed_at IS NOT NULL)`

// CloseSQL closes the migration of the table $1 (a pgtable.Table.ID) to
// copies and deletes its tombstones, in one statement: no copy can see the
// tombstones gone without seeing the table closed. Copies check closed_at
// in the statement that checks tombstones, and refuse. $2 is the stripe
// width to register the table with if it was never registered
// (DefaultStripeBits). Its tag counts the tombstones deleted.
const CloseSQL = `WITH closed AS (
		INSERT INTO lazymigrate.tables AS t (table_name, stripe_bits, closed_at) VALUES ($1, $2, now())
		ON CONFLICT (table_name) DO UPDATE SET closed_at = coalesce(t.closed_at, now())
	)
	DELETE FROM lazymigrate.tombstones WHERE table_name = $1`

// Beginner starts transactions; *pgxpool.Pool and *pgx.Conn implement it.
type Beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Querier runs a query returning one row.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Setup creates lazymigrate's schema and tables in db if they are missing. It
// is safe to run any number of times, concurrently.
func Setup(ctx context.Context, db Beginner) error {
	tx, err := db.Begin(ctx)
	if err != nil {
		return fmt.Errorf("setup lazymigrate schema: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(setupLock)); err != nil {
		return fmt.Errorf("setup lazymigrate schema: %w", err)
	}
	for _, s := range statements {
		if _, err := tx.Exec(ctx, s); err != nil {
			return fmt.Errorf("setup lazymigrate schema: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("setup lazymigrate schema: %w", err)
	}
	return nil
}

// Check returns an error wrapping ErrNotSetUp unless every object Setup
// creates exists in db.
func Check(ctx context.Context, db Querier) error {
	var ok bool
	err := db.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL AND to_regclass($3) IS NOT NULL
		AND EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($2) AND attname = 'closed_at' AND NOT attisdropped)`,
		Tombstones, Tables, Outbox).Scan(&ok)
	if err != nil {
		return fmt.Errorf("check lazymigrate schema in NEW: %w", err)
	}
	if !ok {
		return ErrNotSetUp
	}
	return nil
}

// DefaultStripeBits is the lock stripe width of a table registered without
// one.
const DefaultStripeBits = 10

// RegisterStripeBits records the lock stripe width of table (a
// pgtable.Table.ID) the first time it is seen, and returns the width
// recorded. bits 0 takes the recorded width, or DefaultStripeBits for a
// table not seen before. Any other bits must match the recorded width:
// writers locking different stripes for the same key would not exclude
// each other.
func RegisterStripeBits(ctx context.Context, db Querier, table string, bits uint) (uint, error) {
	var got int
	first := bits
	if first == 0 {
		first = DefaultStripeBits
	}
	// DO UPDATE, not DO NOTHING: it returns the row that is there even when
	// another process inserted it concurrently, which a SELECT in the same
	// statement would not see.
	err := db.QueryRow(ctx, `
		INSERT INTO lazymigrate.tables (table_name, stripe_bits) VALUES ($1, $2)
		ON CONFLICT (table_name) DO UPDATE SET stripe_bits = lazymigrate.tables.stripe_bits
		RETURNING stripe_bits`, table, int(first)).Scan(&got)
	if err != nil {
		return 0, fmt.Errorf("register %s in lazymigrate.tables: %w", table, err)
	}
	if bits != 0 && got != int(bits) {
		return 0, fmt.Errorf("table %s is registered with StripeBits %d, not %d: every process must lock the same stripes (change it in lazymigrate.tables only when nothing runs)", table, got, bits)
	}
	return uint(got), nil
}
