package promote_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/promote"
)

// repeatableReadDefault makes REPEATABLE READ the default isolation of b's
// NEW database and returns a pool whose connections have it.
func repeatableReadDefault(t *testing.T, b *testBundle) *pgxpool.Pool {
	t.Helper()
	b.pair.New.Exec(t, fmt.Sprintf(`ALTER DATABASE %q SET default_transaction_isolation = 'repeatable read'`, b.pair.New.Name))
	return freshPool(t, b.pair.New)
}

// advisoryLocks counts the advisory locks tx's backend holds or waits for.
func advisoryLocks(t *testing.T, b *testBundle, tx pgx.Tx) int {
	t.Helper()
	var n int
	if err := b.pair.New.Pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_locks
		WHERE locktype = 'advisory' AND pid = $1`, tx.Conn().PgConn().PID()).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// LockKeys refuses a transaction not at READ COMMITTED, whether it asked
// for another isolation or NEW's default gave it one, before taking any
// lock; the transaction cannot commit. At READ COMMITTED, asked for on the
// same database, it takes the locks.
func TestLockKeysRefusesIsolationOtherThanReadCommitted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, nil)
	rrDefault := repeatableReadDefault(t, b)
	ks := []int64{7, 1 << 20}

	for _, c := range []struct {
		name string
		pool *pgxpool.Pool
		opts pgx.TxOptions
	}{
		{"repeatable read", b.pair.New.Pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead}},
		{"serializable", b.pair.New.Pool, pgx.TxOptions{IsoLevel: pgx.Serializable}},
		{"read uncommitted", b.pair.New.Pool, pgx.TxOptions{IsoLevel: pgx.ReadUncommitted}},
		{"database default repeatable read", rrDefault, pgx.TxOptions{}},
	} {
		tx, err := c.pool.BeginTx(ctx, c.opts)
		if err != nil {
			t.Fatal(err)
		}
		err = b.copier.LockKeys(ctx, tx, ks)
		if !errors.Is(err, promote.ErrNeedsReadCommitted) {
			_ = tx.Rollback(ctx)
			t.Fatalf("LockKeys in a %s transaction: %v, want ErrNeedsReadCommitted", c.name, err)
		}
		if n := advisoryLocks(t, b, tx); n != 0 {
			t.Errorf("LockKeys in a %s transaction refused, yet holds %d advisory locks", c.name, n)
		}
		if err := tx.Commit(ctx); !errors.Is(err, pgx.ErrTxCommitRollback) {
			t.Fatalf("commit after LockKeys refused a %s transaction: %v, want it rolled back", c.name, err)
		}
	}

	tx, err := rrDefault.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := b.copier.LockKeys(ctx, tx, ks); err != nil {
		t.Fatalf("LockKeys at READ COMMITTED: %v", err)
	}
	if n := advisoryLocks(t, b, tx); n != 2 {
		t.Fatalf("LockKeys at READ COMMITTED holds %d advisory locks, want 2 (two stripes)", n)
	}
}

// What LockKeys promises a writer: after waiting for a stripe, its next
// statement sees what the holder committed meanwhile. The holder stands in
// for a copy: it inserts key 7 under the stripe lock and commits while the
// writer, begun earlier, waits; the writer's DELETE must find the row.
func TestLockKeysSeesRowCommittedWhileWaiting(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, nil)
	rrDefault := repeatableReadDefault(t, b)

	holder, err := b.pair.New.Pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = holder.Rollback(ctx) }()
	if err := b.copier.LockKeys(ctx, holder, []int64{7}); err != nil {
		t.Fatal(err)
	}
	if _, err := holder.Exec(ctx, `INSERT INTO accounts SELECT 7, 'a', 'b', 0, 'active', now(), now()`); err != nil {
		t.Fatal(err)
	}

	writer, err := rrDefault.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = writer.Rollback(ctx) }()
	if _, err := writer.Exec(ctx, `SELECT count(*) FROM accounts`); err != nil { // a statement before the wait
		t.Fatal(err)
	}
	locked := make(chan error, 1)
	go func() { locked <- b.copier.LockKeys(ctx, writer, []int64{7}) }()
	testenv.Eventually(t, 10*time.Second, "the writer waits for the stripe", func() bool {
		var n int
		_ = b.pair.New.Pool.QueryRow(ctx, waitingInOwnDatabase).Scan(&n)
		return n > 0
	})
	if err := holder.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-locked; err != nil {
		t.Fatal(err)
	}
	tag, err := writer.Exec(ctx, `DELETE FROM accounts WHERE id = 7`)
	if err != nil {
		t.Fatal(err)
	}
	if tag.RowsAffected() != 1 {
		t.Fatalf("the writer's DELETE after the wait removed %d rows, want the row committed meanwhile", tag.RowsAffected())
	}
}

// LockStatement and ReadCommittedCheck, sent in a pipelined batch, pass at
// READ COMMITTED and otherwise fail the batch with an error IsolationError
// recognizes; other errors it leaves alone.
func TestLockStatementInBatchChecksIsolation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, nil)
	lock, args := b.copier.LockStatement([]int64{7})

	send := func(iso pgx.TxIsoLevel, check bool) error {
		t.Helper()
		tx, err := b.pair.New.Pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: iso})
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback(ctx) }()
		var batch pgx.Batch
		if check {
			batch.Queue(promote.ReadCommittedCheck)
		}
		batch.Queue(lock, args...)
		batch.Queue(`INSERT INTO lazymigrate.tombstones (table_name, key) VALUES ('public.accounts', 7) ON CONFLICT DO NOTHING`)
		if err := tx.SendBatch(ctx, &batch).Close(); err != nil {
			return err
		}
		return tx.Commit(ctx)
	}
	for _, check := range []bool{true, false} {
		if err := send(pgx.ReadCommitted, check); err != nil {
			t.Fatalf("batch at READ COMMITTED (ReadCommittedCheck queued: %v): %v", check, err)
		}
		err := send(pgx.RepeatableRead, check)
		if err == nil {
			t.Fatalf("batch at REPEATABLE READ (ReadCommittedCheck queued: %v): no error", check)
		}
		if ierr := promote.IsolationError(err); !errors.Is(ierr, promote.ErrNeedsReadCommitted) {
			t.Fatalf("IsolationError(%v) = %v, want ErrNeedsReadCommitted", err, ierr)
		}
	}

	_, other := b.pair.New.Pool.Exec(ctx, `SELECT 'not a number'::int`)
	for _, err := range []error{nil, other, errors.New("promote: something else")} {
		if ierr := promote.IsolationError(err); ierr != nil {
			t.Fatalf("IsolationError(%v) = %v, want nil", err, ierr)
		}
	}
}
