package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lazymigrate/lazymigrate/internal/pgtable"
	"github.com/lazymigrate/lazymigrate/internal/schema"
	"github.com/lazymigrate/lazymigrate/promote"
)

func runSeed(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("seed", flag.ContinueOnError)
	var c connFlags
	c.register(fs, false)
	rows := fs.Int64("rows", 200_000, "accounts to have in OLD, with ids 1 to `N`")
	create := fs.Bool("create-databases", false, "first create the OLD and NEW databases if they do not exist")
	if err := parse(fs, args, stdout); err != nil {
		return err
	}
	if *rows < 0 {
		return usageError{fmt.Errorf("-rows must not be negative, got %d", *rows)}
	}
	if err := c.check(false); err != nil {
		return err
	}
	if *create {
		for _, db := range []struct{ side, dsn string }{{"OLD", c.oldDSN}, {"NEW", c.newDSN}} {
			made, err := createDatabase(ctx, db.side, db.dsn)
			if err != nil {
				return err
			}
			if made != "" {
				fmt.Fprintf(stdout, "created %s database %s\n", db.side, made)
			}
		}
	}
	d, err := c.open(ctx, false)
	if err != nil {
		return err
	}
	defer d.close()

	start := time.Now()
	res, err := seed(ctx, d.old, d.new, *rows)
	if err != nil {
		return err
	}
	var deleted string
	if res.tombstoned > 0 {
		deleted = fmt.Sprintf(", leaving out %d deleted through the service", res.tombstoned)
	}
	fmt.Fprintf(stdout, "seeded OLD with accounts 1..%d (%d inserted) in %s%s; NEW has the table and lazymigrate's schema\n",
		*rows, res.inserted, time.Since(start).Round(time.Millisecond), deleted)
	return nil
}

// seedBatch is the number of rows one INSERT writes.
const seedBatch = 50_000

// seedResult is what seed did.
type seedResult struct {
	inserted int64 // accounts inserted into OLD
	// tombstoned counts the ids in 1..rows that were deleted through the
	// service (tombstoned in NEW): seed leaves them out.
	tombstoned int64
}

// seed creates the accounts table in OLD and NEW if need be, and
// lazymigrate's schema in NEW, then inserts into OLD the accounts with ids 1
// to rows that it lacks, except those deleted through the service.
//
// Running it again adds only those accounts, and so leaves alone what the
// service did: rows it wrote were mirrored to OLD and are kept as they
// are, and ids it deleted are tombstoned in NEW and stay deleted (seeding
// them again would bring them back in OLD, to be served by a rollback to
// mode old and reported by the sweeper's verify). A delete made while seed
// runs may still come back: seed again before serving, not during.
//
// The rows are made by Postgres itself (INSERT ... SELECT from
// generate_series), which writes 200,000 of them in about a second: nothing
// crosses the network but the statement and the tombstoned ids.
func seed(ctx context.Context, oldDB, newDB *pgxpool.Pool, rows int64) (seedResult, error) {
	var res seedResult
	for _, db := range []struct {
		side string
		pool *pgxpool.Pool
	}{{"OLD", oldDB}, {"NEW", newDB}} {
		if _, err := db.pool.Exec(ctx, accountsDDL); err != nil {
			return res, fmt.Errorf("create accounts in %s: %w", db.side, err)
		}
	}
	if err := promote.Setup(ctx, newDB); err != nil {
		return res, err
	}
	// Tombstones name the table by its catalog identity (public.accounts).
	tbl, err := pgtable.Describe(ctx, newDB, table)
	if err != nil {
		return res, fmt.Errorf("NEW: %w", err)
	}
	for lo := int64(1); lo <= rows; lo += seedBatch {
		hi := min(lo+seedBatch-1, rows)
		var tombs []int64
		if err := newDB.QueryRow(ctx, tombstonedSQL, tbl.ID, lo, hi).Scan(&tombs); err != nil {
			return res, fmt.Errorf("read NEW's tombstones of accounts %d..%d: %w", lo, hi, err)
		}
		tag, err := oldDB.Exec(ctx, seedSQL, lo, hi, tombs)
		if err != nil {
			return res, fmt.Errorf("seed OLD with accounts %d..%d: %w", lo, hi, err)
		}
		res.inserted += tag.RowsAffected()
		res.tombstoned += int64(len(tombs))
	}
	return res, nil
}

// tombstonedSQL lists the ids from $2 to $3 of table $1 deleted through
// lazymigrate.
const tombstonedSQL = `SELECT coalesce(array_agg(key ORDER BY key), '{}') FROM ` + schema.Tombstones + `
WHERE table_name = $1 AND key BETWEEN $2 AND $3`

// seedSQL inserts accounts $1..$2 but the ids in $3, with plausible values
// derived from the id: names from two lists, balances scattered by a
// multiplicative hash, one account in 17 suspended and one in 50 closed,
// creation dates spread over the years before 2025 in id order.
const seedSQL = `
INSERT INTO accounts (id, email, name, balance_cents, status, created_at, updated_at)
SELECT i,
       lower(f.v[1 + i % 16]) || '.' || lower(l.v[1 + (i / 16) % 16]) || '.' || i || '@example.com',
       f.v[1 + i % 16] || ' ' || l.v[1 + (i / 16) % 16],
       (i * 2654435761) % 10000000,
       CASE WHEN i % 50 = 0 THEN 'closed' WHEN i % 17 = 0 THEN 'suspended' ELSE 'active' END,
       c.at,
       c.at + ((i * 7919) % 8760) * interval '1 hour'
FROM generate_series($1::bigint, $2::bigint) AS i,
     LATERAL (SELECT timestamptz '2016-01-01 00:00:00+00' + i * interval '17 minutes 3.25 seconds' AS at) AS c,
     (VALUES (ARRAY['Ada','Alan','Barbara','Claude','Dennis','Edsger','Frances','Grace',
                    'Hedy','John','Ken','Leslie','Margaret','Niklaus','Radia','Tim'])) AS f(v),
     (VALUES (ARRAY['Allen','Babbage','Cerf','Dijkstra','Hamilton','Hopper','Kahn','Knuth',
                    'Lamport','Liskov','Lovelace','Perlman','Ritchie','Thompson','Turing','Wirth'])) AS l(v)
WHERE NOT EXISTS (SELECT FROM unnest($3::bigint[]) AS t(k) WHERE t.k = i)
ON CONFLICT (id) DO NOTHING`

// createDatabase creates the database dsn names, connecting to the
// server's "postgres" database with the same credentials, unless it exists.
// It returns the name of the database it created, or "".
func createDatabase(ctx context.Context, side, dsn string) (string, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return "", usageError{fmt.Errorf("%s database: bad DSN: %w", side, err)}
	}
	name := cfg.Database
	if name == "" || name == "postgres" {
		return "", nil
	}
	cfg.Database = "postgres"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return "", fmt.Errorf("%s database: connect to the server's postgres database to create %s: %w", side, name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return "", fmt.Errorf("%s database: look for %s: %w", side, name, err)
	}
	if exists {
		return "", nil
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("%s database: create %s: %w", side, name, err)
	}
	return name, nil
}
