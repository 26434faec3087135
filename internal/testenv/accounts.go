package testenv

import "testing"

// AccountsDDL creates the accounts table used across tests and examples.
const AccountsDDL = `CREATE TABLE accounts (
	id            bigint PRIMARY KEY,
	email         text        NOT NULL,
	name          text        NOT NULL,
	balance_cents bigint      NOT NULL,
	status        text        NOT NULL,
	created_at    timestamptz NOT NULL,
	updated_at    timestamptz NOT NULL
)`

// Pair is an OLD and a NEW database, each with an accounts table.
type Pair struct {
	Old, New *Database
}

// NewPair creates OLD and NEW databases with empty accounts tables and
// lazymigrate's schema set up in NEW (via setup, to avoid an import cycle).
func NewPair(t testing.TB) *Pair {
	t.Helper()
	p := &Pair{Old: NewDatabase(t, "old"), New: NewDatabase(t, "new")}
	p.Old.Exec(t, AccountsDDL)
	p.New.Exec(t, AccountsDDL)
	return p
}

// SeedAccounts inserts accounts with ids in [lo, hi) into db. Values are
// derived from the id, with microsecond timestamps, so copies can be checked
// exactly.
func SeedAccounts(t testing.TB, db *Database, lo, hi int64) {
	t.Helper()
	db.Exec(t, `INSERT INTO accounts
		SELECT i, 'user'||i||'@example.com', 'User '||i, i*100 + 7,
		       CASE WHEN i % 3 = 0 THEN 'closed' ELSE 'active' END,
		       timestamptz '2020-01-01 00:00:00.123456+00' + i * interval '1 second 7 microseconds',
		       timestamptz '2024-06-01 12:00:00.654321+00' + i * interval '1 millisecond'
		FROM generate_series($1::bigint, $2::bigint - 1) AS i`, lo, hi)
}
