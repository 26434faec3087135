package promote

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
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

// bulkRange copies ranges with binary COPY from OLD into NEW. It is used
// when nothing has to be rewritten on the way: no transform, and every
// column has the same built-in type, modifier included, on both sides, so
// that the binary form means the same to both servers.
//
// A range is copied as the row path copies keys: first read from OLD (COPY
// TO, into memory), then, in one NEW transaction, lock the range's stripes,
// list the keys NEW has or has tombstoned in it, and COPY FROM the rows OLD
// had for every other key. OLD is never read while NEW's locks are held, so
// a stalled OLD cannot hold up NEW's writers, and one connection is held at
// a time, so OLD and NEW may share a pool. The stripe locks keep the list
// of tombstones true until the commit (deletes take them); a key a writer
// adds without them (lazy's Put, or SQL around lazymigrate) makes the COPY
// fail with a unique violation, and the range is listed and written again,
// from the rows already read, and in the end on the row path, whose insert
// skips conflicts.
//
// Given keys (the unsettled keys of a range, from the tracker), the first
// attempt lists only their tombstones: NEW holds an unsettled key only
// between a writer's commit and its mark, or when a mark failed (Redis
// down), and then the COPY's unique violation says so. Probing NEW's index
// for every key cost a fifth of copying them when most keys of a sweep's
// chunks were settled. After such a violation the next listFirstParts
// parts are listed first, since unmarked keys come in numbers after an
// outage.
type bulkRange struct {
	old, new  acquirer
	tableID   string
	oldSelect string // SELECT <cols> FROM old WHERE key >= %d AND key < %d
	oldKey    string // OLD's key column, quoted
	keyField  int    // the key's position among the columns read
	copyIn    string
	lockSQL   string // takes the stripes' locks, and pins xmloption if need be
	listSQL   string // keys of a range NEW has or has tombstoned
	listKeys  string // the same among given keys
	listTombs string // the tombstoned among given keys

	listFirst atomic.Int32 // parts of given keys still to list in full first
}

// takeListFirst reports whether the next part of given keys is to be
// listed in full first, counting it.
func (b *bulkRange) takeListFirst() bool {
	for {
		n := b.listFirst.Load()
		if n <= 0 {
			return false
		}
		if b.listFirst.CompareAndSwap(n, n-1) {
			return true
		}
	}
}

// listFirstParts is how many parts of given keys are listed in full after
// one whose first attempt found a key NEW had.
const listFirstParts = 16

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
	lock := lockSQL
	for i, col := range c.cols {
		oc := c.oldCols[i]
		if col.TypeOID >= firstUserOID || col.TypeOID != oc.TypeOID || col.Type != oc.Type {
			return nil
		}
		if col.TypeOID == pgtype.XMLOID || col.TypeOID == pgtype.XMLArrayOID {
			// Binary xml input is parsed under the session's xmloption:
			// under "document", fragments would be refused.
			lock = lockAndPin
		}
	}
	key := oldKey.Ident()
	newKey := c.cols[c.keyIdx].Ident()
	listTombs := fmt.Sprintf(`SELECT key, true FROM %s WHERE table_name = $2 AND key >= $3::bigint AND key < $4::bigint AND key = ANY($1::bigint[])`,
		schema.Tombstones)
	// Each list also checks, in its snapshot, that the table is open: one
	// that saw the tombstones of a closed table could not tell.
	open := func(list string, table int) string {
		return fmt.Sprintf("SELECT * FROM (%s) AS l WHERE %s", list, openSQL(table))
	}
	return &bulkRange{
		old: oldA, new: newA, tableID: nt.ID,
		oldSelect: fmt.Sprintf(`SELECT %s FROM %s WHERE %s >= %%d AND %s < %%d`,
			pgtable.Idents(c.oldCols), ot.Ident, key, key),
		oldKey:   key,
		keyField: c.oldKey,
		copyIn:   fmt.Sprintf(`COPY %s (%s) FROM STDIN (FORMAT binary)`, nt.Ident, pgtable.Idents(c.cols)),
		lockSQL:  lock,
		// Index-only in NEW: the keys a copy must leave alone.
		listSQL: open(fmt.Sprintf(`SELECT %[1]s::bigint, false FROM %[2]s WHERE %[1]s >= $1::bigint AND %[1]s < $2::bigint
UNION ALL
SELECT key, true FROM %[3]s WHERE table_name = $3 AND key >= $1::bigint AND key < $2::bigint`, newKey, nt.Ident, schema.Tombstones), 3),
		// The given keys lie in [$3, $4): the bounds keep each index scan
		// to the range, whatever the planner thinks of a long array.
		listKeys: open(fmt.Sprintf(`SELECT %[1]s::bigint, false FROM %[2]s WHERE %[1]s >= $3::bigint AND %[1]s < $4::bigint AND %[1]s = ANY($1::bigint[])
UNION ALL
%[3]s`, newKey, nt.Ident, listTombs), 2),
		listTombs: open(listTombs, 2),
	}
}

// copyRangeBulk copies [lo, hi), or only the sorted keys ks of it when ks is
// not nil, and returns the counts, Absent included.
func (c *Copier) copyRangeBulk(ctx context.Context, lo, hi int64, ks []int64) (total Result, err error) {
	var res Result // what the metrics still have to count
	start := time.Now()
	defer func() {
		c.duration.Observe(time.Since(start).Seconds())
		// Parts that committed count even when a later one failed.
		c.rows.WithLabelValues("copied").Add(float64(res.Copied))
		c.rows.WithLabelValues("present").Add(float64(res.Present))
		c.rows.WithLabelValues("tombstoned").Add(float64(res.Tombstoned))
		c.rows.WithLabelValues("absent").Add(float64(res.Absent))
	}()

	// Ranges wider than MaxLocksPerTx stripes go as several transactions.
	step := int64(MaxLocksPerTx) << c.cfg.StripeBits
	for from := lo; from < hi; {
		if ks != nil {
			if len(ks) == 0 {
				break
			}
			from = max(from, ks[0]>>c.cfg.StripeBits<<c.cfg.StripeBits) // skip parts without keys
		}
		if err := ctx.Err(); err != nil {
			return total, err
		}
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
			r, uncounted, err := c.bulkOnce(ctx, from, to, part)
			res = res.Add(uncounted)
			total = total.Add(r)
			if err != nil {
				return total, err
			}
		}
		from = to
	}
	return total, nil
}

// bulkOnce copies [lo, hi), which spans at most MaxLocksPerTx stripes, or
// only the keys ks of it when ks is not empty. uncounted is the part of the
// result the metrics still have to count: the row path counts its own.
//
// OLD's rows are held in memory between the two COPYs, at most
// CopierConfig.BulkBytes of them: past that the part is split in two, down
// to a single key, which goes through the row path.
func (c *Copier) bulkOnce(ctx context.Context, lo, hi int64, ks []int64) (res, uncounted Result, _ error) {
	rows, complete, err := c.readBulkPart(ctx, lo, hi, ks)
	if err != nil {
		return Result{}, Result{}, c.oldRejected(ctx, err)
	}
	if !complete {
		if len(rows.tuples) == 0 { // a single row is past the bound
			rows.release()
			return c.splitBulk(ctx, lo, hi, ks)
		}
		// OLD sends rows in key order: those read are all the part's rows
		// up to the last one. Write them, then read on from there.
		cut := rows.tuples[len(rows.tuples)-1].key + 1
		var rest []int64
		if ks != nil {
			n, _ := slices.BinarySearch(ks, cut)
			ks, rest = ks[:n], ks[n:]
		}
		r, u, err := c.writeBulkPart(ctx, lo, cut, ks, rows)
		rows.release()
		if err != nil || (ks != nil && len(rest) == 0) || cut >= hi {
			return r, u, err
		}
		r2, u2, err := c.bulkOnce(ctx, cut, hi, rest)
		return r.Add(r2), u.Add(u2), err
	}
	defer rows.release()
	return c.writeBulkPart(ctx, lo, hi, ks, rows)
}

// writeBulkPart writes the rows read from OLD for [lo, hi) (or its keys ks).
func (c *Copier) writeBulkPart(ctx context.Context, lo, hi int64, ks []int64, rows *binaryRows) (res, uncounted Result, _ error) {
	domain := int(hi - lo)
	if len(ks) > 0 {
		domain = len(ks)
	}
	if h := c.cfg.Hooks.AfterRead; h != nil {
		h(ctx, rows.keys())
	}
	optimistic := len(ks) > 0 && !c.bulk.takeListFirst()
	tries := 3
	if optimistic {
		tries++ // the first attempt lists only tombstones
	}
	for attempt := 1; ; attempt++ {
		listAll := attempt > 1 || !optimistic
		res, err := c.writeNewBinary(ctx, lo, hi, ks, rows, listAll)
		if err == nil {
			res.Absent = max(0, domain-len(rows.tuples)-(res.Tombstoned-res.tombstonedInOld))
			if h := c.cfg.Hooks.AfterCommit; h != nil {
				if err := h(ctx, nil); err != nil {
					return res.Result, res.Result, fmt.Errorf("promote: copy %s: after commit: %w", c.cfg.Table, err)
				}
			}
			return res.Result, res.Result, nil
		}
		if !isUniqueViolation(err) {
			return Result{}, Result{}, err
		}
		if !listAll {
			c.bulk.listFirst.Store(listFirstParts)
		}
		if attempt == tries {
			// Writers keep adding keys of this range around the locks:
			// the row path's insert skips what they add. It sees only
			// OLD's keys; the last listing knows the range's other
			// tombstones.
			r, _, err := c.copy(ctx, c.selectSQL, []any{rows.keys()}, c.tombSQL, []any{c.tableID, rows.keys()})
			tombsElsewhere := res.Tombstoned - res.tombstonedInOld
			r.Absent = max(0, domain-len(rows.tuples)-tombsElsewhere)
			r.Tombstoned += tombsElsewhere
			return r, Result{Absent: r.Absent, Tombstoned: tombsElsewhere}, err
		}
	}
}

// splitBulk copies a part whose rows are too big to hold at once: its two
// halves one after the other, or, for a single key, through the row path.
func (c *Copier) splitBulk(ctx context.Context, lo, hi int64, ks []int64) (res, uncounted Result, err error) {
	single := len(ks) == 1 || (len(ks) == 0 && hi-lo == 1)
	if single {
		k := lo
		if len(ks) == 1 {
			k = ks[0]
		}
		r, settled, err := c.copy(ctx, c.selectSQL, []any{[]int64{k}}, c.tombSQL, []any{c.tableID, []int64{k}})
		r.Absent = 1 - len(settled)
		return r, Result{Absent: r.Absent}, err
	}
	var parts [2]struct {
		lo, hi int64
		ks     []int64
	}
	if len(ks) > 0 {
		m := len(ks) / 2
		parts[0].lo, parts[0].hi, parts[0].ks = lo, hi, ks[:m]
		parts[1].lo, parts[1].hi, parts[1].ks = lo, hi, ks[m:]
	} else {
		m := lo + (hi-lo)/2
		parts[0].lo, parts[0].hi = lo, m
		parts[1].lo, parts[1].hi = m, hi
	}
	for _, p := range parts {
		r, u, err := c.bulkOnce(ctx, p.lo, p.hi, p.ks)
		res, uncounted = res.Add(r), uncounted.Add(u)
		if err != nil {
			return res, uncounted, err
		}
	}
	return res, uncounted, nil
}

// readBulkPart reads the rows of [lo, hi) (or of its keys ks) from OLD, in
// key order, up to CopierConfig.BulkBytes: complete is false when it
// stopped there, and rows then holds the whole rows read before.
func (c *Copier) readBulkPart(ctx context.Context, lo, hi int64, ks []int64) (rows *binaryRows, complete bool, _ error) {
	sel := fmt.Sprintf(c.bulk.oldSelect, lo, hi)
	if len(ks) > 0 {
		// COPY takes no parameters, so the keys are a constant. Inside a
		// sub-select the planner does not estimate each one (a quarter of
		// the statement's time for 3,000 keys), and the bounds keep the
		// scan to the range.
		sel = fmt.Sprintf(`%s AND %s = ANY(CAST((SELECT '%s'::bigint[]) AS bigint[]))`, sel, c.bulk.oldKey, int64Array(ks))
	}
	return c.readOldBinary(ctx, "COPY ("+sel+" ORDER BY "+c.bulk.oldKey+") TO STDOUT (FORMAT binary)")
}

// bulkResult is a Result and how many of the tombstoned keys OLD holds.
type bulkResult struct {
	Result
	tombstonedInOld int
}

// writeNewBinary writes rows read from OLD for [lo, hi) (or for its keys ks)
// into NEW in one transaction: it locks the stripes, lists the keys NEW has
// or has tombstoned, and copies the other rows. For keys, unless listAll,
// it lists only the tombstoned ones (see bulkRange).
func (c *Copier) writeNewBinary(ctx context.Context, lo, hi int64, ks []int64, rows *binaryRows, listAll bool) (res bulkResult, err error) {
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

	// The stripes of the keys, or of the whole range: a key stands for its
	// stripe.
	stripes := ks
	if len(ks) == 0 {
		stripes = make([]int64, 0, MaxLocksPerTx)
		for s := lo >> c.cfg.StripeBits; s <= (hi-1)>>c.cfg.StripeBits; s++ {
			stripes = append(stripes, s<<c.cfg.StripeBits)
		}
	}
	batch := &pgx.Batch{}
	batch.Queue(`BEGIN ISOLATION LEVEL READ COMMITTED`)
	batch.Queue(b.lockSQL, c.locks.ids(stripes))
	switch {
	case len(ks) == 0:
		batch.Queue(b.listSQL, lo, hi, b.tableID)
	case listAll:
		batch.Queue(b.listKeys, ks, b.tableID, lo, hi)
	default:
		batch.Queue(b.listTombs, ks, b.tableID, lo, hi)
	}
	skip := map[int64]bool{} // key -> tombstoned
	br := conn.SendBatch(ctx, batch)
	if _, err = br.Exec(); err == nil {
		_, err = br.Exec()
	}
	if err == nil {
		var list pgx.Rows
		if list, err = br.Query(); err == nil {
			var k int64
			var tomb bool
			_, err = pgx.ForEachRow(list, []any{&k, &tomb}, func() error {
				skip[k] = skip[k] || tomb
				if tomb {
					res.Tombstoned++
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

	var data io.Reader = bytes.NewReader(rows.data)
	if len(skip) > 0 {
		data = rows.without(func(k int64) bool {
			tomb, found := skip[k]
			switch {
			case !found:
				return false
			case tomb:
				res.tombstonedInOld++
			default:
				res.Present++
			}
			return true
		})
	}
	if len(rows.tuples)-res.Present-res.tombstonedInOld > 0 {
		tag, err := conn.Conn().PgConn().CopyFrom(ctx, data, b.copyIn)
		if err != nil {
			if conn.Conn().PgConn().IsClosed() {
				// pgconn may return from a broken COPY while its goroutine
				// still reads the rows: their buffer is not for reuse.
				rows.buf = nil
			}
			return res, newError(c.cfg.Table, err)
		}
		res.Copied = int(tag.RowsAffected())
	}
	if _, err := conn.Exec(ctx, `COMMIT`); err != nil {
		return res, newError(c.cfg.Table, err)
	}
	committed = true
	return res, nil
}

// readOldBinary runs copyOut, a COPY … TO STDOUT (FORMAT binary), on OLD
// and returns its rows, or, past CopierConfig.BulkBytes, the whole rows
// read until then with complete false.
func (c *Copier) readOldBinary(ctx context.Context, copyOut string) (_ *binaryRows, complete bool, _ error) {
	conn, err := c.bulk.old.Acquire(ctx)
	if err != nil {
		return nil, false, oldError(c.cfg.Table, err)
	}
	defer conn.Release()
	pooled, _ := bufPool.Get().(*bulkBuf)
	if pooled == nil {
		pooled = new(bulkBuf)
	}
	pooled.data.Reset()
	buf := cappedBuffer{Buffer: &pooled.data, max: c.cfg.BulkBytes}
	complete = true
	if _, err := conn.Conn().PgConn().CopyTo(ctx, &buf, copyOut); err != nil {
		if !errors.Is(err, errTooBig) {
			return nil, false, oldError(c.cfg.Table, err)
		}
		// pgconn closes the connection; the pool drops it on Release.
		complete = false
	}
	rows, err := parseBinaryCopy(buf.Bytes(), c.bulk.keyField, !complete, pooled.tuples[:0])
	if err != nil {
		pooled.put()
		return nil, false, fmt.Errorf("promote: copy %s: reading OLD's COPY output: %w", c.cfg.Table, err)
	}
	rows.buf = pooled
	if err := rows.checkUnique(); err != nil {
		rows.release()
		return nil, false, fmt.Errorf("promote: copy %s: %w", c.cfg.Table, err)
	}
	return rows, complete, nil
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

// errTooBig stops a read of OLD past CopierConfig.BulkBytes.
var errTooBig = errors.New("promote: rows too big to hold at once")

// cappedBuffer is a bytes.Buffer that refuses to grow past max bytes.
type cappedBuffer struct {
	*bytes.Buffer
	max int
}

// bulkBuf holds the rows of one part read from OLD. Parts are read one
// after another, each worker holding one at a time: reusing their buffers
// keeps a sweep's memory what its workers hold, not what the collector has
// yet to return (the peak RSS of a 10M-row sweep was 1.2x a 1M-row one's
// with a fresh buffer for each 32,768-key chunk).
type bulkBuf struct {
	data   bytes.Buffer
	tuples []binaryTuple
}

// bufPool holds the bulkBufs not in use; one that grew past maxPooledBuf,
// for rows far wider than usual, is left to the collector.
var bufPool sync.Pool

const maxPooledBuf = 16 << 20

func (b *cappedBuffer) Write(p []byte) (int, error) {
	if b.Len()+len(p) > b.max {
		return 0, errTooBig
	}
	return b.Buffer.Write(p)
}

// binaryRows is the output of a COPY … TO STDOUT (FORMAT binary): the
// header, one tuple per row and the trailer, with where each tuple lies
// and its key.
type binaryRows struct {
	data      []byte
	headerEnd int
	tuples    []binaryTuple
	buf       *bulkBuf // where data and tuples live, when pooled
}

// release returns the rows' memory for the next part to use. r must not be
// used after.
func (r *binaryRows) release() {
	if b := r.buf; b != nil {
		b.tuples = r.tuples[:0]
		b.put()
	}
	*r = binaryRows{}
}

func (b *bulkBuf) put() {
	if b.data.Cap() <= maxPooledBuf {
		bufPool.Put(b)
	}
}

type binaryTuple struct {
	key        int64
	start, end int
}

// binaryCopySignature starts every binary COPY stream.
const binaryCopySignature = "PGCOPY\n\xff\r\n\x00"

// parseBinaryCopy finds the tuples of data and the value of field keyField,
// an integer, in each.
//
// With partial set, data may end in the middle of a row: the whole rows
// before it are returned. The tuples are appended to tuples.
func parseBinaryCopy(data []byte, keyField int, partial bool, tuples []binaryTuple) (*binaryRows, error) {
	if partial && len(data) < 19 {
		return &binaryRows{data: data}, nil // not even the header
	}
	if len(data) < 19 || string(data[:11]) != binaryCopySignature {
		return nil, errors.New("not binary COPY data")
	}
	pos := 19 + int(binary.BigEndian.Uint32(data[15:19])) // past the header extension
	rows := &binaryRows{data: data, headerEnd: pos, tuples: tuples}
	truncated := func() (*binaryRows, error) {
		if partial {
			return rows, nil
		}
		return nil, errors.New("truncated COPY data")
	}
	for {
		if pos+2 > len(data) {
			return truncated()
		}
		n := int(int16(binary.BigEndian.Uint16(data[pos:])))
		if n == -1 {
			return rows, nil
		}
		t := binaryTuple{start: pos}
		pos += 2
		found := false
		for f := range n {
			if pos+4 > len(data) {
				return truncated()
			}
			size := int(int32(binary.BigEndian.Uint32(data[pos:])))
			pos += 4
			if size < 0 {
				if f == keyField {
					return nil, fmt.Errorf("%w: a row of OLD has a NULL key", ErrRowRejected)
				}
				continue
			}
			if pos+size > len(data) {
				return truncated()
			}
			if f == keyField {
				v := data[pos : pos+size]
				switch size {
				case 2:
					t.key = int64(int16(binary.BigEndian.Uint16(v)))
				case 4:
					t.key = int64(int32(binary.BigEndian.Uint32(v)))
				case 8:
					t.key = int64(binary.BigEndian.Uint64(v))
				default:
					return nil, fmt.Errorf("a key of %d bytes", size)
				}
				found = true
			}
			pos += size
		}
		if !found {
			return nil, fmt.Errorf("a row of %d fields has no field %d", n, keyField)
		}
		t.end = pos
		rows.tuples = append(rows.tuples, t)
	}
}

// keys returns the rows' keys, in OLD's order.
func (r *binaryRows) keys() []int64 {
	ks := make([]int64, len(r.tuples))
	for i, t := range r.tuples {
		ks[i] = t.key
	}
	return ks
}

// checkUnique refuses a key OLD returned twice, as the row path does:
// which of the two would reach NEW would be chance. OLD sends the rows in
// key order, so a key twice is a key equal to the one before.
func (r *binaryRows) checkUnique() error {
	for i := 1; i < len(r.tuples); i++ {
		switch prev, k := r.tuples[i-1].key, r.tuples[i].key; {
		case k == prev:
			return fmt.Errorf("%w: OLD holds key %d more than once; the key column must be unique", ErrRowRejected, k)
		case k < prev:
			return fmt.Errorf("OLD sent key %d after %d, out of the order asked for", k, prev)
		}
	}
	return nil
}

// without returns the COPY data less the rows whose key drop reports, read
// in place: the kept rows are not copied.
func (r *binaryRows) without(drop func(key int64) bool) io.Reader {
	var segs [][]byte
	start, end := 0, r.headerEnd // the run of kept bytes so far; tuples are contiguous
	for _, t := range r.tuples {
		if drop(t.key) {
			segs = append(segs, r.data[start:end])
			start, end = t.end, t.end
			continue
		}
		end = t.end
	}
	segs = append(segs, r.data[start:end], []byte{0xff, 0xff}) // the trailer: a field count of -1
	return &segments{segs: segs}
}

// segments reads byte slices one after another.
type segments struct{ segs [][]byte }

func (s *segments) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) && len(s.segs) > 0 {
		c := copy(p[n:], s.segs[0])
		n += c
		if s.segs[0] = s.segs[0][c:]; len(s.segs[0]) == 0 {
			s.segs = s.segs[1:]
		}
	}
	if n == 0 && len(s.segs) == 0 {
		return 0, io.EOF
	}
	return n, nil
}
