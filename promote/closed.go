package promote

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/lazymigrate/lazymigrate/internal/schema"
)

// closedRefusal starts the message of a copy refused by openSQL; the
// table's name follows it.
const closedRefusal = "lazymigrate: the migration is closed, nothing is copied from OLD into "

// openSQL returns an SQL condition that is true while the table named by
// parameter $param is open to copies, and otherwise fails its statement
// (SQLSTATE 22P02) with a message that starts with closedRefusal, as
// readCommittedSQL does. It reads no column of the statement's rows, so a
// WHERE clause evaluates it once, before any row, in the snapshot of the
// statement that also checks the tombstones. Closing a table and deleting
// its tombstones is one statement (schema.CloseSQL): every copy sees
// either the tombstones, which it honours, or the closure, which stops it.
//
// The failing cast reads the registry's column: a cast of constants alone
// would be folded, and fail, when the statement is planned, whichever
// branch runs.
func openSQL(param int) string {
	return fmt.Sprintf(`coalesce((SELECT CASE WHEN r.closed_at IS NULL THEN true ELSE ('%s' || r.table_name)::boolean END
	FROM %s r WHERE r.table_name = $%d), true)`, closedRefusal, schema.Tables, param)
}

// closedError returns an error wrapping ErrClosed when err is openSQL's
// refusal, and nil for any other err.
func closedError(table string, err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "22P02" || !strings.Contains(pgErr.Message, closedRefusal) {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrClosed, table)
}

// oldRejected returns err, the rejection of rows read from OLD (a
// Transform that failed, a key twice or NULL), unless the table is closed:
// then it returns ErrClosed. Those rows fail before any statement in NEW,
// so before openSQL; reported as rejected, they would ask for data to be
// fixed that nothing will copy again. Rejections are rare: the query costs
// the copy path nothing.
func (c *Copier) oldRejected(ctx context.Context, err error) error {
	if !errors.Is(err, ErrRowRejected) {
		return err
	}
	var closed bool
	if c.new.QueryRow(ctx, `SELECT `+schema.ClosedSQL, c.tableID).Scan(&closed) == nil && closed {
		return fmt.Errorf("%w: %s", ErrClosed, c.cfg.Table)
	}
	return err
}
