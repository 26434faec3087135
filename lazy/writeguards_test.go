package lazy_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lazymigrate/lazymigrate/fallback"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/lazy"
)

// Tests of write-path guards that a mutation-testing pass found no test
// covered: each names the guard it proves needed.

// wgWait bounds every wait of these tests: long enough for a loaded CI
// machine, short enough that a regression fails instead of hanging.
const wgWait = 10 * time.Second

// wgRecv returns the next value of ch, or fails t if none comes within
// wgWait.
func wgRecv[E any](t *testing.T, ch <-chan E, what string) E {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(wgWait):
		t.Fatalf("%s: nothing within %s", what, wgWait)
	}
	var zero E
	return zero
}

// wgLockWaitOr waits until either ch delivers or a session of b's NEW
// database waits for a lock (an advisory lock, a row lock ...), and
// reports which came first: got is true, with ch's value, when ch did. It
// fails t if neither happens within wgWait. Each test has a NEW database
// of its own, so any lock wait in it is the test's.
func wgLockWaitOr[E any](t *testing.T, b *testBundle, ch <-chan E) (v E, got bool) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(wgWait)
	for {
		select {
		case v := <-ch:
			return v, true
		default:
		}
		var waiting bool
		if err := b.pair.New.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock')`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting {
			return v, false
		}
		if time.Now().After(deadline) {
			t.Fatalf("within %s, neither did the call return nor did it wait for a lock", wgWait)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// wgRow returns key's row of accounts in db as text, and whether there is
// one.
func wgRow(t *testing.T, db *testenv.Database, key int64) (string, bool) {
	t.Helper()
	var s string
	err := db.Pool.QueryRow(context.Background(), `SELECT a::text FROM accounts a WHERE id = $1`, key).Scan(&s)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return "", false
	case err != nil:
		t.Fatal(err)
	}
	return s, true
}

// wgOutbox returns how many outbox entries NEW holds for key of accounts.
func wgOutbox(t *testing.T, b *testBundle, key int64) int {
	t.Helper()
	var n int
	if err := b.pair.New.Pool.QueryRow(context.Background(),
		`SELECT count(*) FROM lazymigrate.outbox WHERE table_name = 'public.accounts' AND key = $1`, key).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// wgRelayable waits until every committed outbox entry of key is older
// than delay, so that a RelayOnce with that RelayDelay considers it.
func wgRelayable(t *testing.T, b *testBundle, key int64, delay time.Duration) {
	t.Helper()
	testenv.Eventually(t, wgWait, "the outbox entries old enough for the relay", func() bool {
		var young bool
		if err := b.pair.New.Pool.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM lazymigrate.outbox
			WHERE key = $1 AND created_at >= now() - $2::interval)`, key, delay).Scan(&young); err != nil {
			t.Fatal(err)
		}
		return !young
	})
}

// wgHoldMirrorLock begins a NEW transaction that writes key with PutTx and
// stays open, holding the key's mirror lock as any write of the key does
// until it has mirrored (a Put between its NEW commit and its OLD write).
// It returns the transaction; it is rolled back when the test ends, if it
// is still open.
func wgHoldMirrorLock(t *testing.T, b *testBundle, repo *lazy.Repo[Account], key int64, name string) pgx.Tx {
	t.Helper()
	ctx := context.Background()
	tx, err := b.pair.New.Pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(ctx) })
	if err := repo.PutTx(ctx, tx, key, account(key, name)); err != nil {
		t.Fatal(err)
	}
	return tx
}

// wgPutTx writes key with PutTx in a transaction of its own and commits:
// NEW has the change and an outbox entry, OLD does not have it yet.
func wgPutTx(t *testing.T, b *testBundle, repo *lazy.Repo[Account], key int64, name string) {
	t.Helper()
	ctx := context.Background()
	tx, err := b.pair.New.Pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := repo.PutTx(ctx, tx, key, account(key, name)); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

// Invariant 3 for a plain Delete, as TestDeleteTxSeesRowCommittedWhileWaiting
// is for DeleteTx: a copy holding key 7's stripe has inserted OLD's row and
// not committed yet. Delete must wait for the stripe, so that its DELETE
// sees the row once the copy commits; without the stripe lock it would
// delete nothing, and the row would stay beside the tombstone: the deleted
// key would read as found.
func TestDeleteWaitsForCopyStripe(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	repo := writeRepo(t, b, lazy.Config[Account]{})

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

	deleted := make(chan error, 1)
	go func() { deleted <- repo.Delete(ctx, 7) }()
	err, returned := wgLockWaitOr(t, b, deleted)
	if returned {
		t.Error("Delete returned while a copy of the key held its stripe lock")
	}
	if err := copyTx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if !returned {
		err = wgRecv(t, deleted, "Delete once the copy committed")
	}
	if err != nil {
		t.Fatal(err)
	}
	if row, tomb := newState(t, b, 7); row || !tomb {
		t.Fatalf("key 7 deleted with Delete: NEW row %v, tombstone %v; want only the tombstone", row, tomb)
	}
	if _, err := repo.Get(ctx, 7); !errors.Is(err, lazy.ErrNotFound) {
		t.Fatalf("key 7 deleted with Delete reads as %v, want ErrNotFound", err)
	}
}

// PutTx creates a deleted key again, as Put does: it removes the
// tombstone. Left beside the row, the tombstone would make Migrate report
// the key as not found and coldsweep's verify report it as resurrected.
func TestPutTxAfterDeleteRemovesTombstone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	repo := writeRepo(t, b, lazy.Config[Account]{})
	if err := repo.Delete(ctx, 8); err != nil {
		t.Fatal(err)
	}
	if row, tomb := newState(t, b, 8); row || !tomb {
		t.Fatalf("after Delete: NEW row %v, tombstone %v; want only the tombstone", row, tomb)
	}
	wgPutTx(t, b, repo, 8, "again")
	if row, tomb := newState(t, b, 8); !row || tomb {
		t.Fatalf("after Delete then PutTx: NEW row %v, tombstone %v; want only the row", row, tomb)
	}
	if err := repo.Migrate(ctx, 8); err != nil {
		t.Fatalf("Migrate after Delete then PutTx: %v, want nil", err)
	}
	if got, err := repo.Get(ctx, 8); err != nil || got.Name != "again" {
		t.Fatalf("Get after Delete then PutTx = %+v, %v; want the PutTx record", got, err)
	}
}

// The intent to mirror is durable with the write: Put inserts the outbox
// entry in the transaction that writes the row, so that a crash after the
// NEW commit cannot lose it. OLD refuses writes, so the entry stays for the
// test to see that the row and the entry share a transaction id.
func TestPutWritesOutboxInItsTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	refuseOldWrites(t, b)
	repo := writeRepo(t, b, lazy.Config[Account]{})
	if _, err := repo.Put(ctx, 5000, account(5000, "while OLD refuses")); err != nil {
		t.Fatal(err)
	}
	repo.Close()
	if n := wgOutbox(t, b, 5000); n != 1 {
		t.Fatalf("%d outbox entries for key 5000 after a Put whose mirror failed, want 1", n)
	}
	var rowX, outboxX string
	if err := b.pair.New.Pool.QueryRow(ctx, `SELECT
		(SELECT xmin::text FROM accounts WHERE id = 5000),
		(SELECT xmin::text FROM lazymigrate.outbox WHERE table_name = 'public.accounts' AND key = 5000)`).Scan(&rowX, &outboxX); err != nil {
		t.Fatal(err)
	}
	if rowX != outboxX {
		t.Fatalf("the row was written by transaction %s, its outbox entry by %s: want one transaction", rowX, outboxX)
	}
}

// PutTx records the intent to mirror in the caller's transaction: once it
// commits, the relay alone (no Reconcile call) brings OLD to NEW's state.
func TestPutTxReachesOldThroughRelay(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	const delay = time.Millisecond
	repo := writeRepo(t, b, lazy.Config[Account]{RelayDelay: delay})
	wgPutTx(t, b, repo, 11, "in tx")
	if n := wgOutbox(t, b, 11); n != 1 {
		t.Fatalf("%d outbox entries for key 11 after a committed PutTx, want 1", n)
	}
	wgRelayable(t, b, 11, delay)
	if n, err := repo.RelayOnce(ctx); err != nil || n != 1 {
		t.Fatalf("RelayOnce reconciled %d keys (%v), want key 11", n, err)
	}
	o, _ := wgRow(t, b.pair.Old, 11)
	n, _ := wgRow(t, b.pair.New, 11)
	if o != n {
		t.Fatalf("key 11 after the relay: OLD %q, NEW %q", o, n)
	}
	if n := wgOutbox(t, b, 11); n != 0 {
		t.Fatalf("%d outbox entries for key 11 left after the relay", n)
	}
}

// The relay passes over a key whose mirror lock a write holds: it would
// otherwise read NEW before the write commits and could write that stale
// state to OLD after the write has mirrored its own. Here key 11 has a
// committed PutTx waiting for the relay, and a second PutTx of it is open.
// RelayOnce must leave the key alone, and reconcile it in a later pass
// once the write is done.
func TestRelaySkipsKeyWhoseMirrorLockIsHeld(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	const delay = time.Millisecond
	repo := writeRepo(t, b, lazy.Config[Account]{RelayDelay: delay})
	before, _ := wgRow(t, b.pair.Old, 11)

	wgPutTx(t, b, repo, 11, "committed")
	holder := wgHoldMirrorLock(t, b, repo, 11, "in flight")
	wgRelayable(t, b, 11, delay)
	if n, err := repo.RelayOnce(ctx); err != nil || n != 0 {
		t.Fatalf("RelayOnce reconciled %d keys (%v) while a write held key 11's mirror lock, want 0", n, err)
	}
	if now, _ := wgRow(t, b.pair.Old, 11); now != before {
		t.Fatalf("the relay wrote OLD's key 11 while a write held its mirror lock: %q", now)
	}
	if n := wgOutbox(t, b, 11); n != 1 {
		t.Fatalf("%d outbox entries for key 11 after the skipped pass, want the committed one", n)
	}

	if err := holder.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	wgRelayable(t, b, 11, delay)
	if n, err := repo.RelayOnce(ctx); err != nil || n != 1 {
		t.Fatalf("RelayOnce once the write committed: %d keys (%v), want key 11", n, err)
	}
	o, _ := wgRow(t, b.pair.Old, 11)
	n, _ := wgRow(t, b.pair.New, 11)
	if o != n {
		t.Fatalf("key 11 after the relay: OLD %q, NEW %q", o, n)
	}
}

// Reconcile waits for the key's mirror lock: it must not read NEW while a
// write of the key is under way, or it could write to OLD a state the
// write has replaced. With a PutTx of key 11 open, Reconcile(11) waits;
// once the write commits, it mirrors the write's record.
func TestReconcileWaitsForMirrorLock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	repo := writeRepo(t, b, lazy.Config[Account]{})

	wgPutTx(t, b, repo, 11, "committed")
	holder := wgHoldMirrorLock(t, b, repo, 11, "in flight")
	reconciled := make(chan error, 1)
	go func() { reconciled <- repo.Reconcile(ctx, 11) }()
	err, returned := wgLockWaitOr(t, b, reconciled)
	if returned {
		t.Errorf("Reconcile(11) returned (%v) while a write held the key's mirror lock; want it to wait", err)
	}
	if err := holder.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if !returned {
		err = wgRecv(t, reconciled, "Reconcile once the write committed")
	}
	if err != nil {
		t.Fatal(err)
	}
	o, _ := wgRow(t, b.pair.Old, 11)
	n, _ := wgRow(t, b.pair.New, 11)
	if o != n {
		t.Fatalf("key 11 after Reconcile: OLD %q, NEW %q", o, n)
	}
}

// Without mirroring, Update has no mirror lock: the row lock its read
// takes (SELECT ... FOR UPDATE) alone keeps two read-modify-writes of a key
// from both reading the same value, one of them lost. First
// deterministically, with the first Update's function held while the
// second starts; then under load, 8 goroutines adding 20 each.
func TestUpdateWithoutMirrorLocksRow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	repo := writeRepo(t, b, lazy.Config[Account]{DisableMirror: true})
	start, err := repo.Update(ctx, 1, func(*Account) error { return nil }) // promotes key 1
	if err != nil {
		t.Fatal(err)
	}

	inFirst, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	free := func() { releaseOnce.Do(func() { close(release) }) }
	defer free()
	first := make(chan error, 1)
	go func() {
		_, err := repo.Update(ctx, 1, func(a *Account) error {
			close(inFirst)
			<-release
			a.BalanceCents++
			return nil
		})
		first <- err
	}()
	select {
	case <-inFirst:
	case err := <-first:
		t.Fatalf("first Update: %v", err)
	case <-time.After(wgWait):
		t.Fatalf("the first Update's function not called within %s", wgWait)
	}
	inSecond := make(chan struct{})
	second := make(chan error, 1)
	go func() {
		_, err := repo.Update(ctx, 1, func(a *Account) error {
			close(inSecond)
			a.BalanceCents++
			return nil
		})
		second <- err
	}()
	if _, ran := wgLockWaitOr(t, b, inSecond); ran {
		t.Error("the second Update's function ran while the first Update held key 1")
	}
	free()
	if err := wgRecv(t, first, "the first Update"); err != nil {
		t.Fatal(err)
	}
	if err := wgRecv(t, second, "the second Update"); err != nil {
		t.Fatal(err)
	}
	got, err := repo.Get(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if got.BalanceCents != start.BalanceCents+2 {
		t.Fatalf("two Updates adding 1 each: balance %d, want %d (an update lost)", got.BalanceCents, start.BalanceCents+2)
	}

	const workers, each = 8, 20
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				if _, err := repo.Update(ctx, 1, func(a *Account) error { a.BalanceCents++; return nil }); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	end, err := repo.Get(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if end.BalanceCents != got.BalanceCents+workers*each {
		t.Fatalf("%d concurrent Updates adding 1 each: balance %d, want %d (updates lost)", workers*each, end.BalanceCents, got.BalanceCents+workers*each)
	}
}

// A write of a key removes that table's tombstone of the key only: the
// tombstones table is shared by every table, and another table's
// tombstone of the same key must survive, or that deleted key could come
// back from OLD.
func TestPutKeepsOtherTablesTombstone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	repo := writeRepo(t, b, lazy.Config[Account]{})
	b.pair.New.Exec(t, `INSERT INTO lazymigrate.tombstones (table_name, key) VALUES ('public.other_table', 42)`)
	if err := repo.Delete(ctx, 42); err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Put(ctx, 42, account(42, "again")); err != nil {
		t.Fatal(err)
	}
	wgPutTx(t, b, repo, 42, "again in tx")
	rows, err := b.pair.New.Pool.Query(ctx, `SELECT table_name FROM lazymigrate.tombstones WHERE key = 42`)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(tables) != 1 || tables[0] != "public.other_table" {
		t.Fatalf("tombstones of key 42 after Delete, Put and PutTx of accounts 42: %v, want only public.other_table's", tables)
	}
}

// PurgeTombstones refuses while reads may still fall back to OLD: with no
// Config.Mode (readthrough, always) and in mode old, as in readthrough.
// The tombstones stay, and deleted keys stay deleted.
func TestPurgeTombstonesRefusedWithoutModeAndInModeOld(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	old, err := fallback.New(nil, "accounts", nil)
	if err != nil {
		t.Fatal(err)
	}
	old.Override(fallback.ModeOld)
	for _, c := range []struct {
		name string
		mode lazy.ModeSource
	}{{"without Config.Mode", nil}, {"in mode old", old}} {
		repo := writeRepo(t, b, lazy.Config[Account]{Mode: c.mode})
		if err := repo.Delete(ctx, 1); err != nil {
			t.Fatal(err)
		}
		if n, err := repo.PurgeTombstones(ctx); !errors.Is(err, lazy.ErrPurgeTooEarly) || n != 0 {
			t.Fatalf("PurgeTombstones %s = %d, %v; want ErrPurgeTooEarly", c.name, n, err)
		}
		if row, tomb := newState(t, b, 1); row || !tomb {
			t.Fatalf("after a refused purge %s: NEW row %v, tombstone %v; want the tombstone kept", c.name, row, tomb)
		}
	}
}

// A record whose key field, as Config.Encode gives it, is not an integer
// equal to the key written is refused with ErrKeyMismatch, and nothing is
// written: Postgres would take the string "5" as key 5, and Put(4, ...)
// would write key 5.
func TestPutRefusesNonIntegerKeyField(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	repo := writeRepo(t, b, lazy.Config[Account]{Encode: func(a Account) (map[string]any, error) {
		return map[string]any{
			"id": fmt.Sprint(a.ID + 1), "email": a.Email, "name": a.Name, "balance_cents": a.BalanceCents,
			"status": a.Status, "created_at": a.CreatedAt, "updated_at": a.UpdatedAt,
		}, nil
	}})
	oldBefore := tableText(t, b.pair.Old)
	if _, err := repo.Put(ctx, 4, account(4, "key field a string")); !errors.Is(err, lazy.ErrKeyMismatch) {
		t.Fatalf("Put(4) of a record whose encoded key is \"5\": err = %v, want ErrKeyMismatch", err)
	}
	if err := wgTx(t, b, func(tx pgx.Tx) error { return repo.PutTx(ctx, tx, 4, account(4, "key field a string")) }); !errors.Is(err, lazy.ErrKeyMismatch) {
		t.Fatalf("PutTx(4) of a record whose encoded key is \"5\": err = %v, want ErrKeyMismatch", err)
	}
	repo.Close()
	if got := tableText(t, b.pair.New); len(got) != 0 {
		t.Fatalf("NEW after refused writes: %v, want empty", got)
	}
	if got := tableText(t, b.pair.Old); len(got) != len(oldBefore) || got[4] != oldBefore[4] || got[5] != oldBefore[5] {
		t.Fatal("OLD changed by refused writes")
	}
	if n := outboxLen(t, b); n != 0 {
		t.Fatalf("refused writes left %d outbox entries", n)
	}
}

// A key field of any Go integer type is the key: an Encode returning the id
// as a uint32 writes it (a type asKey did not know was taken for another key).
func TestPutAcceptsAnyIntegerKeyField(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	repo := writeRepo(t, b, lazy.Config[Account]{Encode: func(a Account) (map[string]any, error) {
		return map[string]any{
			"id": uint32(a.ID), "email": a.Email, "name": a.Name, "balance_cents": a.BalanceCents,
			"status": a.Status, "created_at": a.CreatedAt, "updated_at": a.UpdatedAt,
		}, nil
	}})
	if _, err := repo.Put(ctx, 4, account(4, "key field a uint32")); err != nil {
		t.Fatalf("Put(4) of a record whose encoded key is uint32(4): %v", err)
	}
	if got, err := repo.Get(ctx, 4); err != nil || got.Name != "key field a uint32" {
		t.Fatalf("Get(4) = %+v, %v; want the record Put wrote", got, err)
	}
}

// wgTx runs write in a NEW transaction at READ COMMITTED and commits it if
// write succeeds; it returns write's error.
func wgTx(t *testing.T, b *testBundle, write func(pgx.Tx) error) error {
	t.Helper()
	ctx := context.Background()
	tx, err := b.pair.New.Pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := write(tx); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	return nil
}

// A negative key is refused with ErrInvalidKey by DeleteTx and Reconcile
// too, before anything is written: unchecked, DeleteTx would delete NEW's
// row of it and tombstone it, and Reconcile copy NEW's row over OLD's.
// The rows of key -1 the test puts in NEW and OLD, which differ, stay as
// they are, and the caller's transaction can still commit.
func TestDeleteTxAndReconcileRefuseInvalidKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	repo := writeRepo(t, b, lazy.Config[Account]{})
	const insert = `INSERT INTO accounts VALUES (-1, 'neg@example.com', $1, 0, 'active', '2025-01-01Z', '2025-01-01Z')`
	b.pair.New.Exec(t, insert, "negative in NEW")
	b.pair.Old.Exec(t, insert, "negative in OLD")
	newBefore, _ := wgRow(t, b.pair.New, -1)
	oldBefore, _ := wgRow(t, b.pair.Old, -1)

	if err := wgTx(t, b, func(tx pgx.Tx) error {
		if err := repo.DeleteTx(ctx, tx, -1); !errors.Is(err, lazy.ErrInvalidKey) {
			t.Errorf("DeleteTx(-1) err = %v, want ErrInvalidKey", err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := repo.Reconcile(ctx, -1); !errors.Is(err, lazy.ErrInvalidKey) {
		t.Errorf("Reconcile(-1) err = %v, want ErrInvalidKey", err)
	}
	if got, ok := wgRow(t, b.pair.New, -1); !ok || got != newBefore {
		t.Errorf("NEW's row of key -1 after refused writes: %q (present %v), want %q", got, ok, newBefore)
	}
	if got, ok := wgRow(t, b.pair.Old, -1); !ok || got != oldBefore {
		t.Errorf("OLD's row of key -1 after refused writes: %q (present %v), want %q", got, ok, oldBefore)
	}
	if row, tomb := newState(t, b, -1); !row || tomb {
		t.Errorf("key -1 after refused writes: NEW row %v, tombstone %v; want no tombstone", row, tomb)
	}
	if n := outboxLen(t, b); n != 0 {
		t.Errorf("refused writes left %d outbox entries", n)
	}
}

// A transaction not at READ COMMITTED is refused at once, before PutTx or
// DeleteTx waits for any lock: with the key's mirror lock held by a write
// under way, DeleteTx and PutTx at REPEATABLE READ return
// ErrNeedsReadCommitted without waiting for it. (Waiting, DeleteTx would
// hold up its caller behind every write of the key, only to be refused
// afterwards.)
func TestTxWritesRefuseRepeatableReadWithoutWaiting(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	repo := writeRepo(t, b, lazy.Config[Account]{})
	holder := wgHoldMirrorLock(t, b, repo, 7, "in flight")

	for _, w := range []struct {
		name  string
		write func(tx pgx.Tx) error
	}{
		{"DeleteTx", func(tx pgx.Tx) error { return repo.DeleteTx(ctx, tx, 7) }},
		{"PutTx", func(tx pgx.Tx) error { return repo.PutTx(ctx, tx, 7, account(7, "repeatable read")) }},
	} {
		refused := make(chan error, 1)
		go func() {
			// The transaction is this goroutine's: it ends it, however
			// long the write waits.
			rr, err := b.pair.New.Pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
			if err != nil {
				refused <- err
				return
			}
			defer func() { _ = rr.Rollback(ctx) }()
			refused <- w.write(rr)
		}()
		err, returned := wgLockWaitOr(t, b, refused)
		if !returned {
			_ = holder.Rollback(ctx) // let the write go on and end
			t.Fatalf("%s at REPEATABLE READ waited for the key's mirror lock instead of refusing at once", w.name)
		}
		if !errors.Is(err, lazy.ErrNeedsReadCommitted) {
			t.Fatalf("%s at REPEATABLE READ: err %v, want ErrNeedsReadCommitted", w.name, err)
		}
	}
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if row, tomb := newState(t, b, 7); row || tomb {
		t.Fatalf("key 7 after refused writes: NEW row %v, tombstone %v; want neither", row, tomb)
	}
	if n := outboxLen(t, b); n != 0 {
		t.Fatalf("refused writes left %d outbox entries", n)
	}
}
