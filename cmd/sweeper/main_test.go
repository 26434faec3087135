package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/promote"
	"github.com/lazymigrate/lazymigrate/tracker"
)

// binDir holds the sweeper binary the signal tests run.
var binDir string

// TestMain fails the package if run leaves goroutines behind (metrics
// server, pusher, pools) once it has returned.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sweeper-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	binDir = dir
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		_ = os.RemoveAll(dir)
		os.Exit(code)
	}))
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary builds the sweeper once per test run (with -race when the tests
// have it) and returns its path.
func binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binPath = filepath.Join(binDir, "sweeper")
		args := []string{"build", "-o", binPath}
		if raceEnabled {
			args = append(args, "-race")
		}
		out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// result is what one sweeper command did.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// sweeper runs a command line in process.
func sweeper(t *testing.T, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, &stdout, &stderr)
	return result{code, stdout.String(), stderr.String()}
}

// bundle is a migration to sweep: OLD seeded, NEW with an empty accounts
// table and lazymigrate's schema, a Redis prefix of its own.
type bundle struct {
	pair   *testenv.Pair
	rdb    *redis.Client
	redis  string
	prefix string
	tr     *tracker.Tracker
}

// setup seeds OLD with accounts [1, n] but the multiples of 7, as gaps,
// and runs 'sweeper init' on NEW.
func setup(t *testing.T, n int64) *bundle {
	t.Helper()
	p := testenv.NewPair(t)
	testenv.SeedAccounts(t, p.Old, 1, n+1)
	p.Old.Exec(t, `DELETE FROM accounts WHERE id % 7 = 0`)
	rdb, prefix := testenv.Redis(t)
	tr, err := tracker.New(rdb, "accounts", &tracker.Config{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	b := &bundle{pair: p, rdb: rdb, redis: testenv.Require(t, "LM_REDIS_ADDR"), prefix: prefix, tr: tr}
	if r := b.sweeper(t, "init"); r.code != 0 || !strings.Contains(r.stdout, "created lazymigrate's schema") {
		t.Fatalf("init: %v", r)
	}
	return b
}

// args returns cmd with the connection flags it takes, then extra.
func (b *bundle) args(cmd string, extra ...string) []string {
	old := []string{"--old-dsn", b.pair.Old.URL}
	nw := []string{"--new-dsn", b.pair.New.URL}
	rd := []string{"--redis", b.redis, "--prefix", b.prefix}
	table := []string{"--table", "accounts"}
	var args []string
	switch cmd {
	case "init":
		args = nw
	case "run":
		// No latency throttle: parallel tests under -race are slow, and a
		// held sweep is tested on its own.
		args = concat(old, nw, rd, table, []string{"--max-latency", "0", "--check-interval", "20ms"})
	case "verify":
		args = concat(old, nw, table)
	case "status":
		args = concat(old, rd, table)
	case "rebuild-tracker":
		args = concat(nw, rd, table)
	case "pause", "resume", "mode":
		args = concat(rd, table)
	}
	return concat([]string{cmd}, args, extra)
}

func concat(parts ...[]string) []string {
	var out []string
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func (b *bundle) sweeper(t *testing.T, cmd string, extra ...string) result {
	t.Helper()
	return sweeper(t, b.args(cmd, extra...)...)
}

// copier returns a copier of the bundle's table, marking its tracker.
func (b *bundle) copier(t *testing.T) *promote.Copier {
	t.Helper()
	cp, err := promote.NewCopier(context.Background(), b.pair.Old.Pool, b.pair.New.Pool,
		&promote.CopierConfig{Table: "accounts", Marker: b.tr})
	if err != nil {
		t.Fatal(err)
	}
	return cp
}

// count runs a count query on db.
func count(t *testing.T, db *testenv.Database, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := db.Pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// decode parses a command's JSON output.
func decode[T any](t *testing.T, r result) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%v", err, r)
	}
	return v
}

// background runs a command line in process until it returns; wait
// returns its result.
func background(args ...string) (stderr *testenv.SyncBuffer, wait func() result) {
	stdout, errOut := &testenv.SyncBuffer{}, &testenv.SyncBuffer{}
	done := make(chan int, 1)
	go func() { done <- run(context.Background(), args, stdout, errOut) }()
	return errOut, func() result {
		select {
		case code := <-done:
			return result{code, stdout.String(), errOut.String()}
		case <-time.After(2 * time.Minute):
			panic("sweeper command did not return:\n" + errOut.String())
		}
	}
}
