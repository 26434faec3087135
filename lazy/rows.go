package lazy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// scanError is an error of Config.Scan or Config.ScanOld: a mismatch
// between the record type and the columns, not an unavailable database.
type scanError struct{ err error }

func (e scanError) Error() string { return "lazy: scan row: " + e.err.Error() }
func (e scanError) Unwrap() error { return e.err }

func isScanError(err error) bool {
	var se scanError
	return errors.As(err, &se)
}

// queryOne runs sql for key and scans its row; pgx.ErrNoRows when there is
// none.
func queryOne[T any](ctx context.Context, db DB, sql string, key int64, scan pgx.RowToFunc[T]) (T, error) {
	return queryRow(ctx, db, sql, []any{key}, false, scan)
}

// errGone is queryFolded's answer for a key NEW lacks that is gone for
// good (tombstoned, or the table closed).
var errGone = fmt.Errorf("gone: %w", pgx.ErrNoRows)

// queryFolded runs sql, a Repo's foldSQL, for key: its row, scanned past
// the leading gone column, which is NULL on it; or errGone when the gone
// branch answered; or pgx.ErrNoRows when neither did.
func queryFolded[T any](ctx context.Context, db DB, sql, tableID string, key int64, scan pgx.RowToFunc[T]) (T, error) {
	return queryRow(ctx, db, sql, []any{tableID, key}, true, scan)
}

// queryRow runs sql and scans its first row, past a leading gone column
// when folded (see queryFolded).
func queryRow[T any](ctx context.Context, db DB, sql string, args []any, folded bool, scan pgx.RowToFunc[T]) (T, error) {
	var zero T
	rows, err := db.Query(ctx, sql, args...)
	if err != nil {
		return zero, err
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return zero, err
		}
		return zero, pgx.ErrNoRows
	}
	var row pgx.CollectableRow = rows
	if folded {
		if rows.RawValues()[0] != nil {
			rows.Close()
			if err := rows.Err(); err != nil {
				return zero, err
			}
			return zero, errGone
		}
		row = &colsView{Rows: rows, lo: 1, hi: len(rows.FieldDescriptions())}
	}
	v, err := scan(row)
	if err != nil {
		return zero, scanError{err}
	}
	rows.Close()
	return v, rows.Err()
}

// queryKeyed runs sql, whose first column is the key as bigint, and scans
// the rest of each row into out[key].
func queryKeyed[T any](ctx context.Context, db DB, sql string, ks []int64, scan pgx.RowToFunc[T], out map[int64]T) error {
	rows, err := db.Query(ctx, sql, ks)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		key, err := bigint(rows, 0)
		if err != nil {
			return scanError{err}
		}
		v, err := scan(&colsView{Rows: rows, lo: 1, hi: len(rows.FieldDescriptions())})
		if err != nil {
			return scanError{err}
		}
		out[key] = v
	}
	return rows.Err()
}

// bigint decodes column i of the current row, a bigint, in whichever
// format it came.
func bigint(rows pgx.Rows, i int) (int64, error) {
	raw := rows.RawValues()[i]
	if rows.FieldDescriptions()[i].Format == pgx.BinaryFormatCode {
		if len(raw) != 8 {
			return 0, fmt.Errorf("column %d: %d bytes, want a bigint", i, len(raw))
		}
		return int64(binary.BigEndian.Uint64(raw)), nil
	}
	return strconv.ParseInt(string(raw), 10, 64)
}

// colsView shows a scan function the columns [lo, hi) of a row only, so
// that a query can return more than the record type knows about (the key
// ahead of it, the text form of its values after it).
type colsView struct {
	pgx.Rows
	lo, hi int
}

var _ pgx.Rows = (*colsView)(nil)

func (r *colsView) FieldDescriptions() []pgconn.FieldDescription {
	return r.Rows.FieldDescriptions()[r.lo:r.hi]
}

func (r *colsView) Scan(dest ...any) error {
	// pgx hands a single RowScanner the whole row; it must see this view.
	if len(dest) == 1 {
		if rs, ok := dest[0].(pgx.RowScanner); ok {
			return rs.ScanRow(r)
		}
	}
	// pgx refuses a destination count other than the row's; so must the
	// view, or a record type that lost track of the columns would be
	// filled in part, or in full from the wrong columns.
	if len(dest) != r.hi-r.lo {
		return fmt.Errorf("number of field descriptions must equal number of destinations, got %d and %d: "+
			"make the record type (or Config.Scan) match Config.Columns", r.hi-r.lo, len(dest))
	}
	all := make([]any, len(r.Rows.FieldDescriptions())) // nil skips a column
	copy(all[r.lo:], dest)
	return r.Rows.Scan(all...)
}

func (r *colsView) Values() ([]any, error) {
	vs, err := r.Rows.Values()
	if err != nil {
		return nil, err
	}
	return vs[r.lo:r.hi], nil
}

func (r *colsView) RawValues() [][]byte { return r.Rows.RawValues()[r.lo:r.hi] }
