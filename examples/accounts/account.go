package main

import "time"

// table is the table the service migrates, the same name in OLD and NEW.
const table = "accounts"

// accountsDDL creates the table, in OLD and in NEW alike.
const accountsDDL = `CREATE TABLE IF NOT EXISTS accounts (
	id            bigint      PRIMARY KEY,
	email         text        NOT NULL,
	name          text        NOT NULL,
	balance_cents bigint      NOT NULL,
	status        text        NOT NULL,
	created_at    timestamptz NOT NULL,
	updated_at    timestamptz NOT NULL
)`

// Account is one row of accounts, as the API sends it. The db tags map the
// columns for lazy.Repo; the json tags are the API's field names.
type Account struct {
	ID           int64     `db:"id" json:"id"`
	Email        string    `db:"email" json:"email"`
	Name         string    `db:"name" json:"name"`
	BalanceCents int64     `db:"balance_cents" json:"balance_cents"`
	Status       string    `db:"status" json:"status"`
	CreatedAt    time.Time `db:"created_at" json:"created_at"`
	UpdatedAt    time.Time `db:"updated_at" json:"updated_at"`
}

// selectAccount reads one account by id; the GET handler runs it against
// whichever database the middleware hands it.
const selectAccount = `SELECT id, email, name, balance_cents, status, created_at, updated_at FROM accounts WHERE id = $1`
