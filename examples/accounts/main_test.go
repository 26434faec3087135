package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
)

// TestMain fails the package if a test leaves goroutines behind: the
// service's background loops, its worker and the browser must all stop.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testBundle is a seeded OLD and NEW, a Redis prefix and asynq queue of
// the test's own, and the service running on them behind an httptest
// server.
type testBundle struct {
	old, new *testenv.Database
	rdb      *redis.Client
	prefix   string
	queue    string
	srv      *server
	http     *httptest.Server
}

// connArgs are the command-line flags that point a command at b's
// databases and Redis.
func (b *testBundle) connArgs() []string {
	return []string{
		"-old-dsn", b.old.URL, "-new-dsn", b.new.URL, "-redis", os.Getenv("LM_REDIS_ADDR"),
		"-prefix", b.prefix, "-queue", b.queue, "-max-conns", "4",
	}
}

// newBundle creates the databases and seeds them with `accounts seed`
// (rows accounts in OLD), without starting the service.
func newBundle(t *testing.T, rows int64) *testBundle {
	t.Helper()
	b := &testBundle{old: testenv.NewDatabase(t, "old"), new: testenv.NewDatabase(t, "new")}
	b.rdb, b.prefix = testenv.Redis(t)
	b.queue = "lmtest-" + testenv.Suffix()
	t.Cleanup(func() { _ = asynq.NewInspectorFromRedisClient(b.rdb).DeleteQueue(b.queue, true) })
	var out bytes.Buffer
	args := []string{"seed", "-old-dsn", b.old.URL, "-new-dsn", b.new.URL, "-rows", strconv.FormatInt(rows, 10)}
	if err := run(context.Background(), args, &out, io.Discard); err != nil {
		t.Fatalf("accounts seed: %v", err)
	}
	return b
}

// setup returns a bundle with the service started on it; cfg adds to the
// test defaults (the in-process worker polls every 20ms).
func setup(t *testing.T, rows int64, cfg serveConfig) *testBundle {
	t.Helper()
	b := newBundle(t, rows)
	cfg.Prefix, cfg.Queue = b.prefix, b.queue
	if cfg.WorkerConfig.Concurrency == 0 {
		cfg.WorkerConfig = workerConfig{Concurrency: 2, TaskCheckInterval: 20 * time.Millisecond}
	}
	if cfg.HeatmapCells == 0 {
		cfg.HeatmapCells = 200
	}
	ctx := context.Background()
	d := &deps{old: b.old.Pool, new: b.new.Pool, rdb: b.rdb} // closed by testenv
	s, err := newServer(ctx, d, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.close)
	b.srv = s
	b.http = httptest.NewServer(s.Handler())
	t.Cleanup(b.http.Close)
	return b
}

// reply is an HTTP answer, read whole.
type reply struct {
	status int
	header http.Header
	body   []byte
}

func (r reply) source() string { return r.header.Get("Lazymigrate-Source") }

func (r reply) account(t *testing.T) Account {
	t.Helper()
	var a Account
	if err := json.Unmarshal(r.body, &a); err != nil {
		t.Fatalf("decode account from %q: %v", r.body, err)
	}
	return a
}

func (b *testBundle) do(t *testing.T, method, path, body string) reply {
	t.Helper()
	req, err := http.NewRequest(method, b.http.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := b.http.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return reply{resp.StatusCode, resp.Header, data}
}

func (b *testBundle) get(t *testing.T, path string) reply { return b.do(t, http.MethodGet, path, "") }

func (b *testBundle) status(t *testing.T) Status {
	t.Helper()
	r := b.get(t, "/status.json")
	if r.status != http.StatusOK {
		t.Fatalf("GET /status.json = %d %s", r.status, r.body)
	}
	var s Status
	if err := json.Unmarshal(r.body, &s); err != nil {
		t.Fatalf("decode status: %v\n%s", err, r.body)
	}
	if len(s.Tables) != 1 || s.Tables[0].Table != "accounts" {
		t.Fatalf("status tables = %+v, want accounts alone", s.Tables)
	}
	return s
}

// freeAddr returns a loopback address nothing listens on, for a command
// that takes -addr.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
