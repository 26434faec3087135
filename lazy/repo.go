package lazy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazymigrate/lazymigrate/fallback"
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

// DB is the part of pgx a Repo uses. *pgxpool.Pool implements it; writes
// need NEW to be one.
type DB interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// Tracker tells which keys are settled in NEW, and learns of keys writes
// settle. *tracker.Tracker implements it.
type Tracker interface {
	IsSettled(ctx context.Context, key int64) (bool, error)
	Settled(ctx context.Context, keys []int64) ([]bool, error)
	Mark(ctx context.Context, keys []int64) (int, error)
}

// ModeSource says which database serves reads of each key now.
// *fallback.Switch implements it.
type ModeSource interface {
	// ModeOf returns the mode that serves key: Policy().ModeOf(key),
	// answered faster.
	ModeOf(key int64) fallback.Mode
	// Policy returns the mode being rolled out, and to what share of the
	// keys.
	Policy() fallback.Policy
}

var _ ModeSource = (*fallback.Switch)(nil)

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
	// Tracker records which keys are settled. Writes mark the keys they
	// settle; reads ask it about a key NEW lacks when OLD cannot be read (so
	// that settled keys answer while OLD is down), or on every miss with
	// AskTrackerOnMiss. Defaults to none: tombstones alone decide.
	Tracker Tracker
	// Scheduler receives the keys served from OLD, for promotion. Defaults
	// to none: nothing is promoted by reads.
	Scheduler Scheduler
	// AskTrackerOnMiss has reads ask the tracker about every key NEW lacks,
	// beside the read of OLD. Without it, tombstones and the table's
	// closure, checked in NEW, decide whether such a key is gone, as they do
	// whenever the tracker is slow or down. Both give the same answer for
	// every key written, deleted or promoted through lazymigrate: a deleted
	// key never reads as found. The tracker adds two things, at the price
	// of a Redis round trip per miss (a third of the miss where the servers
	// share the client's few cores; see BENCHMARKS.md): a key a sweep
	// settled while absent from OLD answers without a read of OLD, which has
	// none either; and a key settled and then deleted from NEW other than
	// through Delete (plain SQL, not reconciled) answers not found, where
	// OLD's stale row is otherwise served, and scheduled for a promotion
	// that copies it back unless the handler skips settled keys
	// (promote.HandlerConfig.Settled). Set it if code deletes rows from NEW
	// with plain SQL while OLD still holds them.
	AskTrackerOnMiss bool
	// TrackerTimeout is how long a read waits for the tracker once OLD has
	// answered. Past it, or when the tracker fails, the read goes on without
	// it and the tracker is not waited for again for a second. Defaults to
	// 50ms.
	TrackerTimeout time.Duration
	// Mode switches reads between OLD only (rollback), NEW with fallback to
	// OLD (readthrough) and NEW only, for every key or for a share of
	// them during a rollout; writes are not affected, and keep OLD current
	// while mirroring is on. Usually a *fallback.Switch shared by every
	// process. Defaults to readthrough, always.
	Mode ModeSource
	// Shadow compares, for a sample of the keys read, what NEW and OLD hold,
	// in the background (see fallback.Shadow): after reads served by NEW,
	// and after reads in mode old. Records are compared field by field,
	// with a type's Equal method wherever it has one (as time.Time does).
	// A key whose change is still in the outbox counts as pending, one NEW
	// has not received yet as unmigrated. It checks what a switch of mode
	// would change, so it needs mirroring: without it OLD lacks every
	// write, and each one is a mismatch. GetMany samples each of its keys
	// as Get does: not those OLD served in readthrough, which NEW lacks.
	// Call the Shadow's Close at shutdown. Defaults to none.
	Shadow *fallback.Shadow
	// Copier is the table's promote.Copier. Writes need it: Update and
	// Migrate promote through it, and Delete takes its lock stripes.
	// Defaults to none: the write methods return ErrNoWrites.
	Copier *promote.Copier
	// Encode turns a record into its column values for writes. Defaults to
	// the mapping reads use: for each column, the struct field whose db tag
	// names it, or else whose name matches it ignoring case and underscores.
	Encode func(rec T) (map[string]any, error)
	// DisableMirror stops writes from being applied to OLD. Mirroring is on
	// by default, so that reads can be rolled back to OLD at any moment.
	DisableMirror bool
	// ReverseTransform turns a NEW row into the OLD row to mirror, when the
	// schemas differ; it is required then. It receives the NEW row's values
	// in Postgres's text form (strings, or nil for NULL) and returns the
	// values of Config.OldColumns (Go values, or strings in text form).
	// Defaults to none: each OLD column takes the NEW column of its name.
	ReverseTransform func(ctx context.Context, newRow promote.Row) (promote.Row, error)
	// Reconciler enqueues a reconcile task when a write cannot be mirrored
	// (OLD down): a *asynq.Client. Defaults to none: the relay reconciles
	// the key after RelayDelay.
	Reconciler promote.TaskEnqueuer
	// ReconcileQueue is the asynq queue of reconcile tasks. Defaults to
	// "lazymigrate".
	ReconcileQueue string
	// ServeOldWhileNewDown answers reads from OLD alone while NEW cannot be
	// reached, in readthrough mode, as the "old" mode would: the design's
	// "NEW down: reads served from OLD while mirroring keeps OLD current".
	// It needs mirroring. OLD then lacks only the writes whose mirror
	// failed and has not been reconciled yet (mirror_total{outcome=
	// "failed"} counts them): such a key reads as it was before that write
	// until NEW is back. Writes keep failing while NEW is down; NEW is the
	// system of record. Off by default: reads fail with ErrNewUnavailable.
	//
	// NEW is down when no connection to it can be opened: a failed dial, or
	// NEW refusing connections while it starts or stops; or, with
	// NewReadTimeout, when a read outlasts it. A read on a connection that
	// broke (a killed backend) is tried again on another first. A NEW that
	// stops answering without refusing is noticed when a dial outlasts
	// pgx's ConnectTimeout (pgxpool's default is 2 minutes: set it shorter
	// than the callers' deadlines); reads on connections already open wait
	// for their callers' deadlines, unless NewReadTimeout is set.
	ServeOldWhileNewDown bool
	// NewDownRetry is how long reads go straight to OLD after NEW could
	// not be reached, before NEW is tried again. Defaults to 1 second.
	NewDownRetry time.Duration
	// NewReadTimeout, with ServeOldWhileNewDown, bounds each read of NEW
	// (a Get's query, or a GetMany's with its rows, retries on another
	// connection included): one that takes longer is abandoned and NEW
	// counts as down, as if it could not be reached, so that a NEW that
	// stops answering on connections already open (a network partition, a
	// lock held on the table) costs reads NewReadTimeout, not their
	// callers' deadlines. Waiting for a free connection of a busy pool does
	// not count, when NEW is a *pgxpool.Pool. Set it well above NEW's
	// slowest healthy read, the largest GetMany included: one read past it
	// sends every read to OLD for NewDownRetry. Defaults to 0: reads of NEW
	// wait for their callers' deadlines.
	NewReadTimeout time.Duration
	// MirrorTimeout bounds the OLD step of a write: past it the write
	// returns (NEW has committed) and the change is left to a reconcile.
	// Defaults to 5 seconds.
	MirrorTimeout time.Duration
	// RelayDelay is how old an outbox entry must be before the relay
	// reconciles its key: longer than a write takes to mirror itself.
	// Defaults to 10 seconds.
	RelayDelay time.Duration
	// RelayInterval is how often RunRelay looks for such entries. Defaults
	// to 1 second.
	RelayInterval time.Duration
	// Logger defaults to discarding.
	Logger *slog.Logger
	// Registerer receives the read, write and mirror metrics. Defaults to
	// none.
	Registerer prometheus.Registerer
}

// Repo reads one table during a migration: NEW first, OLD for keys that
// have not moved yet, scheduling those for promotion. Safe for concurrent
// use.
type Repo[T any] struct {
	old, new   DB
	cfg        Config[T]
	tableID    string
	newSQL     string // one key, hit path
	foldSQL    string // one key, with schema.GoneCond when it is missing
	oldSQL     string
	newManySQL string // key-prefixed rows for GetMany
	oldManySQL string
	tombSQL    string // schema.GoneSQL: tombstoned, or the table closed
	tombsSQL   string
	maxKey     int64 // the largest key writes can store: both key columns' types

	misses           missRate     // chooses newSQL or foldSQL
	trackerDownUntil atomic.Int64 // unix nanos
	newDownUntil     atomic.Int64 // unix nanos; see Config.ServeOldWhileNewDown

	w    *writes[T]     // nil without Config.Copier
	bg   sync.WaitGroup // background completion of writes
	tidy tidier         // their batched bookkeeping

	writesTotal    *prometheus.CounterVec
	writeDuration  prometheus.ObserverVec
	mirrorTotal    *prometheus.CounterVec
	reconcileTotal *prometheus.CounterVec

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
	c.ReconcileQueue = cmp.Or(c.ReconcileQueue, "lazymigrate")
	c.RelayDelay = cmp.Or(c.RelayDelay, 10*time.Second)
	c.RelayInterval = cmp.Or(c.RelayInterval, time.Second)
	c.MirrorTimeout = cmp.Or(c.MirrorTimeout, 5*time.Second)
	c.NewDownRetry = cmp.Or(c.NewDownRetry, time.Second)
	if c.TrackerTimeout < 0 || c.RelayDelay < 0 || c.RelayInterval < 0 || c.MirrorTimeout < 0 || c.NewDownRetry < 0 || c.NewReadTimeout < 0 {
		return nil, errors.New("lazy: Config.TrackerTimeout, MirrorTimeout, RelayDelay, RelayInterval, NewDownRetry and NewReadTimeout must not be negative")
	}
	if c.NewReadTimeout > 0 && !c.ServeOldWhileNewDown {
		return nil, errors.New("lazy: Config.NewReadTimeout needs ServeOldWhileNewDown: it decides when NEW is down")
	}
	if c.ServeOldWhileNewDown && c.DisableMirror {
		return nil, errors.New("lazy: Config.ServeOldWhileNewDown needs mirroring: with DisableMirror, OLD lacks every write made in NEW")
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

	r := &Repo[T]{old: oldDB, new: newDB, cfg: c, tableID: nt.ID, log: c.Logger, maxKey: newKey.MaxKey()}
	if !c.DisableMirror {
		r.maxKey = min(r.maxKey, oldKey.MaxKey()) // a key OLD cannot hold could never be mirrored
	}
	nk, ok := newKey.Ident(), oldKey.Ident()
	// Keys are cast to bigint: a key beyond the column's type (an integer
	// column) is then not found, where pgx would fail to encode it.
	r.newSQL = fmt.Sprintf(`SELECT %s FROM %s WHERE %s = $1::bigint`, pgtable.Idents(newCols), nt.Ident, nk)
	r.oldSQL = fmt.Sprintf(`SELECT %s FROM %s WHERE %s = $1::bigint`, pgtable.Idents(oldCols), ot.Ident, ok)
	// LIMIT 1 stops at the row when there is one: the gone branch runs
	// only for a key NEW lacks. The first column is NULL on the row, 1 on
	// the gone branch's answer.
	r.foldSQL = fmt.Sprintf(`SELECT NULL::int, %s FROM %s WHERE %s = $2::bigint
		UNION ALL SELECT 1%s WHERE %s
		LIMIT 1`, pgtable.Idents(newCols), nt.Ident, nk, strings.Repeat(", NULL", len(newCols)), schema.GoneCond)
	r.newManySQL = fmt.Sprintf(`SELECT %s::bigint, %s FROM %s WHERE %s = ANY($1::bigint[])`, nk, pgtable.Idents(newCols), nt.Ident, nk)
	r.oldManySQL = fmt.Sprintf(`SELECT %s::bigint, %s FROM %s WHERE %s = ANY($1::bigint[])`, ok, pgtable.Idents(oldCols), ot.Ident, ok)
	r.tombSQL, r.tombsSQL = schema.GoneSQL, schema.GoneKeysSQL
	if err := schema.Check(ctx, newDB); err != nil {
		return nil, fmt.Errorf("lazy: %w", err)
	}
	if c.Copier != nil {
		if r.w, err = newWrites(&c, newDB, nt, ot, newCols, oldCols, c.KeyColumn); err != nil {
			return nil, err
		}
		r.tidy.flush = r.tidyFlush
	}

	r.reads = metrics.CounterVec(c.Registerer, "reads_total",
		"Keys read through lazymigrate, by outcome: new (served by NEW), old (served by OLD, promotion scheduled), old_new_down (served by OLD while NEW is unreachable), not_found, error.",
		"table", "outcome").MustCurryWith(prometheus.Labels{"table": c.Table})
	r.duration = metrics.HistogramVec(c.Registerer, "read_duration_seconds",
		"Latency of Get (per key) and GetMany (per call, outcome batch).", metrics.LatencyBuckets,
		"table", "outcome").MustCurryWith(prometheus.Labels{"table": c.Table})
	r.writesTotal = metrics.CounterVec(c.Registerer, "writes_total",
		"Writes through lazymigrate, by operation (put, update, delete) and outcome (ok, error).",
		"table", "op", "outcome").MustCurryWith(prometheus.Labels{"table": c.Table})
	r.writeDuration = metrics.HistogramVec(c.Registerer, "write_duration_seconds",
		"Latency of writes, mirror to OLD included.", metrics.LatencyBuckets,
		"table", "op").MustCurryWith(prometheus.Labels{"table": c.Table})
	r.mirrorTotal = metrics.CounterVec(c.Registerer, "mirror_total",
		"Writes applied to OLD right after NEW committed, by outcome: ok, or failed (left to a reconcile).",
		"table", "outcome").MustCurryWith(prometheus.Labels{"table": c.Table})
	r.reconcileTotal = metrics.CounterVec(c.Registerer, "reconcile_total",
		"Keys reconciled to OLD, by outcome: enqueued (a reconcile task), done, failed.",
		"table", "outcome").MustCurryWith(prometheus.Labels{"table": c.Table})
	return r, nil
}

// Get returns the record with key. It reads NEW; on a miss it reads OLD
// unless the key is tombstoned, or settled in the tracker (see
// Config.AskTrackerOnMiss), or the table's migration is closed (see
// PurgeTombstones), and schedules promotion of a key found in OLD. Errors
// wrap ErrNotFound, ErrInvalidKey, ErrOldUnavailable or ErrNewUnavailable;
// an error from Config.Scan is returned as it is.
func (r *Repo[T]) Get(ctx context.Context, key int64) (T, error) {
	start := time.Now()
	mode := r.modeOf(key)
	v, outcome, err := r.get(ctx, key, mode)
	r.reads.WithLabelValues(outcome).Inc()
	r.duration.WithLabelValues(outcome).Observe(time.Since(start).Seconds())
	if r.cfg.Shadow.Sample() {
		r.shadow(ctx, key, mode, outcome)
	}
	return v, err
}

func (r *Repo[T]) get(ctx context.Context, key int64, mode fallback.Mode) (T, string, error) {
	var zero T
	if err := keys.Check(key); err != nil {
		return zero, "error", fmt.Errorf("lazy: get %s: %w", r.cfg.Table, err)
	}
	if mode == fallback.ModeOld {
		return r.getOld(ctx, key)
	}
	if r.skipNew(mode) {
		return r.getOldNewDown(ctx, key)
	}
	var v T
	folded := mode == fallback.ModeReadthrough && r.misses.folded()
	down, err := r.readNew(ctx, mode, func(ctx context.Context, db DB) (err error) {
		if folded {
			v, err = queryFolded(ctx, db, r.foldSQL, r.tableID, key, r.cfg.Scan)
		} else {
			v, err = queryOne(ctx, db, r.newSQL, key, r.cfg.Scan)
		}
		return err
	})
	if mode == fallback.ModeReadthrough && (err == nil || errors.Is(err, pgx.ErrNoRows)) {
		r.misses.observe(err != nil)
	}
	switch {
	case err == nil:
		return v, "new", nil
	case down:
		return r.getOldNewDown(ctx, key)
	case errors.Is(err, errGone):
		return zero, "not_found", r.notFound(key)
	case !errors.Is(err, pgx.ErrNoRows):
		return zero, "error", r.newErr(key, err)
	case mode == fallback.ModeNew:
		return zero, "not_found", r.notFound(key)
	}
	return r.fallback(ctx, key, folded)
}

func (r *Repo[T]) modeOf(key int64) fallback.Mode {
	if r.cfg.Mode == nil {
		return fallback.ModeReadthrough
	}
	return r.cfg.Mode.ModeOf(key)
}

func (r *Repo[T]) policy() fallback.Policy {
	if r.cfg.Mode == nil {
		return fallback.Full(fallback.ModeReadthrough)
	}
	return r.cfg.Mode.Policy()
}

// getOld serves a rolled-back read: OLD alone, which mirroring has kept
// current.
func (r *Repo[T]) getOld(ctx context.Context, key int64) (T, string, error) {
	var zero T
	v, err := queryOne(ctx, r.old, r.oldSQL, key, r.cfg.ScanOld)
	switch {
	case err == nil:
		return v, "old", nil
	case errors.Is(err, pgx.ErrNoRows):
		return zero, "not_found", r.notFound(key)
	case isScanError(err):
		return zero, "error", err
	default:
		return zero, "error", fmt.Errorf("%w: get %s key %d: %w", ErrOldUnavailable, r.cfg.Table, key, err)
	}
}

// skipNew reports whether reads go straight to OLD: NEW could not be
// reached less than NewDownRetry ago (see Config.ServeOldWhileNewDown).
func (r *Repo[T]) skipNew(mode fallback.Mode) bool {
	return r.cfg.ServeOldWhileNewDown && mode == fallback.ModeReadthrough && time.Now().UnixNano() < r.newDownUntil.Load()
}

// readNew runs read, a read of NEW through db. With
// Config.ServeOldWhileNewDown (in readthrough mode) it runs it again, on
// another connection, when an open connection broke (a killed backend, a
// restart): one dead connection in the pool is not NEW being down. down
// reports that no connection to NEW could be opened, or that the read
// outlasted NewReadTimeout; reads then skip NEW for NewDownRetry, and the
// caller serves OLD.
func (r *Repo[T]) readNew(ctx context.Context, mode fallback.Mode, read func(ctx context.Context, db DB) error) (down bool, err error) {
	guarded := r.cfg.ServeOldWhileNewDown && mode == fallback.ModeReadthrough
	bounded := guarded && r.cfg.NewReadTimeout > 0
	var deadline time.Time // one for the read and its retries
	for try := 0; ; try++ {
		if bounded {
			err = r.readBounded(ctx, &deadline, read)
		} else {
			err = read(ctx, r.new)
		}
		if err == nil || !guarded || ctx.Err() != nil {
			return false, err
		}
		failure := classifyNewFailure(err)
		if bounded && errors.Is(err, context.DeadlineExceeded) {
			failure = newUnreachable // NewReadTimeout passed; the caller's deadline has not
		}
		switch failure {
		case newUnreachable:
			now := time.Now()
			if prev := r.newDownUntil.Swap(now.Add(r.cfg.NewDownRetry).UnixNano()); prev < now.UnixNano() {
				r.log.WarnContext(ctx, "NEW unreachable: serving reads from OLD", "table", r.cfg.Table,
					"retry_in", r.cfg.NewDownRetry, "err", err)
			}
			return true, err
		case newConnBroken:
			if try < maxBrokenRetries {
				continue
			}
		}
		return false, err
	}
}

// readBounded runs read by *deadline, which it sets NewReadTimeout ahead
// when it is zero, on a connection of NEW's pool taken first under ctx
// alone: a busy pool is not a NEW that stopped answering (a dial that
// fails still is). With a NEW that is not a pool, the deadline covers the
// wait for a connection too.
func (r *Repo[T]) readBounded(ctx context.Context, deadline *time.Time, read func(ctx context.Context, db DB) error) error {
	db := r.new
	if pool, ok := r.new.(*pgxpool.Pool); ok {
		conn, err := pool.Acquire(ctx)
		if err != nil {
			return err
		}
		defer conn.Release()
		db = conn
	}
	if deadline.IsZero() {
		*deadline = time.Now().Add(r.cfg.NewReadTimeout)
	}
	rctx, cancel := context.WithDeadline(ctx, *deadline)
	defer cancel()
	return read(rctx, db)
}

// maxBrokenRetries bounds the reads of NEW tried again after a broken
// connection: a restart of NEW leaves every idle connection of the pool
// broken, and a NEW that is back answers on a new one.
const maxBrokenRetries = 2

type newFailure int

const (
	newOther       newFailure = iota
	newUnreachable            // no connection could be opened
	newConnBroken             // an open connection went away
)

// classifyNewFailure tells a NEW that cannot be reached (a failed or timed
// out dial, or a server refusing connections while it starts or stops)
// from an open connection that broke (SQLSTATE class 08, 57P01-57P03, a
// cut network), and both from everything else: a statement NEW refused, a
// scan error, the caller's deadline.
func classifyNewFailure(err error) newFailure {
	var connErr *pgconn.ConnectError
	var pgErr *pgconn.PgError
	var netErr net.Error
	connectionLost := func(code string) bool {
		return strings.HasPrefix(code, "08") || code == "57P01" || code == "57P02" || code == "57P03"
	}
	switch {
	case isScanError(err):
		return newOther
	case errors.As(err, &connErr):
		// A dial that failed or timed out (pgx's ConnectTimeout: a NEW
		// that does not answer), or a server that refused to start a
		// session because it is starting or stopping. A refused password
		// or too many connections are not NEW being down.
		if errors.As(connErr, &pgErr) && !connectionLost(pgErr.Code) {
			return newOther
		}
		return newUnreachable
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return newOther
	case errors.As(err, &pgErr):
		if connectionLost(pgErr.Code) {
			return newConnBroken
		}
		return newOther
	case errors.As(err, &netErr), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return newConnBroken
	}
	return newOther
}

// getOldNewDown serves a read from OLD alone while NEW is unreachable.
func (r *Repo[T]) getOldNewDown(ctx context.Context, key int64) (T, string, error) {
	v, outcome, err := r.getOld(ctx, key)
	switch {
	case outcome == "old":
		outcome = "old_new_down"
	case errors.Is(err, ErrOldUnavailable):
		err = fmt.Errorf("%w, and %w", ErrNewUnavailable, err)
	}
	return v, outcome, err
}

// fallback resolves a key NEW did not have. Unless the read of NEW folded
// it in (notGone), the tombstone is asked while OLD is read, as is the
// tracker with Config.AskTrackerOnMiss, so a miss costs about one OLD
// query more than a hit. OLD is read on this goroutine: measured on a
// 2-core machine, that beats handing it to another.
func (r *Repo[T]) fallback(ctx context.Context, key int64, notGone bool) (T, string, error) {
	var zero T
	tombc := make(chan result[bool], 1)
	if notGone {
		tombc <- result[bool]{}
	} else {
		go func() {
			var tomb bool
			err := r.new.QueryRow(ctx, r.tombSQL, r.tableID, key).Scan(&tomb)
			tombc <- result[bool]{tomb, err}
		}()
	}
	ask := func() pending[bool] {
		return askTracker(ctx, r, func(ctx context.Context) (bool, error) { return r.cfg.Tracker.IsSettled(ctx, key) })
	}
	bit := noAnswer[bool]()
	if r.cfg.AskTrackerOnMiss {
		bit = ask()
	}
	v, oldErr := queryOne(ctx, r.old, r.oldSQL, key, r.cfg.ScanOld)
	if !r.cfg.AskTrackerOnMiss && oldUnavailable(oldErr) {
		bit = ask()
	}

	tomb := <-tombc
	switch {
	case tomb.err != nil:
		bit.cancel()
		return zero, "error", r.newErr(key, tomb.err)
	case tomb.v:
		bit.cancel()
		return zero, "not_found", r.notFound(key)
	}
	if settled, ok := awaitTracker(ctx, r, bit); ok && settled {
		// Settled but missing from NEW a moment ago: either it is gone
		// (swept while absent from OLD), or its promotion committed since
		// NEW was read. The bit is set only after NEW commits, so one more
		// read of NEW tells which.
		v, err := queryOne(ctx, r.new, r.newSQL, key, r.cfg.Scan)
		switch {
		case err == nil:
			return v, "new", nil
		case errors.Is(err, pgx.ErrNoRows):
			return zero, "not_found", r.notFound(key)
		default:
			return zero, "error", r.newErr(key, err)
		}
	}
	switch {
	case oldErr == nil:
		if r.cfg.Scheduler != nil {
			r.cfg.Scheduler.Schedule(key)
		}
		return v, "old", nil
	case errors.Is(oldErr, pgx.ErrNoRows):
		return zero, "not_found", r.notFound(key)
	case isScanError(oldErr):
		return zero, "error", oldErr
	default:
		return zero, "error", fmt.Errorf("%w: get %s key %d: %w", ErrOldUnavailable, r.cfg.Table, key, oldErr)
	}
}

func (r *Repo[T]) notFound(key int64) error {
	return fmt.Errorf("%w: %s key %d: %w", ErrNotFound, r.cfg.Table, key, pgx.ErrNoRows)
}

func (r *Repo[T]) newErr(key int64, err error) error {
	if isScanError(err) {
		return err
	}
	return fmt.Errorf("%w: get %s key %d: %w", ErrNewUnavailable, r.cfg.Table, key, err)
}
