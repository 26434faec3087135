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
	var zero T
	rows, err := db.Query(ctx, sql, key)
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
	v, err := scan(rows)
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
	kr := keyedRow{Rows: rows}
	for rows.Next() {
		key, err := kr.key()
		if err != nil {
			return scanError{err}
		}
		v, err := scan(&kr)
		if err != nil {
			return scanError{err}
		}
		out[key] = v
	}
	return rows.Err()
}

// keyedRow shows a scan function every column of a row but the first, the
// key, so that the record type need not know about it.
type keyedRow struct {
	pgx.Rows
}

var _ pgx.Rows = (*keyedRow)(nil)

// key decodes the first column, a bigint, in whichever format it came.
func (r *keyedRow) key() (int64, error) {
	raw := r.Rows.RawValues()[0]
	if r.Rows.FieldDescriptions()[0].Format == pgx.BinaryFormatCode {
		if len(raw) != 8 {
			return 0, fmt.Errorf("key column: %d bytes, want a bigint", len(raw))
		}
		return int64(binary.BigEndian.Uint64(raw)), nil
	}
	return strconv.ParseInt(string(raw), 10, 64)
}

func (r *keyedRow) FieldDescriptions() []pgconn.FieldDescription {
	return r.Rows.FieldDescriptions()[1:]
}

func (r *keyedRow) Scan(dest ...any) error {
	// pgx hands a single RowScanner the whole row; it must see this view.
	if len(dest) == 1 {
		if rs, ok := dest[0].(pgx.RowScanner); ok {
			return rs.ScanRow(r)
		}
	}
	var skip int64
	return r.Rows.Scan(append([]any{&skip}, dest...)...)
}

func (r *keyedRow) Values() ([]any, error) {
	vs, err := r.Rows.Values()
	if err != nil {
		return nil, err
	}
	return vs[1:], nil
}

func (r *keyedRow) RawValues() [][]byte { return r.Rows.RawValues()[1:] }
