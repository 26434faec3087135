package coldsweep_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/coldsweep"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/promote"
	"github.com/lazymigrate/lazymigrate/tracker"
)

// The sweep's own Redis use (layout, progress hash, pause flag) on a cluster.
func TestSweepOnRedisCluster(t *testing.T) {
	env := testenv.Require(t, "LM_REDIS_CLUSTER_ADDRS")
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: strings.Split(env, ",")})
	defer rdb.Close()
	prefix := "lmreview:" + testenv.Suffix()
	ctx := context.Background()
	p := testenv.NewPair(t)
	testenv.SeedAccounts(t, p.Old, 1, 3001)
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		t.Fatal(err)
	}
	tr, err := tracker.New(rdb, "accounts", &tracker.Config{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	cp, err := promote.NewCopier(ctx, p.Old.Pool, p.New.Pool, &promote.CopierConfig{Table: "accounts"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range int64(2) {
		s, err := coldsweep.New(&coldsweep.Config{Copier: cp, Tracker: tr, Redis: rdb, Prefix: prefix, Chunk: 500, Shard: coldsweep.Shard{I: i, N: 2},
			ProgressInterval: 10 * time.Millisecond, Throttle: &coldsweep.ThrottleConfig{MaxLatency: -1}})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		if err := s.Resume(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Run(ctx); err != nil {
			t.Fatal(err)
		}
	}
	ps, err := coldsweep.LoadProgress(ctx, rdb, prefix, "accounts")
	if err != nil || len(ps) != 2 {
		t.Fatalf("%v %v", ps, err)
	}
	sum := coldsweep.SummarizeSweep(ps, time.Now(), time.Minute)
	if sum.State != coldsweep.SweepFinished {
		t.Fatalf("%+v", sum)
	}
	for _, k := range []string{prefix + ":sweep:accounts", prefix + ":sweep:accounts:layout"} {
		rdb.Del(ctx, k)
	}
	_ = tr.Reset(ctx)
}
