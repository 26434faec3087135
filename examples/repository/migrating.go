package main

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lazymigrate/lazymigrate/lazy"
	"github.com/lazymigrate/lazymigrate/promote"
	"github.com/lazymigrate/lazymigrate/tracker"
)

// This file is the whole change to the repository code: the same
// AccountStore, backed by lazy.Repo. Reads find accounts in NEW, or in OLD
// (scheduling their promotion); writes go to NEW and are mirrored to OLD.
// The application builds it where it built pgStore; nothing else changes.

// migratingStore is AccountStore during the migration.
type migratingStore struct{ repo *lazy.Repo[Account] }

var _ AccountStore = (*migratingStore)(nil)

// newMigratingStore takes the table's tracker and enqueuer, which the
// process builds once (see main.go).
func newMigratingStore(ctx context.Context, oldDB, newDB *pgxpool.Pool, tr *tracker.Tracker, enq *promote.Enqueuer) (*migratingStore, error) {
	copier, err := promote.NewCopier(ctx, oldDB, newDB, &promote.CopierConfig{Table: "accounts", Marker: tr})
	if err != nil {
		return nil, err
	}
	repo, err := lazy.New(ctx, oldDB, newDB, &lazy.Config[Account]{Table: "accounts", Tracker: tr, Scheduler: enq, Copier: copier})
	if err != nil {
		return nil, err
	}
	return &migratingStore{repo}, nil
}

func (s *migratingStore) Get(ctx context.Context, id int64) (Account, error) {
	a, err := s.repo.Get(ctx, id)
	if errors.Is(err, lazy.ErrNotFound) {
		return Account{}, ErrNotFound
	}
	return a, err
}

func (s *migratingStore) Save(ctx context.Context, a Account) error {
	_, err := s.repo.Put(ctx, a.ID, a)
	return err
}

func (s *migratingStore) Delete(ctx context.Context, id int64) error { return s.repo.Delete(ctx, id) }

// Close waits for the writes' background bookkeeping, at shutdown.
func (s *migratingStore) Close() { s.repo.Close() }
