package coldsweep_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/coldsweep"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
)

// Shard 0/4 of a sweep has started (claimed its layout) but has not saved
// progress yet (the first save is one ProgressInterval away). A
// misconfigured shard 0/2 starting now is refused with ErrLayoutChanged:
// the shard count comes from the recorded layout, not from progress records.
func TestSweepLayoutClaimedBeforeFirstProgress(t *testing.T) {
	b := setupSweep(t, 400)
	ctx := context.Background()
	// Hold both sweeps so that nothing finishes.
	if err := coldsweep.SetPaused(ctx, b.rdb, b.prefix, "accounts", true); err != nil {
		t.Fatal(err)
	}
	s1, err := coldsweep.New(b.config(coldsweep.Config{Chunk: 50, Shard: coldsweep.Shard{I: 0, N: 4}, ProgressInterval: time.Hour}))
	if err != nil {
		t.Fatal(err)
	}
	ctx1, cancel1 := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { _, err := s1.Run(ctx1); done <- err }()
	testenv.Eventually(t, 10*time.Second, "shard 0/4 claims its layout", func() bool {
		got, _ := b.rdb.Get(ctx, b.prefix+":sweep:accounts:layout").Result()
		return got == "chunk=50 shards=4"
	})

	s2, err := coldsweep.New(b.config(coldsweep.Config{Chunk: 50, Shard: coldsweep.Shard{I: 0, N: 2}, ProgressInterval: time.Hour}))
	if err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithTimeout(ctx, 10*time.Second) // bounds a shard wrongly let through: held by the pause
	defer cancel2()
	_, err2 := s2.Run(ctx2)
	cancel1()
	<-done
	got, _ := b.rdb.Get(ctx, b.prefix+":sweep:accounts:layout").Result()
	if !errors.Is(err2, coldsweep.ErrLayoutChanged) {
		t.Fatalf("shard 0/2 started while shard 0/4 runs: err = %v, want ErrLayoutChanged; layout now %q", err2, got)
	}
}

// onCommand is a go-redis hook that calls before ahead of the first command
// named name on key, and after once the first transaction that writes key
// has run.
type onCommand struct {
	key           string
	before, after func()
	beforeOnce    sync.Once
	afterOnce     sync.Once
}

func (h *onCommand) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *onCommand) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.before != nil && cmd.Name() == "hgetall" && cmd.Args()[1] == h.key {
			h.beforeOnce.Do(h.before)
		}
		return next(ctx, cmd)
	}
}

func (h *onCommand) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, c := range cmds {
			if h.after != nil && c.Name() == "set" && c.Args()[1] == h.key {
				h.afterOnce.Do(h.after)
			}
		}
		return err
	}
}

// layoutRace sweeps accounts unsharded, then runs shard 0/2 on its own
// Redis client with hook, which runs shard 1/2 to its end at the chosen
// moment, and checks that both shards finish and leave their progress.
func layoutRace(t *testing.T, hook func(key string, other func()) *onCommand) {
	t.Helper()
	b := setupSweep(t, 1000)
	ctx := context.Background()
	b.sweep(t, coldsweep.Config{Chunk: 100}) // recorded "chunk=100 shards=1", finished
	var otherErr error
	other := func() {
		s, err := coldsweep.New(b.config(coldsweep.Config{Chunk: 100, Shard: coldsweep.Shard{I: 1, N: 2}}))
		if err != nil {
			otherErr = err
			return
		}
		_, otherErr = s.Run(ctx)
	}
	rdb := redis.NewClient(b.rdb.Options())
	defer rdb.Close()
	layoutKey := b.prefix + ":sweep:accounts:layout"
	progressKey := b.prefix + ":sweep:accounts"
	h := hook(layoutKey, other)
	if h.key == "" {
		h.key = progressKey
	}
	rdb.AddHook(h)
	c := b.config(coldsweep.Config{Chunk: 100, Shard: coldsweep.Shard{I: 0, N: 2}})
	c.Redis = rdb
	s, err := coldsweep.New(c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Run(ctx); err != nil {
		t.Fatalf("shard 0/2: %v", err)
	}
	if otherErr != nil {
		t.Fatalf("shard 1/2: %v", otherErr)
	}
	ps, err := coldsweep.LoadProgress(ctx, b.rdb, b.prefix, "accounts")
	if err != nil {
		t.Fatal(err)
	}
	var shards []string
	for _, p := range ps {
		if !p.Finished || p.ChunksDone != p.Chunks {
			t.Errorf("progress of shard %s: %+v, want finished", p.Shard, p)
		}
		shards = append(shards, p.Shard)
	}
	if !slices.Equal(shards, []string{"0/2", "1/2"}) {
		t.Errorf("progress records of shards %v, want 0/2 and 1/2 only", shards)
	}
	if got, _ := b.rdb.Get(ctx, layoutKey).Result(); got != "chunk=100 shards=2" {
		t.Errorf("layout %q, want chunk=100 shards=2", got)
	}
	b.requireComplete(t, coldsweep.Span{Lo: 1, Hi: 1001})
}

// Two shards of a new layout start together after an unsharded sweep has
// finished. Shard 0/2 reads the old layout and then, to see whether its
// shards finished, the old progress; shard 1/2 replaces the layout (and
// clears that progress) in between. Shard 0/2 must go on with the layout
// it now shares, not refuse because the old sweep's progress is gone.
func TestShardsReplacingALayoutTogetherReadProgressLate(t *testing.T) {
	t.Parallel()
	layoutRace(t, func(_ string, other func()) *onCommand {
		return &onCommand{before: other}
	})
}

// The same two shards, the other way round: shard 1/2 claims the new
// layout and runs to its end between shard 0/2's replacing the layout and
// its clearing the old sweep's progress. Shard 1/2's progress must stay.
func TestShardsReplacingALayoutTogetherKeepNewProgress(t *testing.T) {
	t.Parallel()
	layoutRace(t, func(layoutKey string, other func()) *onCommand {
		return &onCommand{key: layoutKey, after: other}
	})
}

// afterExpire is a go-redis hook that calls fn once, right after the first
// EXPIRE of key.
type afterExpire struct {
	key  string
	fn   func()
	once sync.Once
}

func (h *afterExpire) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *afterExpire) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if cmd.Name() == "expire" && cmd.Args()[1] == h.key {
			h.once.Do(h.fn)
		}
		return err
	}
}

func (h *afterExpire) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// A sweep of shards 0/2 and 1/2 finished a while ago; shard 0/2 of the same
// layout runs again (a new sweep, held by the pause), and its claim finds
// its layout recorded (EXPIRE only). A shard of another layout starting
// right then must be refused: had the new run's record not yet said that
// shard 0/2 runs, the newcomer would read last run's records, take the
// layout for done, and take it over.
func TestSweepRunAgainMarksItsShardUnfinishedAtOnce(t *testing.T) {
	t.Parallel()
	b := setupSweep(t, 400)
	ctx := context.Background()
	for i := range int64(2) {
		b.sweep(t, coldsweep.Config{Chunk: 50, Shard: coldsweep.Shard{I: i, N: 2}})
	}
	if err := coldsweep.SetPaused(ctx, b.rdb, b.prefix, "accounts", true); err != nil {
		t.Fatal(err)
	}
	layoutKey := b.prefix + ":sweep:accounts:layout"
	var otherErr error
	hook := &afterExpire{key: layoutKey, fn: func() {
		other, err := coldsweep.New(b.config(coldsweep.Config{Chunk: 50, Shard: coldsweep.Shard{I: 0, N: 3}}))
		if err != nil {
			otherErr = err
			return
		}
		// Bounds a shard wrongly let through: the pause holds it.
		octx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, otherErr = other.Run(octx)
	}}
	rdb := redis.NewClient(b.rdb.Options())
	defer rdb.Close()
	rdb.AddHook(hook)
	c := b.config(coldsweep.Config{Chunk: 50, Shard: coldsweep.Shard{I: 0, N: 2}, ProgressInterval: time.Hour})
	c.Redis = rdb
	again, err := coldsweep.New(c)
	if err != nil {
		t.Fatal(err)
	}
	ctx1, cancel1 := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { _, err := again.Run(ctx1); done <- err }()
	// The hook runs inside shard 0/2's claim, before Run goes on to the
	// pause: once shard 0/2 is held, shard 0/3 has had its answer.
	testenv.Eventually(t, 10*time.Second, "shard 0/2 claims its layout and holds for the pause", func() bool {
		return testenv.GaugeValue(t, b.reg, "lazymigrate_sweep_throttled", "table", "accounts") == 1
	})
	cancel1()
	if err := <-done; !errors.Is(err, coldsweep.ErrInterrupted) {
		t.Errorf("shard 0/2 run again: %v, want it interrupted", err)
	}
	got, _ := b.rdb.Get(ctx, layoutKey).Result()
	if !errors.Is(otherErr, coldsweep.ErrLayoutChanged) || got != "chunk=50 shards=2" {
		t.Fatalf("shard 0/3 started while shard 0/2 runs again: err = %v, want ErrLayoutChanged; layout now %q", otherErr, got)
	}
	ps, err := coldsweep.LoadProgress(ctx, b.rdb, b.prefix, "accounts")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if p.Shard == "0/3" {
			t.Errorf("refused shard 0/3 left a progress record: %+v", p)
		}
	}
}

// Versions before layouts were in the progress fields named a record by
// its shard alone ("0/2"). Such a record, finished, must not outlive the
// shard's first record of a new run: it would read as the shard's, done,
// next to the new one, and let a shard of another layout take over.
func TestSweepReplacesTheShardsRecordOfUnnamedLayout(t *testing.T) {
	t.Parallel()
	b := setupSweep(t, 400)
	ctx := context.Background()
	for i := range int64(2) {
		b.sweep(t, coldsweep.Config{Chunk: 50, Shard: coldsweep.Shard{I: i, N: 2}})
	}
	key := b.prefix + ":sweep:accounts"
	m, err := b.rdb.HGetAll(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	for field, v := range m { // as the earlier versions named them
		shard := field[strings.LastIndex(field, " ")+1:] // "<layout> <shard>"
		if err := b.rdb.HDel(ctx, key, field).Err(); err != nil {
			t.Fatal(err)
		}
		if err := b.rdb.HSet(ctx, key, shard, v).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := coldsweep.SetPaused(ctx, b.rdb, b.prefix, "accounts", true); err != nil {
		t.Fatal(err)
	}
	again, err := coldsweep.New(b.config(coldsweep.Config{Chunk: 50, Shard: coldsweep.Shard{I: 0, N: 2}, ProgressInterval: time.Hour}))
	if err != nil {
		t.Fatal(err)
	}
	ctx1, cancel1 := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { _, err := again.Run(ctx1); done <- err }()
	defer func() { cancel1(); <-done }()
	testenv.Eventually(t, 10*time.Second, "shard 0/2 runs again and holds for the pause", func() bool {
		return testenv.GaugeValue(t, b.reg, "lazymigrate_sweep_throttled", "table", "accounts") == 1
	})
	ps, err := coldsweep.LoadProgress(ctx, b.rdb, b.prefix, "accounts")
	if err != nil {
		t.Fatal(err)
	}
	var of02 []coldsweep.Progress
	for _, p := range ps {
		if p.Shard == "0/2" {
			of02 = append(of02, p)
		}
	}
	if len(of02) != 1 || of02[0].Finished {
		t.Errorf("records of shard 0/2 = %+v, want one, of the run under way", of02)
	}
	other, err := coldsweep.New(b.config(coldsweep.Config{Chunk: 50, Shard: coldsweep.Shard{I: 0, N: 3}}))
	if err != nil {
		t.Fatal(err)
	}
	octx, cancel := context.WithTimeout(ctx, 10*time.Second) // bounds a shard wrongly let through: held by the pause
	defer cancel()
	if _, err := other.Run(octx); !errors.Is(err, coldsweep.ErrLayoutChanged) {
		t.Errorf("shard 0/3 started while shard 0/2 runs again: %v, want ErrLayoutChanged", err)
	}
}

// failGet is a go-redis hook that fails every GET of key.
type failGet struct{ key string }

func (h failGet) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h failGet) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "get" && cmd.Args()[1] == h.key {
			err := errors.New("injected failure")
			cmd.SetErr(err)
			return err
		}
		return next(ctx, cmd)
	}
}

func (h failGet) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// A run whose layout claim fails for any reason (here Redis, on reading the
// layout) never started: the record it saved first must go, or it would
// read as a shard that stalled, for as long as the sweep's records live.
func TestSweepWhoseClaimFailsLeavesNoRecord(t *testing.T) {
	t.Parallel()
	b := setupSweep(t, 400)
	ctx := context.Background()
	rdb := redis.NewClient(b.rdb.Options())
	defer rdb.Close()
	rdb.AddHook(failGet{b.prefix + ":sweep:accounts:layout"})
	c := b.config(coldsweep.Config{Chunk: 50, Shard: coldsweep.Shard{I: 0, N: 2}})
	c.Redis = rdb
	s, err := coldsweep.New(c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Run(ctx); err == nil || !strings.Contains(err.Error(), "injected failure") {
		t.Fatalf("Run with the layout unreadable: %v, want the injected failure", err)
	}
	if ps, err := coldsweep.LoadProgress(ctx, b.rdb, b.prefix, "accounts"); err != nil || len(ps) != 0 {
		t.Errorf("records after a run that never started: %+v, %v; want none", ps, err)
	}
}
