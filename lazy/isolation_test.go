package lazy_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/lazy"
)

// setRepeatableReadDefault makes REPEATABLE READ the default isolation of
// b's NEW database and returns a pool whose connections have it.
func setRepeatableReadDefault(t *testing.T, b *testBundle) *pgxpool.Pool {
	t.Helper()
	b.pair.New.Exec(t, fmt.Sprintf(`ALTER DATABASE %q SET default_transaction_isolation = 'repeatable read'`, b.pair.New.Name))
	return b.pair.New.NewPool(t, nil)
}

// newState reports whether NEW holds a row and a tombstone for key.
func newState(t *testing.T, b *testBundle, key int64) (row, tomb bool) {
	t.Helper()
	if err := b.pair.New.Pool.QueryRow(context.Background(), `SELECT
		EXISTS (SELECT 1 FROM accounts WHERE id = $1),
		EXISTS (SELECT 1 FROM lazymigrate.tombstones WHERE key = $1)`, key).Scan(&row, &tomb); err != nil {
		t.Fatal(err)
	}
	return row, tomb
}

// PutTx and DeleteTx refuse a transaction that is not at READ COMMITTED,
// whether it asked for another isolation or NEW's default gave it one: they
// change nothing, and the transaction cannot commit.
func TestTxWritesRefuseIsolationOtherThanReadCommitted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	repo := writeRepo(t, b, lazy.Config[Account]{})
	b.pair.New.Exec(t, `INSERT INTO accounts SELECT 7, 'a7@example.com', 'kept', 70, 'active', now(), now()`)
	rrDefault := setRepeatableReadDefault(t, b)

	begins := []struct {
		name string
		pool *pgxpool.Pool
		opts pgx.TxOptions
	}{
		{"repeatable read", b.pair.New.Pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead}},
		{"serializable", b.pair.New.Pool, pgx.TxOptions{IsoLevel: pgx.Serializable}},
		{"read uncommitted", b.pair.New.Pool, pgx.TxOptions{IsoLevel: pgx.ReadUncommitted}},
		{"database default repeatable read", rrDefault, pgx.TxOptions{}},
	}
	writes := []struct {
		name  string
		write func(tx pgx.Tx) error
	}{
		{"PutTx", func(tx pgx.Tx) error { return repo.PutTx(ctx, tx, 7, account(7, "put in tx")) }},
		{"DeleteTx", func(tx pgx.Tx) error { return repo.DeleteTx(ctx, tx, 7) }},
	}
	for _, bg := range begins {
		for _, w := range writes {
			tx, err := bg.pool.BeginTx(ctx, bg.opts)
			if err != nil {
				t.Fatal(err)
			}
			err = w.write(tx)
			if !errors.Is(err, lazy.ErrNeedsReadCommitted) {
				_ = tx.Rollback(ctx)
				t.Fatalf("%s in a %s transaction: err %v, want ErrNeedsReadCommitted", w.name, bg.name, err)
			}
			if errors.Is(err, lazy.ErrNewUnavailable) {
				t.Errorf("%s in a %s transaction: %v also says NEW is unavailable", w.name, bg.name, err)
			}
			if err := tx.Commit(ctx); !errors.Is(err, pgx.ErrTxCommitRollback) {
				t.Fatalf("%s in a %s transaction: commit after the refusal: %v, want it rolled back", w.name, bg.name, err)
			}
		}
	}
	got, err := repo.Get(ctx, 7)
	if err != nil || got.Name != "kept" {
		t.Fatalf("key 7 after refused writes: %+v, %v; want it unchanged", got, err)
	}
	if row, tomb := newState(t, b, 7); !row || tomb {
		t.Fatalf("key 7 after refused writes: NEW row %v, tombstone %v", row, tomb)
	}
	if n := outboxLen(t, b); n != 0 {
		t.Fatalf("refused writes left %d outbox entries", n)
	}
}

// Invariant 3 in a caller's transaction. A transaction holding key 7's
// stripe, as a copy's does, inserts the row and commits while a DeleteTx
// waits for the lock. Under REPEATABLE READ the DELETE's snapshot would
// predate that commit, miss the row and leave it beside the tombstone: the
// deleted key would read as found. So DeleteTx refuses at once, without
// waiting for the lock, and at READ COMMITTED (asked for explicitly, on a
// database whose default is REPEATABLE READ) it waits, then deletes the
// committed row.
func TestDeleteTxSeesRowCommittedWhileWaiting(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	repo := writeRepo(t, b, lazy.Config[Account]{})
	rrDefault := setRepeatableReadDefault(t, b)

	// The stand-in copy: takes the stripe, inserts OLD's row, waits.
	copyTx, err := b.pair.New.Pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = copyTx.Rollback(ctx) }()
	if err := b.copier.LockKeys(ctx, copyTx, []int64{7}); err != nil {
		t.Fatal(err)
	}
	if _, err := copyTx.Exec(ctx, `INSERT INTO accounts (id, email, name, balance_cents, status, created_at, updated_at)
		VALUES (7, 'a7@example.com', 'copied', 70, 'active', now(), now())`); err != nil {
		t.Fatal(err)
	}

	// Begun before the copy commits, as in the race: the first statement
	// takes the REPEATABLE READ snapshot.
	rr, err := rrDefault.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = rr.Rollback(ctx) }() // a failure must not leave it open
	refused := make(chan error, 1)
	go func() { refused <- repo.DeleteTx(ctx, rr, 7) }()
	select {
	case err := <-refused:
		if !errors.Is(err, lazy.ErrNeedsReadCommitted) {
			t.Fatalf("DeleteTx at REPEATABLE READ: %v, want ErrNeedsReadCommitted", err)
		}
	case <-time.After(10 * time.Second):
		// Free the lock, so that DeleteTx ends and rr's connection can go back.
		_ = copyTx.Rollback(ctx)
		<-refused
		_ = rr.Rollback(ctx)
		t.Fatal("DeleteTx at REPEATABLE READ waited for the stripe lock instead of refusing")
	}
	if err := rr.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	deleted := make(chan error, 1)
	go func() {
		tx, err := rrDefault.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
		if err != nil {
			deleted <- err
			return
		}
		defer func() { _ = tx.Rollback(ctx) }()
		if err := repo.DeleteTx(ctx, tx, 7); err != nil {
			deleted <- err
			return
		}
		deleted <- tx.Commit(ctx)
	}()
	testenv.Eventually(t, 10*time.Second, "DeleteTx at READ COMMITTED waits for the stripe lock", func() bool {
		var n int
		_ = b.pair.New.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&n)
		return n > 0
	})
	if err := copyTx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-deleted:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("DeleteTx did not return within 10s of the copy's commit")
	}
	if row, tomb := newState(t, b, 7); row || !tomb {
		t.Fatalf("key 7 deleted with DeleteTx: NEW row %v, tombstone %v; want only the tombstone", row, tomb)
	}
	if _, err := repo.Get(ctx, 7); !errors.Is(err, lazy.ErrNotFound) {
		t.Fatalf("key 7 deleted with DeleteTx reads as %v, want ErrNotFound", err)
	}
}
