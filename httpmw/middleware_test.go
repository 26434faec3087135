package httpmw_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/fallback"
	"github.com/lazymigrate/lazymigrate/httpmw"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/promote"
	"github.com/lazymigrate/lazymigrate/tracker"
)

const route = "GET /accounts/{id}"

type account struct {
	ID    int64  `json:"id"`
	Email string `json:"email"`
	Name  string `json:"name"`
}

// getAccount is the kind of handler the middleware is for: it reads the
// database of whichever side it runs against, answers 404 when the row does
// not exist and 500 when the query fails.
func getAccount(w http.ResponseWriter, r *http.Request) {
	id, _ := httpmw.Key(r.Context())
	pool := httpmw.DB[*pgxpool.Pool](r.Context())
	var a account
	err := pool.QueryRow(r.Context(), `SELECT id, email, name FROM accounts WHERE id = $1`, id).Scan(&a.ID, &a.Email, &a.Name)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		w.Header().Set("X-Missing-From", string(httpmw.SourceOf(r.Context())))
		http.NotFound(w, r)
	case err != nil:
		http.Error(w, "database error: "+err.Error(), http.StatusInternalServerError)
	default:
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(a)
	}
}

// taskLog is an asynq client that keeps the tasks it is given: for tests of
// what the middleware schedules, where asynq itself is not under test.
type taskLog struct {
	mu   sync.Mutex
	keys []int64
}

func (l *taskLog) EnqueueContext(_ context.Context, task *asynq.Task, _ ...asynq.Option) (*asynq.TaskInfo, error) {
	p, err := promote.DecodePayload(task.Payload())
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.keys = append(l.keys, p.Keys...)
	return &asynq.TaskInfo{}, nil
}

// enqueued flushes enq and returns every key enqueued so far.
func (l *taskLog) enqueued(t *testing.T, enq *promote.Enqueuer) []int64 {
	t.Helper()
	if err := enq.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]int64(nil), l.keys...)
}

type countTracer struct{ n *atomic.Int64 }

func (c countTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	return ctx
}
func (countTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// redisCounter counts the commands a Redis client sends.
type redisCounter struct{ n atomic.Int64 }

func (h *redisCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *redisCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmd)
	}
}
func (h *redisCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

type bundle struct {
	pair                   *testenv.Pair
	oldPool, newPool       *pgxpool.Pool // counting, in oldQueries and newQueries
	oldQueries, newQueries *atomic.Int64
	rdb                    *redis.Client
	redisCmds              *redisCounter // commands of the tracker's client
	tracker                *tracker.Tracker
	tasks                  *taskLog
	enqueuer               *promote.Enqueuer // not started: tasks are flushed by tasks.enqueued
	reg                    *prometheus.Registry
	mw                     *httpmw.Middleware
	srv                    *httptest.Server
}

type setupOpts struct {
	tombstones bool
	trackerRDB redis.UniversalClient // default: the test's Redis, counted
	config     func(*httpmw.Config)
	handler    http.Handler // default: getAccount
}

// setup gives OLD accounts [1, 101), an empty NEW, a tracker, an enqueuer
// into a taskLog, and a server routing GET /accounts/{id} through the
// middleware over counting pools.
func setup(t *testing.T, o setupOpts) *bundle {
	t.Helper()
	ctx := context.Background()
	p := testenv.NewPair(t)
	testenv.SeedAccounts(t, p.Old, 1, 101)
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		t.Fatal(err)
	}
	b := &bundle{pair: p, oldQueries: new(atomic.Int64), newQueries: new(atomic.Int64), tasks: &taskLog{}, reg: prometheus.NewRegistry()}
	var prefix string
	b.rdb, prefix = testenv.Redis(t)
	trackerRDB := o.trackerRDB
	if trackerRDB == nil {
		counted := redis.NewClient(b.rdb.Options())
		b.redisCmds = &redisCounter{}
		counted.AddHook(b.redisCmds)
		t.Cleanup(func() { _ = counted.Close() })
		trackerRDB = counted
	}
	var err error
	if b.tracker, err = tracker.New(trackerRDB, "accounts", &tracker.Config{Prefix: prefix}); err != nil {
		t.Fatal(err)
	}
	if b.enqueuer, err = promote.NewEnqueuer(b.tasks, "accounts", nil); err != nil {
		t.Fatal(err)
	}
	b.oldPool = p.Old.NewPool(t, func(c *pgxpool.Config) { c.ConnConfig.Tracer = countTracer{b.oldQueries} })
	b.newPool = p.New.NewPool(t, func(c *pgxpool.Config) { c.ConnConfig.Tracer = countTracer{b.newQueries} })

	cfg := httpmw.Config{
		Key:        httpmw.PathKey("id"),
		Tracker:    b.tracker,
		Scheduler:  b.enqueuer,
		Registerer: b.reg,
	}
	if o.tombstones {
		// On NEW's own pool, so that newQueries counts the handler's alone.
		if cfg.Tombstones, err = httpmw.NewTombstones(ctx, p.New.Pool, "accounts"); err != nil {
			t.Fatal(err)
		}
	} else {
		cfg.NoTombstones = true
	}
	if o.config != nil {
		o.config(&cfg)
	}
	if b.mw, err = httpmw.New(b.oldPool, b.newPool, &cfg); err != nil {
		t.Fatal(err)
	}
	h := o.handler
	if h == nil {
		h = http.HandlerFunc(getAccount)
	}
	mux := http.NewServeMux()
	mux.Handle(route, b.mw.Wrap(h))
	mux.Handle("PUT /accounts/{id}", b.mw.Wrap(h))
	b.srv = httptest.NewServer(mux)
	t.Cleanup(b.srv.Close)
	return b
}

type response struct {
	status int
	header http.Header
	body   string
}

func (b *bundle) do(t *testing.T, method, path string) response {
	t.Helper()
	req, err := http.NewRequest(method, b.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := b.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return response{resp.StatusCode, resp.Header, string(body)}
}

func (b *bundle) get(t *testing.T, path string) response { return b.do(t, http.MethodGet, path) }

func (b *bundle) resetCounts() {
	b.oldQueries.Store(0)
	b.newQueries.Store(0)
	if b.redisCmds != nil {
		b.redisCmds.n.Store(0)
	}
}

// source returns the response's Lazymigrate-Source header, failing the test
// if it appears more than once.
func (r response) source(t *testing.T) string {
	t.Helper()
	v := r.header.Values(httpmw.HeaderSource)
	if len(v) > 1 {
		t.Fatalf("%s appears %d times: %q", httpmw.HeaderSource, len(v), v)
	}
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

func (r response) account(t *testing.T) account {
	t.Helper()
	var a account
	if err := json.Unmarshal([]byte(r.body), &a); err != nil {
		t.Fatalf("body %q: %v", r.body, err)
	}
	return a
}

// metric returns the value of the counter (or histogram sample count) name
// whose labels include labels.
func metric(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if matches(m, labels) {
				total += m.GetCounter().GetValue() + float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return total
}

func matches(m *dto.Metric, labels map[string]string) bool {
	n := 0
	for _, lp := range m.GetLabel() {
		if v, ok := labels[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(labels)
}

func requests(t *testing.T, reg *prometheus.Registry, source, outcome string) float64 {
	t.Helper()
	return metric(t, reg, "lazymigrate_http_requests_total", map[string]string{"route": route, "source": source, "outcome": outcome})
}

func fallbacks(t *testing.T, reg *prometheus.Registry, outcome string) float64 {
	t.Helper()
	return metric(t, reg, "lazymigrate_http_fallbacks_total", map[string]string{"route": route, "outcome": outcome})
}

// A key in NEW is served by NEW alone: OLD is not queried, Redis is not
// asked, nothing is scheduled.
func TestHit(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	b.pair.New.Exec(t, `INSERT INTO accounts VALUES (7, 'new7@example.com', 'In NEW', 1, 'active', now(), now())`)
	b.resetCounts()

	r := b.get(t, "/accounts/7")
	if r.status != http.StatusOK || r.source(t) != "new" {
		t.Fatalf("GET = %d source %q, want 200 from new; body %q", r.status, r.source(t), r.body)
	}
	if a := r.account(t); a.Email != "new7@example.com" {
		t.Fatalf("account = %+v, want NEW's row", a)
	}
	if r.header.Get("Content-Length") != strconv.Itoa(len(r.body)) {
		t.Fatalf("Content-Length = %q for a body of %d bytes", r.header.Get("Content-Length"), len(r.body))
	}
	if n := b.oldQueries.Load(); n != 0 {
		t.Fatalf("OLD queried %d times on a hit", n)
	}
	if n := b.newQueries.Load(); n != 1 {
		t.Fatalf("NEW queried %d times on a hit, want 1", n)
	}
	if n := b.redisCmds.n.Load(); n != 0 {
		t.Fatalf("%d Redis commands on a hit, want none", n)
	}
	if got := b.tasks.enqueued(t, b.enqueuer); len(got) != 0 {
		t.Fatalf("scheduled %v on a hit", got)
	}
}

// A key only in OLD is served from OLD, with OLD's headers alone, and
// scheduled for promotion.
func TestFallbackServesOldAndSchedulesPromotion(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	b.resetCounts()

	r := b.get(t, "/accounts/42")
	if r.status != http.StatusOK || r.source(t) != "old" {
		t.Fatalf("GET = %d source %q, want 200 from old; body %q", r.status, r.source(t), r.body)
	}
	if a := r.account(t); a.ID != 42 || a.Email != "user42@example.com" {
		t.Fatalf("account = %+v, want OLD's row 42", a)
	}
	// NEW's 404 (its X-Missing-From, its text/plain type) is gone.
	if v := r.header.Values("X-Missing-From"); len(v) != 0 {
		t.Fatalf("X-Missing-From = %q: NEW's discarded 404 leaked its headers", v)
	}
	if ct := r.header.Values("Content-Type"); len(ct) != 1 || ct[0] != "application/json" {
		t.Fatalf("Content-Type = %q, want OLD's alone", ct)
	}
	if r.header.Get("Content-Length") != strconv.Itoa(len(r.body)) {
		t.Fatalf("Content-Length = %q for a body of %d bytes", r.header.Get("Content-Length"), len(r.body))
	}
	if got := b.tasks.enqueued(t, b.enqueuer); len(got) != 1 || got[0] != 42 {
		t.Fatalf("enqueued %v, want [42]", got)
	}
	if o, n := b.oldQueries.Load(), b.newQueries.Load(); o != 1 || n != 1 {
		t.Fatalf("queries: OLD %d, NEW %d; want one each", o, n)
	}

	// A second read within the dedupe window schedules nothing new.
	b.get(t, "/accounts/42")
	if got := b.tasks.enqueued(t, b.enqueuer); len(got) != 1 {
		t.Fatalf("enqueued %v after a second read, want [42]", got)
	}
}

// HEAD reads through like GET.
func TestHeadFallsBack(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	r := b.do(t, http.MethodHead, "/accounts/5")
	if r.status != http.StatusOK || r.source(t) != "old" || r.body != "" {
		t.Fatalf("HEAD = %d source %q body %q, want 200 from old and no body", r.status, r.source(t), r.body)
	}
	if got := b.tasks.enqueued(t, b.enqueuer); len(got) != 1 || got[0] != 5 {
		t.Fatalf("enqueued %v, want [5]", got)
	}
}

// A key in neither database is a 404, and nothing is scheduled.
func TestNotFoundInBoth(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	b.resetCounts()
	r := b.get(t, "/accounts/5000")
	if r.status != http.StatusNotFound {
		t.Fatalf("GET = %d, want 404; body %q", r.status, r.body)
	}
	if r.source(t) != "old" || r.header.Get("X-Missing-From") != "old" {
		t.Fatalf("source %q, X-Missing-From %q: want OLD's 404, the last answer", r.source(t), r.header.Get("X-Missing-From"))
	}
	if strings.Count(r.body, "404 page not found") != 1 {
		t.Fatalf("body %q, want one 404 body", r.body)
	}
	if o, n := b.oldQueries.Load(), b.newQueries.Load(); o != 1 || n != 1 {
		t.Fatalf("queries: OLD %d, NEW %d; want one each", o, n)
	}
	if got := b.tasks.enqueued(t, b.enqueuer); len(got) != 0 {
		t.Fatalf("scheduled %v for a key in neither database", got)
	}
	if got := fallbacks(t, b.reg, "not_found"); got != 1 {
		t.Fatalf("fallbacks{not_found} = %v, want 1", got)
	}
}

// A key that does not parse is a 400 with a JSON body, and the handler does
// not run.
func TestBadKey(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	b.resetCounts()
	for _, path := range []string{"/accounts/abc", "/accounts/-3", "/accounts/99999999999999999999", "/accounts/1.5"} {
		r := b.get(t, path)
		if r.status != http.StatusBadRequest {
			t.Fatalf("GET %s = %d, want 400; body %q", path, r.status, r.body)
		}
		if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Fatalf("GET %s Content-Type = %q, want JSON", path, ct)
		}
		var body struct{ Error string }
		if err := json.Unmarshal([]byte(r.body), &body); err != nil || !strings.Contains(body.Error, "invalid key") {
			t.Fatalf("GET %s body = %q (%v), want a JSON error naming the invalid key", path, r.body, err)
		}
		if r.source(t) != "" {
			t.Fatalf("GET %s has %s %q on the middleware's own error", path, httpmw.HeaderSource, r.source(t))
		}
	}
	if n := b.oldQueries.Load() + b.newQueries.Load(); n != 0 {
		t.Fatalf("%d queries for bad keys, want none", n)
	}
	if got := requests(t, b.reg, "none", "bad_key"); got != 4 {
		t.Fatalf("requests{none,bad_key} = %v, want 4", got)
	}
}

// A KeyFunc that fails for a reason other than an invalid key is the
// server's fault: 500, and the handler does not run.
func TestKeyFuncError(t *testing.T) {
	t.Parallel()
	var ran atomic.Bool
	h := http.HandlerFunc(func(http.ResponseWriter, *http.Request) { ran.Store(true) })
	var logged testenv.SyncBuffer
	mw, err := httpmw.New(store{}, store{}, &httpmw.Config{
		Key:          httpmw.PathKey("accountID"),
		NoTombstones: true,
		Logger:       slog.New(slog.NewTextHandler(&logged, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /accounts/{id}", mw.Wrap(h))
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/accounts/1", nil))
	if rec.Code != http.StatusInternalServerError || strings.Contains(rec.Body.String(), "accountID") {
		t.Fatalf("misconfigured PathKey: %d %q, want a bare 500", rec.Code, rec.Body.String())
	}
	if !strings.Contains(logged.String(), "no wildcard {accountID}") {
		t.Fatalf("log %q does not name the missing wildcard", logged.String())
	}

	mw, err = httpmw.New(store{}, store{}, &httpmw.Config{Key: func(*http.Request) (int64, error) { return -1, nil }, NoTombstones: true})
	if err != nil {
		t.Fatal(err)
	}
	rec = httptest.NewRecorder()
	mw.Wrap(h).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	if rec.Code != http.StatusBadRequest {
		t.Fatalf("negative key from a KeyFunc: %d, want 400", rec.Code)
	}
	if ran.Load() {
		t.Fatal("the handler ran without a key")
	}
}

// With OLD down, a key that is not settled is a 503, never a 404, while
// migrated and settled keys keep being served.
func TestOldDown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{tombstones: true})
	b.pair.New.Exec(t, `INSERT INTO accounts VALUES (1, 'a@example.com', 'A', 1, 'active', now(), now())`)
	b.pair.New.Exec(t, `INSERT INTO lazymigrate.tombstones (table_name, key) VALUES ('public.accounts', 2)`)
	if _, err := b.tracker.Mark(ctx, []int64{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	b.oldPool.Close() // OLD goes down

	if r := b.get(t, "/accounts/1"); r.status != http.StatusOK || r.source(t) != "new" {
		t.Fatalf("migrated key: %d from %q, want 200 from new", r.status, r.source(t))
	}
	for _, k := range []string{"2", "3"} {
		if r := b.get(t, "/accounts/"+k); r.status != http.StatusNotFound || r.source(t) != "new" {
			t.Fatalf("settled key %s: %d from %q, want NEW's 404", k, r.status, r.source(t))
		}
	}
	r := b.get(t, "/accounts/4") // in OLD, which is down
	if r.status != http.StatusServiceUnavailable {
		t.Fatalf("unsettled key with OLD down: %d, want 503; body %q", r.status, r.body)
	}
	var body struct{ Error string }
	if err := json.Unmarshal([]byte(r.body), &body); err != nil || !strings.HasPrefix(body.Error, "OLD database unavailable") {
		t.Fatalf("body %q (%v), want a JSON error saying OLD is unavailable", r.body, err)
	}
	if strings.Contains(r.body, "database error") || r.header.Get("X-Missing-From") != "" {
		t.Fatalf("OLD's own 500 leaked: %q %v", r.body, r.header)
	}
	if got := b.tasks.enqueued(t, b.enqueuer); len(got) != 0 {
		t.Fatalf("scheduled %v with OLD down", got)
	}
	if got := requests(t, b.reg, "old", "unavailable"); got != 1 {
		t.Fatalf("requests{old,unavailable} = %v, want 1", got)
	}
	if got := fallbacks(t, b.reg, "old_unavailable"); got != 1 {
		t.Fatalf("fallbacks{old_unavailable} = %v, want 1", got)
	}
}

// A key the tracker says is settled and NEW lacks is a 404 without asking
// OLD; NEW is asked once more, in case the key's promotion committed in
// between. A tombstoned key's 404 stands at once.
func TestSettledKeyIsNotFoundWithoutAskingOld(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{tombstones: true})
	b.pair.New.Exec(t, `INSERT INTO lazymigrate.tombstones (table_name, key) VALUES ('public.accounts', 11)`)
	if _, err := b.tracker.Mark(ctx, []int64{10}); err != nil {
		t.Fatal(err)
	}
	b.resetCounts()

	// 10 and 11 are both in OLD.
	r := b.get(t, "/accounts/10")
	if r.status != http.StatusNotFound || r.source(t) != "new" {
		t.Fatalf("settled key: %d from %q, want 404 from new", r.status, r.source(t))
	}
	if o, n := b.oldQueries.Load(), b.newQueries.Load(); o != 0 || n != 2 {
		t.Fatalf("settled key: OLD queried %d times, NEW %d; want 0 and 2", o, n)
	}
	b.resetCounts()
	r = b.get(t, "/accounts/11")
	if r.status != http.StatusNotFound || r.source(t) != "new" {
		t.Fatalf("tombstoned key: %d from %q, want 404 from new", r.status, r.source(t))
	}
	if o, n := b.oldQueries.Load(), b.newQueries.Load(); o != 0 || n != 1 {
		t.Fatalf("tombstoned key: OLD queried %d times, NEW %d; want 0 and 1", o, n)
	}
	if got := b.tasks.enqueued(t, b.enqueuer); len(got) != 0 {
		t.Fatalf("scheduled %v for settled keys", got)
	}
	if fallbacks(t, b.reg, "settled") != 1 || fallbacks(t, b.reg, "tombstoned") != 1 {
		t.Fatal("fallbacks{settled} and {tombstoned} should be 1 each")
	}
}

// When a key's promotion commits between NEW's 404 and the tracker check,
// the second look at NEW finds it.
func TestSettledKeyPromotedMeanwhileIsFound(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var b *bundle
	var first atomic.Bool
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if httpmw.SourceOf(r.Context()) == httpmw.SourceNew && first.CompareAndSwap(false, true) {
			// NEW misses; then the promotion commits and marks the key.
			http.NotFound(w, r)
			if _, err := b.pair.New.Pool.Exec(ctx, `INSERT INTO accounts VALUES (20, 'promoted@example.com', 'P', 1, 'active', now(), now())`); err != nil {
				t.Error(err)
			}
			if _, err := b.tracker.Mark(ctx, []int64{20}); err != nil {
				t.Error(err)
			}
			return
		}
		getAccount(w, r)
	})
	b = setup(t, setupOpts{handler: h})
	b.resetCounts()
	r := b.get(t, "/accounts/20")
	if r.status != http.StatusOK || r.source(t) != "new" || r.account(t).Email != "promoted@example.com" {
		t.Fatalf("GET = %d from %q, %q; want 200 from new with the promoted row", r.status, r.source(t), r.body)
	}
	if n := b.oldQueries.Load(); n != 0 {
		t.Fatalf("OLD queried %d times for a settled key", n)
	}
}

// A tracker that cannot be reached does not turn reads into errors: keys
// NEW lacks are read from OLD, and the failure is counted once a second,
// not once a read.
func TestTrackerDownDegrades(t *testing.T) {
	t.Parallel()
	dead := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = dead.Close() })
	b := setup(t, setupOpts{trackerRDB: dead})
	for _, k := range []string{"1", "2", "3"} {
		if r := b.get(t, "/accounts/"+k); r.status != http.StatusOK || r.source(t) != "old" {
			t.Fatalf("GET %s with Redis down = %d from %q, want 200 from old", k, r.status, r.source(t))
		}
	}
	if r := b.get(t, "/accounts/5000"); r.status != http.StatusNotFound {
		t.Fatalf("missing key with Redis down = %d, want 404", r.status)
	}
	if got := metric(t, b.reg, "lazymigrate_http_tracker_errors_total", nil); got != 1 {
		t.Fatalf("tracker errors = %v, want 1 (the tracker is left alone for a second after a failure)", got)
	}
	if got := b.tasks.enqueued(t, b.enqueuer); len(got) != 3 {
		t.Fatalf("enqueued %v, want the 3 keys OLD served", got)
	}
}

// A hung tracker costs TrackerTimeout, not the request.
func TestTrackerTimeout(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	hang := make(chan struct{})
	t.Cleanup(func() { close(hang) })
	slow := trackerFunc(func(ctx context.Context, _ int64) (bool, error) {
		select {
		case <-hang:
		case <-ctx.Done():
		}
		return false, ctx.Err()
	})
	b := setup(t, setupOpts{config: func(c *httpmw.Config) { c.Tracker = slow; c.TrackerTimeout = 20 * time.Millisecond }})
	reqCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(reqCtx, http.MethodGet, b.srv.URL+"/accounts/3", nil)
	resp, err := b.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get(httpmw.HeaderSource) != "old" {
		t.Fatalf("GET with a hung tracker = %d from %q, want 200 from old", resp.StatusCode, resp.Header.Get(httpmw.HeaderSource))
	}
}

type trackerFunc func(ctx context.Context, key int64) (bool, error)

func (f trackerFunc) IsSettled(ctx context.Context, key int64) (bool, error) { return f(ctx, key) }

// A tombstone that cannot be read could hide a deleted key: 503, and OLD is
// not asked.
func TestTombstoneErrorIsUnavailable(t *testing.T) {
	t.Parallel()
	broken := tombstonesFunc(func(context.Context, int64) (bool, error) { return false, errors.New("NEW is down") })
	b := setup(t, setupOpts{config: func(c *httpmw.Config) { c.Tombstones = broken }})
	b.resetCounts()
	r := b.get(t, "/accounts/3")
	if r.status != http.StatusServiceUnavailable || !strings.Contains(r.body, "NEW database unavailable") || strings.Contains(r.body, "NEW is down") {
		t.Fatalf("GET = %d %q, want 503 saying NEW is unavailable, without the error's details", r.status, r.body)
	}
	if n := b.oldQueries.Load(); n != 0 {
		t.Fatalf("OLD queried %d times", n)
	}
}

type tombstonesFunc func(ctx context.Context, key int64) (bool, error)

func (f tombstonesFunc) IsTombstoned(ctx context.Context, key int64) (bool, error) {
	return f(ctx, key)
}

// Modes: old reads OLD alone, new reads NEW alone; neither falls back or
// schedules.
func TestModes(t *testing.T) {
	t.Parallel()
	sw, err := fallback.New(nil, "accounts", nil)
	if err != nil {
		t.Fatal(err)
	}
	b := setup(t, setupOpts{config: func(c *httpmw.Config) { c.Mode = sw }})
	b.pair.New.Exec(t, `INSERT INTO accounts VALUES (500, 'only-new@example.com', 'N', 1, 'active', now(), now())`)

	sw.Override(fallback.ModeOld)
	b.resetCounts()
	if r := b.get(t, "/accounts/500"); r.status != http.StatusNotFound || r.source(t) != "old" {
		t.Fatalf("mode old, key only in NEW: %d from %q, want 404 from old", r.status, r.source(t))
	}
	if r := b.get(t, "/accounts/5"); r.status != http.StatusOK || r.source(t) != "old" {
		t.Fatalf("mode old, key in OLD: %d from %q, want 200 from old", r.status, r.source(t))
	}
	if n := b.newQueries.Load(); n != 0 {
		t.Fatalf("mode old queried NEW %d times", n)
	}

	sw.Override(fallback.ModeNew)
	b.resetCounts()
	if r := b.get(t, "/accounts/5"); r.status != http.StatusNotFound || r.source(t) != "new" {
		t.Fatalf("mode new, key only in OLD: %d from %q, want 404 from new", r.status, r.source(t))
	}
	if n := b.oldQueries.Load(); n != 0 {
		t.Fatalf("mode new queried OLD %d times", n)
	}
	if got := b.tasks.enqueued(t, b.enqueuer); len(got) != 0 {
		t.Fatalf("scheduled %v outside readthrough", got)
	}
}

// During a rollout each request takes the mode of its key: at "new 50%",
// the keys rolled out to new read NEW alone, the others read through.
func TestRolloutTakesEachKeysMode(t *testing.T) {
	t.Parallel()
	policy := fallback.Policy{Mode: fallback.ModeNew, Percent: 50}
	b := setup(t, setupOpts{config: func(c *httpmw.Config) { c.Mode = policy }})
	seen := map[fallback.Mode]int{}
	for k := 1; k <= 20; k++ {
		r := b.get(t, "/accounts/"+strconv.Itoa(k)) // in OLD only
		switch m := policy.ModeOf(int64(k)); m {
		case fallback.ModeNew:
			if r.status != http.StatusNotFound || r.source(t) != "new" {
				t.Fatalf("key %d, rolled out to new: %d from %q, want 404 from new", k, r.status, r.source(t))
			}
			seen[m]++
		default:
			if r.status != http.StatusOK || r.source(t) != "old" {
				t.Fatalf("key %d, in readthrough: %d from %q, want 200 from old", k, r.status, r.source(t))
			}
			seen[m]++
		}
	}
	if seen[fallback.ModeNew] == 0 || seen[fallback.ModeReadthrough] == 0 {
		t.Fatalf("keys 1-20 by mode: %v; the test needs both", seen)
	}
}

// Other methods pass straight through, against NEW, with the client's own
// writer.
func TestNonGetPassesThroughAgainstNew(t *testing.T) {
	t.Parallel()
	var got struct {
		isNew  bool
		source httpmw.Source
		hasKey bool
	}
	var b *bundle
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.isNew = httpmw.DB[*pgxpool.Pool](r.Context()) == b.newPool
		got.source = httpmw.SourceOf(r.Context())
		_, got.hasKey = httpmw.Key(r.Context())
		w.WriteHeader(http.StatusNoContent)
	})
	b = setup(t, setupOpts{handler: h})
	r := b.do(t, http.MethodPut, "/accounts/abc") // keys are not parsed for writes
	if r.status != http.StatusNoContent || r.source(t) != "" {
		t.Fatalf("PUT = %d with source %q, want 204 untouched", r.status, r.source(t))
	}
	if !got.isNew || got.source != httpmw.SourceNew || got.hasKey {
		t.Fatalf("PUT handler saw %+v, want NEW's pool, source new and no key", got)
	}
	if n := metric(t, b.reg, "lazymigrate_http_requests_total", nil); n != 0 {
		t.Fatalf("%v requests counted; writes are not", n)
	}
}

// Promotion end to end over real Redis and asynq: the key OLD served is
// copied by a worker, and the next read is a NEW hit.
func TestFallbackPromotesEndToEnd(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	copier, err := promote.NewCopier(ctx, b.pair.Old.Pool, b.pair.New.Pool, &promote.CopierConfig{Table: "accounts", Marker: b.tracker})
	if err != nil {
		t.Fatal(err)
	}
	ph, err := promote.NewHandler([]*promote.Copier{copier}, nil)
	if err != nil {
		t.Fatal(err)
	}
	queue := "lmtest-" + testenv.Suffix()
	srv := asynq.NewServerFromRedisClient(b.rdb, asynq.Config{
		Queues: map[string]int{queue: 1}, Concurrency: 2, TaskCheckInterval: 20 * time.Millisecond, LogLevel: asynq.FatalLevel,
	})
	amux := asynq.NewServeMux()
	amux.Handle(promote.TaskType, ph)
	if err := srv.Start(amux); err != nil {
		t.Fatal(err)
	}
	enq, err := promote.NewEnqueuer(asynq.NewClientFromRedisClient(b.rdb), "accounts", &promote.EnqueuerConfig{Queue: queue})
	if err != nil {
		t.Fatal(err)
	}
	if err := enq.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		enq.Stop()
		srv.Shutdown()
		_ = asynq.NewInspectorFromRedisClient(b.rdb).DeleteQueue(queue, true)
	})
	mw, err := httpmw.New(b.pair.Old.Pool, b.pair.New.Pool, &httpmw.Config{Key: httpmw.PathKey("id"), Tracker: b.tracker, Scheduler: enq, NoTombstones: true})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(route, mw.Wrap(http.HandlerFunc(getAccount)))
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	bb := &bundle{srv: hs}

	if r := bb.get(t, "/accounts/77"); r.status != http.StatusOK || r.source(t) != "old" {
		t.Fatalf("first read = %d from %q, want 200 from old", r.status, r.source(t))
	}
	testenv.Eventually(t, 10*time.Second, "key 77 promoted", func() bool {
		s, err := b.tracker.IsSettled(ctx, 77)
		return err == nil && s
	})
	r := bb.get(t, "/accounts/77")
	if r.status != http.StatusOK || r.source(t) != "new" || r.account(t).Email != "user77@example.com" {
		t.Fatalf("read after promotion = %d from %q %q, want OLD's row from new", r.status, r.source(t), r.body)
	}
}

// The counters and the histogram tell the story of each request.
func TestMetrics(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	b.pair.New.Exec(t, `INSERT INTO accounts VALUES (1, 'a@example.com', 'A', 1, 'active', now(), now())`)

	var wg sync.WaitGroup
	for range 10 { // concurrent hits, for the race detector
		wg.Go(func() {
			if r := b.get(t, "/accounts/1"); r.status != http.StatusOK {
				t.Errorf("hit = %d", r.status)
			}
		})
	}
	wg.Wait()
	b.get(t, "/accounts/2")    // from OLD
	b.get(t, "/accounts/3")    // from OLD
	b.get(t, "/accounts/5000") // in neither
	b.get(t, "/accounts/x")    // bad key

	for _, c := range []struct {
		source, outcome string
		want            float64
	}{
		{"new", "ok", 10},
		{"old", "ok", 2},
		{"old", "not_found", 1},
		{"none", "bad_key", 1},
		{"new", "not_found", 0},
	} {
		if got := requests(t, b.reg, c.source, c.outcome); got != c.want {
			t.Errorf("requests{%s,%s} = %v, want %v", c.source, c.outcome, got, c.want)
		}
	}
	if got := fallbacks(t, b.reg, "found"); got != 2 {
		t.Errorf("fallbacks{found} = %v, want 2", got)
	}
	if got := fallbacks(t, b.reg, "not_found"); got != 1 {
		t.Errorf("fallbacks{not_found} = %v, want 1", got)
	}
	durations := func(source string) float64 {
		return metric(t, b.reg, "lazymigrate_http_request_duration_seconds", map[string]string{"route": route, "source": source})
	}
	if n, o, none := durations("new"), durations("old"), durations("none"); n != 10 || o != 3 || none != 1 {
		t.Errorf("duration samples new %v, old %v, none %v; want 10, 3, 1", n, o, none)
	}
	// No label carries a key or a path.
	mfs, err := b.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if strings.Contains(lp.GetValue(), "/accounts/") && lp.GetValue() != route {
					t.Errorf("%s has label %s=%q", mf.GetName(), lp.GetName(), lp.GetValue())
				}
			}
		}
	}
}

// Once the table's migration is closed (its tombstones purged), a key NEW
// lacks is a 404 without asking OLD: OLD may still hold rows deleted
// before the purge, whose tombstones are gone.
func TestClosedTableIsNotFoundWithoutAskingOld(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{tombstones: true})
	b.pair.New.Exec(t, `INSERT INTO lazymigrate.tables (table_name, stripe_bits, closed_at) VALUES ('public.accounts', 10, now())`)
	b.resetCounts()
	r := b.get(t, "/accounts/10") // in OLD only
	if r.status != http.StatusNotFound || r.source(t) != "new" {
		t.Fatalf("key of a closed table NEW lacks: %d from %q, want 404 from new", r.status, r.source(t))
	}
	if n := b.oldQueries.Load(); n != 0 {
		t.Fatalf("OLD queried %d times for a key of a closed table", n)
	}
}
