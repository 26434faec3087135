package lazy_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/fallback"
	"github.com/lazymigrate/lazymigrate/internal/schema"
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
//     the misses have outnumbered one read in ten) and schedules the
//     promotion (enqueued to Redis in the background; no worker runs).
//     MissAskTracker also asks the tracker, beside OLD.
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

	// With AskTrackerOnMiss a miss also asks the tracker, beside OLD: what
	// the tracker's Redis call costs on this machine.
	askTracker, err := lazy.New(ctx, oldDB, newDB, &lazy.Config[Account]{Table: "accounts", Tracker: tr, Scheduler: enq, AskTrackerOnMiss: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("MissAskTracker", func(b *testing.B) {
		misses(b, 9, func(k int64) error { _, err := askTracker.Get(ctx, k); return err })
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

// BenchmarkWrite compares Put and Delete, mirrored to OLD, with raw pgx
// on the same pools, in two ways:
//
//   - Put, Delete: the bare statements, the NEW write and then the OLD
//     write, both autocommitted.
//   - PutVsSameWrites, DeleteVsSameWrites: the same writes a careful
//     hand-written migration sends to keep the guarantees lazymigrate
//     keeps (DESIGN.md, "Writes during migration"): in one NEW transaction,
//     sent as one batch, the per-key mirror lock (held until OLD has the
//     change, so that OLD applies changes in NEW's order), the write, the
//     tombstone cleared or written, and the outbox row that keeps the intent
//     to mirror across a crash (a Delete also takes its key's lock stripe,
//     as promotions do); then the OLD write; then, in one more round trip
//     in the background, as lazymigrate does it, the lock released and
//     the outbox row deleted.
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
	// sameWrites sends write (with args) and its tombstone statement
	// (on table_name and key) as the body of a NEW transaction that holds
	// key's mirror lock and records an outbox row, then runs oldWrite. The
	// lock's release and the outbox row's delete then run in the
	// background, off the caller's path, as lazymigrate runs them; the
	// case waits for them before it ends.
	const table = "public.accounts"
	var tidying sync.WaitGroup
	var tidyErr atomic.Pointer[error]
	sameWrites := func(key int64, stripe bool, write string, args []any, tomb string, oldWrite func() error) error {
		conn, err := newDB.Acquire(ctx)
		if err != nil {
			return err
		}
		var outboxID int64
		nb := &pgx.Batch{}
		nb.Queue(`BEGIN`)
		nb.Queue(`SELECT pg_advisory_lock($1)`, key)
		if stripe {
			nb.Queue(`SELECT pg_advisory_xact_lock($1)`, key>>10)
		}
		nb.Queue(write, args...)
		nb.Queue(tomb, table, key)
		nb.Queue(`INSERT INTO `+schema.Outbox+` (table_name, key) VALUES ($1, $2) RETURNING id`, table, key).
			QueryRow(func(row pgx.Row) error { return row.Scan(&outboxID) })
		nb.Queue(`COMMIT`)
		if err := conn.SendBatch(ctx, nb).Close(); err != nil {
			conn.Release()
			return err
		}
		if err := oldWrite(); err != nil {
			conn.Release()
			return err
		}
		tidying.Go(func() {
			defer conn.Release()
			tidy := &pgx.Batch{}
			tidy.Queue(`SELECT pg_advisory_unlock($1)`, key)
			tidy.Queue(`BEGIN`)
			tidy.Queue(`SET LOCAL synchronous_commit TO off`)
			tidy.Queue(`DELETE FROM `+schema.Outbox+` WHERE id = $1`, outboxID)
			tidy.Queue(`COMMIT`)
			if err := conn.SendBatch(ctx, tidy).Close(); err != nil {
				tidyErr.Store(&err)
			}
		})
		return nil
	}
	// sameCase runs a case against sameWrites and fails it if a background
	// release failed.
	sameCase := func(run func(*testing.B)) func(*testing.B) {
		return func(b *testing.B) {
			run(b)
			tidying.Wait()
			if err := tidyErr.Load(); err != nil {
				b.Fatal(*err)
			}
		}
	}
	samePut := func(a Account) error {
		return sameWrites(a.ID, false,
			upsert, []any{a.ID, a.Email, a.Name, a.BalanceCents, a.Status, a.CreatedAt, a.UpdatedAt},
			`DELETE FROM `+schema.Tombstones+` WHERE table_name = $1 AND key = $2`,
			func() error {
				_, err := oldDB.Exec(ctx, upsert, a.ID, a.Email, a.Name, a.BalanceCents, a.Status, a.CreatedAt, a.UpdatedAt)
				return err
			})
	}
	sameDelete := func(k int64) error {
		return sameWrites(k, true,
			`DELETE FROM accounts WHERE id = $1`, []any{k},
			`INSERT INTO `+schema.Tombstones+` (table_name, key) VALUES ($1, $2) ON CONFLICT DO NOTHING`,
			func() error {
				_, err := oldDB.Exec(ctx, `DELETE FROM accounts WHERE id = $1`, k)
				return err
			})
	}

	// Puts: raw on keys up to half, lazymigrate above. Deletes: each case
	// its own quarter of the keys, raw then lazymigrate.
	half := int64(benchRows / 2)
	puts := func(b *testing.B, raw func(Account) error) {
		r := rand.New(rand.NewPCG(11, 12))
		pair(b,
			func(int) error { return raw(account(1+r.Int64N(half), "raw")) },
			func(int) error {
				k := half + 1 + r.Int64N(half)
				_, err := repo.Put(ctx, k, account(k, "lazy"))
				return err
			})
	}
	b.Run("Put", func(b *testing.B) { puts(b, rawPut) })
	b.Run("PutVsSameWrites", sameCase(func(b *testing.B) { puts(b, samePut) }))
	quarter := int64(benchRows / 4)
	deletes := func(first int64, raw func(int64) error) func(*testing.B) {
		next, limit := [2]int64{first, first + quarter}, first+quarter
		return func(b *testing.B) {
			if next[0]+int64(b.N) > limit {
				b.Fatalf("b.N = %d exceeds the %d keys left to delete", b.N, limit-next[0])
			}
			pair(b,
				func(int) error { k := next[0]; next[0]++; return raw(k) },
				func(int) error { k := next[1]; next[1]++; return repo.Delete(ctx, k) })
		}
	}
	b.Run("Delete", deletes(1, rawDelete))
	b.Run("DeleteVsSameWrites", sameCase(deletes(1+2*quarter, sameDelete)))
}
