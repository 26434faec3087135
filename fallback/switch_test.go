package fallback_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/fallback"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
)

// pollInterval keeps tests that wait for Run short.
const pollInterval = 20 * time.Millisecond

// waitFor bounds every wait for a condition.
const waitFor = 5 * time.Second

type testBundle struct {
	rdb    *redis.Client
	prefix string
}

// setup returns a Redis client and a key prefix of the test's own.
func setup(t *testing.T) testBundle {
	t.Helper()
	rdb, prefix := testenv.Redis(t)
	return testBundle{rdb: rdb, prefix: prefix}
}

// key returns the Redis key holding table's mode.
func (b testBundle) key(table string) string { return b.prefix + ":mode:" + table }

// newSwitch returns a switch of table "accounts" under the test's prefix,
// polling every pollInterval. cfg may be nil; its Prefix and PollInterval
// are filled in when unset.
func (b testBundle) newSwitch(t *testing.T, rdb redis.UniversalClient, cfg *fallback.Config) *fallback.Switch {
	t.Helper()
	var c fallback.Config
	if cfg != nil {
		c = *cfg
	}
	if c.Prefix == "" {
		c.Prefix = b.prefix
	}
	if c.PollInterval == 0 {
		c.PollInterval = pollInterval
	}
	sw, err := fallback.New(rdb, "accounts", &c)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return sw
}

// faultyClient returns a client of its own on LM_REDIS_ADDR, which the
// returned hook can take down and bring back.
func faultyClient(t *testing.T) (*redis.Client, *faultHook) {
	t.Helper()
	opts, err := testenv.RedisOptions(os.Getenv("LM_REDIS_ADDR"))
	if err != nil {
		t.Fatalf("RedisOptions: %v", err)
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { _ = rdb.Close() })
	h := &faultHook{}
	rdb.AddHook(h)
	return rdb, h
}

// downClient returns a client on a port nothing listens on.
func downClient(t *testing.T) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

var errInjected = errors.New("injected fault: Redis is down")

// faultHook injects faults into a real client. While down is set every
// command fails. When pauseGet is armed, the next GET gets its reply, then
// closes read and waits for release before returning it.
type faultHook struct {
	down     atomic.Bool
	pauseGet atomic.Bool
	read     chan struct{}
	release  chan struct{}
}

var _ redis.Hook = (*faultHook)(nil)

func (h *faultHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *faultHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.down.Load() {
			cmd.SetErr(errInjected)
			return errInjected
		}
		err := next(ctx, cmd)
		if cmd.Name() == "get" && h.pauseGet.CompareAndSwap(true, false) {
			close(h.read)
			<-h.release
		}
		return err
	}
}

func (h *faultHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if h.down.Load() {
			for _, cmd := range cmds {
				cmd.SetErr(errInjected)
			}
			return errInjected
		}
		return next(ctx, cmds)
	}
}

// startRun runs sw.Run until the test ends, and then checks that it
// returned nil.
func startRun(t *testing.T, sw *fallback.Switch) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sw.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v after its context ended, want nil", err)
			}
		case <-time.After(waitFor):
			t.Errorf("Run did not return within %s of its context ending", waitFor)
		}
	})
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustRefresh(t *testing.T, sw *fallback.Switch) {
	t.Helper()
	if err := sw.Refresh(testContext(t)); err != nil {
		t.Fatalf("Refresh: %v", err)
	}
}

func mustSet(t *testing.T, sw *fallback.Switch, m fallback.Mode) {
	t.Helper()
	if err := sw.Set(testContext(t), m); err != nil {
		t.Fatalf("Set(%s): %v", m, err)
	}
}

func wantMode(t *testing.T, sw *fallback.Switch, want fallback.Mode, when string) {
	t.Helper()
	if got := sw.Mode(); got != want {
		t.Fatalf("%s: Mode() = %s, want %s", when, got, want)
	}
}

func eventuallyMode(t *testing.T, sw *fallback.Switch, want fallback.Mode, what string) {
	t.Helper()
	testenv.Eventually(t, waitFor, what+": mode "+string(want), func() bool { return sw.Mode() == want })
}

// logBuffer is a slog destination that tests may read while Run writes.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func pollErrors(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "lazymigrate_mode_poll_errors_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("lazymigrate_mode_poll_errors_total not registered")
	return 0
}

func TestNew(t *testing.T) {
	t.Parallel()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:0"}) // never dialled
	t.Cleanup(func() { _ = rdb.Close() })

	tests := []struct {
		name     string
		rdb      redis.UniversalClient
		table    string
		cfg      *fallback.Config
		wantMode fallback.Mode
		wantErr  string
	}{
		{name: "nil config", rdb: rdb, table: "accounts", wantMode: fallback.ModeReadthrough},
		{name: "zero config", rdb: rdb, table: "accounts", cfg: &fallback.Config{}, wantMode: fallback.ModeReadthrough},
		{name: "no Redis", table: "accounts", wantMode: fallback.ModeReadthrough},
		{name: "default old", rdb: rdb, table: "a", cfg: &fallback.Config{Default: fallback.ModeOld}, wantMode: fallback.ModeOld},
		{name: "default spelt loosely", rdb: rdb, table: "a", cfg: &fallback.Config{Default: "NEW"}, wantMode: fallback.ModeNew},
		{name: "no table", rdb: rdb, wantErr: "table name"},
		{name: "bad default", rdb: rdb, table: "a", cfg: &fallback.Config{Default: "rollback"}, wantErr: "Config.Default"},
		{name: "negative interval", rdb: rdb, table: "a", cfg: &fallback.Config{PollInterval: -time.Second}, wantErr: "Config.PollInterval"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sw, err := fallback.New(tt.rdb, tt.table, tt.cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("New: err = %v, want one mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			wantMode(t, sw, tt.wantMode, "after New")
			if sw.Table() != tt.table {
				t.Errorf("Table() = %q, want %q", sw.Table(), tt.table)
			}
		})
	}
}

func TestDefaultWhenKeyAbsent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)

	plain := b.newSwitch(t, b.rdb, nil)
	mustRefresh(t, plain)
	wantMode(t, plain, fallback.ModeReadthrough, "no key, default Default")

	old := b.newSwitch(t, b.rdb, &fallback.Config{Default: fallback.ModeOld})
	mustRefresh(t, old)
	wantMode(t, old, fallback.ModeOld, "no key, Default old")

	if n, err := b.rdb.Exists(ctx, b.key("accounts")).Result(); err != nil || n != 0 {
		t.Fatalf("Refresh wrote the key: EXISTS = %d, %v", n, err)
	}

	// A key that disappears (FLUSHALL, a new Redis) means Default again.
	mustSet(t, plain, fallback.ModeNew)
	mustRefresh(t, old)
	wantMode(t, old, fallback.ModeNew, "after Set")
	if err := b.rdb.Del(ctx, b.key("accounts")).Err(); err != nil {
		t.Fatal(err)
	}
	mustRefresh(t, old)
	wantMode(t, old, fallback.ModeOld, "key deleted")
}

func TestSetIsSeenByOtherSwitches(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)

	cli := b.newSwitch(t, b.rdb, nil)
	api := b.newSwitch(t, b.rdb, nil)
	mustRefresh(t, api)

	mustSet(t, cli, fallback.ModeOld)
	wantMode(t, cli, fallback.ModeOld, "Set applies locally at once")
	if v, err := b.rdb.Get(ctx, b.key("accounts")).Result(); err != nil || v != "old" {
		t.Fatalf("Redis key = %q, %v; want \"old\"", v, err)
	}
	wantMode(t, api, fallback.ModeReadthrough, "other switch before Refresh")
	mustRefresh(t, api)
	wantMode(t, api, fallback.ModeOld, "other switch after Refresh")

	// Another table under the same prefix has its own mode.
	orders, err := fallback.New(b.rdb, "orders", &fallback.Config{Prefix: b.prefix})
	if err != nil {
		t.Fatal(err)
	}
	mustRefresh(t, orders)
	wantMode(t, orders, fallback.ModeReadthrough, "another table")
}

func TestRunFollowsSet(t *testing.T) {
	t.Parallel()
	b := setup(t)

	cli := b.newSwitch(t, b.rdb, nil)
	api := b.newSwitch(t, b.rdb, nil)
	worker := b.newSwitch(t, b.rdb, nil)
	startRun(t, api)
	startRun(t, worker)

	for _, m := range []fallback.Mode{fallback.ModeOld, fallback.ModeReadthrough, fallback.ModeNew, fallback.ModeOld} {
		mustSet(t, cli, m)
		eventuallyMode(t, api, m, "api follows Set")
		eventuallyMode(t, worker, m, "worker follows Set")
	}

	// A value written by another tool is followed too.
	if err := b.rdb.Set(testContext(t), b.key("accounts"), "readthrough", 0).Err(); err != nil {
		t.Fatal(err)
	}
	eventuallyMode(t, api, fallback.ModeReadthrough, "api follows redis-cli SET")
}

func TestRunReturnsWhenContextEnds(t *testing.T) {
	t.Parallel()
	b := setup(t)
	sw := b.newSwitch(t, b.rdb, &fallback.Config{PollInterval: time.Hour})

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sw.Run(ctx) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
	case <-time.After(waitFor):
		t.Fatal("Run did not return after its context ended, with an hour to the next poll")
	}

	// A Run started on an ended context returns at once.
	if err := sw.Run(ctx); err != nil {
		t.Fatalf("Run on an ended context = %v, want nil", err)
	}
}

func TestRunPollsAtOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	mustSet(t, b.newSwitch(t, b.rdb, nil), fallback.ModeOld)

	sw := b.newSwitch(t, b.rdb, &fallback.Config{PollInterval: time.Hour})
	startRun(t, sw)
	eventuallyMode(t, sw, fallback.ModeOld, "first poll of Run, long before PollInterval")
}

func TestUnreachableRedis(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	reg := prometheus.NewRegistry()
	var logs logBuffer
	sw, err := fallback.New(downClient(t), "accounts", &fallback.Config{
		PollInterval: pollInterval, Registerer: reg, Logger: logs.logger(),
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}

	sw.Override(fallback.ModeOld)
	err = sw.Refresh(ctx)
	if err == nil {
		t.Fatal("Refresh with Redis down returned nil")
	}
	if errors.Is(err, fallback.ErrInvalidMode) || !strings.Contains(err.Error(), "lazymigrate:mode:accounts") {
		t.Errorf("Refresh error %q should name the key and not claim an invalid mode", err)
	}
	wantMode(t, sw, fallback.ModeOld, "overridden, Redis down")
	if n := pollErrors(t, reg); n != 1 {
		t.Errorf("poll errors = %v, want 1", n)
	}

	// Nothing was ever read from Redis: without the override, Default.
	sw.ClearOverride()
	wantMode(t, sw, fallback.ModeReadthrough, "override cleared")
	if err := sw.Refresh(ctx); err == nil {
		t.Fatal("second Refresh returned nil")
	}
	wantMode(t, sw, fallback.ModeReadthrough, "after a failed Refresh")
	if n := pollErrors(t, reg); n != 2 {
		t.Errorf("poll errors = %v, want 2", n)
	}

	// A caller's own cancellation is not a Redis failure.
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := sw.Refresh(cancelled); err == nil {
		t.Fatal("Refresh on a cancelled context returned nil")
	}
	if n := pollErrors(t, reg); n != 2 {
		t.Errorf("a cancelled Refresh was counted: poll errors = %v, want 2", n)
	}

	// Run keeps polling, counting every failure and warning once.
	startRun(t, sw)
	testenv.Eventually(t, waitFor, "Run counts failed polls", func() bool { return pollErrors(t, reg) >= 5 })
	wantMode(t, sw, fallback.ModeReadthrough, "Run with Redis down")
	out := logs.String()
	if n := strings.Count(out, "level=WARN"); n != 1 {
		t.Errorf("%d warnings for one outage, want 1:\n%s", n, out)
	}
	if !strings.Contains(out, "level=DEBUG") || !strings.Contains(out, "connection refused") {
		t.Errorf("later failures should be logged at debug level with their cause:\n%s", out)
	}

}

// TestOutageKeepsLastKnownMode is the reason the switch exists: a rollback
// must survive Redis going away.
func TestOutageKeepsLastKnownMode(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rdb, fault := faultyClient(t)
	reg := prometheus.NewRegistry()
	var logs logBuffer
	sw := b.newSwitch(t, rdb, &fallback.Config{Registerer: reg, Logger: logs.logger()})
	cli := b.newSwitch(t, b.rdb, nil)

	mustSet(t, cli, fallback.ModeOld) // rolled back
	startRun(t, sw)
	eventuallyMode(t, sw, fallback.ModeOld, "before the outage")

	fault.down.Store(true)
	if err := sw.Refresh(testContext(t)); !errors.Is(err, errInjected) {
		t.Fatalf("Refresh during the outage: err = %v, want the injected fault", err)
	}
	testenv.Eventually(t, waitFor, "Run fails several polls", func() bool { return pollErrors(t, reg) >= 5 })
	wantMode(t, sw, fallback.ModeOld, "during the outage (not Default)")
	if err := sw.Set(testContext(t), fallback.ModeNew); !errors.Is(err, errInjected) {
		t.Fatalf("Set during the outage: err = %v, want the injected fault", err)
	}
	wantMode(t, sw, fallback.ModeOld, "after a failed Set")

	// The operator resumes the migration while this process cannot see it;
	// it follows once Redis is back.
	mustSet(t, cli, fallback.ModeReadthrough)
	fault.down.Store(false)
	eventuallyMode(t, sw, fallback.ModeReadthrough, "after the outage")
	testenv.Eventually(t, waitFor, "recovery is logged", func() bool {
		return strings.Contains(logs.String(), "readable again")
	})
}

func TestInvalidValueKeepsLastKnownMode(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	reg := prometheus.NewRegistry()
	var logs logBuffer
	sw := b.newSwitch(t, b.rdb, &fallback.Config{Registerer: reg, Logger: logs.logger()})

	mustSet(t, sw, fallback.ModeNew)
	if err := b.rdb.Set(ctx, b.key("accounts"), "bogus", 0).Err(); err != nil {
		t.Fatal(err)
	}
	err := sw.Refresh(ctx)
	if !errors.Is(err, fallback.ErrInvalidMode) {
		t.Fatalf("Refresh of \"bogus\": err = %v, want ErrInvalidMode", err)
	}
	for _, want := range []string{`"bogus"`, b.key("accounts"), "old, readthrough and new"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Refresh error %q lacks %q", err, want)
		}
	}
	wantMode(t, sw, fallback.ModeNew, "after reading an invalid value")
	if n := pollErrors(t, reg); n != 1 {
		t.Errorf("poll errors = %v, want 1", n)
	}

	// Run logs it, with the value, and keeps the mode.
	startRun(t, sw)
	testenv.Eventually(t, waitFor, "Run logs the invalid value", func() bool {
		return strings.Contains(logs.String(), "bogus")
	})
	wantMode(t, sw, fallback.ModeNew, "Run reading an invalid value")

	// A huge value does not make a huge error.
	if err := b.rdb.Set(ctx, b.key("accounts"), strings.Repeat("z", 1<<20), 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := sw.Refresh(ctx); !errors.Is(err, fallback.ErrInvalidMode) || len(err.Error()) > 400 {
		t.Errorf("Refresh of a 1 MiB value: err of %d bytes, %v", len(err.Error()), errors.Is(err, fallback.ErrInvalidMode))
	}

	// A value written with `redis-cli -x` carries a newline; it is a mode.
	if err := b.rdb.Set(ctx, b.key("accounts"), "old\n", 0).Err(); err != nil {
		t.Fatal(err)
	}
	eventuallyMode(t, sw, fallback.ModeOld, "value with a newline")
}

func TestOverride(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cli := b.newSwitch(t, b.rdb, nil)
	sw := b.newSwitch(t, b.rdb, nil)

	sw.Override(fallback.ModeNew)
	wantMode(t, sw, fallback.ModeNew, "Override")
	mustSet(t, cli, fallback.ModeOld)
	mustRefresh(t, sw)
	wantMode(t, sw, fallback.ModeNew, "Redis changed under an override")

	// Set from the overridden switch reaches Redis, but this process stays
	// pinned.
	mustSet(t, sw, fallback.ModeReadthrough)
	wantMode(t, sw, fallback.ModeNew, "Set under an override")
	mustRefresh(t, cli)
	wantMode(t, cli, fallback.ModeReadthrough, "other switch after an overridden Set")

	// Overrides may be replaced; ClearOverride returns at once to the mode
	// last known from Redis.
	sw.Override(fallback.ModeOld)
	wantMode(t, sw, fallback.ModeOld, "second Override")
	sw.ClearOverride()
	wantMode(t, sw, fallback.ModeReadthrough, "ClearOverride")
	sw.ClearOverride() // twice is fine
	wantMode(t, sw, fallback.ModeReadthrough, "second ClearOverride")

	// Under Run: pinned while Redis changes, following again once cleared.
	startRun(t, sw)
	sw.Override(fallback.ModeOld)
	mustSet(t, cli, fallback.ModeNew)
	mustRefresh(t, sw)
	wantMode(t, sw, fallback.ModeOld, "Run under an override")
	sw.ClearOverride()
	eventuallyMode(t, sw, fallback.ModeNew, "Run after ClearOverride")
}

func TestOverridePanicsOnInvalidMode(t *testing.T) {
	t.Parallel()
	sw, err := fallback.New(nil, "accounts", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		r := recover()
		if msg, _ := r.(string); !strings.Contains(msg, "old, readthrough and new") {
			t.Fatalf("Override(\"bogus\") panicked with %v, want a message naming the valid modes", r)
		}
		wantMode(t, sw, fallback.ModeReadthrough, "after a refused Override")
	}()
	sw.Override("bogus")
}

func TestSetRejectsInvalidMode(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	sw := b.newSwitch(t, b.rdb, nil)

	for _, m := range []fallback.Mode{"", "bogus", "rollback"} {
		if err := sw.Set(ctx, m); !errors.Is(err, fallback.ErrInvalidMode) {
			t.Errorf("Set(%q): err = %v, want ErrInvalidMode", m, err)
		}
	}
	if n, err := b.rdb.Exists(ctx, b.key("accounts")).Result(); err != nil || n != 0 {
		t.Fatalf("invalid Set wrote the key: EXISTS = %d, %v", n, err)
	}
	wantMode(t, sw, fallback.ModeReadthrough, "after invalid Sets")

	// A loosely spelt mode is written in its canonical form.
	mustSet(t, sw, "OLD")
	if v, err := b.rdb.Get(ctx, b.key("accounts")).Result(); err != nil || v != "old" {
		t.Fatalf("Set(\"OLD\") wrote %q, %v; want \"old\"", v, err)
	}
}

func TestLocalSwitch(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	sw, err := fallback.New(nil, "accounts", &fallback.Config{Default: fallback.ModeOld})
	if err != nil {
		t.Fatal(err)
	}
	if err := sw.Refresh(ctx); err != nil {
		t.Errorf("Refresh without Redis = %v, want nil", err)
	}
	if err := sw.Set(ctx, fallback.ModeNew); !errors.Is(err, fallback.ErrNoRedis) {
		t.Errorf("Set without Redis: err = %v, want ErrNoRedis", err)
	}
	if err := sw.Run(ctx); err != nil {
		t.Errorf("Run without Redis = %v, want nil at once", err)
	}
	wantMode(t, sw, fallback.ModeOld, "Default")
	sw.Override(fallback.ModeNew)
	wantMode(t, sw, fallback.ModeNew, "Override")
	sw.ClearOverride()
	wantMode(t, sw, fallback.ModeOld, "ClearOverride")
}

// TestSetIsNotUndoneByConcurrentRefresh: a poll that read the key just
// before this process's Set must not put the older mode back.
func TestSetIsNotUndoneByConcurrentRefresh(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rdb, fault := faultyClient(t)
	sw := b.newSwitch(t, rdb, nil)
	mustSet(t, sw, fallback.ModeReadthrough)

	fault.read = make(chan struct{})
	fault.release = make(chan struct{})
	fault.pauseGet.Store(true)
	done := make(chan error, 1)
	go func() { done <- sw.Refresh(context.Background()) }()
	<-fault.read // the GET has read "readthrough"

	mustSet(t, sw, fallback.ModeOld)
	close(fault.release)
	if err := <-done; err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	wantMode(t, sw, fallback.ModeOld, "Refresh that read before Set")
	mustRefresh(t, sw)
	wantMode(t, sw, fallback.ModeOld, "next Refresh")
}

func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	sw := b.newSwitch(t, b.rdb, nil)
	other := b.newSwitch(t, b.rdb, nil)
	startRun(t, sw)

	all := []fallback.Mode{fallback.ModeOld, fallback.ModeReadthrough, fallback.ModeNew}
	var stop atomic.Bool
	var readers, writers sync.WaitGroup
	for range 4 {
		readers.Go(func() {
			for !stop.Load() {
				switch m := sw.Mode(); m {
				case fallback.ModeOld, fallback.ModeReadthrough, fallback.ModeNew:
				default:
					t.Errorf("Mode() = %q", m)
					return
				}
			}
		})
	}
	for w, s := range []*fallback.Switch{sw, other} {
		writers.Go(func() {
			for i := range 50 {
				if err := s.Set(ctx, all[(i+w)%3]); err != nil {
					t.Errorf("Set: %v", err)
					return
				}
				if err := s.Refresh(ctx); err != nil {
					t.Errorf("Refresh: %v", err)
					return
				}
			}
		})
	}
	writers.Go(func() {
		for i := range 200 {
			sw.Override(all[i%3])
			sw.ClearOverride()
		}
	})
	writers.Wait()
	stop.Store(true)
	readers.Wait()

	// Once the writers stop, every switch agrees with Redis.
	v, err := b.rdb.Get(ctx, b.key("accounts")).Result()
	if err != nil {
		t.Fatal(err)
	}
	mustRefresh(t, other)
	wantMode(t, other, fallback.Mode(v), "other after the race")
	eventuallyMode(t, sw, fallback.Mode(v), "sw after the race")
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	b := setup(t)
	reg := prometheus.NewRegistry()
	cfg := &fallback.Config{Registerer: reg}
	sw := b.newSwitch(t, b.rdb, cfg)

	gauge := func(accounts [3]int, polls int) string {
		return `
# HELP lazymigrate_mode_poll_errors_total Reads of the table's mode from Redis that failed or found an invalid value; the last known mode stayed in force.
# TYPE lazymigrate_mode_poll_errors_total counter
lazymigrate_mode_poll_errors_total{table="accounts"} ` + strconv.Itoa(polls) + `
# HELP lazymigrate_read_mode The share of the table's keys this process serves in each mode (old, readthrough, new): 1 for the current mode and 0 for the others, or fractions while a mode is rolled out to some keys.
# TYPE lazymigrate_read_mode gauge
lazymigrate_read_mode{mode="new",table="accounts"} ` + strconv.Itoa(accounts[2]) + `
lazymigrate_read_mode{mode="old",table="accounts"} ` + strconv.Itoa(accounts[0]) + `
lazymigrate_read_mode{mode="readthrough",table="accounts"} ` + strconv.Itoa(accounts[1]) + `
`
	}
	check := func(when string, accounts [3]int, polls int) {
		t.Helper()
		if err := testutil.GatherAndCompare(reg, strings.NewReader(gauge(accounts, polls))); err != nil {
			t.Fatalf("%s: %v", when, err)
		}
	}

	check("after New", [3]int{0, 1, 0}, 0)
	mustSet(t, sw, fallback.ModeOld)
	check("after Set(old)", [3]int{1, 0, 0}, 0)
	sw.Override(fallback.ModeNew)
	check("after Override(new)", [3]int{0, 0, 1}, 0)
	sw.ClearOverride()
	check("after ClearOverride", [3]int{1, 0, 0}, 0)
	if err := b.rdb.Set(testContext(t), b.key("accounts"), "bogus", 0).Err(); err != nil {
		t.Fatal(err)
	}
	_ = sw.Refresh(testContext(t))
	check("after an invalid value", [3]int{1, 0, 0}, 1)

	// A second switch of the table on the same registry shares the series;
	// another table gets its own.
	if _, err := fallback.New(b.rdb, "accounts", cfg); err != nil {
		t.Fatalf("second New: %v", err)
	}
	if _, err := fallback.New(b.rdb, "orders", cfg); err != nil {
		t.Fatalf("New(orders): %v", err)
	}
	if n := testutil.CollectAndCount(reg, "lazymigrate_read_mode"); n != 6 {
		t.Errorf("lazymigrate_read_mode has %d series, want 6 (3 modes x 2 tables)", n)
	}
}

// TestModeDoesNotAllocate is not parallel: AllocsPerRun counts the whole
// process's allocations, and refuses to run beside parallel tests.
func TestModeDoesNotAllocate(t *testing.T) {
	sw, err := fallback.New(nil, "accounts", nil)
	if err != nil {
		t.Fatal(err)
	}
	var m fallback.Mode
	if n := testing.AllocsPerRun(1000, func() { m = sw.Mode() }); n != 0 {
		t.Fatalf("Mode() allocates %v times per call, want 0", n)
	}
	if m != fallback.ModeReadthrough {
		t.Fatalf("Mode() = %s", m)
	}
}
