package lazy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lazymigrate/lazymigrate/fallback"
	"github.com/lazymigrate/lazymigrate/internal/pgtable"
	"github.com/lazymigrate/lazymigrate/internal/pgtext"
	"github.com/lazymigrate/lazymigrate/internal/schema"
	"github.com/lazymigrate/lazymigrate/promote"
)

// ReconcileTaskType is the asynq task type of reconcile tasks, enqueued
// when a write could not be mirrored to OLD. Register a ReconcileHandler
// for it on the worker's asynq.ServeMux.
const ReconcileTaskType = "lazymigrate:reconcile"

// writes holds what the write path needs, built once by New.
type writes[T any] struct {
	pool   acquirer
	cols   []pgtable.Column // NEW columns written, in order
	keyIdx int
	encode encoder[T]
	ns     int64 // mirror lock namespace

	upsertSQL, updateSQL, lockRowSQL, deleteSQL string
	tombSQL, untombSQL, outboxSQL               string
	reconcileSQL                                string

	oldCols      []pgtable.Column // OLD columns mirrored
	oldFrom      []int            // per OLD column, its NEW column (without a reverse transform)
	oldUpsertSQL string
	oldDeleteSQL string
}

// mirrorLock is key's lock in NEW serializing the changes of key on their
// way to OLD. Keys equal in their low 32 bits share a lock, which only adds
// serialization.
func (w *writes[T]) mirrorLock(key int64) int64 { return w.ns | int64(uint32(key)) }

func newWrites[T any](c *Config[T], newDB DB, nt, ot *pgtable.Table, newCols, oldCols []pgtable.Column, keyCol string) (*writes[T], error) {
	pool, ok := newDB.(acquirer)
	if !ok {
		return nil, fmt.Errorf("%w (NEW is a %T)", ErrNoWrites, newDB)
	}
	if c.Copier.TableID() != nt.ID {
		return nil, fmt.Errorf("lazy: Config.Copier copies %s, not %s", c.Copier.TableID(), nt.ID)
	}
	names := make([]string, len(newCols))
	for i, col := range newCols {
		names[i] = col.Name
	}
	enc, err := newEncoder(names, c.Encode)
	if err != nil {
		return nil, fmt.Errorf("lazy: %w", err)
	}
	w := &writes[T]{pool: pool, cols: newCols, encode: enc, keyIdx: -1}
	for i, col := range newCols {
		if col.Name == keyCol {
			w.keyIdx = i
		}
	}
	if w.keyIdx < 0 {
		return nil, fmt.Errorf("lazy: Config.Columns must include the key column %q for writes", keyCol)
	}
	h := fnv.New32a()
	h.Write([]byte("lazymigrate-mirror:" + nt.ID))
	w.ns = int64(h.Sum32()) << 32

	key := newCols[w.keyIdx].Ident()
	list, sets, params, returning := make([]string, len(newCols)), []string{}, make([]string, len(newCols)), make([]string, 0, 2*len(newCols))
	for i, col := range newCols {
		list[i] = col.Ident()
		params[i] = fmt.Sprintf("$%d", i+1)
		returning = append(returning, col.Ident())
		if i != w.keyIdx {
			sets = append(sets, fmt.Sprintf("%s = $%d", col.Ident(), i+1))
		}
	}
	for _, col := range newCols {
		returning = append(returning, col.Ident()+"::text")
	}
	excluded := make([]string, 0, len(sets))
	for i, col := range newCols {
		if i != w.keyIdx {
			excluded = append(excluded, fmt.Sprintf("%s = EXCLUDED.%s", col.Ident(), col.Ident()))
		}
	}
	if len(sets) == 0 { // a table of keys only
		sets = []string{key + " = " + key}
		excluded = sets
	}
	ret := strings.Join(returning, ", ")
	w.upsertSQL = fmt.Sprintf(`INSERT INTO %s (%s) VALUES (%s) ON CONFLICT (%s) DO UPDATE SET %s RETURNING %s`,
		nt.Ident, strings.Join(list, ", "), strings.Join(params, ", "), key, strings.Join(excluded, ", "), ret)
	w.updateSQL = fmt.Sprintf(`UPDATE %s SET %s WHERE %s = $%d RETURNING %s`, nt.Ident, strings.Join(sets, ", "), key, w.keyIdx+1, ret)
	w.lockRowSQL = fmt.Sprintf(`SELECT %s FROM %s WHERE %s = $1 FOR UPDATE`, strings.Join(list, ", "), nt.Ident, key)
	w.reconcileSQL = fmt.Sprintf(`SELECT %s FROM %s WHERE %s = $1`, ret, nt.Ident, key)
	w.deleteSQL = fmt.Sprintf(`DELETE FROM %s WHERE %s = $1`, nt.Ident, key)
	w.tombSQL = `INSERT INTO ` + schema.Tombstones + ` (table_name, key) VALUES ($1, $2) ON CONFLICT DO NOTHING`
	w.untombSQL = `DELETE FROM ` + schema.Tombstones + ` WHERE table_name = $1 AND key = $2`
	w.outboxSQL = `INSERT INTO ` + schema.Outbox + ` (table_name, key) VALUES ($1, $2) RETURNING id`

	if c.DisableMirror {
		return w, nil
	}
	return w, w.buildMirror(c, ot, oldCols, keyCol)
}

// buildMirror prepares the OLD side. Without a reverse transform every
// mirrored OLD column takes the NEW column of the same name; schemas that
// differ otherwise need Config.ReverseTransform, and mirroring refuses to
// start without one rather than write wrong data.
func (w *writes[T]) buildMirror(c *Config[T], ot *pgtable.Table, oldCols []pgtable.Column, keyCol string) error {
	if c.Copier.HasTransform() && c.ReverseTransform == nil {
		return errors.New("lazy: the Copier transforms OLD rows, so mirroring to OLD needs Config.ReverseTransform (or set Config.DisableMirror)")
	}
	w.oldCols = oldCols
	w.oldFrom = make([]int, len(oldCols))
	okey := -1
	for i, oc := range oldCols {
		if oc.Name == keyCol {
			okey = i
		}
		w.oldFrom[i] = -1
		for j, nc := range w.cols {
			if nc.Name == oc.Name {
				w.oldFrom[i] = j
			}
		}
		if w.oldFrom[i] < 0 && c.ReverseTransform == nil {
			return fmt.Errorf("lazy: OLD column %q has no NEW column of that name: mirroring needs Config.ReverseTransform (or set Config.DisableMirror)", oc.Name)
		}
	}
	if okey < 0 {
		return fmt.Errorf("lazy: Config.OldColumns must include the key column %q for mirroring", keyCol)
	}
	list, casts, sets := make([]string, len(oldCols)), make([]string, len(oldCols)), make([]string, 0, len(oldCols))
	for i, oc := range oldCols {
		list[i] = oc.Ident()
		// Cast to the base type and let the assignment apply the modifier:
		// too long a value fails instead of being cut.
		casts[i] = fmt.Sprintf("$%d::text::%s", i+1, oc.BaseType)
		if i != okey {
			sets = append(sets, fmt.Sprintf("%s = %s", oc.Ident(), casts[i]))
		}
	}
	if len(sets) == 0 {
		sets = []string{list[okey] + " = " + list[okey]}
	}
	// UPDATE, else INSERT: OLD need not have a unique index on the key, and
	// the mirror lock keeps two mirrors of a key from racing here.
	w.oldUpsertSQL = fmt.Sprintf(`WITH u AS (UPDATE %s SET %s WHERE %s = %s RETURNING 1)
INSERT INTO %s (%s) SELECT %s WHERE NOT EXISTS (SELECT 1 FROM u)`,
		ot.Ident, strings.Join(sets, ", "), list[okey], casts[okey],
		ot.Ident, strings.Join(list, ", "), strings.Join(casts, ", "))
	w.oldDeleteSQL = fmt.Sprintf(`DELETE FROM %s WHERE %s = $1`, ot.Ident, list[okey])
	return nil
}

// mirror makes OLD's record of key what NEW holds: text is the NEW row in
// text form, or nil when the key is gone from NEW.
func (r *Repo[T]) mirror(ctx context.Context, key int64, text []*string) error {
	// Bounded on its own: NEW has committed, and a stalled OLD must neither
	// hang the write nor hold the key's lock; the reconcile path takes over.
	ctx, cancel := context.WithTimeout(ctx, r.cfg.MirrorTimeout)
	defer cancel()
	if text == nil {
		if _, err := r.old.Exec(ctx, r.w.oldDeleteSQL, key); err != nil {
			return fmt.Errorf("%w: mirror delete of %s key %d: %w", ErrOldUnavailable, r.cfg.Table, key, err)
		}
		return nil
	}
	vals, err := r.oldValues(ctx, key, text)
	if err != nil {
		return err
	}
	b := &pgx.Batch{}
	b.Queue(pgtext.PinInput)
	b.Queue(r.w.oldUpsertSQL, vals...)
	if err := r.old.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("%w: mirror %s key %d: %w", ErrOldUnavailable, r.cfg.Table, key, err)
	}
	return nil
}

// oldValues returns the mirrored OLD columns' values in text form.
func (r *Repo[T]) oldValues(ctx context.Context, key int64, text []*string) ([]any, error) {
	vals := make([]any, len(r.w.oldCols))
	if r.cfg.ReverseTransform == nil {
		for i, j := range r.w.oldFrom {
			vals[i] = text[j]
		}
		return vals, nil
	}
	row := make(promote.Row, len(text))
	for i, col := range r.w.cols {
		if text[i] == nil {
			row[col.Name] = nil
		} else {
			row[col.Name] = *text[i]
		}
	}
	old, err := r.cfg.ReverseTransform(ctx, row)
	if err != nil {
		return nil, fmt.Errorf("lazy: mirror %s key %d: reverse transform: %w", r.cfg.Table, key, err)
	}
	m := pgtype.NewMap()
	for i, oc := range r.w.oldCols {
		v, ok := old[oc.Name]
		if !ok {
			return nil, fmt.Errorf("lazy: mirror %s key %d: reverse transform returned no column %q", r.cfg.Table, key, oc.Name)
		}
		s, err := pgtext.Encode(m, oc.TypeOID, oc.Type, v)
		if err != nil {
			return nil, fmt.Errorf("lazy: mirror %s key %d: column %q: %w", r.cfg.Table, key, oc.Name, err)
		}
		vals[i] = s
	}
	return vals, nil
}

// finish completes a committed write in the background, so that the caller
// does not wait for it: it releases the key's mirror lock and conn, hands
// the outbox entry (once OLD has the change) and the key to the tidier,
// and, if the mirror failed, schedules a reconcile. Close waits for it.
func (r *Repo[T]) finish(ctx context.Context, h *held, outboxID int64, mirrorErr error) {
	h.taken = true
	conn, key := h.conn, h.key
	if mirrorErr != nil {
		r.mirrorTotal.WithLabelValues("failed").Inc()
	} else if r.mirrors() {
		r.mirrorTotal.WithLabelValues("ok").Inc()
	}
	r.bg.Add(1)
	go func() {
		defer r.bg.Done()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		b := &pgx.Batch{}
		if r.mirrors() {
			b.Queue(`SELECT pg_advisory_unlock($1)`, r.w.mirrorLock(key))
		}
		release(ctx, conn, b)
		if mirrorErr != nil {
			r.scheduleReconcile(ctx, key, mirrorErr)
			outboxID = 0 // the entry stays until a reconcile has mirrored the key
		}
		r.tidy.add(outboxID, key)
	}()
}

// tidier does, in batches, the bookkeeping writes need but their callers
// need not wait for: deleting outbox entries of changes OLD has, and
// marking written keys settled. Losing a batch in a crash costs a redundant
// reconcile (the relay's) or a redundant copy check, never data.
type tidier struct {
	flush func(ctx context.Context, ids, keys []int64)

	mu      sync.Mutex
	ids     []int64
	keys    []int64
	running bool
	done    chan struct{}
}

// tidyEvery is how long bookkeeping waits to be batched.
const tidyEvery = 20 * time.Millisecond

func (t *tidier) add(id, key int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if id != 0 {
		t.ids = append(t.ids, id)
	}
	t.keys = append(t.keys, key)
	if !t.running {
		t.running = true
		t.done = make(chan struct{})
		go t.loop()
	}
}

// loop flushes every tidyEvery until there is nothing left, then ends; the
// next add starts it again.
func (t *tidier) loop() {
	for {
		time.Sleep(tidyEvery)
		t.mu.Lock()
		ids, ks := t.ids, t.keys
		t.ids, t.keys = nil, nil
		if len(ids) == 0 && len(ks) == 0 {
			t.running = false
			close(t.done)
			t.mu.Unlock()
			return
		}
		t.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		t.flush(ctx, ids, ks)
		cancel()
	}
}

// wait returns once everything added so far is flushed.
func (t *tidier) wait() {
	t.mu.Lock()
	done, running := t.done, t.running
	t.mu.Unlock()
	if running {
		<-done
	}
}

func (r *Repo[T]) tidyFlush(ctx context.Context, ids, ks []int64) {
	if len(ids) > 0 {
		b := &pgx.Batch{}
		b.Queue(`BEGIN`)
		b.Queue(`SET LOCAL synchronous_commit TO off`)
		b.Queue(`DELETE FROM `+schema.Outbox+` WHERE id = ANY($1)`, ids)
		b.Queue(`COMMIT`)
		if err := r.new.SendBatch(ctx, b).Close(); err != nil {
			r.log.WarnContext(ctx, "lazymigrate: outbox entries not cleared; the relay will reconcile their keys", "table", r.cfg.Table, "num_entries", len(ids), "error", err)
		}
	}
	if r.cfg.Tracker != nil && len(ks) > 0 {
		// The keys' truth is in NEW now; the bits only save later reads and
		// sweeps some work, so a failure costs nothing else.
		_, _ = r.cfg.Tracker.Mark(ctx, ks)
	}
}

// abandon ends a write that failed before its commit: it rolls back and
// releases the key's mirror lock and conn.
func (r *Repo[T]) abandon(ctx context.Context, h *held) {
	h.taken = true
	b := &pgx.Batch{}
	b.Queue(`ROLLBACK`)
	if r.mirrors() {
		b.Queue(`SELECT pg_advisory_unlock($1)`, r.w.mirrorLock(h.key))
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	release(ctx, h.conn, b)
}

// release runs b on conn and returns conn to its pool. If b fails, conn is
// closed: that is the sure way to free a session lock it may hold.
func release(ctx context.Context, conn *pgxpool.Conn, b *pgx.Batch) {
	if b.Len() > 0 {
		if err := conn.SendBatch(ctx, b).Close(); err != nil {
			_ = conn.Conn().Close(ctx)
		}
	}
	conn.Release()
}

func (r *Repo[T]) scheduleReconcile(ctx context.Context, key int64, cause error) {
	r.log.WarnContext(ctx, "lazymigrate: mirror to OLD failed; the key will be reconciled", "table", r.cfg.Table, "key", key, "error", cause)
	if r.cfg.Reconciler == nil {
		return // the relay reconciles it after RelayDelay
	}
	payload, _ := json.Marshal(promote.Payload{Table: r.cfg.Table, Keys: []int64{key}})
	task := asynq.NewTask(ReconcileTaskType, payload)
	if _, err := r.cfg.Reconciler.EnqueueContext(ctx, task, asynq.Queue(r.cfg.ReconcileQueue), asynq.MaxRetry(20)); err != nil {
		r.log.WarnContext(ctx, "lazymigrate: reconcile task not enqueued; the relay will reconcile the key", "table", r.cfg.Table, "key", key, "error", err)
		return
	}
	r.reconcileTotal.WithLabelValues("enqueued").Inc()
}

// Table returns the table name the Repo was configured with.
func (r *Repo[T]) Table() string { return r.cfg.Table }

// Reconcile makes OLD's record of each key what NEW holds now (the row, or
// its absence) and clears the key's outbox entries. It runs under the key's
// mirror lock and reads NEW's current state, so reconciles and writes may
// run in any order and OLD still ends equal to NEW.
func (r *Repo[T]) Reconcile(ctx context.Context, ks ...int64) error {
	if r.w == nil || !r.mirrors() {
		return errors.New("lazy: Reconcile needs writes with mirroring configured")
	}
	for _, k := range ks {
		if err := r.writable(k); err != nil {
			return err
		}
		if _, err := r.reconcile(ctx, k, false); err != nil {
			return err
		}
	}
	return nil
}

// reconcile mirrors key's current NEW state to OLD. With try set it does
// not wait for a key whose lock is held (a write under way, which mirrors
// it anyway) and reports it busy.
func (r *Repo[T]) reconcile(ctx context.Context, key int64, try bool) (busy bool, err error) {
	defer func() {
		switch {
		case err != nil:
			r.reconcileTotal.WithLabelValues("failed").Inc()
		case !busy:
			r.reconcileTotal.WithLabelValues("done").Inc()
		}
	}()
	h, err := r.acquire(ctx, key)
	if err != nil {
		return false, err
	}
	defer r.releaseOnPanic(ctx, &h)
	if try {
		var got bool
		if err := h.conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, r.w.mirrorLock(key)).Scan(&got); err != nil {
			r.abandon(ctx, h)
			return false, r.writeErr(key, err)
		}
		if !got {
			r.abandon(ctx, h)
			return true, nil
		}
	} else if _, err := h.conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, r.w.mirrorLock(key)); err != nil {
		r.abandon(ctx, h)
		return false, r.writeErr(key, err)
	}
	// The outbox entries first, then the row: the row then reflects at
	// least every change whose entry is cleared below.
	ids, text, err := r.currentState(ctx, h)
	if err != nil {
		r.abandon(ctx, h)
		return false, r.writeErr(key, err)
	}
	if err := r.mirror(ctx, key, text); err != nil {
		r.abandon(ctx, h)
		return false, err
	}
	h.taken = true
	done := &pgx.Batch{}
	done.Queue(`DELETE FROM `+schema.Outbox+` WHERE id = ANY($1)`, ids)
	done.Queue(`SELECT pg_advisory_unlock($1)`, r.w.mirrorLock(key))
	release(ctx, h.conn, done)
	return false, nil
}

// currentState reads key's outbox entries and then its row in text form
// (nil when NEW has none), in one transaction under pinned output settings.
func (r *Repo[T]) currentState(ctx context.Context, h *held) (ids []int64, text []*string, err error) {
	tx, err := h.conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return nil, nil, err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, pgtext.PinOutput); err != nil {
		return nil, nil, err
	}
	if err := tx.QueryRow(ctx, `SELECT coalesce(array_agg(id), '{}') FROM `+schema.Outbox+` WHERE table_name = $1 AND key = $2`,
		r.tableID, h.key).Scan(&ids); err != nil {
		return nil, nil, err
	}
	rows, err := tx.Query(ctx, r.w.reconcileSQL, h.key)
	if err != nil {
		return nil, nil, err
	}
	n := len(r.w.cols)
	if rows.Next() {
		text = make([]*string, n)
		for i, v := range rows.RawValues()[n:] {
			if v != nil {
				s := string(v)
				text[i] = &s
			}
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	return ids, text, tx.Commit(ctx)
}

// RunRelay reconciles, every RelayInterval until ctx ends, the keys whose
// outbox entries are older than RelayDelay: changes whose mirror failed, or
// whose process died between the NEW commit and the OLD write, or written
// with PutTx or DeleteTx. Run one relay per table in at least one process;
// more are safe. It returns nil when ctx ends.
func (r *Repo[T]) RunRelay(ctx context.Context) error {
	if r.w == nil || !r.mirrors() {
		return errors.New("lazy: RunRelay needs writes with mirroring configured")
	}
	t := time.NewTicker(r.cfg.RelayInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if _, err := r.RelayOnce(ctx); err != nil && ctx.Err() == nil {
			r.log.WarnContext(ctx, "lazymigrate: relay pass left keys unreconciled; retrying", "table", r.cfg.Table, "error", err)
		}
	}
}

// RelayOnce runs one pass of the relay, oldest entries first, and returns
// how many keys it reconciled. A key that fails, or whose lock a write
// holds, is left for a later pass; the others go on. The error joins the
// failures.
func (r *Repo[T]) RelayOnce(ctx context.Context) (int, error) {
	rows, err := r.new.Query(ctx, `SELECT key FROM `+schema.Outbox+`
		WHERE table_name = $1 AND created_at < now() - $2::interval
		GROUP BY key ORDER BY min(created_at) LIMIT 1000`, r.tableID, r.cfg.RelayDelay)
	if err != nil {
		return 0, fmt.Errorf("%w: relay %s: %w", ErrNewUnavailable, r.cfg.Table, err)
	}
	ks, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return 0, fmt.Errorf("%w: relay %s: %w", ErrNewUnavailable, r.cfg.Table, err)
	}
	done := 0
	var errs []error
	for _, k := range ks {
		if ctx.Err() != nil {
			break
		}
		busy, err := r.reconcile(ctx, k, true)
		switch {
		case err != nil:
			errs = append(errs, err)
		case !busy:
			done++
		}
	}
	return done, errors.Join(errs...)
}

// Close waits for the background completion of writes, their bookkeeping
// included. Call it after the last write has returned, at shutdown.
func (r *Repo[T]) Close() {
	r.bg.Wait()
	r.tidy.wait()
}

// Reconciler is what a ReconcileHandler needs of a Repo.
type Reconciler interface {
	Table() string
	Reconcile(ctx context.Context, keys ...int64) error
}

// ReconcileHandler runs reconcile tasks: register it on an asynq.ServeMux
// for ReconcileTaskType.
type ReconcileHandler struct {
	repos map[string]Reconciler
}

var _ asynq.Handler = (*ReconcileHandler)(nil)

// NewReconcileHandler returns a handler for the tables of repos.
func NewReconcileHandler(repos ...Reconciler) (*ReconcileHandler, error) {
	if len(repos) == 0 {
		return nil, errors.New("lazy: NewReconcileHandler needs at least one Repo")
	}
	h := &ReconcileHandler{repos: map[string]Reconciler{}}
	for _, r := range repos {
		if _, dup := h.repos[r.Table()]; dup {
			return nil, fmt.Errorf("lazy: NewReconcileHandler: two repos for table %q", r.Table())
		}
		h.repos[r.Table()] = r
	}
	return h, nil
}

// ProcessTask reconciles the keys a task carries. A malformed payload fails
// at once without retry; a failure to reach either database is retried.
func (h *ReconcileHandler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	p, err := promote.DecodePayload(t.Payload())
	if err != nil {
		return err
	}
	r, ok := h.repos[p.Table]
	if !ok {
		return fmt.Errorf("lazy: no repo for table %q on this worker", p.Table)
	}
	return r.Reconcile(ctx, p.Keys...)
}

// isDataError reports whether err is the data's fault: a data exception
// or a constraint violation.
func isDataError(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		class := pgErr.Code[:2]
		return class == "22" || class == "23"
	}
	return false
}

func (r *Repo[T]) observeWrite(op string, start time.Time, err error) {
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	r.writesTotal.WithLabelValues(op, outcome).Inc()
	r.writeDuration.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

// ErrPurgeTooEarly is returned by PurgeTombstones while reads may still
// fall back to OLD.
var ErrPurgeTooEarly = errors.New("lazy: tombstones are purged only once reads no longer fall back to OLD (Config.Mode is new, for every key)")

// PurgeTombstones closes the table's migration and deletes its tombstones,
// and returns how many there were. Tombstones keep deleted keys from coming
// back from OLD; run it only after the migration is complete: the sweep has
// finished and verified, and reads are switched to mode new for every key
// (it refuses otherwise). Old tombstones cost only storage until then.
//
// Closing is what makes the purge safe against copies still under way or
// yet to come (promotion tasks queued or retried, Update and Migrate of a
// key NEW lacks, a sweep, processes that have not seen mode new yet): from
// the same transaction on, every copy of the table fails with
// promote.ErrClosed instead of reading a deleted row back in. Promotion
// tasks then end with nothing to do, Update and Migrate of a key NEW lacks
// return ErrNotFound, and a sweep stops. Closing cannot be undone: with the
// tombstones gone, copying again could resurrect deleted rows.
func (r *Repo[T]) PurgeTombstones(ctx context.Context) (int64, error) {
	if r.policy() != fallback.Full(fallback.ModeNew) { // without Config.Mode, always readthrough
		return 0, ErrPurgeTooEarly
	}
	tag, err := r.new.Exec(ctx, schema.CloseSQL, r.tableID, int(schema.DefaultStripeBits))
	if err != nil {
		return 0, fmt.Errorf("%w: purge tombstones of %s: %w", ErrNewUnavailable, r.cfg.Table, err)
	}
	return tag.RowsAffected(), nil
}
