package promote

import (
	"context"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lazymigrate/lazymigrate/internal/pgtext"
)

// lockAndPin takes a group's advisory locks and fixes, for the
// transaction, the settings that change how NEW parses the text read from
// OLD.
const lockAndPin = pgtext.PinInput + `, (SELECT count(pg_advisory_xact_lock(l)) FROM unnest($1::bigint[]) AS l)`

// group is the rows of one NEW transaction: their locks and, per column,
// their values.
type group struct {
	locks  []int64
	arrays [][]*string
}

// groups splits rows into transactions of at most MaxLocksPerTx locks,
// taken in ascending order across and within transactions.
func (c *Copier) groups(rows oldRows) []group {
	ids := make([]int64, len(rows.keys))
	for i, k := range rows.keys {
		ids[i] = c.locks.id(k)
	}
	sorted := slices.Clone(ids)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	var gs []group
	of := make(map[int64]int, len(sorted))
	for chunk := range slices.Chunk(sorted, MaxLocksPerTx) {
		for _, id := range chunk {
			of[id] = len(gs)
		}
		gs = append(gs, group{locks: chunk, arrays: make([][]*string, len(c.cols))})
	}
	for i, vals := range rows.vals {
		g := &gs[of[ids[i]]]
		for j, v := range vals {
			g.arrays[j] = append(g.arrays[j], v)
		}
	}
	return gs
}

// writeNew inserts rows into NEW and lists the tombstones tombSQL finds, in
// one round trip: one pipelined batch holding, per group of stripes, a
// READ COMMITTED transaction that locks the stripes and inserts what NEW
// lacks, skipping tombstoned keys and keys NEW already has. It returns the
// keys it inserted, which the tombstones listed after the commits may
// include: a delete can come in between.
//
// READ COMMITTED is spelled out, whatever NEW's default: each statement then
// takes its snapshot after the locks are granted, so the tombstone check
// sees a delete that committed while the copy waited for the lock. Under
// REPEATABLE READ the snapshot would predate the wait and the deleted key
// would come back.
func (c *Copier) writeNew(ctx context.Context, rows oldRows, tombSQL string, tombArgs []any) (copied, tombstoned []int64, err error) {
	gs := c.groups(rows)
	b := &pgx.Batch{}
	for _, g := range gs {
		b.Queue(`BEGIN ISOLATION LEVEL READ COMMITTED`)
		b.Queue(lockAndPin, g.locks)
		args := make([]any, 0, len(g.arrays)+1)
		for _, a := range g.arrays {
			args = append(args, a)
		}
		b.Queue(c.insertSQL, append(args, c.tableID)...)
		b.Queue(`COMMIT`)
	}
	b.Queue(tombSQL, tombArgs...)

	br := c.new.SendBatch(ctx, b)
	defer func() {
		if cerr := br.Close(); cerr != nil && err == nil {
			err = newError(c.cfg.Table, cerr)
		}
		if err != nil && len(gs) > 0 {
			c.rollback(ctx)
		}
	}()
	// copied counts the groups that committed before a failure too: the
	// caller reports them even when a later group fails.
	for range gs {
		if _, err := br.Exec(); err != nil {
			return copied, nil, newError(c.cfg.Table, err)
		}
		if _, err := br.Exec(); err != nil {
			return copied, nil, newError(c.cfg.Table, err)
		}
		ins, err := br.Query()
		if err != nil {
			return copied, nil, newError(c.cfg.Table, err)
		}
		inserted, err := pgx.CollectRows(ins, pgx.RowTo[int64])
		if err != nil {
			return copied, nil, newError(c.cfg.Table, err)
		}
		if _, err := br.Exec(); err != nil {
			return copied, nil, newError(c.cfg.Table, err)
		}
		copied = append(copied, inserted...)
	}
	tombRows, err := br.Query()
	if err != nil {
		return copied, nil, newError(c.cfg.Table, err)
	}
	if tombstoned, err = pgx.CollectRows(tombRows, pgx.RowTo[int64]); err != nil {
		return copied, nil, newError(c.cfg.Table, err)
	}
	return copied, tombstoned, nil
}

// rollback ends a transaction a failed batch left open on a single
// connection. A pool needs none: it discards a connection returned in a
// transaction, and a ROLLBACK sent through it would go to another one
// (waiting, when NEW is unreachable, for a connection that never comes).
func (c *Copier) rollback(ctx context.Context) {
	if _, isPool := c.new.(*pgxpool.Pool); isPool {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	b := &pgx.Batch{}
	b.Queue(`ROLLBACK`)
	_ = c.new.SendBatch(ctx, b).Close()
}
