package tracker

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/lazymigrate/lazymigrate/internal/pgtable"
	"github.com/lazymigrate/lazymigrate/internal/schema"
)

// Querier is what Rebuild needs from NEW. *pgxpool.Pool, *pgx.Conn and
// pgx.Tx implement it.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// rebuildBatch is how many keys Rebuild marks per Mark call: enough to
// amortize the round trip, small enough to keep memory flat.
const rebuildBatch = 64 << 10

// Rebuild marks every key that is settled according to NEW: each key present
// in table (column keyColumn, which must have an integer type) and each key
// tombstoned for it in lazymigrate.tombstones. table is a name as written in
// SQL (accounts, public.accounts); keyColumn is a bare column name.
//
// It returns how many keys were newly marked. Rebuild only adds bits, so it
// may run while the library is live; call Reset first to drop bits that NEW
// does not justify. Rows are streamed in one statement, whose snapshot stays
// open (holding back vacuum on NEW) until the last row is read; keys written
// after that snapshot are marked by their writers. On error, the keys marked
// so far stay marked and are counted in the returned number.
func (t *Tracker) Rebuild(ctx context.Context, newDB Querier, table, keyColumn string) (marked int64, err error) {
	marked, err = t.rebuild(ctx, newDB, table, keyColumn)
	if err != nil {
		return marked, fmt.Errorf("tracker: rebuild %s from %s: %w", t.table, table, err)
	}
	return marked, nil
}

func (t *Tracker) rebuild(ctx context.Context, q Querier, table, keyColumn string) (int64, error) {
	var setUp bool
	if err := q.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, schema.Tombstones).Scan(&setUp); err != nil {
		return 0, fmt.Errorf("look for %s: %w", schema.Tombstones, err)
	}
	if !setUp {
		// Without tombstones, deleted keys would stay unmarked and a later
		// sweep could copy them back from OLD.
		return 0, fmt.Errorf("%w: %s does not exist; run lazymigrate's setup against NEW first", ErrNotSetUp, schema.Tombstones)
	}
	tbl, err := pgtable.Describe(ctx, q, table)
	if err != nil {
		return 0, err
	}
	col, err := tbl.CheckKey(ctx, q, keyColumn, false)
	if err != nil {
		return 0, err
	}

	rows, err := q.Query(ctx, fmt.Sprintf(`
		SELECT %[1]s::bigint FROM %[2]s WHERE %[1]s IS NOT NULL
		UNION ALL
		SELECT key FROM %[3]s WHERE table_name = $1`,
		col.Ident(), tbl.Ident, schema.Tombstones), tbl.ID)
	if err != nil {
		return 0, fmt.Errorf("read keys: %w", err)
	}
	defer rows.Close()

	var marked int64
	batch := make([]int64, 0, rebuildBatch)
	flush := func() error {
		n, err := t.mark(ctx, batch)
		marked += int64(n)
		batch = batch[:0]
		return err
	}
	for rows.Next() {
		var k int64
		if err := rows.Scan(&k); err != nil {
			return marked, fmt.Errorf("read keys: %w", err)
		}
		if batch = append(batch, k); len(batch) == rebuildBatch {
			if err := flush(); err != nil {
				return marked, err
			}
		}
	}
	if err := rows.Err(); err != nil {
		return marked, fmt.Errorf("read keys: %w", err)
	}
	if len(batch) > 0 {
		if err := flush(); err != nil {
			return marked, err
		}
	}
	return marked, nil
}
