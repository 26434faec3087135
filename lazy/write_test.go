package lazy_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/lazy"
	"github.com/lazymigrate/lazymigrate/promote"
)

// writeRepo returns a repo over b's databases that can write: its Copier
// shares b's tracker. cfg adds to the defaults.
func writeRepo(t *testing.T, b *testBundle, cfg lazy.Config[Account]) *lazy.Repo[Account] {
	t.Helper()
	cfg.Table = "accounts"
	if cfg.Copier == nil {
		cfg.Copier = b.copier
	}
	if cfg.Tracker == nil {
		cfg.Tracker = b.tracker
	}
	if cfg.Registerer == nil {
		cfg.Registerer = b.reg
	}
	repo, err := lazy.New(context.Background(), b.oldPool, b.newPool, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(repo.Close)
	b.oldQueries.Store(0)
	b.newQueries.Store(0)
	return repo
}

// tableText returns every row of accounts in db as text, by key.
func tableText(t *testing.T, db *testenv.Database) map[int64]string {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), `SELECT id, a::text FROM accounts a`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[int64]string{}
	for rows.Next() {
		var id int64
		var s string
		if err := rows.Scan(&id, &s); err != nil {
			t.Fatal(err)
		}
		out[id] = s
	}
	return out
}

func requireOldEqualsNew(t *testing.T, b *testBundle) {
	t.Helper()
	o, n := tableText(t, b.pair.Old), tableText(t, b.pair.New)
	for k, v := range n {
		if o[k] != v {
			t.Fatalf("key %d: OLD %q, NEW %q", k, o[k], v)
		}
	}
}

func outboxLen(t *testing.T, b *testBundle) int {
	t.Helper()
	var n int
	if err := b.pair.New.Pool.QueryRow(context.Background(), `SELECT count(*) FROM lazymigrate.outbox`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// same compares accounts, times by instant (pgx decodes them in Local).
func same(a, b Account) bool {
	return a.ID == b.ID && a.Email == b.Email && a.Name == b.Name && a.BalanceCents == b.BalanceCents &&
		a.Status == b.Status && a.CreatedAt.Equal(b.CreatedAt) && a.UpdatedAt.Equal(b.UpdatedAt)
}

func account(id int64, name string) Account {
	at := time.Date(2025, 3, 4, 5, 6, 7, 123456000, time.UTC)
	return Account{ID: id, Email: fmt.Sprintf("a%d@example.com", id), Name: name, BalanceCents: id * 10, Status: "active", CreatedAt: at, UpdatedAt: at}
}

func TestPutStoresAndMirrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	repo := writeRepo(t, b, lazy.Config[Account]{})

	for _, k := range []int64{3, 5000} { // in OLD already; nowhere yet
		stored, err := repo.Put(ctx, k, account(k, "put"))
		if err != nil {
			t.Fatal(err)
		}
		if !same(stored, account(k, "put")) {
			t.Fatalf("Put returned %+v, want the record as given", stored)
		}
		got, err := repo.Get(ctx, k)
		if err != nil || !same(got, stored) {
			t.Fatalf("Get(%d) after Put = %+v, %v", k, got, err)
		}
	}
	repo.Close()
	requireOldEqualsNew(t, b)
	if n := outboxLen(t, b); n != 0 {
		t.Fatalf("%d outbox entries left after mirrored writes", n)
	}
	if ok, err := b.tracker.IsSettled(ctx, 5000); err != nil || !ok {
		t.Fatalf("key 5000 not settled after Put: %v, %v", ok, err)
	}
	if got := b.metric(t, "lazymigrate_mirror_total", "ok"); got != 2 {
		t.Fatalf("mirror_total{ok} = %v, want 2", got)
	}
}

// Bad input is a clear error and writes nothing.
func TestWritesRejectBadInput(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	repo := writeRepo(t, b, lazy.Config[Account]{})
	before := tableText(t, b.pair.Old)

	if _, err := repo.Put(ctx, -1, account(-1, "x")); !errors.Is(err, lazy.ErrInvalidKey) {
		t.Fatalf("Put(-1) err = %v, want ErrInvalidKey", err)
	}
	if _, err := repo.Put(ctx, 4, account(5, "x")); !errors.Is(err, lazy.ErrKeyMismatch) {
		t.Fatalf("Put(4, record of 5) err = %v, want ErrKeyMismatch", err)
	}
	if _, err := repo.Update(ctx, 4, nil); err == nil {
		t.Fatal("Update with a nil function: want an error")
	}
	if _, err := repo.Update(ctx, 4, func(a *Account) error { a.ID = 6; return nil }); !errors.Is(err, lazy.ErrKeyMismatch) {
		t.Fatalf("Update that changes the key: err = %v, want ErrKeyMismatch", err)
	}
	if err := repo.Delete(ctx, -3); !errors.Is(err, lazy.ErrInvalidKey) {
		t.Fatalf("Delete(-3) err = %v, want ErrInvalidKey", err)
	}
	repo.Close()
	// Update promoted key 4 before failing; nothing else may have changed.
	if got := tableText(t, b.pair.New); len(got) != 1 || got[4] != before[4] {
		t.Fatalf("NEW after rejected writes = %v, want key 4 as promoted", got)
	}
	if got := tableText(t, b.pair.Old); len(got) != len(before) || got[4] != before[4] {
		t.Fatal("OLD changed by rejected writes")
	}
	readOnly, err := lazy.New(ctx, b.pair.Old.Pool, b.pair.New.Pool, &lazy.Config[Account]{Table: "accounts"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := readOnly.Put(ctx, 1, account(1, "x")); !errors.Is(err, lazy.ErrNoWrites) {
		t.Fatalf("Put on a repo without a Copier: err = %v, want ErrNoWrites", err)
	}
}

func TestUpdatePromotesAndModifies(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	repo := writeRepo(t, b, lazy.Config[Account]{})

	got, err := repo.Update(ctx, 7, func(a *Account) error {
		if a.Email != "user7@example.com" {
			return fmt.Errorf("fn got %+v, want OLD's record", a)
		}
		a.BalanceCents += 1000
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.BalanceCents != 7*100+7+1000 {
		t.Fatalf("Update returned balance %d", got.BalanceCents)
	}
	refused := errors.New("insufficient funds")
	if _, err := repo.Update(ctx, 7, func(a *Account) error { a.BalanceCents = 0; return refused }); !errors.Is(err, refused) {
		t.Fatalf("Update with a failing fn: err = %v, want fn's error", err)
	}
	if now, _ := repo.Get(ctx, 7); !same(now, got) {
		t.Fatalf("a failed Update changed the record: %+v", now)
	}
	if _, err := repo.Update(ctx, 5000, func(*Account) error { return nil }); !errors.Is(err, lazy.ErrNotFound) {
		t.Fatalf("Update of a key in neither database: err = %v, want ErrNotFound", err)
	}
	repo.Close()
	requireOldEqualsNew(t, b)
}

func TestDeleteTombstonesAndMirrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	repo := writeRepo(t, b, lazy.Config[Account]{})

	if err := repo.Delete(ctx, 8); err != nil { // only in OLD
		t.Fatal(err)
	}
	if err := repo.Delete(ctx, 8); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
	if _, err := repo.Get(ctx, 8); !errors.Is(err, lazy.ErrNotFound) {
		t.Fatalf("Get after Delete: err = %v, want ErrNotFound", err)
	}
	if err := repo.Migrate(ctx, 8); !errors.Is(err, lazy.ErrNotFound) {
		t.Fatalf("Migrate of a deleted key: err = %v, want ErrNotFound", err)
	}
	repo.Close()
	if _, ok := tableText(t, b.pair.Old)[8]; ok {
		t.Fatal("the delete was not mirrored to OLD")
	}

	// A Put creates the key again.
	if _, err := repo.Put(ctx, 8, account(8, "again")); err != nil {
		t.Fatal(err)
	}
	if got, err := repo.Get(ctx, 8); err != nil || got.Name != "again" {
		t.Fatalf("Get after re-Put = %+v, %v", got, err)
	}
	repo.Close()
	requireOldEqualsNew(t, b)
}

// Invariant 3: a key deleted while its promotion is between the OLD read
// and the NEW insert stays deleted; so it does after the tracker is lost,
// rebuilt, its range swept and the key read again. Mirroring is off, so
// OLD keeps the row that must not come back.
func TestDeleteDuringPromotionNeverResurrects(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	paused, resume := make(chan struct{}), make(chan struct{})
	slow, err := promote.NewCopier(ctx, b.pair.Old.Pool, b.pair.New.Pool, &promote.CopierConfig{
		Table: "accounts", Marker: b.tracker,
		Hooks: promote.Hooks{AfterRead: func(context.Context, []int64) { close(paused); <-resume }},
	})
	if err != nil {
		t.Fatal(err)
	}
	repo := writeRepo(t, b, lazy.Config[Account]{DisableMirror: true})

	copied := make(chan error, 1)
	go func() { _, err := slow.CopyKeys(ctx, []int64{9}); copied <- err }()
	<-paused // the promotion has read key 9 from OLD
	if err := repo.Delete(ctx, 9); err != nil {
		t.Fatal(err)
	}
	close(resume)
	if err := <-copied; err != nil {
		t.Fatal(err)
	}
	requireGone := func(stage string) {
		t.Helper()
		if _, ok := tableText(t, b.pair.New)[9]; ok {
			t.Fatalf("%s: deleted key 9 is back in NEW", stage)
		}
		if _, err := repo.Get(ctx, 9); !errors.Is(err, lazy.ErrNotFound) {
			t.Fatalf("%s: Get(9) err = %v, want ErrNotFound", stage, err)
		}
	}
	requireGone("after the paused promotion")

	repo.Close()
	if err := b.tracker.Reset(ctx); err != nil { // Redis lost every bit
		t.Fatal(err)
	}
	requireGone("with the tracker empty")
	if _, err := b.tracker.Rebuild(ctx, b.pair.New.Pool, "accounts", "id"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.copier.CopyRange(ctx, 0, 200); err != nil { // a sweep of its range
		t.Fatal(err)
	}
	requireGone("after rebuild and sweep")
	if _, ok := tableText(t, b.pair.Old)[9]; !ok {
		t.Fatal("OLD lost key 9: the test no longer proves anything")
	}
}

// OLD refusing writes for a while: writes still succeed; once OLD is back
// and the relay has run, OLD equals NEW.
func TestMirrorFailureConverges(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	refuseOldWrites(t, b)
	repo := writeRepo(t, b, lazy.Config[Account]{RelayDelay: time.Millisecond})

	if _, err := repo.Put(ctx, 1, account(1, "while OLD refuses")); err != nil {
		t.Fatalf("Put while OLD refuses writes: %v", err)
	}
	if _, err := repo.Update(ctx, 2, func(a *Account) error { a.Name = "updated"; return nil }); err != nil {
		t.Fatalf("Update while OLD refuses writes: %v", err)
	}
	if err := repo.Delete(ctx, 3); err != nil {
		t.Fatalf("Delete while OLD refuses writes: %v", err)
	}
	if _, err := repo.Put(ctx, 5000, account(5000, "new key")); err != nil {
		t.Fatal(err)
	}
	repo.Close()
	if got := b.metric(t, "lazymigrate_mirror_total", "failed"); got != 4 {
		t.Fatalf("mirror_total{failed} = %v, want 4", got)
	}
	if n := outboxLen(t, b); n != 4 {
		t.Fatalf("outbox holds %d entries, want 4", n)
	}
	if _, err := repo.RelayOnce(ctx); err == nil {
		t.Fatal("the relay reported success while OLD still refuses writes")
	}

	b.pair.Old.Exec(t, `DELETE FROM refuse`)
	testenv.Eventually(t, 10*time.Second, "the relay drains the outbox", func() bool {
		_, err := repo.RelayOnce(ctx)
		return err == nil && outboxLen(t, b) == 0
	})
	requireOldEqualsNew(t, b)
	if _, ok := tableText(t, b.pair.Old)[3]; ok {
		t.Fatal("the delete of key 3 never reached OLD")
	}
}

func TestWritesInCallersTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	repo := writeRepo(t, b, lazy.Config[Account]{RelayDelay: time.Millisecond})

	tx, err := b.pair.New.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Rolls back whichever tx is open if the test fails: left open, it
	// would keep the pool's Close (a cleanup) waiting for ever.
	defer func() { _ = tx.Rollback(ctx) }()
	if err := repo.PutTx(ctx, tx, 11, account(11, "in tx")); err != nil {
		t.Fatal(err)
	}
	if err := repo.DeleteTx(ctx, tx, 12); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `UPDATE accounts SET name = 'same tx' WHERE id = 11`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := repo.Get(ctx, 11); got.Name == "in tx" {
		t.Fatal("a rolled-back PutTx is visible")
	}

	tx, err = b.pair.New.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := repo.PutTx(ctx, tx, 11, account(11, "in tx")); err != nil {
		t.Fatal(err)
	}
	if err := repo.DeleteTx(ctx, tx, 12); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := repo.Reconcile(ctx, 11); err != nil {
		t.Fatal(err)
	}
	if n, err := repo.RelayOnce(ctx); err != nil || n != 1 {
		t.Fatalf("relay reconciled %d keys (%v), want key 12", n, err)
	}
	requireOldEqualsNew(t, b)
	if _, ok := tableText(t, b.pair.Old)[12]; ok {
		t.Fatal("DeleteTx never reached OLD")
	}
	if n := outboxLen(t, b); n != 0 {
		t.Fatalf("%d outbox entries left", n)
	}
}

func TestMirroringNeedsReverseTransformWhenSchemasDiffer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p, cp := peoplePair(t)
	_, err := lazy.New(ctx, p.Old.Pool, p.New.Pool, &lazy.Config[person]{Table: "people", Copier: cp, OldColumns: []string{"id", "first", "last"}})
	if err == nil {
		t.Fatal("mirroring across differing schemas without a ReverseTransform: want an error")
	}
	if _, err := lazy.New(ctx, p.Old.Pool, p.New.Pool, &lazy.Config[person]{Table: "people", Copier: cp, DisableMirror: true, OldColumns: []string{"id", "first", "last"}}); err != nil {
		t.Fatalf("the same without mirroring: %v", err)
	}
}

// An Update of a key not yet in NEW promotes it, which needs NEW
// connections of its own: holding one while waiting for another deadlocks
// a small pool as soon as updates run side by side.
func TestConcurrentUpdatesDoNotExhaustPool(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	small := b.pair.New.NewPool(t, func(c *pgxpool.Config) { c.MaxConns = 2 })
	cp, err := promote.NewCopier(context.Background(), b.pair.Old.Pool, small, &promote.CopierConfig{Table: "accounts"})
	if err != nil {
		t.Fatal(err)
	}
	repo, err := lazy.New(context.Background(), b.pair.Old.Pool, small, &lazy.Config[Account]{Table: "accounts", Copier: cp})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(repo.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Go(func() {
			_, errs[i] = repo.Update(ctx, int64(20+i), func(a *Account) error { a.Status = "updated"; return nil })
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Update %d: %v", i, err)
		}
	}
}

// A write that cannot be mirrored enqueues a reconcile task; a worker
// retries it until OLD takes the change.
func TestReconcileTasksConverge(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	refuseOldWrites(t, b)
	queue := "lmtest-" + testenv.Suffix()
	repo := writeRepo(t, b, lazy.Config[Account]{
		Reconciler: asynq.NewClientFromRedisClient(b.rdb), ReconcileQueue: queue,
	})
	h, err := lazy.NewReconcileHandler(repo)
	if err != nil {
		t.Fatal(err)
	}
	srv := asynq.NewServerFromRedisClient(b.rdb, asynq.Config{
		Queues: map[string]int{queue: 1}, TaskCheckInterval: 20 * time.Millisecond, LogLevel: asynq.FatalLevel,
		RetryDelayFunc: func(int, error, *asynq.Task) time.Duration { return 50 * time.Millisecond },
	})
	mux := asynq.NewServeMux()
	mux.Handle(lazy.ReconcileTaskType, h)
	if err := srv.Start(mux); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Shutdown()
		_ = asynq.NewInspectorFromRedisClient(b.rdb).DeleteQueue(queue, true)
	})

	for _, k := range []int64{1, 2, 5000} {
		if _, err := repo.Put(ctx, k, account(k, "while OLD refuses")); err != nil {
			t.Fatal(err)
		}
	}
	if err := repo.Delete(ctx, 3); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "reconcile tasks enqueued", func() bool {
		return b.metric(t, "lazymigrate_reconcile_total", "enqueued") == 4
	})
	b.pair.Old.Exec(t, `DELETE FROM refuse`)
	testenv.Eventually(t, 20*time.Second, "reconcile tasks drain the outbox", func() bool { return outboxLen(t, b) == 0 })
	requireOldEqualsNew(t, b)
	if _, ok := tableText(t, b.pair.Old)[3]; ok {
		t.Fatal("the delete of key 3 never reached OLD")
	}
}

// refuseOldWrites makes OLD refuse writes to accounts until the test
// deletes the row of its table refuse.
func refuseOldWrites(t *testing.T, b *testBundle) {
	t.Helper()
	b.pair.Old.Exec(t, `
		CREATE TABLE refuse (on_ boolean);
		INSERT INTO refuse VALUES (true);
		CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
			$$ BEGIN IF EXISTS (SELECT 1 FROM refuse) THEN RAISE EXCEPTION 'OLD refuses writes'; END IF; RETURN NULL; END $$;
		CREATE TRIGGER refuse BEFORE INSERT OR UPDATE OR DELETE ON accounts FOR EACH STATEMENT EXECUTE FUNCTION refuse();`)
}

// Mirroring across differing schemas goes through the ReverseTransform.
func TestMirrorWithReverseTransform(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p, cp := peoplePair(t)
	p.Old.Exec(t, `INSERT INTO people VALUES (1, 'Ada', 'Lovelace')`)
	repo, err := lazy.New(ctx, p.Old.Pool, p.New.Pool, &lazy.Config[person]{
		Table: "people", Copier: cp, OldColumns: []string{"id", "first", "last"},
		ScanOld: func(row pgx.CollectableRow) (person, error) {
			var pp person
			var first, last string
			err := row.Scan(&pp.ID, &first, &last)
			pp.FullName = first + " " + last
			return pp, err
		},
		ReverseTransform: func(_ context.Context, n promote.Row) (promote.Row, error) {
			first, last, _ := strings.Cut(n["full_name"].(string), " ")
			return promote.Row{"id": n["id"], "first": first, "last": last}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(repo.Close)
	if _, err := repo.Update(ctx, 1, func(pp *person) error { pp.FullName = "Augusta King"; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Put(ctx, 2, person{ID: 2, FullName: "Alan Turing"}); err != nil {
		t.Fatal(err)
	}
	rows, err := p.Old.Pool.Query(ctx, `SELECT id, first, last FROM people ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowToMap)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0]["first"] != "Augusta" || got[0]["last"] != "King" || got[1]["first"] != "Alan" {
		t.Fatalf("OLD after mirrored writes = %v", got)
	}
}

// A panicking update function must not leave the key locked: later writes
// of the key go through.
func TestUpdatePanicReleasesKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	repo := writeRepo(t, b, lazy.Config[Account]{})
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("the update function's panic was swallowed")
			}
		}()
		_, _ = repo.Update(ctx, 4, func(*Account) error { panic("boom") })
	}()
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := repo.Put(wctx, 4, account(4, "after the panic")); err != nil {
		t.Fatalf("Put after a panicking Update: %v", err)
	}
}

// One key OLD refuses for good must not keep the relay from the others.
func TestRelayGoesPastAPoisonedKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	b.pair.Old.Exec(t, `ALTER TABLE accounts ADD CONSTRAINT no_poison CHECK (name <> 'poison') NOT VALID`)
	refuseOldWrites(t, b)
	repo := writeRepo(t, b, lazy.Config[Account]{RelayDelay: time.Millisecond})
	if _, err := repo.Put(ctx, 1, account(1, "poison")); err != nil { // oldest entry
		t.Fatal(err)
	}
	for k := int64(2); k <= 30; k++ {
		if _, err := repo.Put(ctx, k, account(k, "while OLD refuses")); err != nil {
			t.Fatal(err)
		}
	}
	repo.Close()
	b.pair.Old.Exec(t, `DELETE FROM refuse`)
	testenv.Eventually(t, 10*time.Second, "only the poisoned key left in the outbox", func() bool {
		n, err := repo.RelayOnce(ctx)
		return err != nil && n >= 0 && outboxLen(t, b) == 1
	})
	o, n := tableText(t, b.pair.Old), tableText(t, b.pair.New)
	for k := int64(2); k <= 30; k++ {
		if o[k] != n[k] {
			t.Fatalf("key %d not mirrored past the poisoned key", k)
		}
	}
}

// A stalled OLD bounds a write by MirrorTimeout: NEW has committed, and the
// change is left to a reconcile.
func TestWriteReturnsWhenOldStalls(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	repo := writeRepo(t, b, lazy.Config[Account]{MirrorTimeout: 200 * time.Millisecond})
	lock, err := b.pair.Old.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lock.Rollback(ctx) }() // if the test fails with OLD locked
	if _, err := lock.Exec(ctx, `LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := repo.Put(ctx, 1, account(1, "while OLD stalls")); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Put with OLD stalled: %v (NEW committed, so the write succeeded)", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Put still blocked 10s after MirrorTimeout with OLD stalled")
	}
	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	repo.Close()
	if got := b.metric(t, "lazymigrate_mirror_total", "failed"); got != 1 {
		t.Fatalf("mirror_total{failed} = %v, want 1", got)
	}
	if err := repo.Reconcile(ctx, 1); err != nil {
		t.Fatal(err)
	}
	requireOldEqualsNew(t, b)
}

// Without mirroring, writes in a caller's transaction still exclude other
// writes of the key: a Put may not interleave with an open DeleteTx.
func TestDeleteTxExcludesPutWithoutMirroring(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	repo := writeRepo(t, b, lazy.Config[Account]{DisableMirror: true})
	tx, err := b.pair.New.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Rolled back however the test ends: left open after a failure, it
	// would keep the Put waiting, and the pool's Close (a cleanup) waiting
	// for both, until the package times out.
	defer func() { _ = tx.Rollback(ctx) }()
	if err := repo.DeleteTx(ctx, tx, 5000); err != nil {
		t.Fatal(err)
	}
	put := make(chan error, 1)
	go func() { _, err := repo.Put(ctx, 5000, account(5000, "put")); put <- err }()
	select {
	case err := <-put:
		t.Fatalf("Put went through while a DeleteTx of the key was open (err %v)", err)
	case <-time.After(300 * time.Millisecond): // Put must wait; what is tested is that it does not finish
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-put:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Put still waiting 10s after the DeleteTx committed")
	}
	if err := repo.Migrate(ctx, 5000); err != nil {
		t.Fatalf("Migrate after Delete then Put: %v (a row and a tombstone side by side?)", err)
	}
}

// A panicking Scan after the NEW commit must release the key too.
func TestPanicAfterCommitReleasesKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	panicking := true
	repo := writeRepo(t, b, lazy.Config[Account]{Scan: func(row pgx.CollectableRow) (Account, error) {
		if panicking {
			panic("scan")
		}
		return pgx.RowToStructByName[Account](row)
	}})
	func() {
		defer func() { _ = recover() }()
		_, _ = repo.Put(ctx, 4, account(4, "x"))
		t.Fatal("the Scan panic was swallowed")
	}()
	panicking = false
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := repo.Put(wctx, 4, account(4, "after the panic")); err != nil {
		t.Fatalf("Put after a panicking Scan: %v", err)
	}
}

// person is a record of peoplePair's NEW table.
type person struct {
	ID       int64  `db:"id"`
	FullName string `db:"full_name"`
}

// peoplePair returns databases whose schemas differ, OLD people(id, first,
// last) and NEW people(id, full_name), and a Copier transforming between
// them.
func peoplePair(t *testing.T) (*testenv.Pair, *promote.Copier) {
	t.Helper()
	ctx := context.Background()
	p := &testenv.Pair{Old: testenv.NewDatabase(t, "old"), New: testenv.NewDatabase(t, "new")}
	p.Old.Exec(t, `CREATE TABLE people (id bigint PRIMARY KEY, first text, last text)`)
	p.New.Exec(t, `CREATE TABLE people (id bigint PRIMARY KEY, full_name text)`)
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		t.Fatal(err)
	}
	cp, err := promote.NewCopier(ctx, p.Old.Pool, p.New.Pool, &promote.CopierConfig{
		Table: "people",
		Transform: func(_ context.Context, o promote.Row) (promote.Row, error) {
			return promote.Row{"id": o["id"], "full_name": fmt.Sprint(o["first"], " ", o["last"])}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return p, cp
}

// A row NEW refuses in a caller's transaction is the data's fault: PutTx
// must not report it as NEW being unavailable.
func TestPutTxDataErrorIsNotAnOutage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	b.pair.New.Exec(t, `ALTER TABLE accounts ADD CONSTRAINT positive CHECK (balance_cents >= 0)`)
	repo := writeRepo(t, b, lazy.Config[Account]{})
	tx, err := b.pair.New.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	a := account(11, "negative")
	a.BalanceCents = -1
	err = repo.PutTx(ctx, tx, 11, a)
	if err == nil || errors.Is(err, lazy.ErrNewUnavailable) {
		t.Fatalf("PutTx of a row NEW refuses: err = %v, want a data error, not ErrNewUnavailable", err)
	}
}

// A key past what the key column's type holds (an integer column; OLD's
// too when writes are mirrored) is an invalid key for every write, and
// nothing is written. It read as NEW being unavailable: pgx failed to
// encode it.
func TestWritesRefuseAKeyPastTheKeyColumnsType(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := testenv.NewPair(t)
	p.New.Exec(t, `CREATE TABLE items (id bigint PRIMARY KEY, label text)`)
	p.Old.Exec(t, `CREATE TABLE items (id integer PRIMARY KEY, label text)`)
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		t.Fatal(err)
	}
	type item struct {
		ID    int64
		Label string
	}
	cp, err := promote.NewCopier(ctx, p.Old.Pool, p.New.Pool, &promote.CopierConfig{Table: "items"})
	if err != nil {
		t.Fatal(err)
	}
	for _, mirrored := range []bool{true, false} {
		repo, err := lazy.New(ctx, p.Old.Pool, p.New.Pool, &lazy.Config[item]{Table: "items", Copier: cp, DisableMirror: !mirrored})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(repo.Close)
		past := int64(math.MaxInt32) + 1 // OLD's integer cannot hold it
		if !mirrored {
			past = -1 // NEW's bigint holds every other key
		}
		writes := map[string]func() error{
			"Put":     func() error { _, err := repo.Put(ctx, past, item{past, "x"}); return err },
			"Update":  func() error { _, err := repo.Update(ctx, past, func(*item) error { return nil }); return err },
			"Delete":  func() error { return repo.Delete(ctx, past) },
			"Migrate": func() error { return repo.Migrate(ctx, past) },
		}
		for name, write := range writes {
			if err := write(); !errors.Is(err, lazy.ErrInvalidKey) || errors.Is(err, lazy.ErrNewUnavailable) {
				t.Errorf("mirrored %v: %s(%d) err = %v, want ErrInvalidKey", mirrored, name, past, err)
			}
		}
		if !mirrored {
			big := int64(math.MaxInt32) + 1
			if _, err := repo.Put(ctx, big, item{big, "only NEW"}); err != nil {
				t.Errorf("unmirrored Put(%d), which NEW's bigint holds: %v", big, err)
			}
		}
	}
	var n int
	if err := p.New.Pool.QueryRow(ctx, `SELECT count(*) FROM items WHERE id <= 2147483647`).Scan(&n); err != nil || n != 0 {
		t.Errorf("NEW holds %d rows of refused writes (%v), want 0", n, err)
	}
	if err := p.New.Pool.QueryRow(ctx, `SELECT count(*) FROM lazymigrate.tombstones`).Scan(&n); err != nil || n != 0 {
		t.Errorf("NEW holds %d tombstones of refused deletes (%v), want 0", n, err)
	}
}
