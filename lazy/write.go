package lazy

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lazymigrate/lazymigrate/internal/keys"
	"github.com/lazymigrate/lazymigrate/internal/pgtext"
	"github.com/lazymigrate/lazymigrate/promote"
)

// Errors of the write path.
var (
	// ErrNoWrites: the Repo was configured without Config.Copier, or its NEW
	// database is not a *pgxpool.Pool.
	ErrNoWrites = errors.New("lazy: writes need Config.Copier and NEW as a *pgxpool.Pool")
	// ErrKeyMismatch: the record given to a write carries another key than
	// the key argument.
	ErrKeyMismatch = errors.New("lazy: record key differs from the key written")
	// ErrNeedsReadCommitted: the transaction given to PutTx or DeleteTx
	// does not run at READ COMMITTED isolation.
	ErrNeedsReadCommitted = promote.ErrNeedsReadCommitted
)

// acquirer is what writes need of NEW: a connection of their own, to hold
// the key's mirror lock from the NEW commit until OLD has the change.
type acquirer interface {
	Acquire(ctx context.Context) (*pgxpool.Conn, error)
}

// Put stores rec under key in NEW, replacing the whole record, and returns
// the record as stored. A deleted key is created again. rec's key field
// must equal key. Unless Config.DisableMirror, the change is applied to OLD
// before Put returns, or, if OLD fails, left to a reconcile.
func (r *Repo[T]) Put(ctx context.Context, key int64, rec T) (T, error) {
	start := time.Now()
	v, err := r.put(ctx, key, rec)
	r.observeWrite("put", start, err)
	return v, err
}

func (r *Repo[T]) put(ctx context.Context, key int64, rec T) (T, error) {
	var zero T
	vals, err := r.checkWrite(key, rec)
	if err != nil {
		return zero, err
	}
	h, err := r.acquire(ctx, key)
	if err != nil {
		return zero, err
	}
	defer r.releaseOnPanic(ctx, &h)
	var b writeBatch
	b.exec(`BEGIN ISOLATION LEVEL READ COMMITTED`)
	r.queueLockAndPin(&b, key)
	b.returning(r.w.upsertSQL, vals...)
	b.exec(r.w.untombSQL, r.tableID, key)
	r.queueOutbox(&b, key)
	b.exec(`COMMIT`)
	return r.commit(ctx, h, &b)
}

// Update changes the record of key in NEW: fn receives the current record
// (promoted from OLD first if need be) while its row is locked, and what fn
// leaves in it is stored in the same transaction and returned. An error
// from fn aborts the update and is returned as it is; a panic in fn
// releases everything and goes on. A key that does not exist, or was
// deleted, returns ErrNotFound. fn must not change the key, should be
// quick (it holds the row, the key's lock and a NEW connection), and must
// not use NEW's pool itself: with the pool exhausted by writers waiting for
// this key, it would wait for ever.
func (r *Repo[T]) Update(ctx context.Context, key int64, fn func(rec *T) error) (T, error) {
	start := time.Now()
	v, err := r.update(ctx, key, fn)
	r.observeWrite("update", start, err)
	return v, err
}

func (r *Repo[T]) update(ctx context.Context, key int64, fn func(rec *T) error) (T, error) {
	var zero T
	if err := r.writable(key); err != nil {
		return zero, err
	}
	if fn == nil {
		return zero, fmt.Errorf("lazy: update %s key %d: nil update function", r.cfg.Table, key)
	}
	// The row must be in NEW. If it is not, promote it and start over: the
	// promotion needs NEW connections of its own, and holding one here
	// while waiting for another can exhaust the pool.
	var (
		h   *held
		cur T
	)
	defer r.releaseOnPanic(ctx, &h)
	for attempt := 0; ; attempt++ {
		var err error
		if h, err = r.acquire(ctx, key); err != nil {
			return zero, err
		}
		if cur, err = r.lockRow(ctx, h); err == nil {
			break
		}
		r.abandon(ctx, h)
		switch {
		case !errors.Is(err, pgx.ErrNoRows):
			return zero, err
		case attempt == 1:
			return zero, r.notFound(key)
		}
		if err := r.migrate(ctx, key); err != nil {
			return zero, err
		}
	}
	fail := func(err error) (T, error) {
		r.abandon(ctx, h)
		return zero, err
	}
	if err := fn(&cur); err != nil {
		return fail(err)
	}
	vals, err := r.checkWrite(key, cur)
	if err != nil {
		return fail(err)
	}
	var b writeBatch
	b.exec(pgtext.PinOutput)
	b.returning(r.w.updateSQL, vals...)
	r.queueOutbox(&b, key)
	b.exec(`COMMIT`)
	return r.commit(ctx, h, &b)
}

// lockRow takes key's mirror lock on conn, starts a transaction and reads
// key's row FOR UPDATE. The caller abandons conn on error.
func (r *Repo[T]) lockRow(ctx context.Context, h *held) (T, error) {
	var zero T
	conn, key := h.conn, h.key
	if r.mirrors() {
		if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, r.w.mirrorLock(key)); err != nil {
			return zero, r.newErr(key, err)
		}
	}
	if _, err := conn.Exec(ctx, `BEGIN ISOLATION LEVEL READ COMMITTED`); err != nil {
		return zero, r.newErr(key, err)
	}
	v, err := queryOne(ctx, conn, r.w.lockRowSQL, key, r.cfg.Scan)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return zero, pgx.ErrNoRows
	case err != nil:
		return zero, r.newErr(key, err)
	}
	return v, nil
}

// Delete removes key from NEW and leaves a tombstone, so that no promotion
// or sweep brings it back; unless Config.DisableMirror the deletion is
// applied to OLD as for Put. Deleting a key that does not exist succeeds.
func (r *Repo[T]) Delete(ctx context.Context, key int64) error {
	start := time.Now()
	err := r.delete(ctx, key)
	r.observeWrite("delete", start, err)
	return err
}

func (r *Repo[T]) delete(ctx context.Context, key int64) error {
	if err := r.writable(key); err != nil {
		return err
	}
	h, err := r.acquire(ctx, key)
	if err != nil {
		return err
	}
	defer r.releaseOnPanic(ctx, &h)
	var b writeBatch
	b.exec(`BEGIN ISOLATION LEVEL READ COMMITTED`)
	r.queueLockAndPin(&b, key)
	r.queueDelete(&b, key)
	r.queueOutbox(&b, key)
	b.exec(`COMMIT`)
	_, err = r.commit(ctx, h, &b)
	return err
}

// queueDelete queues the statements of a delete of key.
func (r *Repo[T]) queueDelete(b *writeBatch, key int64) {
	// The copy stripe lock first: a promotion that read OLD before this
	// delete committed waits for it, then sees the tombstone.
	lock, args := r.cfg.Copier.LockStatement([]int64{key})
	b.exec(lock, args...)
	b.exec(r.w.deleteSQL, key)
	b.exec(r.w.tombSQL, r.tableID, key)
}

// Migrate promotes key synchronously: once it returns nil, NEW holds the
// key's record and callers may write it with plain SQL (then call Reconcile
// to mirror the change). A key in neither database, or deleted, returns
// ErrNotFound.
func (r *Repo[T]) Migrate(ctx context.Context, key int64) error {
	if err := r.writable(key); err != nil {
		return err
	}
	return r.migrate(ctx, key)
}

func (r *Repo[T]) migrate(ctx context.Context, key int64) error {
	res, err := r.cfg.Copier.CopyKeys(ctx, []int64{key})
	if errors.Is(err, promote.ErrMarkFailed) {
		// NEW has committed the copy. The tracker only saves later reads
		// some work, and a Redis outage must not fail writes.
		err = nil
	}
	switch {
	case errors.Is(err, promote.ErrClosed):
		// The migration is over: what NEW lacks was deleted or never was.
	case err != nil:
		return fmt.Errorf("lazy: migrate %s key %d: %w", r.cfg.Table, key, err)
	case res.Copied+res.Present == 1:
		return nil
	case res.Tombstoned == 1:
		return r.notFound(key)
	}
	// Absent from OLD: it may have been written to NEW only.
	if _, err := queryOne(ctx, r.new, r.newSQL, key, r.cfg.Scan); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return r.notFound(key)
		}
		return r.newErr(key, err)
	}
	return nil
}

// PutTx is Put inside the caller's NEW transaction tx. Its change reaches
// OLD only after tx commits: call Reconcile with the key then, or leave it
// to the relay (RunRelay), which mirrors what is left after RelayDelay.
//
// tx must run at READ COMMITTED, as for DeleteTx; at any other isolation
// PutTx changes nothing and returns an error wrapping
// ErrNeedsReadCommitted, and tx is aborted. PutTx takes no copy stripe lock
// (a copy never overwrites a row, so the two commute), but it waits for
// the key's mirror lock, which a delete of the key holds until it commits
// or longer. At REPEATABLE READ its snapshot would predate that wait: it
// would not see the tombstone the delete committed and would leave it
// beside the row it writes, a key coldsweep's verify reports as
// resurrected; and a row committed meanwhile would fail its upsert with a
// serialization error.
func (r *Repo[T]) PutTx(ctx context.Context, tx pgx.Tx, key int64, rec T) error {
	vals, err := r.checkWrite(key, rec)
	if err != nil {
		return err
	}
	var b writeBatch
	b.exec(promote.ReadCommittedCheck)
	r.queueMirrorXactLock(&b, key)
	b.exec(r.w.upsertSQL, vals...)
	b.exec(r.w.untombSQL, r.tableID, key)
	r.queueOutbox(&b, key)
	if err := tx.SendBatch(ctx, &b.b).Close(); err != nil {
		return r.txErr(key, err)
	}
	return nil
}

// DeleteTx is Delete inside the caller's NEW transaction tx. As with PutTx,
// OLD learns of it after the commit, through Reconcile or the relay. Each
// call takes its key's locks when it runs, so use one PutTx or DeleteTx per
// transaction: a transaction holding the locks of one key while waiting for
// another's can deadlock with other writers (Postgres then aborts one of
// them).
//
// tx must run at READ COMMITTED: Postgres's default, unless NEW's
// default_transaction_isolation says otherwise, so begin tx with
// pgx.TxOptions{IsoLevel: pgx.ReadCommitted} to be sure. At any other
// isolation DeleteTx changes nothing, takes no lock and returns an error
// wrapping ErrNeedsReadCommitted, and tx is aborted. At REPEATABLE READ
// the snapshot, taken by the transaction's first statement, would predate
// the wait for the key's copy stripe lock: a copy holding it would commit
// the row, the DELETE would not see it, and the row would stay beside the
// tombstone: the deleted key would read as found.
func (r *Repo[T]) DeleteTx(ctx context.Context, tx pgx.Tx, key int64) error {
	if err := r.writable(key); err != nil {
		return err
	}
	var b writeBatch
	b.exec(promote.ReadCommittedCheck)
	r.queueMirrorXactLock(&b, key)
	r.queueDelete(&b, key)
	r.queueOutbox(&b, key)
	if err := tx.SendBatch(ctx, &b.b).Close(); err != nil {
		return r.txErr(key, err)
	}
	return nil
}

// txErr classifies a failed write in a caller's transaction: the
// transaction's isolation refused, or NEW's failure.
func (r *Repo[T]) txErr(key int64, err error) error {
	if ierr := promote.IsolationError(err); ierr != nil {
		return fmt.Errorf("lazy: write %s key %d: %w", r.cfg.Table, key, ierr)
	}
	return r.writeErr(key, err)
}

// writable checks that writes are configured and key is valid.
func (r *Repo[T]) writable(key int64) error {
	if r.w == nil {
		return ErrNoWrites
	}
	if err := keys.Check(key); err != nil {
		return fmt.Errorf("lazy: write %s: %w", r.cfg.Table, err)
	}
	if key > r.maxKey {
		return fmt.Errorf("lazy: write %s: %w (got %d, past %d, the largest the key column's type holds)",
			r.cfg.Table, ErrInvalidKey, key, r.maxKey)
	}
	return nil
}

// checkWrite validates a write of rec under key and returns its values.
func (r *Repo[T]) checkWrite(key int64, rec T) ([]any, error) {
	if err := r.writable(key); err != nil {
		return nil, err
	}
	vals, err := r.w.encode(rec)
	if err != nil {
		return nil, fmt.Errorf("lazy: write %s key %d: %w", r.cfg.Table, key, err)
	}
	if k, ok := asKey(vals[r.w.keyIdx]); !ok || k != key {
		return nil, fmt.Errorf("%w: write %s: the record's key field is %v (%T), not %d", ErrKeyMismatch, r.cfg.Table, vals[r.w.keyIdx], vals[r.w.keyIdx], key)
	}
	return vals, nil
}

// asKey returns the key a record's key field holds: any Go integer that
// fits an int64.
func asKey(v any) (int64, bool) {
	switch k := v.(type) {
	case int64:
		return k, true
	case int32:
		return int64(k), true
	case int16:
		return int64(k), true
	case int8:
		return int64(k), true
	case int:
		return int64(k), true
	case uint8:
		return int64(k), true
	case uint16:
		return int64(k), true
	case uint32:
		return int64(k), true
	case uint64:
		return int64(k), k <= math.MaxInt64
	case uint:
		return int64(k), uint64(k) <= math.MaxInt64
	}
	return 0, false
}

// held is a write's NEW connection, which holds (or will hold) the key's
// mirror lock, until finish or abandon takes it.
type held struct {
	conn  *pgxpool.Conn
	key   int64
	taken bool
}

func (r *Repo[T]) acquire(ctx context.Context, key int64) (*held, error) {
	conn, err := r.w.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: write %s: %w", ErrNewUnavailable, r.cfg.Table, err)
	}
	return &held{conn: conn, key: key}, nil
}

// releaseOnPanic, deferred by every write, lets a panic (in the caller's
// Update function, Scan, Encode or ReverseTransform) go on only after h's
// transaction, lock and connection are released: left held, they would
// block every later write of the key. A change NEW already committed stays
// in the outbox for the relay.
// It takes a pointer to the write's *held, which Update replaces when it
// starts over, and must itself be the deferred call: recover only works
// there.
func (r *Repo[T]) releaseOnPanic(ctx context.Context, hp **held) {
	if p := recover(); p != nil {
		if h := *hp; h != nil && !h.taken {
			r.abandon(ctx, h)
		}
		panic(p)
	}
}

func (r *Repo[T]) mirrors() bool { return !r.cfg.DisableMirror }

// queueLockAndPin takes key's mirror lock and pins the output settings
// for the transaction (see pgtext.PinOutput), in one statement. The lock is
// a session lock, held past the commit until OLD has the change, so that
// the changes of one key reach OLD in the order NEW committed them.
// Without mirroring the lock is the transaction's: writes of one key still
// exclude each other (a Put and a Delete of a missing key would otherwise
// interleave, leaving a row and a tombstone).
func (r *Repo[T]) queueLockAndPin(b *writeBatch, key int64) {
	if r.mirrors() {
		b.exec(pgtext.PinOutput+`, pg_advisory_lock($1)`, r.w.mirrorLock(key))
	} else {
		b.exec(pgtext.PinOutput+`, pg_advisory_xact_lock($1)`, r.w.mirrorLock(key))
	}
}

// queueMirrorXactLock takes key's mirror lock inside a caller's
// transaction, which waits for any mirror of key under way; without
// mirroring it still keeps writes of the key from interleaving.
func (r *Repo[T]) queueMirrorXactLock(b *writeBatch, key int64) {
	b.exec(`SELECT pg_advisory_xact_lock($1)`, r.w.mirrorLock(key))
}

func (r *Repo[T]) queueOutbox(b *writeBatch, key int64) {
	if r.mirrors() {
		b.outbox(r.w.outboxSQL, r.tableID, key)
	}
}

// writeBatch is a write's statements with what each returns.
type writeBatch struct {
	b     pgx.Batch
	kinds []stmtKind
}

type stmtKind int

const (
	stmtExec      stmtKind = iota
	stmtReturning          // the written row: its columns, then their text forms
	stmtOutbox             // the outbox row's id
)

func (w *writeBatch) add(k stmtKind, sql string, args ...any) {
	w.b.Queue(sql, args...)
	w.kinds = append(w.kinds, k)
}
func (w *writeBatch) exec(sql string, args ...any)      { w.add(stmtExec, sql, args...) }
func (w *writeBatch) returning(sql string, args ...any) { w.add(stmtReturning, sql, args...) }
func (w *writeBatch) outbox(sql string, args ...any)    { w.add(stmtOutbox, sql, args...) }

// written is what a write's batch returned.
type written[T any] struct {
	rec      T
	text     []*string // the row as stored, in text form; nil for a delete
	outboxID int64
}

// send runs b on conn and collects what its statements return.
func (r *Repo[T]) send(ctx context.Context, conn *pgxpool.Conn, b *writeBatch) (written[T], error) {
	var out written[T]
	br := conn.SendBatch(ctx, &b.b)
	defer br.Close()
	n := len(r.w.cols)
	for _, k := range b.kinds {
		switch k {
		case stmtExec:
			if _, err := br.Exec(); err != nil {
				return out, err
			}
		case stmtOutbox:
			if err := br.QueryRow().Scan(&out.outboxID); err != nil {
				return out, err
			}
		case stmtReturning:
			rows, err := br.Query()
			if err != nil {
				return out, err
			}
			if !rows.Next() {
				rows.Close()
				if err := rows.Err(); err != nil {
					return out, err
				}
				return out, pgx.ErrNoRows
			}
			if out.rec, err = r.cfg.Scan(&colsView{Rows: rows, lo: 0, hi: n}); err != nil {
				rows.Close()
				return out, scanError{err}
			}
			out.text = make([]*string, n)
			for i, v := range rows.RawValues()[n:] {
				if v != nil {
					s := string(v)
					out.text[i] = &s
				}
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return out, err
			}
		}
	}
	return out, br.Close()
}

// commit sends b, the write's transaction, on conn, then mirrors the change
// to OLD and hands conn to finish.
func (r *Repo[T]) commit(ctx context.Context, h *held, b *writeBatch) (T, error) {
	var zero T
	key := h.key
	res, err := r.send(ctx, h.conn, b)
	if err != nil {
		r.abandon(ctx, h)
		if isScanError(err) {
			return zero, err
		}
		return zero, r.writeErr(key, err)
	}
	var mirrorErr error
	if r.mirrors() {
		mirrorErr = r.mirror(ctx, key, res.text)
	}
	r.finish(ctx, h, res.outboxID, mirrorErr)
	return res.rec, nil
}

// writeErr classifies a failed NEW write: a constraint or data error is the
// record's fault; anything else is NEW's.
func (r *Repo[T]) writeErr(key int64, err error) error {
	if isDataError(err) {
		return fmt.Errorf("lazy: write %s key %d: %w", r.cfg.Table, key, err)
	}
	return fmt.Errorf("%w: write %s key %d: %w", ErrNewUnavailable, r.cfg.Table, key, err)
}
