package lazy_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazymigrate/lazymigrate/fallback"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/lazy"
)

// The tests of this file guard the read path's error handling: an error is
// never reported as "not found", never answered with OLD's row when NEW
// could not say the key is live (invariants 3 and 7), and NEW is taken for
// down only when no connection to it can be opened.

// rgRepo returns a read-only repo on accounts over oldDB and newDB, with a
// registry of its own for its metrics.
func rgRepo(t *testing.T, oldDB, newDB lazy.DB, cfg lazy.Config[Account]) (*lazy.Repo[Account], *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg.Table, cfg.Registerer = "accounts", reg
	repo, err := lazy.New(context.Background(), oldDB, newDB, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(repo.Close)
	return repo, reg
}

func rgReads(t *testing.T, reg *prometheus.Registry, outcome string) float64 {
	t.Helper()
	return testenv.CounterValue(t, reg, "lazymigrate_reads_total", "outcome", outcome)
}

// rgSwitch returns a local mode switch pinned to mode.
func rgSwitch(t *testing.T, mode fallback.Mode) *fallback.Switch {
	t.Helper()
	sw, err := fallback.New(nil, "accounts", nil)
	if err != nil {
		t.Fatal(err)
	}
	sw.Override(mode)
	return sw
}

// rgNewRow puts key into NEW's accounts with the name "NEW <key>", which
// OLD's seeded row ("User <key>") does not have: a read tells which side
// served it.
func rgNewRow(t *testing.T, b *testBundle, key int64) {
	t.Helper()
	b.pair.New.Exec(t, `INSERT INTO accounts VALUES ($1::bigint, 'new'||$1::bigint||'@example.com', 'NEW '||$1::bigint, 1, 'active', now(), now())`, key)
}

// rgBreakable replaces db's accounts table by a view of the same rows in
// which chosen keys fail at execution time, as a read fails when Postgres
// accepted the statement and then raised an error (pgx reports it through
// rows.Err, Query having returned nil): a key listed in rg_fail_before
// fails before any row is sent, one listed in rg_fail_after fails after
// its row. Call it after lazy.New, which wants a table with a primary key.
func rgBreakable(t *testing.T, db *testenv.Database) {
	t.Helper()
	db.Exec(t, `
		ALTER TABLE accounts RENAME TO rg_accounts_data;
		CREATE TABLE rg_fail_before (id bigint PRIMARY KEY);
		CREATE TABLE rg_fail_after (id bigint PRIMARY KEY);
		CREATE FUNCTION rg_fail(k bigint) RETURNS text LANGUAGE plpgsql STABLE AS
			$$ BEGIN RAISE EXCEPTION 'rg: injected failure reading key %', k; END $$;
		CREATE VIEW accounts AS
			SELECT f.id, ''::text AS email, rg_fail(f.id) AS name, 0::bigint AS balance_cents, ''::text AS status,
			       now() AS created_at, now() AS updated_at
			FROM rg_fail_before f
			UNION ALL
			SELECT id, email, name, balance_cents, status, created_at, updated_at FROM rg_accounts_data
			UNION ALL
			SELECT f.id, '', rg_fail(f.id), 0, '', now(), now() FROM rg_fail_after f`)
}

const (
	rgBefore = "rg_fail_before"
	rgAfter  = "rg_fail_after"
)

// rgFail makes reads of keys in db's breakable accounts fail, before
// (rgBefore) or after (rgAfter) the key's row.
func rgFail(ctx context.Context, db *testenv.Database, when string, keys ...int64) error {
	_, err := db.Pool.Exec(ctx, `INSERT INTO `+when+` SELECT unnest($1::bigint[]) ON CONFLICT DO NOTHING`, keys)
	return err
}

// rgRequireFailure checks the fixture: a read of key in db sends rows rows
// and then fails, the error coming through rows.Err.
func rgRequireFailure(t *testing.T, db *testenv.Database, key int64, rows int) {
	t.Helper()
	rs, err := db.Pool.Query(context.Background(), `SELECT id FROM accounts WHERE id = $1`, key)
	if err != nil {
		t.Fatalf("fixture: Query(%d) = %v, want the error to come through rows.Err", key, err)
	}
	n := 0
	for rs.Next() {
		n++
	}
	if rs.Err() == nil || n != rows {
		t.Fatalf("fixture: read of key %d gave %d rows and err %v, want %d rows, then an error", key, n, rs.Err(), rows)
	}
}

// Statement errors raised while the rows are being read (pgx reports them
// through rows.Err, with Query returning nil) are failures of the side that
// raised them, never a miss: OLD's failing for a key NEW lacks is
// ErrOldUnavailable, not "not found"; NEW's failing is ErrNewUnavailable,
// never answered with OLD's row. Whether the error comes before the key's
// row or after it.
func TestReadGuardExecutionErrorsAreNotMisses(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	rgNewRow(t, b, 4)
	rgNewRow(t, b, 6)
	repo, reg := rgRepo(t, b.pair.Old.NewPool(t, nil), b.pair.New.NewPool(t, nil), lazy.Config[Account]{})
	rgBreakable(t, b.pair.Old)
	rgBreakable(t, b.pair.New)
	for _, f := range []struct {
		db   *testenv.Database
		when string
		key  int64
	}{{b.pair.Old, rgBefore, 13}, {b.pair.Old, rgAfter, 14}, {b.pair.New, rgBefore, 3}, {b.pair.New, rgAfter, 4}} {
		if err := rgFail(ctx, f.db, f.when, f.key); err != nil {
			t.Fatal(err)
		}
	}
	rgRequireFailure(t, b.pair.Old, 13, 0)
	rgRequireFailure(t, b.pair.Old, 14, 1)
	rgRequireFailure(t, b.pair.New, 3, 0)
	rgRequireFailure(t, b.pair.New, 4, 1)

	for _, c := range []struct {
		name string
		key  int64
		want error
	}{
		{"OLD fails before the row of a key NEW lacks", 13, lazy.ErrOldUnavailable},
		{"OLD fails after the row of a key NEW lacks", 14, lazy.ErrOldUnavailable},
		{"NEW fails before any row, OLD has the key", 3, lazy.ErrNewUnavailable},
		{"NEW fails after the key's row", 4, lazy.ErrNewUnavailable},
	} {
		got, err := repo.Get(ctx, c.key)
		if !errors.Is(err, c.want) || errors.Is(err, lazy.ErrNotFound) || got.ID != 0 {
			t.Errorf("%s: Get(%d) = %+v, %v; want no record and %v, not ErrNotFound", c.name, c.key, got, err, c.want)
		}
	}
	for _, c := range []struct {
		name string
		keys []int64
		want error
		hits int // keys NEW served, returned with the error
	}{
		{"OLD fails before any row", []int64{6, 13, 20}, lazy.ErrOldUnavailable, 1},
		{"OLD fails after the rows", []int64{6, 14, 21}, lazy.ErrOldUnavailable, 1},
		{"NEW fails before any row, OLD has the keys", []int64{3, 22}, lazy.ErrNewUnavailable, 0},
		{"NEW fails after a row", []int64{4, 23}, lazy.ErrNewUnavailable, 0},
	} {
		got, err := repo.GetMany(ctx, c.keys)
		if !errors.Is(err, c.want) || errors.Is(err, lazy.ErrNotFound) {
			t.Errorf("%s: GetMany(%v) err = %v, want %v", c.name, c.keys, err, c.want)
		}
		if len(got) != c.hits || (c.hits == 1 && got[6].Name != "NEW 6") {
			t.Errorf("%s: GetMany(%v) returned keys %v, want only NEW's hits (%d)", c.name, c.keys, keysOf(got), c.hits)
		}
	}
	if n := rgReads(t, reg, "old"); n != 0 {
		t.Errorf("reads_total{old} = %v: OLD served a key while a side was failing", n)
	}
}

// Invariant 3 when the tombstone lookup fails: NEW cannot say whether the
// key was deleted, so the read is an error saying NEW is unavailable, never
// OLD's (stale) row. No tracker here, as after Redis lost every key.
func TestReadGuardTombstoneLookupFailureIsNotAMiss(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	rgNewRow(t, b, 6)
	b.pair.New.Exec(t, `INSERT INTO lazymigrate.tombstones (table_name, key) VALUES ('public.accounts', 9)`)
	repo, reg := rgRepo(t, b.pair.Old.Pool, b.pair.New.Pool, lazy.Config[Account]{})
	if _, err := repo.Get(ctx, 9); !errors.Is(err, lazy.ErrNotFound) {
		t.Fatalf("Get(deleted 9) with the tombstones readable: err = %v, want ErrNotFound", err)
	}
	// From now on every tombstone lookup fails.
	b.pair.New.Exec(t, `ALTER TABLE lazymigrate.tombstones RENAME TO rg_tombstones_unreadable`)

	for _, k := range []int64{9, 10} {
		if got, err := repo.Get(ctx, k); !errors.Is(err, lazy.ErrNewUnavailable) || got.ID != 0 {
			t.Errorf("Get(%d) with the tombstone lookup failing = %+v, %v; want ErrNewUnavailable and no record", k, got, err)
		}
	}
	got, err := repo.GetMany(ctx, []int64{6, 9, 10})
	if !errors.Is(err, lazy.ErrNewUnavailable) {
		t.Errorf("GetMany with the tombstone lookup failing: err = %v, want ErrNewUnavailable", err)
	}
	if _, ok := got[6]; len(got) != 1 || !ok {
		t.Errorf("GetMany with the tombstone lookup failing returned keys %v, want NEW's hit 6 only", keysOf(got))
	}
	if n := rgReads(t, reg, "old"); n != 0 {
		t.Errorf("reads_total{old} = %v, want 0", n)
	}
}

// With OLD down, a GetMany whose keys are all hits, tombstoned or settled
// needs nothing from OLD: it succeeds.
func TestReadGuardGetManySettledNeedsNoOld(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	rgNewRow(t, b, 1)
	b.pair.New.Exec(t, `INSERT INTO lazymigrate.tombstones (table_name, key) VALUES ('public.accounts', 2)`)
	if _, err := b.tracker.Mark(ctx, []int64{3}); err != nil {
		t.Fatal(err)
	}
	oldPool := b.pair.Old.NewPool(t, nil)
	repo, _ := rgRepo(t, oldPool, b.pair.New.Pool, lazy.Config[Account]{Tracker: b.tracker, TrackerTimeout: time.Minute})
	oldPool.Close() // OLD goes down

	got, err := repo.GetMany(ctx, []int64{1, 2, 3})
	if err != nil || len(got) != 1 || got[1].Name != "NEW 1" {
		t.Fatalf("GetMany(hit 1, tombstoned 2, settled 3) with OLD down = %v, %v; want key 1 and no error", keysOf(got), err)
	}
	got, err = repo.GetMany(ctx, []int64{1, 2, 3, 4})
	if !errors.Is(err, lazy.ErrOldUnavailable) || len(got) != 1 || got[1].Name != "NEW 1" {
		t.Fatalf("GetMany(1, 2, 3, unsettled 4) with OLD down = %v, %v; want key 1 and ErrOldUnavailable", keysOf(got), err)
	}
}

// rgArmingTracker answers that every key asked about is settled, after
// making NEW's reads of those keys fail: the re-read of NEW that a settled
// key missing from NEW gets then fails.
type rgArmingTracker struct {
	lazy.Tracker
	t   *testing.T
	new *testenv.Database
}

func (a rgArmingTracker) arm(ctx context.Context, ks []int64) error {
	err := rgFail(ctx, a.new, rgBefore, ks...)
	if err != nil {
		a.t.Errorf("arming NEW's failure for %v: %v", ks, err)
	}
	return err
}

func (a rgArmingTracker) IsSettled(ctx context.Context, k int64) (bool, error) {
	if err := a.arm(ctx, []int64{k}); err != nil {
		return false, err
	}
	return true, nil
}

func (a rgArmingTracker) Settled(ctx context.Context, ks []int64) ([]bool, error) {
	if err := a.arm(ctx, ks); err != nil {
		return nil, err
	}
	out := make([]bool, len(ks))
	for i := range out {
		out[i] = true
	}
	return out, nil
}

// A key the tracker calls settled but NEW lacked is read from NEW once
// more; when that read fails, the key's state is unknown: ErrNewUnavailable,
// not "not found".
func TestReadGuardSettledRecheckFailureIsNotAMiss(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	repo, reg := rgRepo(t, b.pair.Old.Pool, b.pair.New.NewPool(t, nil), lazy.Config[Account]{
		Tracker: rgArmingTracker{Tracker: b.tracker, t: t, new: b.pair.New}, AskTrackerOnMiss: true, TrackerTimeout: time.Minute})
	rgBreakable(t, b.pair.New)

	got, err := repo.Get(ctx, 7)
	if !errors.Is(err, lazy.ErrNewUnavailable) || errors.Is(err, lazy.ErrNotFound) || got.ID != 0 {
		t.Errorf("Get(7), settled, its re-read of NEW failing = %+v, %v; want ErrNewUnavailable", got, err)
	}
	many, err := repo.GetMany(ctx, []int64{8, 9})
	if !errors.Is(err, lazy.ErrNewUnavailable) || errors.Is(err, lazy.ErrNotFound) || len(many) != 0 {
		t.Errorf("GetMany(8, 9), settled, the re-read of NEW failing = %v, %v; want ErrNewUnavailable", keysOf(many), err)
	}
	if n := rgReads(t, reg, "not_found"); n != 0 {
		t.Errorf("reads_total{not_found} = %v, want 0", n)
	}
}

// Rolled back to OLD (mode "old") with OLD down: every read is an error
// saying OLD is unavailable, never "not found".
func TestReadGuardModeOldWithOldDown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	oldPool := b.pair.Old.NewPool(t, nil)
	repo, reg := rgRepo(t, oldPool, b.pair.New.Pool, lazy.Config[Account]{Mode: rgSwitch(t, fallback.ModeOld)})
	oldPool.Close()

	for _, k := range []int64{3, 5000} {
		if _, err := repo.Get(ctx, k); !errors.Is(err, lazy.ErrOldUnavailable) || errors.Is(err, lazy.ErrNotFound) {
			t.Errorf("mode old, OLD down: Get(%d) err = %v, want ErrOldUnavailable", k, err)
		}
	}
	got, err := repo.GetMany(ctx, []int64{3, 5000})
	if !errors.Is(err, lazy.ErrOldUnavailable) || errors.Is(err, lazy.ErrNotFound) || len(got) != 0 {
		t.Errorf("mode old, OLD down: GetMany = %v, %v; want ErrOldUnavailable", keysOf(got), err)
	}
	if n := rgReads(t, reg, "not_found"); n != 0 {
		t.Errorf("reads_total{not_found} = %v, want 0", n)
	}
}

// In mode "old", and from OLD while NEW is down, a record type that does
// not fit OLD's row is the Scan's error, not an unavailable database.
func TestReadGuardScanErrorFromOldIsNotUnavailability(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	errScan := errors.New("rg: the record does not fit")
	scanOld := func(pgx.CollectableRow) (Account, error) { return Account{}, errScan }
	nw := rgNewPool(t, b.pair.New)
	rolledBack, _ := rgRepo(t, b.pair.Old.Pool, b.pair.New.Pool, lazy.Config[Account]{Mode: rgSwitch(t, fallback.ModeOld), ScanOld: scanOld})
	newDown, _ := rgRepo(t, b.pair.Old.Pool, nw.pool, lazy.Config[Account]{ServeOldWhileNewDown: true, NewDownRetry: time.Hour, ScanOld: scanOld})
	nw.setRefuse(true)
	unavailable := func(err error) bool {
		return errors.Is(err, lazy.ErrOldUnavailable) || errors.Is(err, lazy.ErrNewUnavailable) || errors.Is(err, lazy.ErrNotFound)
	}
	for name, repo := range map[string]*lazy.Repo[Account]{"mode old": rolledBack, "NEW down": newDown} {
		if _, err := repo.Get(ctx, 3); !errors.Is(err, errScan) || unavailable(err) {
			t.Errorf("%s: Get(3) with a failing ScanOld: err = %v, want the Scan's error alone", name, err)
		}
		if _, err := repo.GetMany(ctx, []int64{3}); !errors.Is(err, errScan) || unavailable(err) {
			t.Errorf("%s: GetMany(3) with a failing ScanOld: err = %v, want the Scan's error alone", name, err)
		}
	}

	type tooFew struct {
		ID int64 `db:"id"`
	}
	reg := prometheus.NewRegistry()
	mismatched, err := lazy.New(ctx, b.pair.Old.Pool, b.pair.New.Pool, &lazy.Config[tooFew]{
		Table: "accounts", Mode: rgSwitch(t, fallback.ModeOld), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mismatched.Close)
	if _, err := mismatched.Get(ctx, 3); err == nil || unavailable(err) {
		t.Errorf("mode old: Get with a mismatched record type: err = %v, want a scan error", err)
	}
	if _, err := mismatched.GetMany(ctx, []int64{3}); err == nil || unavailable(err) {
		t.Errorf("mode old: GetMany with a mismatched record type: err = %v, want a scan error", err)
	}
}

// rgNew is a pool on NEW whose network the test controls: dials can be
// refused (NEW unreachable) or made to hang, sessions refused (a login NEW
// rejects), and open connections cut on the client's side.
type rgNew struct {
	pool *pgxpool.Pool

	mu      sync.Mutex
	conns   []net.Conn // opened by dial, not yet cut
	dials   int
	refuse  bool
	badRole string        // when set, sessions log in as this role, which does not exist
	hang    chan struct{} // when set, dials wait for it to close
}

func rgNewPool(t *testing.T, db *testenv.Database) *rgNew {
	t.Helper()
	s := &rgNew{}
	s.pool = db.NewPool(t, func(c *pgxpool.Config) {
		c.MaxConns = 4
		c.ConnConfig.ConnectTimeout = 10 * time.Second
		c.ConnConfig.DialFunc = s.dial
		// Idle connections are used as they are, without a ping first:
		// the read itself meets a connection that was cut.
		c.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
		c.BeforeConnect = func(_ context.Context, cc *pgx.ConnConfig) error {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.badRole != "" {
				cc.User = s.badRole
			}
			return nil
		}
	})
	t.Cleanup(s.unhang) // before the pool closes: no dial left waiting
	return s
}

func (s *rgNew) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	s.mu.Lock()
	s.dials++
	hang := s.hang
	s.mu.Unlock()
	if hang != nil {
		select {
		case <-hang:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	s.mu.Lock()
	refuse := s.refuse
	s.mu.Unlock()
	if refuse {
		return nil, &net.OpError{Op: "dial", Net: network, Err: syscall.ECONNREFUSED}
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err == nil {
		s.mu.Lock()
		s.conns = append(s.conns, c)
		s.mu.Unlock()
	}
	return c, err
}

// setRefuse makes NEW refuse connections, closing those open, or accept
// them again.
func (s *rgNew) setRefuse(refuse bool) {
	s.mu.Lock()
	s.refuse = refuse
	s.mu.Unlock()
	if refuse {
		s.pool.Reset()
	}
}

// setBadRole makes NEW refuse sessions (role does not exist), closing
// those open; "" undoes it.
func (s *rgNew) setBadRole(role string) {
	s.mu.Lock()
	s.badRole = role
	s.mu.Unlock()
	s.pool.Reset()
}

// setHang makes dials hang until unhang, closing the connections open.
func (s *rgNew) setHang() {
	s.mu.Lock()
	s.hang = make(chan struct{})
	s.mu.Unlock()
	s.pool.Reset()
}

func (s *rgNew) unhang() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hang != nil {
		close(s.hang)
		s.hang = nil
	}
}

// cut closes the network connections open, under the pool's feet, and
// returns how many there were.
func (s *rgNew) cut() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		_ = c.Close()
	}
	n := len(s.conns)
	s.conns = nil
	return n
}

func (s *rgNew) dialCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dials
}

// With ServeOldWhileNewDown, an open connection whose network was cut (an
// error that is no PgError) is one broken connection, not NEW down: the
// read is tried again on a new connection and served by NEW.
func TestReadGuardCutConnectionIsRetriedNotNewDown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	rgNewRow(t, b, 3)
	nw := rgNewPool(t, b.pair.New)
	repo, reg := rgRepo(t, b.pair.Old.Pool, nw.pool, lazy.Config[Account]{ServeOldWhileNewDown: true, NewDownRetry: time.Hour})
	reads := map[string]func() (Account, error){
		"Get": func() (Account, error) { return repo.Get(ctx, 3) },
		"GetMany": func() (Account, error) {
			m, err := repo.GetMany(ctx, []int64{3})
			return m[3], err
		},
	}
	for name, read := range reads {
		if got, err := read(); err != nil || got.Name != "NEW 3" {
			t.Fatalf("%s(3) = %+v, %v; want NEW's row", name, got, err)
		}
		dials := nw.dialCount()
		if nw.cut() == 0 {
			t.Fatal("no open connection to cut")
		}
		if got, err := read(); err != nil || got.Name != "NEW 3" {
			t.Fatalf("%s(3) after its connection was cut = %+v, %v; want NEW's row, read on a new connection", name, got, err)
		}
		if nw.dialCount() == dials {
			t.Fatalf("%s(3) after the cut opened no connection: the cut one was not used", name)
		}
	}
	if n := rgReads(t, reg, "old_new_down"); n != 0 {
		t.Fatalf("reads_total{old_new_down} = %v after cut connections, with NEW up; want 0", n)
	}
}

// A NEW that refuses the session (here a role that does not exist; a wrong
// password or too many connections alike) is not down: reads fail with
// ErrNewUnavailable and are not served from OLD, and NEW is not skipped.
func TestReadGuardRefusedLoginIsNotNewDown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	rgNewRow(t, b, 3)
	nw := rgNewPool(t, b.pair.New)
	repo, reg := rgRepo(t, b.pair.Old.Pool, nw.pool, lazy.Config[Account]{ServeOldWhileNewDown: true, NewDownRetry: time.Hour})
	nw.setBadRole("rg_no_such_role_" + testenv.Suffix())

	got, err := repo.Get(ctx, 3)
	var pgErr *pgconn.PgError
	if !errors.Is(err, lazy.ErrNewUnavailable) || got.ID != 0 || !errors.As(err, &pgErr) || !strings.HasPrefix(pgErr.Code, "28") {
		t.Fatalf("Get(3) with NEW refusing the login = %+v, %v; want ErrNewUnavailable from SQLSTATE class 28", got, err)
	}
	many, err := repo.GetMany(ctx, []int64{3})
	if !errors.Is(err, lazy.ErrNewUnavailable) || len(many) != 0 {
		t.Fatalf("GetMany(3) with NEW refusing the login = %v, %v; want ErrNewUnavailable", keysOf(many), err)
	}
	if n := rgReads(t, reg, "old_new_down"); n != 0 {
		t.Fatalf("reads_total{old_new_down} = %v with NEW refusing logins; want 0", n)
	}
	nw.setBadRole("")
	if got, err := repo.Get(ctx, 3); err != nil || got.Name != "NEW 3" {
		t.Fatalf("Get(3) once NEW accepts the login = %+v, %v; want NEW's row", got, err)
	}
}

// A caller's deadline running out while NEW's dial hangs fails that read,
// and says nothing about NEW: the next read, once NEW answers, goes to NEW.
func TestReadGuardCallerDeadlineIsNotNewDown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	rgNewRow(t, b, 3)
	nw := rgNewPool(t, b.pair.New)
	repo, reg := rgRepo(t, b.pair.Old.Pool, nw.pool, lazy.Config[Account]{ServeOldWhileNewDown: true, NewDownRetry: time.Hour})
	reads := []struct {
		name string
		read func(context.Context) (Account, error)
	}{
		{"Get", func(ctx context.Context) (Account, error) { return repo.Get(ctx, 3) }},
		{"GetMany", func(ctx context.Context) (Account, error) {
			m, err := repo.GetMany(ctx, []int64{3})
			return m[3], err
		}},
	}
	for _, r := range reads {
		nw.setHang()
		short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		_, err := r.read(short)
		cancel()
		if !errors.Is(err, lazy.ErrNewUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%s(3) past its deadline, NEW's dial hanging: err = %v; want ErrNewUnavailable for the deadline", r.name, err)
		}
		nw.unhang()
		if got, err := r.read(ctx); err != nil || got.Name != "NEW 3" {
			t.Fatalf("%s(3) after a caller's deadline ran out = %+v, %v; want NEW's row", r.name, got, err)
		}
	}
	if n := rgReads(t, reg, "old_new_down"); n != 0 {
		t.Fatalf("reads_total{old_new_down} = %v: a caller's deadline marked NEW down", n)
	}
}

// A repo that found NEW down in readthrough, then switched to mode "new",
// reads NEW only: while NEW is down that is ErrNewUnavailable, not OLD.
func TestReadGuardModeNewIgnoresEarlierNewDown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	nw := rgNewPool(t, b.pair.New)
	sw := rgSwitch(t, fallback.ModeReadthrough)
	repo, reg := rgRepo(t, b.pair.Old.Pool, nw.pool, lazy.Config[Account]{Mode: sw, ServeOldWhileNewDown: true, NewDownRetry: time.Hour})
	nw.setRefuse(true)
	if got, err := repo.Get(ctx, 3); err != nil || got.Name != "User 3" || rgReads(t, reg, "old_new_down") != 1 {
		t.Fatalf("readthrough, NEW down: Get(3) = %+v, %v; want OLD's row, counted as old_new_down", got, err)
	}

	sw.Override(fallback.ModeNew)
	if got, err := repo.Get(ctx, 3); !errors.Is(err, lazy.ErrNewUnavailable) || got.ID != 0 {
		t.Fatalf("mode new, NEW down: Get(3) = %+v, %v; want ErrNewUnavailable", got, err)
	}
	if many, err := repo.GetMany(ctx, []int64{3}); !errors.Is(err, lazy.ErrNewUnavailable) || len(many) != 0 {
		t.Fatalf("mode new, NEW down: GetMany(3) = %v, %v; want ErrNewUnavailable", keysOf(many), err)
	}
	if n := rgReads(t, reg, "old_new_down"); n != 1 {
		t.Fatalf("reads_total{old_new_down} = %v, want 1 (readthrough's read only)", n)
	}
}

// With ServeOldWhileNewDown, NEW and OLD both down: the error says both,
// and never "not found".
func TestReadGuardNewAndOldBothDown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	nw := rgNewPool(t, b.pair.New)
	oldPool := b.pair.Old.NewPool(t, nil)
	repo, reg := rgRepo(t, oldPool, nw.pool, lazy.Config[Account]{ServeOldWhileNewDown: true, NewDownRetry: time.Hour})
	first, _ := rgRepo(t, oldPool, nw.pool, lazy.Config[Account]{ServeOldWhileNewDown: true, NewDownRetry: time.Hour})
	nw.setRefuse(true)
	oldPool.Close()

	both := func(err error) bool {
		return errors.Is(err, lazy.ErrNewUnavailable) && errors.Is(err, lazy.ErrOldUnavailable) && !errors.Is(err, lazy.ErrNotFound)
	}
	// The first read finds NEW down; the next ones skip it.
	for range 2 {
		if got, err := repo.Get(ctx, 3); !both(err) || got.ID != 0 {
			t.Fatalf("Get(3) with NEW and OLD down = %+v, %v; want ErrNewUnavailable and ErrOldUnavailable", got, err)
		}
	}
	if got, err := repo.GetMany(ctx, []int64{3, 5000}); !both(err) || len(got) != 0 {
		t.Fatalf("GetMany with NEW and OLD down = %v, %v; want ErrNewUnavailable and ErrOldUnavailable", keysOf(got), err)
	}
	if n := rgReads(t, reg, "not_found"); n != 0 {
		t.Fatalf("reads_total{not_found} = %v, want 0", n)
	}

	// GetMany as the read that finds NEW down.
	if got, err := first.GetMany(ctx, []int64{3, 5000}); !both(err) || len(got) != 0 {
		t.Fatalf("first GetMany with NEW and OLD down = %v, %v; want ErrNewUnavailable and ErrOldUnavailable", keysOf(got), err)
	}
}
