package lazy_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lazymigrate/lazymigrate/fallback"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/lazy"
)

// switchableNew is a pool on NEW whose server can be taken away: down
// refuses new connections and kills the open ones, as a crashed or
// fenced-off NEW would.
type switchableNew struct {
	pool *pgxpool.Pool
	app  string
	down atomic.Bool
	hang atomic.Bool // dials wait for their deadline instead of failing
}

func newSwitchable(t *testing.T, b *testBundle) *switchableNew {
	t.Helper()
	s := &switchableNew{app: "lm-newdown-" + testenv.Suffix()}
	s.pool = b.pair.New.NewPool(t, func(c *pgxpool.Config) {
		c.ConnConfig.RuntimeParams["application_name"] = s.app
		c.ConnConfig.ConnectTimeout = time.Second
		c.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if s.hang.Load() {
				<-ctx.Done()
				return nil, ctx.Err()
			}
			if s.down.Load() {
				return nil, &net.OpError{Op: "dial", Net: network, Err: syscall.ECONNREFUSED}
			}
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}
	})
	return s
}

func (s *switchableNew) setDown(t *testing.T, b *testBundle, down bool) {
	t.Helper()
	s.down.Store(down)
	s.kill(t, b, down)
}

// setHanging makes NEW stop answering: dials hang until pgx's ConnectTimeout.
func (s *switchableNew) setHanging(t *testing.T, b *testBundle) {
	t.Helper()
	s.hang.Store(true)
	s.kill(t, b, true)
}

func (s *switchableNew) kill(t *testing.T, b *testBundle, down bool) {
	t.Helper()
	if down {
		b.pair.Old.Exec(t, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1`, s.app)
	}
}

// Invariant 7, NEW down: with ServeOldWhileNewDown, reads are answered from
// OLD, which mirroring kept current (a written key reads as written, a
// deleted one as not found); writes fail; once NEW is back, reads go to it
// again. Without the option, or in mode "new", a read is an error that
// says NEW is unavailable.
func TestReadsServedFromOldWhileNewDown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	nw := newSwitchable(t, b)
	newRepo := func(cfg lazy.Config[Account]) *lazy.Repo[Account] {
		t.Helper()
		cfg.Table, cfg.Copier, cfg.Tracker, cfg.Registerer = "accounts", b.copier, b.tracker, b.reg
		repo, err := lazy.New(ctx, b.pair.Old.Pool, nw.pool, &cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(repo.Close)
		return repo
	}
	repo := newRepo(lazy.Config[Account]{ServeOldWhileNewDown: true, NewDownRetry: 50 * time.Millisecond})
	strict := newRepo(lazy.Config[Account]{})
	sw, err := fallback.New(nil, "accounts", nil)
	if err != nil {
		t.Fatal(err)
	}
	sw.Override(fallback.ModeNew)
	completed := newRepo(lazy.Config[Account]{ServeOldWhileNewDown: true, Mode: sw})

	written, err := repo.Put(ctx, 1, account(1, "written in NEW"))
	if err != nil {
		t.Fatal(err)
	}
	if err := repo.Delete(ctx, 2); err != nil {
		t.Fatal(err)
	}

	nw.setDown(t, b, true)
	if got, err := repo.Get(ctx, 1); err != nil || !same(got, written) {
		t.Fatalf("Get(1) with NEW down = %+v, %v; want the write, from OLD", got, err)
	}
	if _, err := repo.Get(ctx, 2); !errors.Is(err, lazy.ErrNotFound) {
		t.Fatalf("Get(deleted 2) with NEW down: err = %v, want ErrNotFound", err)
	}
	if got, err := repo.Get(ctx, 3); err != nil || got.ID != 3 {
		t.Fatalf("Get(3) with NEW down = %+v, %v; want OLD's row", got, err)
	}
	many, err := repo.GetMany(ctx, []int64{1, 2, 3, 5000})
	if err != nil || len(many) != 2 || !same(many[1], written) || many[3].ID != 3 {
		t.Fatalf("GetMany with NEW down = %v, %v; want keys 1 and 3", keysOf(many), err)
	}
	if got := b.metric(t, "lazymigrate_reads_total", "old_new_down"); got != 4 {
		t.Fatalf("reads_total{old_new_down} = %v, want 4", got)
	}
	if _, err := repo.Put(ctx, 3, account(3, "while NEW is down")); !errors.Is(err, lazy.ErrNewUnavailable) {
		t.Fatalf("Put with NEW down: err = %v, want ErrNewUnavailable", err)
	}
	for name, r := range map[string]*lazy.Repo[Account]{"without the option": strict, "in mode new": completed} {
		if _, err := r.Get(ctx, 3); !errors.Is(err, lazy.ErrNewUnavailable) {
			t.Fatalf("Get(3) %s with NEW down: err = %v, want ErrNewUnavailable", name, err)
		}
		if _, err := r.GetMany(ctx, []int64{3}); !errors.Is(err, lazy.ErrNewUnavailable) {
			t.Fatalf("GetMany %s with NEW down: err = %v, want ErrNewUnavailable", name, err)
		}
	}
	if got, err := repo.Get(ctx, 3); err != nil || got.Name == "while NEW is down" {
		t.Fatalf("Get(3) after the refused Put = %+v, %v; want OLD's row unchanged", got, err)
	}

	nw.setDown(t, b, false)
	before := b.metric(t, "lazymigrate_reads_total", "new")
	deadline := time.Now().Add(10 * time.Second)
	for b.metric(t, "lazymigrate_reads_total", "new") == before {
		if time.Now().After(deadline) {
			t.Fatal("reads did not go back to NEW within 10s of it coming back")
		}
		if got, err := repo.Get(ctx, 1); err != nil || !same(got, written) {
			t.Fatalf("Get(1) as NEW comes back = %+v, %v", got, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Serving OLD while NEW is down relies on mirroring, and is refused without.
func TestServeOldWhileNewDownNeedsMirroring(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	_, err := lazy.New(context.Background(), b.oldPool, b.newPool, &lazy.Config[Account]{
		Table: "accounts", ServeOldWhileNewDown: true, DisableMirror: true})
	if err == nil || !strings.Contains(err.Error(), "needs mirroring") {
		t.Fatalf("New with ServeOldWhileNewDown and DisableMirror: err = %v, want one saying it needs mirroring", err)
	}
}

// Only a NEW that cannot be reached sends reads to OLD: a connection of the
// pool killed while NEW is up is retried on another, and a Scan error, even
// one that reads like a cut connection, is the caller's.
func TestNewDownIsNotABrokenConnectionOrAScanError(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	nw := newSwitchable(t, b)
	scan := func(row pgx.CollectableRow) (Account, error) {
		a, err := pgx.RowToStructByName[Account](row)
		if err == nil && a.Name == "truncated" {
			err = io.ErrUnexpectedEOF // as a decoder of a truncated payload says
		}
		return a, err
	}
	repo, err := lazy.New(ctx, b.pair.Old.Pool, nw.pool, &lazy.Config[Account]{Table: "accounts", Copier: b.copier,
		Tracker: b.tracker, Registerer: b.reg, Scan: scan, ServeOldWhileNewDown: true, NewDownRetry: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(repo.Close)
	written, err := repo.Put(ctx, 1, account(1, "written in NEW"))
	if err != nil {
		t.Fatal(err)
	}
	b.pair.New.Exec(t, `INSERT INTO accounts VALUES (2, 'x@example.com', 'truncated', 1, 'active', now(), now())`)

	if _, err := repo.Get(ctx, 2); !errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, lazy.ErrNewUnavailable) {
		t.Fatalf("Get(2) with a failing Scan: err = %v, want the Scan's error", err)
	}
	// Kill the pool's connection while it is idle, and wait for it to go.
	b.pair.Old.Exec(t, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1`, nw.app)
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		if err := b.pair.Old.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1`, nw.app).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the killed backend did not go within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	for range 3 {
		if got, err := repo.Get(ctx, 1); err != nil || !same(got, written) {
			t.Fatalf("Get(1) after a connection was killed = %+v, %v", got, err)
		}
	}
	if n := b.metric(t, "lazymigrate_reads_total", "old_new_down"); n != 0 {
		t.Fatalf("reads_total{old_new_down} = %v with NEW up, want 0", n)
	}
}

// A NEW that stops answering, rather than refusing, is down once a dial
// outlasts pgx's ConnectTimeout, well within the caller's deadline.
func TestReadsServedFromOldWhileNewHangs(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	nw := newSwitchable(t, b)
	repo, err := lazy.New(context.Background(), b.pair.Old.Pool, nw.pool, &lazy.Config[Account]{Table: "accounts",
		Copier: b.copier, Tracker: b.tracker, Registerer: b.reg, ServeOldWhileNewDown: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(repo.Close)
	nw.setHanging(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if got, err := repo.Get(ctx, 3); err != nil || got.ID != 3 {
		t.Fatalf("Get(3) with NEW hanging = %+v, %v; want OLD's row", got, err)
	}
	if n := b.metric(t, "lazymigrate_reads_total", "old_new_down"); n != 1 {
		t.Fatalf("reads_total{old_new_down} = %v, want 1", n)
	}
}

// A NEW that stops answering on a connection already open (here a lock
// held on the table, as a DDL would) is down once a read outlasts
// NewReadTimeout: the read is served from OLD, and the next ones go
// straight there for NewDownRetry.
func TestReadsServedFromOldWhileNewStalls(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	if _, err := lazy.New(ctx, b.oldPool, b.newPool, &lazy.Config[Account]{Table: "accounts", NewReadTimeout: time.Second}); err == nil {
		t.Fatal("NewReadTimeout without ServeOldWhileNewDown: no error")
	}
	repo, err := lazy.New(ctx, b.oldPool, b.newPool, &lazy.Config[Account]{Table: "accounts",
		Copier: b.copier, Tracker: b.tracker, Registerer: b.reg,
		ServeOldWhileNewDown: true, NewReadTimeout: 200 * time.Millisecond, NewDownRetry: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(repo.Close)

	defer lockNewTable(t, b)()

	callerCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if got, err := repo.Get(callerCtx, 3); err != nil || got.ID != 3 {
		t.Fatalf("Get(3) with NEW stalled = %+v, %v; want OLD's row", got, err)
	}
	b.newQueries.Store(0)
	if got, err := repo.GetMany(callerCtx, []int64{4, 5}); err != nil || len(got) != 2 {
		t.Fatalf("GetMany(4, 5) with NEW stalled = %v, %v; want OLD's rows", keysOf(got), err)
	}
	if n := b.newQueries.Load(); n != 0 {
		t.Fatalf("NEW down: reads sent %d queries to NEW, want none until NewDownRetry passes", n)
	}
	if n := b.metric(t, "lazymigrate_reads_total", "old_new_down"); n != 3 {
		t.Fatalf("reads_total{old_new_down} = %v, want 3", n)
	}
}

// NewReadTimeout is NEW's, not the caller's nor a busy pool's: a caller
// whose own deadline passes first gets its error, with NEW not counted
// down; a read that waits longer than NewReadTimeout for a free connection
// of the pool, then gets its answer at once, is NEW's answer.
func TestNewReadTimeoutCountsOnlyNew(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	rgNewRow(t, b, 3)
	pool := b.pair.New.NewPool(t, func(c *pgxpool.Config) { c.MaxConns = 1 })
	repo, err := lazy.New(ctx, b.oldPool, pool, &lazy.Config[Account]{Table: "accounts",
		Copier: b.copier, Tracker: b.tracker, Registerer: b.reg,
		ServeOldWhileNewDown: true, NewReadTimeout: time.Second, NewDownRetry: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(repo.Close)

	// The caller's deadline, shorter than NewReadTimeout, while a lock
	// holds NEW's table.
	unlock := lockNewTable(t, b)
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err = repo.Get(short, 3)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get past the caller's deadline = %v, want its DeadlineExceeded", err)
	}
	unlock()

	// The pool's only connection is busy for longer than NewReadTimeout.
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(1500*time.Millisecond, conn.Release)
	if got, err := repo.Get(ctx, 3); err != nil || got.Name != "NEW 3" {
		t.Fatalf("Get(3) after waiting for the pool = %+v, %v; want NEW's row", got, err)
	}
	if n := b.metric(t, "lazymigrate_reads_total", "old_new_down"); n != 0 {
		t.Fatalf("reads_total{old_new_down} = %v: NEW was counted down", n)
	}
}

// lockNewTable holds NEW's accounts table, as a DDL would, so that every
// read of it waits, and returns what releases it (safe to call twice).
func lockNewTable(t *testing.T, b *testBundle) (unlock func()) {
	t.Helper()
	ctx := context.Background()
	lock, err := b.pair.New.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lock.Exec(ctx, `LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE`); err != nil {
		_ = lock.Rollback(ctx)
		t.Fatal(err)
	}
	return func() { _ = lock.Rollback(ctx) }
}
