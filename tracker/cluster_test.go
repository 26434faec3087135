package tracker_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/internal/schema"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/tracker"
)

// These tests run the tracker on a real Redis Cluster, from
// LM_REDIS_CLUSTER_ADDRS (comma-separated host:port seeds; scripts/services.sh
// starts one on 127.0.0.1:7101-7103). With SegmentBits 10 every 1024 keys
// are a new Redis key, so a few dozen segments spread over every master and
// each pipeline is split by go-redis across nodes.

// clusterRedis returns a client on LM_REDIS_CLUSTER_ADDRS and a key prefix
// unique to the test. Every key under the prefix, on every master, is
// deleted when the test ends.
func clusterRedis(t *testing.T) (*redis.ClusterClient, string) {
	t.Helper()
	env := testenv.Require(t, "LM_REDIS_CLUSTER_ADDRS")
	var addrs []string
	for a := range strings.SplitSeq(env, ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, a)
		}
	}
	if len(addrs) == 0 {
		t.Fatalf("LM_REDIS_CLUSTER_ADDRS = %q holds no address", env)
	}
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	prefix := "lmtest:" + testenv.Suffix()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := rdb.ClusterInfo(ctx).Result()
	if err != nil {
		_ = rdb.Close()
		t.Fatalf("redis cluster at %s: %v", env, err)
	}
	if !strings.Contains(info, "cluster_state:ok") {
		_ = rdb.Close()
		t.Fatalf("redis cluster at %s is not ok:\n%s", env, info)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := deleteClusterPrefix(ctx, rdb, prefix); err != nil {
			t.Errorf("delete %s* on the cluster: %v", prefix, err)
		}
		_ = rdb.Close()
	})
	return rdb, prefix
}

// clusterKeys returns the keys under prefix held by each master, by address.
// SCAN is node-local on a cluster, so each master is scanned on its own.
func clusterKeys(ctx context.Context, rdb *redis.ClusterClient, prefix string) (map[string][]string, error) {
	var mu sync.Mutex
	out := map[string][]string{}
	err := rdb.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
		var ks []string
		iter := node.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			ks = append(ks, iter.Val())
		}
		if err := iter.Err(); err != nil {
			return fmt.Errorf("scan %s: %w", node.Options().Addr, err)
		}
		slices.Sort(ks)
		mu.Lock()
		out[node.Options().Addr] = ks
		mu.Unlock()
		return nil
	})
	return out, err
}

// deleteClusterPrefix deletes every key under prefix on every master, one
// key per DEL: keys of different slots cannot share a command, even on one
// node.
func deleteClusterPrefix(ctx context.Context, rdb *redis.ClusterClient, prefix string) error {
	byNode, err := clusterKeys(ctx, rdb, prefix)
	if err != nil {
		return err
	}
	var all []string
	for _, ks := range byNode {
		all = append(all, ks...)
	}
	if len(all) == 0 {
		return nil
	}
	pipe := rdb.Pipeline() // split per node by go-redis
	for _, k := range all {
		pipe.Del(ctx, k)
	}
	_, err = pipe.Exec(ctx)
	return err
}

type clusterBundle struct {
	rdb    *redis.ClusterClient
	prefix string
	tr     *tracker.Tracker
}

// setupCluster returns a tracker for table "t" on the cluster under a prefix
// of the test's own, with 1024 keys per segment.
func setupCluster(t *testing.T) clusterBundle {
	t.Helper()
	rdb, prefix := clusterRedis(t)
	tr, err := tracker.New(rdb, "t", &tracker.Config{Prefix: prefix, SegmentBits: 10})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return clusterBundle{rdb: rdb, prefix: prefix, tr: tr}
}

// keysPerMaster counts the test's keys on each master.
func (b clusterBundle) keysPerMaster(t *testing.T) map[string]int {
	t.Helper()
	byNode, err := clusterKeys(testContext(t), b.rdb, b.prefix)
	if err != nil {
		t.Fatalf("list keys per master: %v", err)
	}
	out := map[string]int{}
	for addr, ks := range byNode {
		out[addr] = len(ks)
	}
	return out
}

// requireSpread checks that the tracker's keys (segments, index and layout
// record) are exactly want in number and live on more than one master,
// which is what makes the cross-slot pipelines of the tracker worth
// testing.
func (b clusterBundle) requireSpread(t *testing.T, want int) {
	t.Helper()
	per := b.keysPerMaster(t)
	total, used := 0, 0
	for _, n := range per {
		total += n
		if n > 0 {
			used++
		}
	}
	t.Logf("keys per master: %v", per)
	if total != want {
		t.Errorf("%d keys under %s on the cluster, want %d", total, b.prefix, want)
	}
	if used < 2 {
		t.Errorf("keys landed on %d of %d masters, want at least 2: %v", used, len(per), per)
	}
}

// model is the expected bitmap of a test, as a set.
type model map[int64]bool

func (m model) unsettled(lo, hi int64) []int64 {
	var out []int64
	for k := lo; k < hi; k++ {
		if !m[k] {
			out = append(out, k)
		}
	}
	return out
}

func (m model) countRange(lo, hi int64) int64 {
	var n int64
	for k := range m {
		if k >= lo && k < hi {
			n++
		}
	}
	return n
}

const clusterSegments = 40 // segments of 1024 keys the tests spread over

func TestClusterMarkAndRead(t *testing.T) {
	t.Parallel()
	b := setupCluster(t)
	ctx := testContext(t)
	rng := rand.New(rand.NewPCG(3, 4))
	m := model{}

	// Both edges of every segment, a scattered key, and in every third
	// segment a dense run wider than one 63-bit BITFIELD op; shuffled, with
	// duplicates, so that one Mark writes every segment.
	var ks []int64
	for seg := int64(0); seg < clusterSegments; seg++ {
		base := seg << 10
		ks = append(ks, base, base+1023, base+rng.Int64N(1024))
		if seg%3 == 0 {
			ks = append(ks, keyRange(base+300, base+450)...)
		}
	}
	ks = append(ks, ks[:20]...)
	rng.Shuffle(len(ks), func(i, j int) { ks[i], ks[j] = ks[j], ks[i] })
	for _, k := range ks {
		m[k] = true
	}
	if n := mustMark(t, b.tr, ks...); n != len(m) {
		t.Fatalf("first Mark = %d, want %d", n, len(m))
	}

	// Half already marked, half new, across the same segments.
	var again []int64
	wantNew := 0
	for seg := int64(0); seg < clusterSegments; seg++ {
		for _, k := range []int64{seg<<10 + 1023, seg<<10 + 512, seg<<10 + 513} {
			again = append(again, k)
			if !m[k] {
				m[k] = true
				wantNew++
			}
		}
	}
	if n := mustMark(t, b.tr, again...); n != wantNew {
		t.Fatalf("second Mark = %d, want %d", n, wantNew)
	}
	if n := mustMark(t, b.tr, again...); n != 0 {
		t.Fatalf("repeated Mark = %d, want 0", n)
	}

	// Every key of every segment, plus some in segments never written.
	const space = (clusterSegments + 2) << 10
	probe := keyRange(0, space)
	probe = append(probe, 1<<40, 7<<30+5)
	got, err := b.tr.Settled(ctx, probe)
	if err != nil {
		t.Fatalf("Settled: %v", err)
	}
	for i, k := range probe {
		if got[i] != m[k] {
			t.Fatalf("Settled: key %d = %v, want %v", k, got[i], m[k])
		}
	}

	for seg := int64(0); seg < clusterSegments; seg += 7 {
		for _, k := range []int64{seg << 10, seg<<10 + 1, seg<<10 + 300, seg<<10 + 512, seg<<10 + 1023} {
			one, err := b.tr.IsSettled(ctx, k)
			if err != nil {
				t.Fatalf("IsSettled(%d): %v", k, err)
			}
			if one != m[k] {
				t.Errorf("IsSettled(%d) = %v, want %v", k, one, m[k])
			}
		}
	}

	ranges := [][2]int64{
		{0, space},
		{1020, 1030},                         // across one segment edge
		{500, (clusterSegments-3)<<10 + 700}, // unaligned, across 37 segments
		{5<<10 + 1, 5<<10 + 1023},            // inside one segment
		{(clusterSegments - 1) << 10, space + 5000},
	}
	for _, r := range ranges {
		if got, want := mustUnsettled(t, b.tr, r[0], r[1]), m.unsettled(r[0], r[1]); !slices.Equal(got, want) {
			t.Errorf("Unsettled(%d, %d): %d keys, want %d", r[0], r[1], len(got), len(want))
		}
		if got, want := mustCountRange(t, b.tr, r[0], r[1]), m.countRange(r[0], r[1]); got != want {
			t.Errorf("CountRange(%d, %d) = %d, want %d", r[0], r[1], got, want)
		}
	}
	if n := mustCount(t, b.tr); n != int64(len(m)) {
		t.Errorf("Count = %d, want %d", n, len(m))
	}

	// A segment key per segment, the segments set and the layout key.
	b.requireSpread(t, clusterSegments+2)
}

func TestClusterMarkRange(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		lo, hi int64
	}{
		{"across a segment edge", 1023, 1025},
		{"unaligned across segments", 5, clusterSegments<<10 + 17},
		{"long range", 3, 70_003},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setupCluster(t)
			ctx := testContext(t)

			// Marks on both sides of the range must survive it.
			outside := []int64{max(0, tt.lo-2), tt.hi + 1, tt.hi + 5000}
			outside = slices.DeleteFunc(slices.Compact(outside), func(k int64) bool { return k >= tt.lo && k < tt.hi })
			mustMark(t, b.tr, outside...)
			if err := b.tr.MarkRange(ctx, tt.lo, tt.hi); err != nil {
				t.Fatalf("MarkRange: %v", err)
			}

			if un := mustUnsettled(t, b.tr, tt.lo, tt.hi); len(un) != 0 {
				t.Errorf("Unsettled(%d, %d) = %d keys (first %d), want none", tt.lo, tt.hi, len(un), un[0])
			}
			m := model{}
			for _, k := range outside {
				m[k] = true
			}
			lo, hi := max(0, tt.lo-20), tt.hi+20
			if got, want := mustUnsettled(t, b.tr, lo, hi), append(m.unsettled(lo, tt.lo), m.unsettled(tt.hi, hi)...); !slices.Equal(got, want) {
				t.Errorf("Unsettled(%d, %d) = %v, want %v", lo, hi, got, want)
			}
			if n := mustCountRange(t, b.tr, tt.lo, tt.hi); n != tt.hi-tt.lo {
				t.Errorf("CountRange = %d, want %d", n, tt.hi-tt.lo)
			}
			if n := mustCountRange(t, b.tr, lo, tt.hi+5001); n != tt.hi-tt.lo+int64(len(outside)) {
				t.Errorf("CountRange around = %d, want %d", n, tt.hi-tt.lo+int64(len(outside)))
			}
			if n := mustCount(t, b.tr); n != tt.hi-tt.lo+int64(len(outside)) {
				t.Errorf("Count = %d, want %d", n, tt.hi-tt.lo+int64(len(outside)))
			}
			if n := mustMark(t, b.tr, tt.lo, (tt.lo+tt.hi)/2, tt.hi-1); n != 0 {
				t.Errorf("Mark inside the range = %d, want 0", n)
			}

			if tt.hi-tt.lo > 10<<10 {
				segs := map[int64]bool{}
				for k := tt.lo; k < tt.hi; k += 1024 {
					segs[k>>10] = true
				}
				segs[(tt.hi-1)>>10] = true
				for _, k := range outside {
					segs[k>>10] = true
				}
				b.requireSpread(t, len(segs)+2)
			}
		})
	}
}

func TestClusterConcurrentMarks(t *testing.T) {
	t.Parallel()
	b := setupCluster(t)
	ctx := testContext(t)

	// Four trackers (as if in four processes) mark overlapping keys over all
	// segments at once. BITFIELD returns each bit's old value atomically, so
	// the newly marked counts add up to exactly the distinct keys.
	const workers = 4
	const space = clusterSegments << 10
	var wg sync.WaitGroup
	newly := make([]int, workers)
	errs := make(chan error, workers)
	for w := range workers {
		tr, err := tracker.New(b.rdb, "t", &tracker.Config{Prefix: b.prefix, SegmentBits: 10})
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 9))
			for range 20 {
				ks := make([]int64, 500)
				for i := range ks {
					// Even keys only, drawn from half the space so that the
					// workers often collide.
					ks[i] = 2 * rng.Int64N(space/2)
				}
				n, err := tr.Mark(ctx, ks)
				if err != nil {
					errs <- err
					return
				}
				newly[w] += n
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	total := 0
	for _, n := range newly {
		total += n
	}
	count := mustCount(t, b.tr)
	if int64(total) != count {
		t.Errorf("Mark calls report %d newly marked keys, Count = %d", total, count)
	}
	un := mustUnsettled(t, b.tr, 0, space)
	if int64(len(un)) != space-count {
		t.Errorf("Unsettled = %d keys, want %d", len(un), space-count)
	}
	for _, k := range []int64{1, 1023, space - 1} {
		if !slices.Contains(un, k) {
			t.Errorf("Unsettled lacks odd key %d, which no worker marked", k)
		}
	}
}

func TestClusterReset(t *testing.T) {
	t.Parallel()
	b := setupCluster(t)
	ctx := testContext(t)

	var ks []int64
	for seg := int64(0); seg < clusterSegments; seg++ {
		ks = append(ks, seg<<10+7)
	}
	mustMark(t, b.tr, ks...)
	if err := b.tr.MarkRange(ctx, 100, 20_000); err != nil {
		t.Fatalf("MarkRange: %v", err)
	}
	b.requireSpread(t, clusterSegments+2)

	if err := b.tr.Reset(ctx); err != nil {
		t.Fatalf("Reset: %v", err)
	}
	for addr, n := range b.keysPerMaster(t) {
		if n != 0 {
			t.Errorf("%d keys left on %s after Reset", n, addr)
		}
	}
	if n := mustCount(t, b.tr); n != 0 {
		t.Fatalf("Count after Reset = %d, want 0", n)
	}
	if n := mustCountRange(t, b.tr, 0, clusterSegments<<10); n != 0 {
		t.Fatalf("CountRange after Reset = %d, want 0", n)
	}
	if un := mustUnsettled(t, b.tr, 0, clusterSegments<<10); len(un) != clusterSegments<<10 {
		t.Fatalf("Unsettled after Reset = %d keys, want %d", len(un), clusterSegments<<10)
	}
	if n := mustMark(t, b.tr, ks...); n != len(ks) {
		t.Fatalf("Mark after Reset = %d, want %d", n, len(ks))
	}
}

func TestClusterLayoutMismatch(t *testing.T) {
	t.Parallel()
	b := setupCluster(t)
	ctx := testContext(t)
	mustMark(t, b.tr, 5, 5000)

	other, err := tracker.New(b.rdb, "t", &tracker.Config{Prefix: b.prefix, SegmentBits: 12})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if _, err := other.Mark(ctx, []int64{5}); !errors.Is(err, tracker.ErrLayoutMismatch) {
		t.Fatalf("Mark with other SegmentBits: err = %v, want ErrLayoutMismatch", err)
	}
	if err := b.tr.Reset(ctx); err != nil {
		t.Fatalf("Reset: %v", err)
	}
	if n := mustMark(t, other, 5); n != 1 {
		t.Fatalf("Mark after Reset = %d, want 1", n)
	}
}

func TestClusterRebuild(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, "tracker_cluster")
	b := setupCluster(t)
	ctx := testContext(t)
	if err := schema.Setup(ctx, db.Pool); err != nil {
		t.Fatalf("schema.Setup: %v", err)
	}
	// 70 000 rows: more than one 64k Mark batch, over 69 segments. Keys 0
	// and 70 001..79 999 are absent; 80 000 and 80 001 were deleted; 90 000
	// is another table's.
	db.Exec(t, `
		CREATE TABLE accounts (id bigint PRIMARY KEY, name text NOT NULL);
		INSERT INTO accounts SELECT g, 'n' || g FROM generate_series(1, 70000) g;
		INSERT INTO lazymigrate.tombstones (table_name, key) VALUES
			('public.accounts', 80000), ('public.accounts', 80001), ('public.other', 90000);`)

	marked, err := b.tr.Rebuild(ctx, db.Pool, "accounts", "id")
	if err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	if marked != 70_002 {
		t.Errorf("Rebuild marked %d, want 70002", marked)
	}
	if n := mustCount(t, b.tr); n != 70_002 {
		t.Errorf("Count = %d, want 70002", n)
	}
	want := append([]int64{0}, keyRange(70_001, 80_000)...)
	want = append(want, keyRange(80_002, 100_000)...)
	if got := mustUnsettled(t, b.tr, 0, 100_000); !slices.Equal(got, want) {
		t.Errorf("Unsettled after Rebuild: %d keys, want %d", len(got), len(want))
	}
	if n := mustCountRange(t, b.tr, 69_000, 80_001); n != 1002 { // 69 000..70 000 and 80 000
		t.Errorf("CountRange(69000, 80001) = %d, want 1002", n)
	}
	if again, err := b.tr.Rebuild(ctx, db.Pool, "public.accounts", "id"); err != nil || again != 0 {
		t.Errorf("second Rebuild = %d, %v; want 0, nil", again, err)
	}
	// Segments 0..68 for the rows, 78 for the tombstones, the set and the
	// layout key.
	b.requireSpread(t, 69+1+2)
}
