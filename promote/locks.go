package promote

import (
	"context"
	"fmt"
	"hash/fnv"
	"slices"

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

// lockSQL takes the listed advisory locks, in the order given.
const lockSQL = `SELECT count(pg_advisory_xact_lock(l)) FROM unnest($1::bigint[]) AS l`

// Execer runs a statement; pgx.Tx implements it.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// LockKeys takes, inside the caller's NEW transaction, the advisory locks
// that serialize changes of keys with copies of them: a writer that deletes
// keys calls it first, and copies of those keys wait until its transaction
// ends. The caller's transaction must run at READ COMMITTED isolation for
// its later statements to see rows committed while it waited. Call it once
// per transaction, with every key the transaction will change, before
// touching them: locks taken by two calls are not in one ascending order,
// and can deadlock with a copy.
func (c *Copier) LockKeys(ctx context.Context, tx Execer, ks []int64) error {
	if err := keys.CheckAll(ks); err != nil {
		return fmt.Errorf("promote: lock keys of %s: %w", c.cfg.Table, err)
	}
	if len(ks) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, lockSQL, c.locks.ids(ks)); err != nil {
		return fmt.Errorf("promote: lock keys of %s: %w", c.cfg.Table, err)
	}
	return nil
}

// LockStatement returns the statement LockKeys runs and its arguments, for
// writers that send their transaction as one pipelined batch. Keys must be
// valid (>= 0).
func (c *Copier) LockStatement(ks []int64) (string, []any) {
	return lockSQL, []any{c.locks.ids(ks)}
}
