package promote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lazymigrate/lazymigrate/internal/pgtable"
	"github.com/lazymigrate/lazymigrate/internal/schema"
)

// acquirer hands out a dedicated connection, which COPY needs.
// *pgxpool.Pool implements it.
type acquirer interface {
	Acquire(ctx context.Context) (*pgxpool.Conn, error)
}

// firstUserOID is Postgres's FirstNormalObjectId: below it, a type's OID
// and its binary format are the same on every server.
const firstUserOID = 16384

// bulkRange copies ranges with binary COPY straight from OLD into NEW. It
// is used when nothing has to be rewritten on the way: no transform, and
// every column has the same built-in type, modifier included, on both
// sides, so that the binary form means the same to both servers.
//
// A range goes in one NEW transaction: lock the range's stripes, list the
// keys NEW already has or has tombstoned in it, and COPY from OLD every
// other row of the range. The stripe locks keep that list true until the
// commit, because every path that adds a key to NEW or tombstones one
// (copies, lazy's writes and deletes) takes them first. A writer that goes
// around lazymigrate can still add a key: the COPY then fails with a
// unique violation and the range is listed and copied again.
type bulkRange struct {
	old, new  acquirer
	tableID   string
	oldSelect string // SELECT <cols> FROM old WHERE key >= %d AND key < %d
	oldKey    string // OLD's key column, quoted
	copyIn    string
	listSQL   string // keys of a range NEW has or has tombstoned
	listKeys  string // the same among given keys
	countSQL  string // %s: OLD's rows and tombstoned rows of a range
	countKeys string // %s, %s: the same among given keys
}

// newBulkRange returns nil when the copier cannot use COPY.
func (c *Copier) newBulkRange(ot, nt *pgtable.Table, oldKey pgtable.Column) *bulkRange {
	if c.cfg.Transform != nil || c.cfg.NoBulk {
		return nil
	}
	oldA, okOld := c.old.(acquirer)
	newA, okNew := c.new.(acquirer)
	if !okOld || !okNew {
		return nil
	}
	for i, col := range c.cols {
		oc := c.oldCols[i]
		if col.TypeOID >= firstUserOID || col.TypeOID != oc.TypeOID || col.Type != oc.Type {
			return nil
		}
	}
	key := oldKey.Ident()
	newKey := c.cols[c.keyIdx].Ident()
	return &bulkRange{
		old: oldA, new: newA, tableID: nt.ID,
		oldSelect: fmt.Sprintf(`SELECT %s FROM %s WHERE %s >= %%d AND %s < %%d`,
			pgtable.Idents(c.oldCols), ot.Ident, key, key),
		oldKey: key,
		copyIn: fmt.Sprintf(`COPY %s (%s) FROM STDIN (FORMAT binary)`, nt.Ident, pgtable.Idents(c.cols)),
		// Index-only in NEW: the keys a copy must leave alone.
		listSQL: fmt.Sprintf(`SELECT %[1]s::bigint, false FROM %[2]s WHERE %[1]s >= $1::bigint AND %[1]s < $2::bigint
UNION ALL
SELECT key, true FROM %[3]s WHERE table_name = $3 AND key >= $1::bigint AND key < $2::bigint`, newKey, nt.Ident, schema.Tombstones),
		listKeys: fmt.Sprintf(`SELECT %[1]s::bigint, false FROM %[2]s WHERE %[1]s = ANY($1::bigint[])
UNION ALL
SELECT key, true FROM %[3]s WHERE table_name = $2 AND key = ANY($1::bigint[])`, newKey, nt.Ident, schema.Tombstones),
		// Key lists are spliced in as array literals, which Postgres hashes
		// (a parameter it would scan once per row).
		countSQL: fmt.Sprintf(`SELECT count(*)::int, count(*) FILTER (WHERE %[1]s = ANY('%%s'::bigint[]))::int
FROM %[2]s WHERE %[1]s >= $1::bigint AND %[1]s < $2::bigint`, key, ot.Ident),
		countKeys: fmt.Sprintf(`SELECT count(*)::int, count(*) FILTER (WHERE %[1]s = ANY('%%s'::bigint[]))::int
FROM %[2]s WHERE %[1]s = ANY('%%s'::bigint[])`, key, ot.Ident),
	}
}

// copyRangeBulk copies [lo, hi), or only the sorted keys ks of it when ks is
// not nil, and returns the counts, Absent included.
func (c *Copier) copyRangeBulk(ctx context.Context, lo, hi int64, ks []int64) (res Result, err error) {
	start := time.Now()
	defer func() { c.duration.Observe(time.Since(start).Seconds()) }()

	// Ranges wider than MaxLocksPerTx stripes go as several transactions.
	step := int64(MaxLocksPerTx) << c.cfg.StripeBits
	for from := lo; from < hi; {
		to := hi
		if first := from >> c.cfg.StripeBits << c.cfg.StripeBits; to-first > step {
			to = first + step
		}
		var part []int64
		if ks != nil {
			n, _ := slices.BinarySearch(ks, to)
			part, ks = ks[:n], ks[n:]
		}
		if ks == nil || len(part) > 0 {
			r, err := c.bulkOnce(ctx, from, to, part)
			for attempt := 1; isUniqueViolation(err) && attempt < 3; attempt++ {
				// A writer went around the stripe locks; list again.
				r, err = c.bulkOnce(ctx, from, to, part)
			}
			res = res.Add(r)
			if err != nil {
				return res, err
			}
		}
		from = to
	}
	c.rows.WithLabelValues("copied").Add(float64(res.Copied))
	c.rows.WithLabelValues("present").Add(float64(res.Present))
	c.rows.WithLabelValues("tombstoned").Add(float64(res.Tombstoned))
	c.rows.WithLabelValues("absent").Add(float64(res.Absent))
	return res, nil
}

// bulkOnce copies [lo, hi), which spans at most MaxLocksPerTx stripes, or
// only the keys ks of it when ks is not empty, in one NEW transaction.
func (c *Copier) bulkOnce(ctx context.Context, lo, hi int64, ks []int64) (res Result, err error) {
	b := c.bulk
	conn, err := b.new.Acquire(ctx)
	if err != nil {
		return res, newError(c.cfg.Table, err)
	}
	committed := false
	defer func() {
		if !committed {
			// A connection left inside a transaction is closed by the pool
			// on release; roll back first so that it can be reused.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_, _ = conn.Exec(rctx, `ROLLBACK`)
			cancel()
		}
		conn.Release()
	}()

	stripes := ks
	if len(ks) == 0 {
		for s := lo >> c.cfg.StripeBits; s <= (hi-1)>>c.cfg.StripeBits; s++ {
			stripes = append(stripes, s<<c.cfg.StripeBits)
		}
	}
	batch := &pgx.Batch{}
	batch.Queue(`BEGIN ISOLATION LEVEL READ COMMITTED`)
	batch.Queue(lockSQL, c.locks.ids(stripes))
	if len(ks) == 0 {
		batch.Queue(b.listSQL, lo, hi, b.tableID)
	} else {
		batch.Queue(b.listKeys, ks, b.tableID)
	}
	br := conn.SendBatch(ctx, batch)
	present, tombs := []int64{}, []int64{}
	if _, err = br.Exec(); err == nil {
		_, err = br.Exec()
	}
	if err == nil {
		var rows pgx.Rows
		if rows, err = br.Query(); err == nil {
			var k int64
			var tomb bool
			_, err = pgx.ForEachRow(rows, []any{&k, &tomb}, func() error {
				if tomb {
					tombs = append(tombs, k)
				} else {
					present = append(present, k)
				}
				return nil
			})
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return res, newError(c.cfg.Table, err)
	}
	if h := c.cfg.Hooks.AfterLock; h != nil {
		h(ctx, lo, hi)
	}

	var inOld, tombsInOld int
	skip := append(present, tombs...) // a tombstoned key is never in NEW
	sel, domain := fmt.Sprintf(b.oldSelect, lo, hi), int(hi-lo)
	count := func() error {
		// Only for the counts: how many rows OLD holds, and how many of
		// them are tombstoned. Read in a snapshot of their own, they are
		// exact unless OLD changes meanwhile.
		var row pgx.Row
		if len(ks) == 0 {
			row = c.old.QueryRow(ctx, fmt.Sprintf(b.countSQL, int64Array(tombs)), lo, hi)
		} else {
			row = c.old.QueryRow(ctx, fmt.Sprintf(b.countKeys, int64Array(tombs), int64Array(ks)))
		}
		if err := row.Scan(&inOld, &tombsInOld); err != nil {
			return oldError(c.cfg.Table, err)
		}
		return nil
	}
	switch {
	case len(ks) > 0:
		domain = len(ks)
		want := ks
		if len(skip) > 0 {
			slices.Sort(skip)
			want = slices.DeleteFunc(slices.Clone(ks), func(k int64) bool { _, found := slices.BinarySearch(skip, k); return found })
			if err := count(); err != nil {
				return Result{}, err
			}
		}
		sel = fmt.Sprintf(`%s AND %s = ANY('%s'::bigint[])`, sel, b.oldKey, int64Array(want))
	case len(skip) > 0:
		sel += fmt.Sprintf(` AND NOT %s = ANY('%s'::bigint[])`, b.oldKey, int64Array(skip))
		if err := count(); err != nil {
			return Result{}, err
		}
	}
	n, err := c.pipe(ctx, conn, "COPY ("+sel+") TO STDOUT (FORMAT binary)")
	if err != nil {
		return res, err
	}
	if _, err := conn.Exec(ctx, `COMMIT`); err != nil {
		return res, newError(c.cfg.Table, err)
	}
	committed = true
	res.Copied = int(n)
	if len(skip) == 0 {
		inOld = res.Copied
	}
	// As on the row path: Present counts OLD's rows NEW already had,
	// Tombstoned every tombstone of the range, and Absent the keys neither
	// in OLD nor tombstoned.
	res.Present = max(0, inOld-res.Copied-tombsInOld)
	res.Tombstoned = len(tombs)
	res.Absent = max(0, domain-inOld-(len(tombs)-tombsInOld))
	if h := c.cfg.Hooks.AfterCommit; h != nil {
		if err := h(ctx, nil); err != nil {
			return res, fmt.Errorf("promote: copy %s: after commit: %w", c.cfg.Table, err)
		}
	}
	return res, nil
}

// pipe streams copyOut's rows from OLD into NEW over conn, which holds the
// NEW transaction, and returns the number of rows NEW took.
func (c *Copier) pipe(ctx context.Context, conn *pgxpool.Conn, copyOut string) (int64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	old, err := c.bulk.old.Acquire(ctx)
	if err != nil {
		return 0, oldError(c.cfg.Table, err)
	}
	defer old.Release()

	// Whichever side fails first is the one to blame: the other then fails
	// only because the pipe between them broke.
	var newFailed atomic.Bool
	pr, pw := io.Pipe()
	oldFailed := make(chan error, 1)
	go func() {
		_, err := old.Conn().PgConn().CopyTo(ctx, pw, copyOut)
		if err != nil && !newFailed.Load() {
			oldFailed <- err
		}
		close(oldFailed)
		pw.CloseWithError(err) // nil: EOF, the end of the rows
	}()
	tag, newErr := conn.Conn().PgConn().CopyFrom(ctx, pr, c.bulk.copyIn)
	if newErr != nil {
		newFailed.Store(true)
		pr.CloseWithError(newErr) // OLD's next write into the pipe fails
		cancel()
	}
	if oldErr, ok := <-oldFailed; ok {
		return 0, oldError(c.cfg.Table, oldErr)
	}
	if newErr != nil {
		return 0, newError(c.cfg.Table, newErr)
	}
	return tag.RowsAffected(), nil
}

func isUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505"
}

// int64Array renders keys as a Postgres array literal. COPY takes no
// parameters, and integers need no quoting.
func int64Array(ks []int64) string {
	var sb strings.Builder
	sb.Grow(len(ks) * 8)
	sb.WriteByte('{')
	for i, k := range ks {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(strconv.FormatInt(k, 10))
	}
	sb.WriteByte('}')
	return sb.String()
}
