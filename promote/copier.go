package promote

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazymigrate/lazymigrate/internal/keys"
	"github.com/lazymigrate/lazymigrate/internal/metrics"
	"github.com/lazymigrate/lazymigrate/internal/pgtable"
	"github.com/lazymigrate/lazymigrate/internal/schema"
)

// DB is the part of pgx the copier uses. *pgxpool.Pool implements it.
type DB interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// Marker records keys as settled. *tracker.Tracker implements it.
type Marker interface {
	Mark(ctx context.Context, keys []int64) (int, error)
	MarkRange(ctx context.Context, lo, hi int64) error
}

// Row is one record by column name, as pgx decodes it.
type Row map[string]any

// Transform turns a row read from OLD (keyed by OLD's column names) into the
// row to insert into NEW (keyed by NEW's column names). It must keep the key.
type Transform func(ctx context.Context, old Row) (Row, error)

// Hooks let tests stop a copy at its dangerous moments. Production code
// leaves them nil.
type Hooks struct {
	// AfterRead runs after the rows are read from OLD and before NEW is
	// written.
	AfterRead func(ctx context.Context, keys []int64)
	// AfterCommit runs after NEW commits and before the tracker is marked. An
	// error stops the copy there, as a crash would.
	AfterCommit func(ctx context.Context, keys []int64) error
}

// MaxRangeKeys bounds CopyRange: a range takes one advisory lock per stripe,
// and the lock table is shared by the whole server.
const MaxRangeKeys = 1 << 20

// CopierConfig configures a Copier.
type CopierConfig struct {
	// Table is the table in NEW, as written in SQL (accounts,
	// public.accounts). Required. Promotion tasks name it.
	Table string
	// OldTable is the table in OLD. Defaults to Table.
	OldTable string
	// KeyColumn is the integer key column, unique in NEW. Defaults to "id".
	KeyColumn string
	// Columns are the NEW columns written; NEW fills the others with their
	// defaults. Defaults to every column of NEW, each of which must exist in
	// OLD unless Transform is set.
	Columns []string
	// Transform converts OLD rows to NEW rows when the schemas differ.
	// Defaults to none: values are copied as Postgres's text form, exactly.
	Transform Transform
	// StripeBits sets the lock granularity: keys k and j share a lock when
	// k>>StripeBits == j>>StripeBits. Every writer of the table must use the
	// same value. Defaults to 10 (1024 keys a lock).
	StripeBits uint
	// Marker records settled keys after each commit. Defaults to none.
	Marker Marker
	// Hooks are for tests. Defaults to none.
	Hooks Hooks
	// Logger defaults to discarding.
	Logger *slog.Logger
	// Registerer receives the copier's metrics. Defaults to none.
	Registerer prometheus.Registerer
}

// Result counts what one copy did with the keys it was given.
type Result struct {
	// Copied rows were inserted into NEW.
	Copied int
	// Present rows were in OLD and already in NEW; NEW's row was kept.
	Present int
	// Tombstoned keys were deleted through lazymigrate; nothing was copied.
	Tombstoned int
	// Absent keys are not in OLD.
	Absent int
}

// Add returns the sum of r and o.
func (r Result) Add(o Result) Result {
	return Result{r.Copied + o.Copied, r.Present + o.Present, r.Tombstoned + o.Tombstoned, r.Absent + o.Absent}
}

// Copier copies rows of one table from OLD to NEW, idempotently: it never
// replaces a row NEW already has and never inserts a tombstoned key.
type Copier struct {
	old, new DB
	cfg      CopierConfig
	newTable *pgtable.Table
	tableID  string
	lockNS   int32
	cols     []pgtable.Column // NEW columns written, in insert order
	keyIdx   int              // index of the key column in cols

	selectSQL, selectRangeSQL string // OLD reads
	insertSQL                 string // NEW insert from text arrays
	lockSQL                   string
	tombSQL, tombRangeSQL     string

	rows     *prometheus.CounterVec
	duration prometheus.Observer
	log      *slog.Logger
}

// NewCopier describes the tables in OLD and NEW and prepares the copy. It
// fails when a table or column is missing, the key is not an integer column
// unique in NEW, or lazymigrate's schema is not set up in NEW (see Setup).
func NewCopier(ctx context.Context, oldDB, newDB DB, cfg *CopierConfig) (*Copier, error) {
	var c CopierConfig
	if cfg != nil {
		c = *cfg
	}
	if c.Table == "" {
		return nil, errors.New("promote: CopierConfig.Table is required")
	}
	c.OldTable = cmp.Or(c.OldTable, c.Table)
	c.KeyColumn = cmp.Or(c.KeyColumn, "id")
	c.StripeBits = cmp.Or(c.StripeBits, 10)
	if c.StripeBits > 40 {
		return nil, fmt.Errorf("promote: CopierConfig.StripeBits must be at most 40, got %d", c.StripeBits)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}

	nt, err := pgtable.Describe(ctx, newDB, c.Table)
	if err != nil {
		return nil, fmt.Errorf("promote: NEW: %w", err)
	}
	ot, err := pgtable.Describe(ctx, oldDB, c.OldTable)
	if err != nil {
		return nil, fmt.Errorf("promote: OLD: %w", err)
	}
	if _, err := nt.CheckKey(ctx, newDB, c.KeyColumn, true); err != nil {
		return nil, fmt.Errorf("promote: NEW: %w", err)
	}
	oldKey, err := ot.CheckKey(ctx, oldDB, c.KeyColumn, false)
	if err != nil {
		return nil, fmt.Errorf("promote: OLD: %w", err)
	}
	if err := checkSchema(ctx, newDB); err != nil {
		return nil, err
	}

	if len(c.Columns) == 0 {
		c.Columns = nt.ColumnNames()
	}
	cols, err := nt.Select(c.Columns)
	if err != nil {
		return nil, fmt.Errorf("promote: CopierConfig.Columns: NEW %w", err)
	}
	keyIdx := slices.IndexFunc(cols, func(col pgtable.Column) bool { return col.Name == c.KeyColumn })
	if keyIdx < 0 {
		return nil, fmt.Errorf("promote: CopierConfig.Columns must include the key column %q", c.KeyColumn)
	}
	var oldCols []pgtable.Column
	if c.Transform == nil {
		if oldCols, err = ot.Select(c.Columns); err != nil {
			return nil, fmt.Errorf("promote: OLD %w; set CopierConfig.Columns or a Transform", err)
		}
	} else {
		oldCols = ot.Columns // the transform sees the whole OLD row
	}

	cp := &Copier{
		old: oldDB, new: newDB, cfg: c, newTable: nt, tableID: nt.ID,
		lockNS: lockNamespace(nt.ID), keyIdx: keyIdx, log: c.Logger,
	}
	cp.buildSQL(ot, oldKey, oldCols, cols)
	reg := c.Registerer
	cp.rows = metrics.CounterVec(reg, "copy_rows_total",
		"Keys handled by the copier, by outcome (copied, present, tombstoned, absent).", "table", "outcome").
		MustCurryWith(prometheus.Labels{"table": c.Table})
	cp.duration = metrics.HistogramVec(reg, "copy_batch_duration_seconds",
		"Time to copy one batch of keys from OLD to NEW, tracker marking included.", metrics.LatencyBuckets, "table").
		WithLabelValues(c.Table)
	return cp, nil
}

func checkSchema(ctx context.Context, db DB) error {
	var ok bool
	if err := db.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, schema.Tombstones).Scan(&ok); err != nil {
		return fmt.Errorf("promote: check lazymigrate schema in NEW: %w", err)
	}
	if !ok {
		return errors.New("promote: NEW has no lazymigrate schema: run promote.Setup (or `sweeper init`) on NEW first")
	}
	return nil
}

func (c *Copier) buildSQL(ot *pgtable.Table, oldKey pgtable.Column, oldCols, cols []pgtable.Column) {
	keyRef := oldKey.Ident()
	// Without a transform, values travel as Postgres's own text form: exact
	// for every type, including ones pgx does not know (enums, domains), and
	// it lets NEW widen a type (integer -> bigint) through the cast below.
	sel := make([]string, len(oldCols))
	for i, col := range oldCols {
		sel[i] = col.Ident()
	}
	c.selectSQL = fmt.Sprintf(`SELECT %s FROM %s WHERE %s = ANY($1::bigint[])`, strings.Join(sel, ", "), ot.Ident, keyRef)
	c.selectRangeSQL = fmt.Sprintf(`SELECT %s FROM %s WHERE %s >= $1 AND %s < $2`, strings.Join(sel, ", "), ot.Ident, keyRef, keyRef)

	names := make([]string, len(cols))
	arrays := make([]string, len(cols))
	casts := make([]string, len(cols))
	for i, col := range cols {
		names[i] = col.Ident()
		arrays[i] = fmt.Sprintf("$%d::text[]", i+1)
		casts[i] = fmt.Sprintf("u.c%d::%s", i, col.Type)
	}
	aliases := make([]string, len(cols))
	for i := range cols {
		aliases[i] = fmt.Sprintf("c%d", i)
	}
	key := fmt.Sprintf("u.c%d::bigint", c.keyIdx)
	// ORDER BY the key so that concurrent overlapping batches take index
	// entries in the same order; the advisory locks already serialize them.
	c.insertSQL = fmt.Sprintf(`INSERT INTO %s (%s)
SELECT %s FROM unnest(%s) AS u(%s)
WHERE NOT EXISTS (SELECT 1 FROM %s t WHERE t.table_name = $%d AND t.key = %s)
ORDER BY %s
ON CONFLICT (%s) DO NOTHING
RETURNING %s`,
		c.newTable.Ident, strings.Join(names, ", "),
		strings.Join(casts, ", "), strings.Join(arrays, ", "), strings.Join(aliases, ", "),
		schema.Tombstones, len(cols)+1, key,
		key,
		cols[c.keyIdx].Ident(),
		cols[c.keyIdx].Ident())
	c.lockSQL = LockSQL
	c.tombSQL = `SELECT key FROM ` + schema.Tombstones + ` WHERE table_name = $1 AND key = ANY($2::bigint[])`
	c.tombRangeSQL = `SELECT key FROM ` + schema.Tombstones + ` WHERE table_name = $1 AND key >= $2 AND key < $3`
	c.cols = cols
}

// Table returns the table name the copier was configured with; promotion
// tasks carry it.
func (c *Copier) Table() string { return c.cfg.Table }

// TableID returns NEW's table as "schema.name".
func (c *Copier) TableID() string { return c.tableID }

// CopyKeys copies the rows with the given keys from OLD to NEW and marks the
// keys that are now settled (copied, already present, or tombstoned). Keys
// absent from OLD are counted but not marked: nothing says they will not be
// written to OLD later.
func (c *Copier) CopyKeys(ctx context.Context, ks []int64) (Result, error) {
	if err := keys.CheckAll(ks); err != nil {
		return Result{}, fmt.Errorf("promote: copy %s: %w", c.cfg.Table, err)
	}
	ks = keys.SortedUnique(ks)
	if len(ks) == 0 {
		return Result{}, nil
	}
	res, settled, err := c.copy(ctx, stripes(ks, c.cfg.StripeBits), c.selectSQL, []any{ks}, c.tombSQL, []any{c.tableID, ks})
	if err != nil {
		return res, err
	}
	res.Absent = len(ks) - len(settled)
	c.rows.WithLabelValues("absent").Add(float64(res.Absent))
	if err := c.afterCommit(ctx, settled); err != nil {
		return res, err
	}
	if c.cfg.Marker != nil && len(settled) > 0 {
		if _, err := c.cfg.Marker.Mark(ctx, settled); err != nil {
			// NEW has committed, so nothing is lost: a later read, task or
			// sweep marks these keys again.
			return res, fmt.Errorf("promote: copy %s: mark %d keys: %w", c.cfg.Table, len(settled), err)
		}
	}
	return res, nil
}

// CopyRange copies every row of OLD with lo <= key < hi and marks the whole
// range settled, keys absent from OLD included, so a finished range counts as
// done. At most MaxRangeKeys keys per call.
func (c *Copier) CopyRange(ctx context.Context, lo, hi int64) (Result, error) {
	if err := keys.CheckRange(lo, hi); err != nil {
		return Result{}, fmt.Errorf("promote: copy %s: %w", c.cfg.Table, err)
	}
	if hi-lo > MaxRangeKeys {
		return Result{}, fmt.Errorf("promote: copy %s: range [%d, %d) holds more than MaxRangeKeys (%d) keys; split it", c.cfg.Table, lo, hi, MaxRangeKeys)
	}
	if lo == hi {
		return Result{}, nil
	}
	var locks []int32
	for s := lo >> c.cfg.StripeBits; s <= (hi-1)>>c.cfg.StripeBits; s++ {
		locks = append(locks, int32(s))
	}
	res, settled, err := c.copy(ctx, sortedLocks(locks), c.selectRangeSQL, []any{lo, hi}, c.tombRangeSQL, []any{c.tableID, lo, hi})
	if err != nil {
		return res, err
	}
	res.Absent = int(hi-lo) - len(settled)
	c.rows.WithLabelValues("absent").Add(float64(res.Absent))
	if err := c.afterCommit(ctx, settled); err != nil {
		return res, err
	}
	if c.cfg.Marker != nil {
		if err := c.cfg.Marker.MarkRange(ctx, lo, hi); err != nil {
			return res, fmt.Errorf("promote: copy %s: mark range [%d, %d): %w", c.cfg.Table, lo, hi, err)
		}
	}
	return res, nil
}

// copy runs one batch: read OLD, then in one NEW transaction lock the
// stripes, insert what NEW lacks and list the tombstones. It returns the
// counts but Absent, and the settled keys: every key read from OLD plus
// every tombstoned key.
func (c *Copier) copy(ctx context.Context, locks []int32, selSQL string, selArgs []any, tombSQL string, tombArgs []any) (Result, []int64, error) {
	start := time.Now()
	defer func() { c.duration.Observe(time.Since(start).Seconds()) }()

	oldKeys, arrays, err := c.readOld(ctx, selSQL, selArgs)
	if err != nil {
		return Result{}, nil, err
	}
	if h := c.cfg.Hooks.AfterRead; h != nil {
		h(ctx, oldKeys)
	}
	copied, tombstoned, err := c.writeNew(ctx, locks, arrays, tombSQL, tombArgs)
	if err != nil {
		return Result{}, nil, err
	}

	oldSet := make(map[int64]struct{}, len(oldKeys))
	for _, k := range oldKeys {
		oldSet[k] = struct{}{}
	}
	settled := oldKeys
	tombstonedInOld := 0
	for _, k := range tombstoned {
		if _, inOld := oldSet[k]; inOld {
			tombstonedInOld++
		} else {
			settled = append(settled, k)
		}
	}
	res := Result{
		Copied:     copied,
		Present:    len(oldKeys) - copied - tombstonedInOld,
		Tombstoned: len(tombstoned),
	}
	c.rows.WithLabelValues("copied").Add(float64(res.Copied))
	c.rows.WithLabelValues("present").Add(float64(res.Present))
	c.rows.WithLabelValues("tombstoned").Add(float64(res.Tombstoned))
	return res, settled, nil
}

// readOld reads the rows and returns their keys and, per NEW column, the
// values as text (nil for NULL), ready for the insert's unnest.
func (c *Copier) readOld(ctx context.Context, sql string, args []any) ([]int64, [][]*string, error) {
	if c.cfg.Transform != nil {
		return c.readOldTransformed(ctx, sql, args)
	}
	rows, err := c.old.Query(ctx, sql, append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, args...)...)
	if err != nil {
		return nil, nil, oldError(c.cfg.Table, err)
	}
	defer rows.Close()
	arrays := make([][]*string, len(c.cols))
	var ks []int64
	for rows.Next() {
		raw := rows.RawValues()
		for i, v := range raw {
			if v == nil {
				arrays[i] = append(arrays[i], nil)
				continue
			}
			s := string(v)
			arrays[i] = append(arrays[i], &s)
		}
		k, err := strconv.ParseInt(string(raw[c.keyIdx]), 10, 64)
		if err != nil {
			return nil, nil, fmt.Errorf("promote: copy %s: key %q from OLD: %w", c.cfg.Table, raw[c.keyIdx], err)
		}
		ks = append(ks, k)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, oldError(c.cfg.Table, err)
	}
	return ks, arrays, nil
}

func (c *Copier) readOldTransformed(ctx context.Context, sql string, args []any) ([]int64, [][]*string, error) {
	rows, err := c.old.Query(ctx, sql, args...)
	if err != nil {
		return nil, nil, oldError(c.cfg.Table, err)
	}
	olds, err := pgx.CollectRows(rows, pgx.RowToMap)
	if err != nil {
		return nil, nil, oldError(c.cfg.Table, err)
	}
	m := pgtype.NewMap()
	arrays := make([][]*string, len(c.cols))
	ks := make([]int64, 0, len(olds))
	for _, old := range olds {
		oldKey, err := keyOf(old[c.cfg.KeyColumn])
		if err != nil {
			return nil, nil, fmt.Errorf("promote: copy %s: %w", c.cfg.Table, err)
		}
		row, err := c.cfg.Transform(ctx, Row(old))
		if err != nil {
			return nil, nil, fmt.Errorf("promote: copy %s: transform key %d: %w", c.cfg.Table, oldKey, err)
		}
		for i, col := range c.cols {
			v, ok := row[col.Name]
			if !ok {
				return nil, nil, fmt.Errorf("promote: copy %s: transform of key %d returned no column %q", c.cfg.Table, oldKey, col.Name)
			}
			s, err := encodeText(m, col, v)
			if err != nil {
				return nil, nil, fmt.Errorf("promote: copy %s: transform of key %d: column %q: %w", c.cfg.Table, oldKey, col.Name, err)
			}
			arrays[i] = append(arrays[i], s)
		}
		newKey, err := keyOf(row[c.cfg.KeyColumn])
		if err != nil || newKey != oldKey {
			return nil, nil, fmt.Errorf("promote: copy %s: transform changed key %d to %v", c.cfg.Table, oldKey, row[c.cfg.KeyColumn])
		}
		ks = append(ks, oldKey)
	}
	return ks, arrays, nil
}

func keyOf(v any) (int64, error) {
	switch k := v.(type) {
	case int64:
		return k, nil
	case int32:
		return int64(k), nil
	case int16:
		return int64(k), nil
	case int:
		return int64(k), nil
	}
	return 0, fmt.Errorf("key has type %T, want an integer", v)
}

// encodeText renders v in Postgres's text form for col's type.
func encodeText(m *pgtype.Map, col pgtable.Column, v any) (*string, error) {
	if v == nil {
		return nil, nil
	}
	if s, ok := v.(string); ok {
		return &s, nil
	}
	if _, known := m.TypeForOID(col.TypeOID); !known {
		s := fmt.Sprint(v)
		return &s, nil
	}
	buf, err := m.Encode(col.TypeOID, pgtype.TextFormatCode, v, nil)
	if err != nil {
		return nil, err
	}
	if buf == nil {
		return nil, nil
	}
	s := string(buf)
	return &s, nil
}

// writeNew runs lock, insert and tombstone lookup as one pipelined batch:
// Postgres runs a batch as one implicit transaction, so the advisory locks
// hold until the insert has committed, and each statement takes a fresh
// snapshot after the locks, so a delete that committed while we waited is
// seen by the tombstone check. One round trip.
func (c *Copier) writeNew(ctx context.Context, locks []int32, arrays [][]*string, tombSQL string, tombArgs []any) (copied int, tombstoned []int64, err error) {
	b := &pgx.Batch{}
	b.Queue(c.lockSQL, c.lockNS, locks)
	insertArgs := make([]any, 0, len(arrays)+1)
	for _, a := range arrays {
		insertArgs = append(insertArgs, a)
	}
	insertArgs = append(insertArgs, c.tableID)
	if len(arrays[0]) > 0 {
		b.Queue(c.insertSQL, insertArgs...)
	}
	b.Queue(tombSQL, tombArgs...)

	br := c.new.SendBatch(ctx, b)
	defer func() {
		if cerr := br.Close(); cerr != nil && err == nil {
			err = newError(c.cfg.Table, cerr)
		}
	}()
	if _, err := br.Exec(); err != nil {
		return 0, nil, newError(c.cfg.Table, err)
	}
	if len(arrays[0]) > 0 {
		rows, err := br.Query()
		if err != nil {
			return 0, nil, newError(c.cfg.Table, err)
		}
		for rows.Next() {
			copied++
		}
		if err := rows.Err(); err != nil {
			return 0, nil, newError(c.cfg.Table, err)
		}
	}
	rows, err := br.Query()
	if err != nil {
		return 0, nil, newError(c.cfg.Table, err)
	}
	tombstoned, err = pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return 0, nil, newError(c.cfg.Table, err)
	}
	return copied, tombstoned, nil
}

func (c *Copier) afterCommit(ctx context.Context, settled []int64) error {
	if h := c.cfg.Hooks.AfterCommit; h != nil {
		if err := h(ctx, settled); err != nil {
			return fmt.Errorf("promote: copy %s: after commit: %w", c.cfg.Table, err)
		}
	}
	return nil
}

// Execer runs a statement; pgx.Tx implements it.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// LockKeys takes, inside the caller's NEW transaction, the advisory locks
// that serialize changes of keys with copies of them. Writers that delete or
// must not race a copy call it before touching the keys; the locks are held
// until the transaction ends.
func (c *Copier) LockKeys(ctx context.Context, tx Execer, ks []int64) error {
	if err := keys.CheckAll(ks); err != nil {
		return fmt.Errorf("promote: lock keys of %s: %w", c.cfg.Table, err)
	}
	if len(ks) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, LockSQL, c.lockNS, stripes(keys.SortedUnique(ks), c.cfg.StripeBits)); err != nil {
		return fmt.Errorf("promote: lock keys of %s: %w", c.cfg.Table, err)
	}
	return nil
}

// ErrOldUnavailable and ErrNewUnavailable wrap failures to read OLD or write
// NEW, so callers can tell which side failed.
var (
	ErrOldUnavailable = errors.New("promote: OLD database unavailable")
	ErrNewUnavailable = errors.New("promote: NEW database unavailable")
)

func oldError(table string, err error) error {
	return fmt.Errorf("%w: read %s: %w", ErrOldUnavailable, table, err)
}

func newError(table string, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return fmt.Errorf("promote: write %s to NEW: %w", table, err)
	}
	return fmt.Errorf("%w: write %s: %w", ErrNewUnavailable, table, err)
}

// LockSQL takes the transaction-level advisory locks of a table's stripes.
// $1 is the table's lock namespace, $2 the stripes, sorted ascending: every
// transaction locks in that order, so two can never wait on each other.
const LockSQL = `SELECT count(pg_advisory_xact_lock($1::int4, s)) FROM unnest($2::int4[]) AS s`

// lockNamespace is the first half of every advisory lock of a table.
func lockNamespace(tableID string) int32 {
	h := fnv.New32a()
	h.Write([]byte("lazymigrate:" + tableID))
	return int32(h.Sum32())
}

// stripes returns the sorted distinct lock ids of sorted keys.
func stripes(ks []int64, bits uint) []int32 {
	locks := make([]int32, 0, 4)
	for _, k := range ks {
		locks = append(locks, int32(k>>bits))
	}
	return sortedLocks(locks)
}

// sortedLocks sorts and dedupes lock ids. Stripes past 2^31 wrap onto
// earlier ones, which only adds serialization; sorting after the wrap keeps
// the global order that makes deadlock impossible.
func sortedLocks(locks []int32) []int32 {
	slices.Sort(locks)
	return slices.Compact(locks)
}
