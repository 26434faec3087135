// Package schema owns the objects lazymigrate keeps in the NEW database (the
// "lazymigrate" schema and its tombstone table) and creates them idempotently.
package schema

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Tombstones is the quoted name of the tombstone table. A row (table_name,
// key) says the key was deleted through lazymigrate and must never be copied
// into NEW again. table_name is pgtable.Table.ID.
const Tombstones = `lazymigrate.tombstones`

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
}

// Beginner starts transactions; *pgxpool.Pool and *pgx.Conn implement it.
type Beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
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
