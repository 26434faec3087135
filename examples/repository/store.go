package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// This file is the application as it was before the migration: a
// repository interface, its plain pgx implementation on one database, and
// code that uses it. None of it changes when the migration starts.

// Account is one row of the accounts table.
type Account struct {
	ID           int64     `db:"id"`
	Email        string    `db:"email"`
	Name         string    `db:"name"`
	BalanceCents int64     `db:"balance_cents"`
	Status       string    `db:"status"`
	CreatedAt    time.Time `db:"created_at"`
	UpdatedAt    time.Time `db:"updated_at"`
}

// ErrNotFound is the repository's "no such account".
var ErrNotFound = errors.New("account not found")

// AccountStore is the repository the application codes against.
type AccountStore interface {
	Get(ctx context.Context, id int64) (Account, error)
	Save(ctx context.Context, a Account) error
	Delete(ctx context.Context, id int64) error
}

// pgStore is the implementation before the migration: plain SQL on one
// database.
type pgStore struct{ db *pgxpool.Pool }

var _ AccountStore = pgStore{}

func (s pgStore) Get(ctx context.Context, id int64) (Account, error) {
	rows, err := s.db.Query(ctx, `SELECT * FROM accounts WHERE id = $1`, id)
	if err != nil {
		return Account{}, err
	}
	a, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[Account])
	if errors.Is(err, pgx.ErrNoRows) {
		return Account{}, ErrNotFound
	}
	return a, err
}

func (s pgStore) Save(ctx context.Context, a Account) error {
	_, err := s.db.Exec(ctx, `INSERT INTO accounts VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (id) DO UPDATE SET email = $2, name = $3, balance_cents = $4, status = $5, created_at = $6, updated_at = $7`,
		a.ID, a.Email, a.Name, a.BalanceCents, a.Status, a.CreatedAt, a.UpdatedAt)
	return err
}

func (s pgStore) Delete(ctx context.Context, id int64) error {
	_, err := s.db.Exec(ctx, `DELETE FROM accounts WHERE id = $1`, id)
	return err
}

// rename is application code: it knows only AccountStore.
func rename(ctx context.Context, store AccountStore, id int64, name string) (Account, error) {
	a, err := store.Get(ctx, id)
	if err != nil {
		return Account{}, fmt.Errorf("rename account %d: %w", id, err)
	}
	a.Name, a.UpdatedAt = name, time.Now().UTC().Truncate(time.Microsecond)
	if err := store.Save(ctx, a); err != nil {
		return Account{}, fmt.Errorf("rename account %d: %w", id, err)
	}
	return a, nil
}
