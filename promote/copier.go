package promote

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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

// Row is one record by column name. Values are as pgx decodes them, except
// json and jsonb (json.RawMessage, exactly as stored) and types pgx does not
// know, such as enums (their text form, a string).
type Row map[string]any

// Transform turns a row read from OLD (keyed by OLD's column names) into the
// row to insert into NEW (keyed by NEW's column names). It must keep the key.
// An error rejects the row (see ErrRowRejected).
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
	// AfterLock runs in a bulk range copy (see CopierConfig.NoBulk) after
	// OLD's rows are read and NEW's locks are taken and its keys listed,
	// before the COPY into NEW.
	AfterLock func(ctx context.Context, lo, hi int64)
}

// MaxRangeKeys bounds CopyRange: the rows of a range are held in memory.
const MaxRangeKeys = 1 << 17

// Errors returned by the copier. Test for them with errors.Is.
var (
	// ErrOldUnavailable wraps a failure to read OLD.
	ErrOldUnavailable = errors.New("promote: OLD database unavailable")
	// ErrNewUnavailable wraps a failure to reach NEW.
	ErrNewUnavailable = errors.New("promote: NEW database unavailable")
	// ErrRowRejected wraps a failure that is the data's fault, not the
	// database's: NEW refused a row (a constraint, a value too long), the
	// Transform failed, or OLD holds a key twice or a NULL key. Retrying the
	// same rows cannot succeed.
	ErrRowRejected = errors.New("promote: row rejected")
	// ErrNeedsReadCommitted wraps the refusal of a writer's transaction
	// (given to LockKeys, or running LockStatement's statement or
	// ReadCommittedCheck) that is not at READ COMMITTED isolation. At
	// REPEATABLE READ or SERIALIZABLE its snapshot is taken by its first
	// statement, before it waits for a lock, so it misses rows that copies
	// commit meanwhile: a delete would leave such a row beside its
	// tombstone, and the deleted key would read as found again.
	ErrNeedsReadCommitted = errors.New("promote: the transaction must run at READ COMMITTED isolation")
	// ErrClosed is returned by a copy of a table whose migration was
	// closed, when its tombstones were purged (lazy's PurgeTombstones):
	// without them a copy from OLD could bring deleted rows back, so none
	// is made. NEW holds the table's whole truth; nothing is left to copy.
	ErrClosed = errors.New("promote: the table's migration is closed")
	// ErrMarkFailed wraps the tracker's failure to mark keys settled after
	// NEW committed their copy: the rows are in NEW and nothing is lost (a
	// later read, task or sweep marks them), but the tracker does not know
	// yet. The copy's Result stands.
	ErrMarkFailed = errors.New("promote: copied, but the tracker could not mark the keys settled")
)

// CopierConfig configures a Copier.
type CopierConfig struct {
	// Table is the table in NEW, as written in SQL (accounts,
	// public.accounts). Required. Promotion tasks name it.
	Table string
	// OldTable is the table in OLD. Defaults to Table.
	OldTable string
	// KeyColumn is the integer key column: unique in NEW, and expected to be
	// unique in OLD (a duplicate fails the copy). Defaults to "id".
	KeyColumn string
	// Columns are the NEW columns written; NEW fills the others with their
	// defaults. Defaults to every column of NEW, each of which must exist in
	// OLD unless Transform is set.
	Columns []string
	// Transform converts OLD rows to NEW rows when the schemas differ.
	// Defaults to none: values are copied as Postgres's text form, exactly.
	Transform Transform
	// StripeBits sets the lock granularity: keys k and j share a lock when
	// k>>StripeBits == j>>StripeBits. It is recorded in NEW the first time,
	// and a Copier with another value is refused. Defaults to the width
	// recorded for the table, or 10 (1024 keys a lock) for a table not seen
	// before; at most 40.
	StripeBits uint
	// NoBulk turns off CopyRange's bulk path. By default, when no Transform
	// is set, every column has the same built-in type in OLD and NEW, and
	// both databases are pools (*pgxpool.Pool), CopyRange streams OLD's rows
	// into NEW with binary COPY, several times faster than the row path.
	NoBulk bool
	// BulkBytes bounds the bytes of OLD's rows the bulk path holds in
	// memory at once (per concurrent copy): a part of a range whose rows
	// are bigger is read again in halves. Defaults to 64 MiB.
	BulkBytes int
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
	Copied int `json:"copied"`
	// Present rows were in OLD and already in NEW; NEW's row was kept.
	Present int `json:"present"`
	// Tombstoned keys were deleted through lazymigrate; nothing was copied.
	Tombstoned int `json:"tombstoned"`
	// Absent keys are not in OLD.
	Absent int `json:"absent"`
}

// Add returns the sum of r and o.
func (r Result) Add(o Result) Result {
	return Result{r.Copied + o.Copied, r.Present + o.Present, r.Tombstoned + o.Tombstoned, r.Absent + o.Absent}
}

// Copier copies rows of one table from OLD to NEW, idempotently: it never
// replaces a row NEW already has and never inserts a tombstoned key. It is
// safe for concurrent use.
type Copier struct {
	old, new  DB
	cfg       CopierConfig
	tableID   string
	locks     lockSpace
	cols      []pgtable.Column // NEW columns written, in insert order
	oldCols   []pgtable.Column // OLD columns read
	keyIdx    int              // index of the key column in cols
	oldKey    int              // index of the key column in oldCols
	boundsSQL string           // OLD's smallest and largest key

	bulk                      *bulkRange // nil: CopyRange takes the row path
	selectSQL, selectRangeSQL string
	insertSQL                 string
	tombSQL, tombRangeSQL     string

	rows     *prometheus.CounterVec
	duration prometheus.Observer
	log      *slog.Logger
}

// NewCopier describes the tables in OLD and NEW and prepares the copy. It
// fails when a table or column is missing, the key is not an integer column
// unique in NEW, lazymigrate's schema is not set up in NEW (see Setup), or
// the table is registered with another StripeBits.
func NewCopier(ctx context.Context, oldDB, newDB DB, cfg *CopierConfig) (*Copier, error) {
	var c CopierConfig
	if cfg != nil {
		c = *cfg
	}
	if c.Table == "" {
		return nil, errors.New("promote: CopierConfig.Table is required")
	}
	if _, isTx := newDB.(pgx.Tx); isTx {
		// The copier runs transactions of its own in NEW; inside the
		// caller's, its COMMIT would commit the caller's work.
		return nil, errors.New("promote: NewCopier needs a pool or connection for NEW, not a transaction")
	}
	c.OldTable = cmp.Or(c.OldTable, c.Table)
	c.KeyColumn = cmp.Or(c.KeyColumn, "id")
	c.BulkBytes = cmp.Or(c.BulkBytes, 64<<20)
	if c.BulkBytes < 0 {
		return nil, fmt.Errorf("promote: CopierConfig.BulkBytes must not be negative, got %d", c.BulkBytes)
	}
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
	if err := schema.Check(ctx, newDB); err != nil {
		return nil, fmt.Errorf("promote: %w", err)
	}
	if c.StripeBits, err = schema.RegisterStripeBits(ctx, newDB, nt.ID, c.StripeBits); err != nil {
		return nil, fmt.Errorf("promote: CopierConfig.StripeBits: %w", err)
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
	oldCols := ot.Columns // a transform sees the whole OLD row
	if c.Transform == nil {
		if oldCols, err = ot.Select(c.Columns); err != nil {
			return nil, fmt.Errorf("promote: OLD %w; set CopierConfig.Columns or a Transform", err)
		}
	}

	cp := &Copier{
		old: oldDB, new: newDB, cfg: c, tableID: nt.ID,
		locks: newLockSpace(nt.ID, c.StripeBits), cols: cols, oldCols: oldCols, keyIdx: keyIdx,
		oldKey: slices.IndexFunc(oldCols, func(col pgtable.Column) bool { return col.Name == c.KeyColumn }),
		log:    c.Logger,
	}
	cp.buildSQL(ot, nt, oldKey)
	cp.bulk = cp.newBulkRange(ot, nt, oldKey)
	cp.boundsSQL = fmt.Sprintf(`SELECT min(%s)::bigint, max(%[1]s)::bigint FROM %s`, oldKey.Ident(), ot.Ident)
	cp.rows = metrics.CounterVec(c.Registerer, "copy_rows_total",
		"Keys handled by the copier, by outcome (copied, present, tombstoned, absent).", "table", "outcome").
		MustCurryWith(prometheus.Labels{"table": c.Table})
	cp.duration = metrics.HistogramVec(c.Registerer, "copy_batch_duration_seconds",
		"Time to copy one batch of keys from OLD to NEW, tracker marking included.", metrics.LatencyBuckets, "table").
		WithLabelValues(c.Table)
	return cp, nil
}

// Table returns the table name the copier was configured with; promotion
// tasks carry it.
func (c *Copier) Table() string { return c.cfg.Table }

// TableID returns NEW's table as "schema.name".
func (c *Copier) TableID() string { return c.tableID }

// StripeBits returns the lock granularity NEW records for the table: keys
// k and j share a lock stripe when k>>StripeBits == j>>StripeBits.
func (c *Copier) StripeBits() uint { return c.cfg.StripeBits }

// HasTransform reports whether the copier transforms OLD rows, that is,
// whether OLD's and NEW's schemas differ.
func (c *Copier) HasTransform() bool { return c.cfg.Transform != nil }

// WithMarker returns a copier identical to c, sharing its metrics, that
// records settled keys in m instead (nil: nowhere). A sweep that marks
// whole chunks itself uses it to skip the copier's marking.
func (c *Copier) WithMarker(m Marker) *Copier {
	cp := *c
	cp.cfg.Marker = m
	return &cp
}

// OldBounds returns the smallest and the largest key of OLD's table, read
// from the two ends of the key's index. ok is false when the table is empty.
func (c *Copier) OldBounds(ctx context.Context) (lo, hi int64, ok bool, err error) {
	var min, max *int64
	if err := c.old.QueryRow(ctx, c.boundsSQL).Scan(&min, &max); err != nil {
		return 0, 0, false, oldError(c.cfg.Table, err)
	}
	if min == nil {
		return 0, 0, false, nil
	}
	return *min, *max, true, nil
}

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
	res, settled, err := c.copyKeysSettled(ctx, ks)
	if err != nil {
		return res, err
	}
	if c.cfg.Marker != nil && len(settled) > 0 {
		if _, err := c.cfg.Marker.Mark(ctx, settled); err != nil {
			// NEW has committed, so nothing is lost: a later read, task or
			// sweep marks these keys again.
			return res, fmt.Errorf("%w: copy %s: mark %d keys: %w", ErrMarkFailed, c.cfg.Table, len(settled), err)
		}
	}
	return res, nil
}

// CopyRange copies every row of OLD with lo <= key < hi and marks the whole
// range settled, keys absent from OLD included, so a finished range counts as
// done. That is only right while OLD receives no inserts except through
// lazymigrate's mirroring, which is the premise of a migration. At most
// MaxRangeKeys keys per call.
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
	var res Result
	if c.bulk != nil {
		var err error
		if res, err = c.copyRangeBulk(ctx, lo, hi, nil); err != nil {
			return res, err
		}
	} else {
		r, settled, err := c.copy(ctx, c.selectRangeSQL, []any{lo, hi}, c.tombRangeSQL, []any{c.tableID, lo, hi})
		if err != nil {
			return r, err
		}
		res = r
		res.Absent = int(hi-lo) - len(settled)
		c.rows.WithLabelValues("absent").Add(float64(res.Absent))
		if err := c.afterCommit(ctx, settled); err != nil {
			return res, err
		}
	}
	if c.cfg.Marker != nil {
		if err := c.cfg.Marker.MarkRange(ctx, lo, hi); err != nil {
			return res, fmt.Errorf("%w: copy %s: mark range [%d, %d): %w", ErrMarkFailed, c.cfg.Table, lo, hi, err)
		}
	}
	return res, nil
}

// copyKeys copies the sorted keys ks on the row path, without marking them.
func (c *Copier) copyKeys(ctx context.Context, ks []int64) (Result, error) {
	res, _, err := c.copyKeysSettled(ctx, ks)
	return res, err
}

func (c *Copier) copyKeysSettled(ctx context.Context, ks []int64) (Result, []int64, error) {
	res, settled, err := c.copy(ctx, c.selectSQL, []any{ks}, c.tombSQL, []any{c.tableID, ks})
	if err != nil {
		return res, nil, err
	}
	res.Absent = len(ks) - len(settled)
	c.rows.WithLabelValues("absent").Add(float64(res.Absent))
	return res, settled, c.afterCommit(ctx, settled)
}

// CopyRangeKeys copies the rows with the given keys, all in [lo, hi), and
// then marks the whole range settled as CopyRange does: the caller vouches
// that the range's other keys are settled already. A sweep that asked the
// tracker which keys of a range are left uses it to copy only those, with
// CopyRange's bulk path when it is available.
func (c *Copier) CopyRangeKeys(ctx context.Context, lo, hi int64, ks []int64) (Result, error) {
	if err := keys.CheckRange(lo, hi); err != nil {
		return Result{}, fmt.Errorf("promote: copy %s: %w", c.cfg.Table, err)
	}
	ks = keys.SortedUnique(ks)
	if len(ks) > 0 && (ks[0] < lo || ks[len(ks)-1] >= hi) {
		return Result{}, fmt.Errorf("promote: copy %s: keys must lie in [%d, %d), got %d..%d", c.cfg.Table, lo, hi, ks[0], ks[len(ks)-1])
	}
	if hi-lo > MaxRangeKeys {
		return Result{}, fmt.Errorf("promote: copy %s: range [%d, %d) holds more than MaxRangeKeys (%d) keys; split it", c.cfg.Table, lo, hi, MaxRangeKeys)
	}
	var res Result
	if len(ks) > 0 {
		var err error
		if c.bulk != nil {
			res, err = c.copyRangeBulk(ctx, lo, hi, ks)
		} else {
			res, err = c.copyKeys(ctx, ks)
		}
		if err != nil {
			return res, err
		}
	}
	if c.cfg.Marker != nil && lo < hi {
		if err := c.cfg.Marker.MarkRange(ctx, lo, hi); err != nil {
			return res, fmt.Errorf("%w: copy %s: mark range [%d, %d): %w", ErrMarkFailed, c.cfg.Table, lo, hi, err)
		}
	}
	return res, nil
}

// copy reads OLD, writes NEW and returns the counts (but Absent) and the
// settled keys: every key read from OLD plus every tombstoned key.
func (c *Copier) copy(ctx context.Context, selSQL string, selArgs []any, tombSQL string, tombArgs []any) (Result, []int64, error) {
	start := time.Now()
	defer func() { c.duration.Observe(time.Since(start).Seconds()) }()

	batch, err := c.readOld(ctx, selSQL, selArgs)
	if err != nil {
		return Result{}, nil, c.oldRejected(ctx, err)
	}
	if h := c.cfg.Hooks.AfterRead; h != nil {
		h(ctx, batch.keys)
	}
	copied, tombstoned, err := c.writeNew(ctx, batch, tombSQL, tombArgs)
	if err != nil {
		c.rows.WithLabelValues("copied").Add(float64(len(copied)))
		return Result{Copied: len(copied)}, nil, err
	}

	// Each key read from OLD was copied, found present or found
	// tombstoned. A key this copy inserted and a delete tombstoned right
	// after its commit counts as copied: the tombstones are listed later.
	const wasCopied, inOld = 1, 2
	state := make(map[int64]int, len(batch.keys))
	for _, k := range batch.keys {
		state[k] = inOld
	}
	for _, k := range copied {
		state[k] |= wasCopied
	}
	settled := slices.Clone(batch.keys)
	res := Result{Copied: len(copied), Present: len(batch.keys) - len(copied)}
	for _, k := range tombstoned {
		switch state[k] {
		case inOld:
			res.Present--
			res.Tombstoned++
		case 0:
			res.Tombstoned++
			settled = append(settled, k)
		}
	}
	c.rows.WithLabelValues("copied").Add(float64(res.Copied))
	c.rows.WithLabelValues("present").Add(float64(res.Present))
	c.rows.WithLabelValues("tombstoned").Add(float64(res.Tombstoned))
	return res, settled, nil
}

func (c *Copier) afterCommit(ctx context.Context, settled []int64) error {
	if h := c.cfg.Hooks.AfterCommit; h != nil {
		if err := h(ctx, settled); err != nil {
			return fmt.Errorf("promote: copy %s: after commit: %w", c.cfg.Table, err)
		}
	}
	return nil
}

func oldError(table string, err error) error {
	return fmt.Errorf("%w: read %s: %w", ErrOldUnavailable, table, err)
}

// newError classifies a failure to write NEW: a data error (SQLSTATE class
// 22) or a constraint violation (class 23) is the rows' fault; a failure
// with no SQLSTATE is the connection's.
func newError(table string, err error) error {
	if cerr := closedError(table, err); cerr != nil {
		return cerr
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		if class := pgErr.Code[:2]; class == "22" || class == "23" {
			return fmt.Errorf("%w: write %s to NEW: %w", ErrRowRejected, table, err)
		}
		return fmt.Errorf("promote: write %s to NEW: %w", table, err)
	}
	return fmt.Errorf("%w: write %s: %w", ErrNewUnavailable, table, err)
}
