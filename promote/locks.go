package promote

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"unicode"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/lazymigrate/lazymigrate/internal/keys"
)

// MaxLocksPerTx bounds the advisory locks one NEW transaction of the copier
// holds. Postgres's lock table is shared by the whole server and sized for
// max_locks_per_transaction (64 by default) per connection, and an insert
// also locks the table and its indexes; a batch whose keys spread over more
// stripes is written as several transactions (still in one round trip).
const MaxLocksPerTx = 32

// lockSpace maps keys to the transaction-level advisory locks that serialize
// copies and deletes of a table: key k takes lock (table hash << 32) |
// low 32 bits of (k >> bits). Stripes that differ only above bit 32 share a
// lock, which adds serialization and never breaks exclusion.
type lockSpace struct {
	ns   int64
	bits uint
}

func newLockSpace(tableID string, bits uint) lockSpace {
	h := fnv.New32a()
	h.Write([]byte("lazymigrate:" + tableID))
	return lockSpace{ns: int64(h.Sum32()) << 32, bits: bits}
}

func (l lockSpace) id(key int64) int64 { return l.ns | int64(uint32(key>>l.bits)) }

// ids returns the sorted distinct lock ids of keys. Every transaction takes
// its locks in this order, so two can never wait on each other.
func (l lockSpace) ids(ks []int64) []int64 {
	ids := make([]int64, len(ks))
	for i, k := range ks {
		ids[i] = l.id(k)
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// lockSQL takes the listed advisory locks, in the order given. The
// copier's own transactions, begun at READ COMMITTED, run it.
const lockSQL = `SELECT count(pg_advisory_xact_lock(l)) FROM unnest($1::bigint[]) AS l`

// refusal starts the message of a statement refused by readCommittedSQL;
// the transaction's isolation follows it.
const refusal = "lazymigrate: the transaction must be read committed, not "

// readCommittedSQL is an SQL condition that is true in a transaction at
// READ COMMITTED and, in any other, fails its statement (SQLSTATE 22P02)
// with a message that starts with refusal. Postgres has no function that
// raises an error, so the failing cast stands in for one. It reads no
// column, so a WHERE clause evaluates it once, before any row: a refused
// statement takes no lock.
const readCommittedSQL = `CASE current_setting('transaction_isolation') WHEN 'read committed' THEN true
	ELSE ('` + refusal + `' || current_setting('transaction_isolation'))::boolean END`

// checkedLockSQL is lockSQL for a writer's transaction: refused unless at
// READ COMMITTED.
const checkedLockSQL = lockSQL + ` WHERE ` + readCommittedSQL

// ReadCommittedCheck is a statement that does nothing in a transaction at
// READ COMMITTED and fails in any other, which aborts the transaction and,
// in a pipelined batch, skips the statements after it; IsolationError
// recognizes the failure. A writer that sends its statements in a caller's
// transaction queues it first, so that a refused transaction waits for no
// lock and changes nothing.
const ReadCommittedCheck = `SELECT ` + readCommittedSQL

// IsolationError returns, when err is the failure of ReadCommittedCheck or
// of LockStatement's statement in a transaction not at READ COMMITTED, an
// error that wraps ErrNeedsReadCommitted and names the transaction's
// isolation; for any other err, nil.
func IsolationError(err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "22P02" {
		return nil
	}
	_, level, ok := strings.Cut(pgErr.Message, refusal)
	if !ok {
		return nil
	}
	// The message quotes the text; translations use other quote marks.
	level = strings.TrimRightFunc(level, func(r rune) bool { return !unicode.IsLetter(r) })
	return fmt.Errorf("%w (it is %s)", ErrNeedsReadCommitted, level)
}

// Execer runs a statement; pgx.Tx implements it.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// LockKeys takes, inside the caller's NEW transaction, the advisory locks
// that serialize changes of keys with copies of them: a writer that deletes
// keys calls it first, and copies of those keys wait until its transaction
// ends. The transaction must run at READ COMMITTED (Postgres's default,
// unless default_transaction_isolation says otherwise), so that its later
// statements see the rows copies committed while it waited. At any other
// isolation LockKeys takes no lock and returns an error wrapping
// ErrNeedsReadCommitted; the transaction is then aborted. Call it once per
// transaction, with every key the transaction will change, before touching
// them: locks taken by two calls are not in one ascending order, and can
// deadlock with a copy.
func (c *Copier) LockKeys(ctx context.Context, tx Execer, ks []int64) error {
	if err := keys.CheckAll(ks); err != nil {
		return fmt.Errorf("promote: lock keys of %s: %w", c.cfg.Table, err)
	}
	if len(ks) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, checkedLockSQL, c.locks.ids(ks)); err != nil {
		if ierr := IsolationError(err); ierr != nil {
			err = ierr
		}
		return fmt.Errorf("promote: lock keys of %s: %w", c.cfg.Table, err)
	}
	return nil
}

// LockStatement returns the statement LockKeys runs and its arguments, for
// writers that send their transaction as one pipelined batch. Keys must be
// valid (>= 0). As in LockKeys, the statement fails, before taking any
// lock, in a transaction not at READ COMMITTED; IsolationError recognizes
// that failure. A writer that takes other locks first queues
// ReadCommittedCheck before them.
func (c *Copier) LockStatement(ks []int64) (string, []any) {
	return checkedLockSQL, []any{c.locks.ids(ks)}
}
