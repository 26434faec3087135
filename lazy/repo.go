package lazy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazymigrate/lazymigrate/internal/keys"
	"github.com/lazymigrate/lazymigrate/internal/metrics"
	"github.com/lazymigrate/lazymigrate/internal/pgtable"
	"github.com/lazymigrate/lazymigrate/internal/schema"
	"github.com/lazymigrate/lazymigrate/promote"
)

// Errors returned by Repo. Test for them with errors.Is.
var (
	// ErrNotFound: the key is in neither database, or was deleted. Errors
	// that wrap it also wrap pgx.ErrNoRows, so code written against pgx
	// keeps working.
	ErrNotFound = errors.New("lazymigrate: not found")
	// ErrInvalidKey: keys are integers >= 0.
	ErrInvalidKey = keys.ErrInvalid
	// ErrOldUnavailable: the key is not settled in NEW and OLD could not be
	// read, so whether it exists is unknown.
	ErrOldUnavailable = promote.ErrOldUnavailable
	// ErrNewUnavailable: NEW could not be read.
	ErrNewUnavailable = promote.ErrNewUnavailable
)

// DB is the part of pgx a Repo reads with. *pgxpool.Pool implements it.
type DB interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Tracker tells which keys are settled in NEW. *tracker.Tracker implements
// it.
type Tracker interface {
	IsSettled(ctx context.Context, key int64) (bool, error)
	Settled(ctx context.Context, keys []int64) ([]bool, error)
}

// Scheduler schedules promotion of keys without blocking.
// *promote.Enqueuer implements it.
type Scheduler interface {
	Schedule(keys ...int64) int
}

var _ Scheduler = (*promote.Enqueuer)(nil)

// Config configures a Repo.
type Config[T any] struct {
	// Table is the table in NEW, as written in SQL. Required.
	Table string
	// OldTable is the table in OLD. Defaults to Table.
	OldTable string
	// KeyColumn is the integer key column. Defaults to "id".
	KeyColumn string
	// Columns are selected from NEW, in this order, and scanned into T.
	// Defaults to every column of NEW's table.
	Columns []string
	// OldColumns are selected from OLD when its schema differs. Defaults to
	// Columns.
	OldColumns []string
	// Scan turns a NEW row into a T. Defaults to pgx.RowToStructByName[T],
	// which needs T to be a struct whose fields match the columns.
	Scan pgx.RowToFunc[T]
	// ScanOld turns an OLD row into a T. Defaults to Scan.
	ScanOld pgx.RowToFunc[T]
	// Tracker answers whether a key missing from NEW is settled (deleted, or
	// swept while absent), which saves reading OLD. Defaults to none:
	// tombstones alone decide.
	Tracker Tracker
	// Scheduler receives the keys served from OLD, for promotion. Defaults
	// to none: nothing is promoted by reads.
	Scheduler Scheduler
	// TrackerTimeout is how long a read waits for the tracker once OLD has
	// answered. Past it, or when the tracker fails, the read goes on without
	// it and the tracker is not waited for again for a second. Defaults to
	// 50ms.
	TrackerTimeout time.Duration
	// Logger defaults to discarding.
	Logger *slog.Logger
	// Registerer receives lazymigrate_reads_total and
	// lazymigrate_read_duration_seconds. Defaults to none.
	Registerer prometheus.Registerer
}

// Repo reads one table during a migration: NEW first, OLD for keys that
// have not moved yet, scheduling those for promotion. Safe for concurrent
// use.
type Repo[T any] struct {
	old, new  DB
	cfg       Config[T]
	tableID   string
	newSQL    string // one key, hit path
	oldSQL    string
	newManySQ string // key-prefixed rows for GetMany
	oldManySQ string
	tombSQL   string
	tombsSQL  string

	trackerDownUntil atomic.Int64 // unix nanos

	reads    *prometheus.CounterVec
	duration prometheus.ObserverVec
	log      *slog.Logger
}

// New returns a Repo for cfg.Table. It reads both catalogs to check the
// table and key column and to default the column list.
func New[T any](ctx context.Context, oldDB, newDB DB, cfg *Config[T]) (*Repo[T], error) {
	var c Config[T]
	if cfg != nil {
		c = *cfg
	}
	if c.Table == "" {
		return nil, errors.New("lazy: Config.Table is required")
	}
	if c.Scan == nil {
		var zero T
		if reflect.TypeOf(zero) == nil || reflect.TypeOf(zero).Kind() != reflect.Struct {
			return nil, fmt.Errorf("lazy: Config.Scan is required when the record type %T is not a struct", zero)
		}
		c.Scan = pgx.RowToStructByName[T]
	}
	if c.ScanOld == nil {
		c.ScanOld = c.Scan
	}
	c.OldTable = cmp.Or(c.OldTable, c.Table)
	c.KeyColumn = cmp.Or(c.KeyColumn, "id")
	c.TrackerTimeout = cmp.Or(c.TrackerTimeout, 50*time.Millisecond)
	if c.TrackerTimeout < 0 {
		return nil, errors.New("lazy: Config.TrackerTimeout must not be negative")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}

	nt, err := pgtable.Describe(ctx, newDB, c.Table)
	if err != nil {
		return nil, fmt.Errorf("lazy: NEW: %w", err)
	}
	ot, err := pgtable.Describe(ctx, oldDB, c.OldTable)
	if err != nil {
		return nil, fmt.Errorf("lazy: OLD: %w", err)
	}
	newKey, err := nt.CheckKey(ctx, newDB, c.KeyColumn, true)
	if err != nil {
		return nil, fmt.Errorf("lazy: NEW: %w", err)
	}
	oldKey, err := ot.CheckKey(ctx, oldDB, c.KeyColumn, false)
	if err != nil {
		return nil, fmt.Errorf("lazy: OLD: %w", err)
	}
	if len(c.Columns) == 0 {
		c.Columns = nt.ColumnNames()
	}
	if len(c.OldColumns) == 0 {
		c.OldColumns = c.Columns
	}
	newCols, err := nt.Select(c.Columns)
	if err != nil {
		return nil, fmt.Errorf("lazy: Config.Columns: NEW %w", err)
	}
	oldCols, err := ot.Select(c.OldColumns)
	if err != nil {
		return nil, fmt.Errorf("lazy: Config.OldColumns: OLD %w", err)
	}

	r := &Repo[T]{old: oldDB, new: newDB, cfg: c, tableID: nt.ID, log: c.Logger}
	nk, ok := newKey.Ident(), oldKey.Ident()
	r.newSQL = fmt.Sprintf(`SELECT %s FROM %s WHERE %s = $1`, pgtable.Idents(newCols), nt.Ident, nk)
	r.oldSQL = fmt.Sprintf(`SELECT %s FROM %s WHERE %s = $1`, pgtable.Idents(oldCols), ot.Ident, ok)
	r.newManySQ = fmt.Sprintf(`SELECT %s::bigint, %s FROM %s WHERE %s = ANY($1::bigint[])`, nk, pgtable.Idents(newCols), nt.Ident, nk)
	r.oldManySQ = fmt.Sprintf(`SELECT %s::bigint, %s FROM %s WHERE %s = ANY($1::bigint[])`, ok, pgtable.Idents(oldCols), ot.Ident, ok)
	r.tombSQL = `SELECT EXISTS (SELECT 1 FROM ` + schema.Tombstones + ` WHERE table_name = $1 AND key = $2)`
	r.tombsSQL = `SELECT key FROM ` + schema.Tombstones + ` WHERE table_name = $1 AND key = ANY($2::bigint[])`
	if err := r.checkSchema(ctx); err != nil {
		return nil, err
	}

	r.reads = metrics.CounterVec(c.Registerer, "reads_total",
		"Keys read through lazymigrate, by outcome: new (served by NEW), old (served by OLD, promotion scheduled), not_found, error.",
		"table", "outcome").MustCurryWith(prometheus.Labels{"table": c.Table})
	r.duration = metrics.HistogramVec(c.Registerer, "read_duration_seconds",
		"Latency of Get (per key) and GetMany (per call, outcome batch).", metrics.LatencyBuckets,
		"table", "outcome").MustCurryWith(prometheus.Labels{"table": c.Table})
	return r, nil
}

func (r *Repo[T]) checkSchema(ctx context.Context) error {
	var ok bool
	if err := r.new.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, schema.Tombstones).Scan(&ok); err != nil {
		return fmt.Errorf("lazy: check lazymigrate schema in NEW: %w", err)
	}
	if !ok {
		return errors.New("lazy: NEW has no lazymigrate schema: run promote.Setup (or `sweeper init`) on NEW first")
	}
	return nil
}

// Get returns the record with key. It reads NEW; on a miss it reads OLD
// unless the key is settled (tombstoned, or settled in the tracker), and
// schedules promotion of a key found in OLD. Errors wrap ErrNotFound,
// ErrInvalidKey, ErrOldUnavailable or ErrNewUnavailable.
func (r *Repo[T]) Get(ctx context.Context, key int64) (T, error) {
	start := time.Now()
	v, outcome, err := r.get(ctx, key)
	r.reads.WithLabelValues(outcome).Inc()
	r.duration.WithLabelValues(outcome).Observe(time.Since(start).Seconds())
	return v, err
}

func (r *Repo[T]) get(ctx context.Context, key int64) (T, string, error) {
	var zero T
	if err := keys.Check(key); err != nil {
		return zero, "error", fmt.Errorf("lazy: get %s: %w", r.cfg.Table, err)
	}
	v, err := queryOne(ctx, r.new, r.newSQL, key, r.cfg.Scan)
	if err == nil {
		return v, "new", nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return zero, "error", newErr(r.cfg.Table, key, err)
	}
	return r.fallback(ctx, key)
}

type result[T any] struct {
	v   T
	err error
}

// fallback resolves a key NEW does not have. The tombstone and the tracker
// are asked while OLD is read, so a miss costs about one OLD query more
// than a hit. OLD is read on this goroutine: measured on a 2-core machine,
// that beats handing it to another.
func (r *Repo[T]) fallback(ctx context.Context, key int64) (T, string, error) {
	var zero T
	tombc := make(chan result[bool], 1)
	go func() {
		var tomb bool
		err := r.new.QueryRow(ctx, r.tombSQL, r.tableID, key).Scan(&tomb)
		tombc <- result[bool]{tomb, err}
	}()
	bitc := askTracker(ctx, r, func(ctx context.Context) (bool, error) { return r.cfg.Tracker.IsSettled(ctx, key) })
	v, oldErr := queryOne(ctx, r.old, r.oldSQL, key, r.cfg.ScanOld)

	tomb := <-tombc
	switch {
	case tomb.err != nil:
		return zero, "error", newErr(r.cfg.Table, key, tomb.err)
	case tomb.v:
		return zero, "not_found", notFound(r.cfg.Table, key)
	}
	if settled, ok := awaitTracker(ctx, r, bitc); ok && settled {
		return zero, "not_found", notFound(r.cfg.Table, key)
	}
	switch {
	case oldErr == nil:
		if r.cfg.Scheduler != nil {
			r.cfg.Scheduler.Schedule(key)
		}
		return v, "old", nil
	case errors.Is(oldErr, pgx.ErrNoRows):
		return zero, "not_found", notFound(r.cfg.Table, key)
	default:
		return zero, "error", fmt.Errorf("%w: get %s key %d: %w", ErrOldUnavailable, r.cfg.Table, key, oldErr)
	}
}

// askTracker starts a tracker query q unless there is no tracker or it
// failed within the last second; it returns nil then.
func askTracker[T, V any](ctx context.Context, r *Repo[T], q func(context.Context) (V, error)) chan result[V] {
	if r.cfg.Tracker == nil || time.Now().UnixNano() < r.trackerDownUntil.Load() {
		return nil
	}
	c := make(chan result[V], 1)
	go func() {
		v, err := q(ctx)
		c <- result[V]{v, err}
	}()
	return c
}

// awaitTracker waits at most TrackerTimeout for the answer of askTracker; ok
// is false when there is none. A tracker that fails or is slow counts as
// "not settled": the read goes on to OLD, which is safe because tombstones,
// not the tracker, guard deleted keys.
func awaitTracker[T, V any](ctx context.Context, r *Repo[T], c chan result[V]) (v V, ok bool) {
	if c == nil {
		return v, false
	}
	t := time.NewTimer(r.cfg.TrackerTimeout)
	defer t.Stop()
	select {
	case res := <-c:
		if res.err == nil {
			return res.v, true
		}
		r.trackerDown(ctx, res.err)
	case <-t.C:
		r.trackerDown(ctx, context.DeadlineExceeded)
	case <-ctx.Done():
	}
	return v, false
}

func (r *Repo[T]) trackerDown(ctx context.Context, err error) {
	r.trackerDownUntil.Store(time.Now().Add(time.Second).UnixNano())
	r.reads.WithLabelValues("tracker_unavailable").Inc()
	r.log.WarnContext(ctx, "lazymigrate: tracker unavailable; reads go on without it", "table", r.cfg.Table, "error", err)
}

// GetMany returns the records of keys that exist, by key, with one NEW query
// and, for the keys NEW lacks, one OLD query. Keys found in OLD are
// scheduled for promotion. If OLD cannot be read and some keys are
// unresolved, the error wraps ErrOldUnavailable and the map holds the keys
// that were found.
func (r *Repo[T]) GetMany(ctx context.Context, ks []int64) (map[int64]T, error) {
	start := time.Now()
	out, err := r.getMany(ctx, ks)
	outcome := "batch"
	if err != nil {
		outcome = "error"
	}
	r.duration.WithLabelValues(outcome).Observe(time.Since(start).Seconds())
	return out, err
}

func (r *Repo[T]) getMany(ctx context.Context, ks []int64) (map[int64]T, error) {
	if err := keys.CheckAll(ks); err != nil {
		r.reads.WithLabelValues("error").Inc()
		return nil, fmt.Errorf("lazy: get %s: %w", r.cfg.Table, err)
	}
	ks = keys.SortedUnique(ks)
	out := make(map[int64]T, len(ks))
	if len(ks) == 0 {
		return out, nil
	}
	if err := queryKeyed(ctx, r.new, r.newManySQ, ks, r.cfg.Scan, out); err != nil {
		r.reads.WithLabelValues("error").Add(float64(len(ks)))
		return nil, fmt.Errorf("%w: get %d keys of %s: %w", ErrNewUnavailable, len(ks), r.cfg.Table, err)
	}
	r.reads.WithLabelValues("new").Add(float64(len(out)))
	misses := make([]int64, 0, len(ks)-len(out))
	for _, k := range ks {
		if _, ok := out[k]; !ok {
			misses = append(misses, k)
		}
	}
	if len(misses) == 0 {
		return out, nil
	}

	tombc := make(chan result[[]int64], 1)
	go func() {
		rows, err := r.new.Query(ctx, r.tombsSQL, r.tableID, misses)
		if err != nil {
			tombc <- result[[]int64]{nil, err}
			return
		}
		tombs, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		tombc <- result[[]int64]{tombs, err}
	}()
	bitc := askTracker(ctx, r, func(ctx context.Context) ([]bool, error) { return r.cfg.Tracker.Settled(ctx, misses) })
	found := make(map[int64]T, len(misses))
	oldErr := queryKeyed(ctx, r.old, r.oldManySQ, misses, r.cfg.ScanOld, found)

	tombs := <-tombc
	if tombs.err != nil {
		r.reads.WithLabelValues("error").Add(float64(len(misses)))
		return out, fmt.Errorf("%w: get %d keys of %s: tombstones: %w", ErrNewUnavailable, len(misses), r.cfg.Table, tombs.err)
	}
	settled := make(map[int64]bool, len(tombs.v))
	for _, k := range tombs.v {
		settled[k] = true
	}
	if bits, ok := awaitTracker(ctx, r, bitc); ok {
		for i, k := range misses {
			if bits[i] {
				settled[k] = true
			}
		}
	}

	var promote []int64
	notFound, unresolved := 0, 0
	for _, k := range misses {
		switch v, inOld := found[k]; {
		case settled[k]:
			notFound++
		case oldErr != nil:
			unresolved++
		case inOld:
			out[k] = v
			promote = append(promote, k)
		default:
			notFound++
		}
	}
	r.reads.WithLabelValues("not_found").Add(float64(notFound))
	r.reads.WithLabelValues("old").Add(float64(len(promote)))
	if len(promote) > 0 && r.cfg.Scheduler != nil {
		r.cfg.Scheduler.Schedule(promote...)
	}
	if unresolved > 0 {
		r.reads.WithLabelValues("error").Add(float64(unresolved))
		return out, fmt.Errorf("%w: get %s: %d keys unresolved: %w", ErrOldUnavailable, r.cfg.Table, unresolved, oldErr)
	}
	return out, nil
}

func queryOne[T any](ctx context.Context, db DB, sql string, key int64, scan pgx.RowToFunc[T]) (T, error) {
	rows, err := db.Query(ctx, sql, key)
	if err != nil {
		var zero T
		return zero, err
	}
	return pgx.CollectExactlyOneRow(rows, scan)
}

// queryKeyed runs sql, whose first column is the key, and scans the rest of
// each row into out[key].
func queryKeyed[T any](ctx context.Context, db DB, sql string, ks []int64, scan pgx.RowToFunc[T], out map[int64]T) error {
	rows, err := db.Query(ctx, sql, ks)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		kr := keyedRow{CollectableRow: rows}
		v, err := scan(&kr)
		if err != nil {
			return err
		}
		out[kr.key] = v
	}
	return rows.Err()
}

// keyedRow shows a scan function every column of a row but the first, which
// it scans into key.
type keyedRow struct {
	pgx.CollectableRow
	key int64
}

func (r *keyedRow) FieldDescriptions() []pgconn.FieldDescription {
	return r.CollectableRow.FieldDescriptions()[1:]
}

func (r *keyedRow) Scan(dest ...any) error {
	return r.CollectableRow.Scan(append([]any{&r.key}, dest...)...)
}

func (r *keyedRow) Values() ([]any, error) {
	vs, err := r.CollectableRow.Values()
	if err != nil {
		return nil, err
	}
	return vs[1:], nil
}

func (r *keyedRow) RawValues() [][]byte { return r.CollectableRow.RawValues()[1:] }

func notFound(table string, key int64) error {
	return fmt.Errorf("%w: %s key %d: %w", ErrNotFound, table, key, pgx.ErrNoRows)
}

func newErr(table string, key int64, err error) error {
	return fmt.Errorf("%w: get %s key %d: %w", ErrNewUnavailable, table, key, err)
}
