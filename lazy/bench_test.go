package lazy_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/fallback"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/lazy"
	"github.com/lazymigrate/lazymigrate/promote"
	"github.com/lazymigrate/lazymigrate/tracker"
)

// pair times a raw baseline and the lazymigrate call interleaved and
// reports both and their ratio.
func pair(b *testing.B, raw, lm func(i int) error) {
	b.Helper()
	rawT, lmT := testenv.Interleave(b, raw, lm)
	b.ReportMetric(float64(rawT.Nanoseconds())/float64(b.N), "raw-ns/op")
	b.ReportMetric(float64(lmT.Nanoseconds())/float64(b.N), "lazy-ns/op")
	b.ReportMetric(float64(lmT)/float64(rawT), "ratio")
}

const benchRows = 200_000

// remote returns the pools and Redis client a benchmark measures with:
// p's own pools and a Redis client with a fresh prefix, or, when rtt is
// not zero, pools and a client whose every round trip takes rtt more.
func remote(b *testing.B, p *testenv.Pair, rtt time.Duration) (oldDB, newDB *pgxpool.Pool, rdb *redis.Client, prefix string) {
	rdb, prefix = testenv.Redis(b)
	if rtt == 0 {
		return p.Old.Pool, p.New.Pool, rdb, prefix
	}
	return p.Old.RemotePool(b, rtt), p.New.RemotePool(b, rtt), testenv.RemoteRedis(b, rdb, rtt), prefix
}

// BenchmarkGet compares Repo.Get with hand-written pgx on the same pools:
//
//   - Hit: a key in NEW, against the same query run with pgx alone.
//     HitFolded reads it with the statement misses get.
//   - Miss: a key only in OLD, against "query NEW, then query OLD". The
//     repo also checks the tombstone (folded into the read of NEW, once
//     the misses have outnumbered one read in ten) and the tracker, and
//     schedules the promotion (enqueued to Redis in the background; no
//     worker runs). MissSkipTracker leaves the tracker out.
func BenchmarkGet(b *testing.B) { benchGet(b, 0) }

// BenchmarkGetRemote is BenchmarkGet with every round trip to Postgres and
// Redis, lazymigrate's and the baseline's, made testenv.BenchRTT (1ms)
// longer, as with the servers on other hosts. Locally the extra checks of
// a miss compete for the CPU; over a network they overlap the OLD query.
func BenchmarkGetRemote(b *testing.B) { benchGet(b, testenv.BenchRTT(b)) }

// benchGet runs BenchmarkGet's cases, with rtt added to every round trip
// when it is not zero.
func benchGet(b *testing.B, rtt time.Duration) {
	ctx := context.Background()
	p := testenv.NewPair(b)
	testenv.SeedAccounts(b, p.Old, 1, benchRows+1)
	testenv.SeedAccounts(b, p.New, 1, benchRows/2+1) // keys up to benchRows/2 are migrated
	p.Old.Exec(b, `VACUUM ANALYZE accounts`)
	p.New.Exec(b, `VACUUM ANALYZE accounts`)
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		b.Fatal(err)
	}
	oldDB, newDB, rdb, prefix := remote(b, p, rtt)
	tr, err := tracker.New(rdb, "accounts", &tracker.Config{Prefix: prefix})
	if err != nil {
		b.Fatal(err)
	}
	queue := "lmbench-" + testenv.Suffix()
	enq, err := promote.NewEnqueuer(asynq.NewClientFromRedisClient(rdb), "accounts", &promote.EnqueuerConfig{Queue: queue})
	if err != nil {
		b.Fatal(err)
	}
	if err := enq.Start(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		enq.Stop()
		_ = asynq.NewInspectorFromRedisClient(rdb).DeleteQueue(queue, true)
	})
	repo, err := lazy.New(ctx, oldDB, newDB, &lazy.Config[Account]{Table: "accounts", Tracker: tr, Scheduler: enq})
	if err != nil {
		b.Fatal(err)
	}
	const q = `SELECT id, email, name, balance_cents, status, created_at, updated_at FROM accounts WHERE id = $1`
	rawGet := func(db *pgxpool.Pool, key int64) (Account, error) {
		rows, err := db.Query(ctx, q, key)
		if err != nil {
			return Account{}, err
		}
		return pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[Account])
	}

	// keysIn returns b.N random keys in [lo, lo+n), from seed.
	keysIn := func(b *testing.B, seed uint64, lo, n int64) []int64 {
		r := rand.New(rand.NewPCG(seed, seed+1))
		ks := make([]int64, b.N)
		for i := range ks {
			ks[i] = lo + r.Int64N(n)
		}
		return ks
	}
	// hits times get against the raw query, on keys NEW holds.
	hits := func(b *testing.B, seed uint64, get func(key int64) error) {
		ks := keysIn(b, seed, 1, benchRows/2)
		pair(b,
			func(i int) error { _, err := rawGet(newDB, ks[i]); return err },
			func(i int) error { return get(ks[i]) })
	}

	b.Run("Hit", func(b *testing.B) {
		hits(b, 1, func(k int64) error { _, err := repo.Get(ctx, k); return err })
	})

	// The same hits read with the folded statement, as while more than one
	// read in ten misses (FoldReads before each, since a window of hits
	// would go back to the plain one).
	foldRepo, err := lazy.New(ctx, oldDB, newDB, &lazy.Config[Account]{Table: "accounts", Tracker: tr, Scheduler: enq})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("HitFolded", func(b *testing.B) {
		hits(b, 15, func(k int64) error {
			lazy.FoldReads(foldRepo, true)
			_, err := foldRepo.Get(ctx, k)
			return err
		})
	})

	// The same hits with shadow reads at their default rate: one read in a
	// hundred is compared with OLD in the background, three more queries
	// that share the machine with the reads measured.
	sh, err := fallback.NewShadow("accounts", nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(sh.Close)
	shadowRepo, err := lazy.New(ctx, oldDB, newDB, &lazy.Config[Account]{Table: "accounts", Tracker: tr, Scheduler: enq, Shadow: sh})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("HitWithShadow", func(b *testing.B) {
		hits(b, 13, func(k int64) error { _, err := shadowRepo.Get(ctx, k); return err })
		sh.Wait()
	})

	// A repo with a hand-written Scan against QueryRow().Scan into the same
	// fields: lazymigrate's own cost, without pgx's struct mapping.
	scanFields := func(row pgx.CollectableRow) (Account, error) {
		var a Account
		err := row.Scan(&a.ID, &a.Email, &a.Name, &a.BalanceCents, &a.Status, &a.CreatedAt, &a.UpdatedAt)
		return a, err
	}
	fieldsRepo, err := lazy.New(ctx, oldDB, newDB, &lazy.Config[Account]{Table: "accounts", Tracker: tr, Scheduler: enq, Scan: scanFields})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("HitCustomScan", func(b *testing.B) {
		ks := keysIn(b, 3, 1, benchRows/2)
		pair(b,
			func(i int) error {
				var a Account
				return newDB.QueryRow(ctx, q, ks[i]).Scan(&a.ID, &a.Email, &a.Name, &a.BalanceCents, &a.Status, &a.CreatedAt, &a.UpdatedAt)
			},
			func(i int) error { _, err := fieldsRepo.Get(ctx, ks[i]); return err })
	})

	rawMiss := func(key int64) error {
		if _, err := rawGet(newDB, key); !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		_, err := rawGet(oldDB, key)
		return err
	}
	// misses times get against rawMiss, on keys only OLD holds.
	misses := func(b *testing.B, seed uint64, get func(key int64) error) {
		ks := keysIn(b, seed, benchRows/2+1, benchRows/2)
		pair(b, func(i int) error { return rawMiss(ks[i]) }, func(i int) error { return get(ks[i]) })
	}
	b.Run("Miss", func(b *testing.B) {
		misses(b, 5, func(k int64) error { _, err := repo.Get(ctx, k); return err })
	})

	// With SkipTrackerOnReads a miss checks only the tombstone, folded into
	// the read of NEW once misses are common: what the tracker's Redis call
	// costs on this machine.
	skipTracker, err := lazy.New(ctx, oldDB, newDB, &lazy.Config[Account]{Table: "accounts", Tracker: tr, Scheduler: enq, SkipTrackerOnReads: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("MissSkipTracker", func(b *testing.B) {
		misses(b, 9, func(k int64) error { _, err := skipTracker.Get(ctx, k); return err })
	})

	b.Run("GetMany100", func(b *testing.B) {
		r := rand.New(rand.NewPCG(7, 8))
		batches := make([][]int64, b.N)
		for i := range batches {
			batches[i] = make([]int64, 100)
			for j := range batches[i] {
				batches[i][j] = 1 + r.Int64N(benchRows) // half hits, half misses
			}
		}
		const qm = `SELECT id, email, name, balance_cents, status, created_at, updated_at FROM accounts WHERE id = ANY($1)`
		rawMany := func(db *pgxpool.Pool, ks []int64) ([]Account, error) {
			rows, err := db.Query(ctx, qm, ks)
			if err != nil {
				return nil, err
			}
			return pgx.CollectRows(rows, pgx.RowToStructByName[Account])
		}
		pair(b,
			func(i int) error {
				found, err := rawMany(newDB, batches[i])
				if err != nil {
					return err
				}
				have := make(map[int64]bool, len(found))
				for _, a := range found {
					have[a.ID] = true
				}
				var misses []int64
				for _, k := range batches[i] {
					if !have[k] {
						misses = append(misses, k)
					}
				}
				_, err = rawMany(oldDB, misses)
				return err
			},
			func(i int) error { _, err := repo.GetMany(ctx, batches[i]); return err })
	})
}

// BenchmarkWrite compares Put and Delete, mirrored to OLD, with the same
// statements in raw pgx: the NEW write, then the OLD write.
func BenchmarkWrite(b *testing.B) { benchWrite(b, 0) }

// BenchmarkWriteRemote is BenchmarkWrite with every round trip made
// testenv.BenchRTT longer, as BenchmarkGetRemote.
func BenchmarkWriteRemote(b *testing.B) { benchWrite(b, testenv.BenchRTT(b)) }

func benchWrite(b *testing.B, rtt time.Duration) {
	ctx := context.Background()
	p := testenv.NewPair(b)
	testenv.SeedAccounts(b, p.Old, 1, benchRows+1)
	testenv.SeedAccounts(b, p.New, 1, benchRows+1)
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		b.Fatal(err)
	}
	oldDB, newDB, rdb, prefix := remote(b, p, rtt)
	tr, err := tracker.New(rdb, "accounts", &tracker.Config{Prefix: prefix})
	if err != nil {
		b.Fatal(err)
	}
	cp, err := promote.NewCopier(ctx, oldDB, newDB, &promote.CopierConfig{Table: "accounts", Marker: tr})
	if err != nil {
		b.Fatal(err)
	}
	repo, err := lazy.New(ctx, oldDB, newDB, &lazy.Config[Account]{Table: "accounts", Tracker: tr, Copier: cp})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(repo.Close)
	const upsert = `INSERT INTO accounts (id, email, name, balance_cents, status, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email, name = EXCLUDED.name,
		balance_cents = EXCLUDED.balance_cents, status = EXCLUDED.status, created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at`
	rawPut := func(a Account) error {
		for _, db := range []*pgxpool.Pool{newDB, oldDB} {
			if _, err := db.Exec(ctx, upsert, a.ID, a.Email, a.Name, a.BalanceCents, a.Status, a.CreatedAt, a.UpdatedAt); err != nil {
				return err
			}
		}
		return nil
	}
	rawDelete := func(k int64) error {
		for _, db := range []*pgxpool.Pool{newDB, oldDB} {
			if _, err := db.Exec(ctx, `DELETE FROM accounts WHERE id = $1`, k); err != nil {
				return err
			}
		}
		return nil
	}
	half := int64(benchRows / 2) // raw writes keys below half, lazymigrate above
	b.Run("Put", func(b *testing.B) {
		r := rand.New(rand.NewPCG(11, 12))
		pair(b,
			func(int) error { return rawPut(account(1+r.Int64N(half), "raw")) },
			func(int) error {
				k := half + 1 + r.Int64N(half)
				_, err := repo.Put(ctx, k, account(k, "lazy"))
				return err
			})
	})
	next := [2]int64{1, half + 1}
	b.Run("Delete", func(b *testing.B) {
		if int64(b.N) > half {
			b.Fatalf("b.N = %d exceeds the %d keys to delete", b.N, half)
		}
		pair(b,
			func(int) error { k := next[0]; next[0]++; return rawDelete(k) },
			func(int) error { k := next[1]; next[1]++; return repo.Delete(ctx, k) })
	})
}
