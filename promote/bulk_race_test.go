package promote_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/lazy"
	"github.com/lazymigrate/lazymigrate/promote"
)

type account struct {
	ID           int64     `db:"id"`
	Email        string    `db:"email"`
	Name         string    `db:"name"`
	BalanceCents int64     `db:"balance_cents"`
	Status       string    `db:"status"`
	CreatedAt    time.Time `db:"created_at"`
	UpdatedAt    time.Time `db:"updated_at"`
}

func writeRepo(t *testing.T, b *testBundle, disableMirror bool) *lazy.Repo[account] {
	t.Helper()
	repo, err := lazy.New(context.Background(), b.pair.Old.Pool, b.pair.New.Pool, &lazy.Config[account]{
		Table: "accounts", Copier: b.copier, Tracker: b.tracker, DisableMirror: disableMirror,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(repo.Close)
	return repo
}

// lazy.Put takes no stripe lock, so it runs while a bulk copy holds the
// range's stripes, and the COPY meets its row. That is a race with a
// library write, not a refused row: the copy must succeed, keep the Put's
// rows, and never report ErrRowRejected (which the sweeper takes for
// "fix the rows").
func TestBulkCopyRacingPuts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var repo *lazy.Repo[account]
	var calls atomic.Int64
	var putErrs []error
	var putTook []time.Duration
	var mu sync.Mutex
	b := setup(t, &promote.CopierConfig{Hooks: promote.Hooks{AfterLock: func(context.Context, int64, int64) {
		// The bulk transaction holds the stripe locks of [0, 100) here.
		k := 1 + calls.Add(1) // 2, 3, 4: keys OLD has and NEW lacks
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		start := time.Now()
		_, err := repo.Put(pctx, k, account{ID: k, Email: "put@example.com", Name: "Put during bulk",
			Status: "active", CreatedAt: time.Unix(0, 0).UTC(), UpdatedAt: time.Unix(0, 0).UTC()})
		mu.Lock()
		putErrs, putTook = append(putErrs, err), append(putTook, time.Since(start))
		mu.Unlock()
	}}})
	repo = writeRepo(t, b, false)

	_, err := b.copier.CopyRange(ctx, 0, 100)
	mu.Lock()
	defer mu.Unlock()
	for i, perr := range putErrs {
		if perr != nil {
			t.Logf("Put %d: %v after %v (it waited for the stripe lock)", i, perr, putTook[i])
		} else {
			t.Logf("Put %d committed in %v while the bulk copy held the stripe locks", i, putTook[i])
		}
	}
	var n int
	if err := b.pair.New.Pool.QueryRow(ctx, `SELECT count(*) FROM accounts WHERE name = 'Put during bulk'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != len(putErrs) {
		t.Fatalf("NEW holds %d of the %d Puts' rows", n, len(putErrs))
	}
	if err != nil {
		t.Fatalf("CopyRange with concurrent library Puts: %v (ErrRowRejected=%v); a race with a library write is not a refused row",
			err, errors.Is(err, promote.ErrRowRejected))
	}
}

// A copy must not hold NEW's stripe locks while it reads OLD: when OLD
// stalls (a lock, a hung network), every delete of a key of those stripes
// would hang on NEW, holding a NEW connection, and an OLD problem would
// become a NEW write outage. Both paths read OLD before locking.
func TestCopyDoesNotHoldNewLocksWhileOldStalls(t *testing.T) {
	t.Parallel()
	for _, noBulk := range []bool{true, false} {
		name := "bulk"
		if noBulk {
			name = "rowpath"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			b := setup(t, &promote.CopierConfig{NoBulk: noBulk})
			repo := writeRepo(t, b, true) // no mirror: the delete touches NEW only

			// Stall OLD: hold an exclusive lock on its table.
			oldConn, err := b.pair.Old.Pool.Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			tx, err := oldConn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, `LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE`); err != nil {
				t.Fatal(err)
			}
			unstall := sync.OnceFunc(func() { _ = tx.Rollback(ctx); oldConn.Release() })
			t.Cleanup(unstall)

			copied := make(chan error, 1)
			go func() { _, err := b.copier.CopyRange(ctx, 0, 100); copied <- err }()
			// Wait until the copy is blocked on OLD.
			testenv.Eventually(t, 10*time.Second, "copy waiting on OLD", func() bool {
				var n int
				_ = b.pair.Old.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
					WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n)
				return n > 0
			})

			dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			start := time.Now()
			derr := repo.Delete(dctx, 7)
			took := time.Since(start)
			unstall()
			if err := <-copied; err != nil {
				t.Fatalf("CopyRange: %v", err)
			}
			if derr != nil {
				t.Fatalf("Delete of key 7 while OLD is stalled: %v after %v: NEW writes hang on OLD", derr, took.Round(time.Millisecond))
			}
		})
	}
}

// With OLD and NEW in one database (OldTable set, one pool for both), a
// copy that held a NEW connection while acquiring an OLD one from the same
// pool would deadlock once as many copies ran as the pool has connections.
func TestBulkCopySharedPool(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDatabase(t, "same")
	db.Exec(t, testenv.AccountsDDL)
	db.Exec(t, `CREATE TABLE accounts_old (LIKE accounts INCLUDING ALL)`)
	db.Exec(t, `INSERT INTO accounts_old SELECT i, 'u'||i||'@x', 'U', i, 'active', now(), now() FROM generate_series(1, 2000) i`)
	if err := promote.Setup(ctx, db.Pool); err != nil {
		t.Fatal(err)
	}
	pool := db.NewPool(t, func(c *pgxpool.Config) { c.MaxConns = 2 })

	var arrived atomic.Int64
	both := make(chan struct{})
	cp, err := promote.NewCopier(ctx, pool, pool, &promote.CopierConfig{Table: "accounts", OldTable: "accounts_old",
		Hooks: promote.Hooks{AfterLock: func(context.Context, int64, int64) {
			// Let both copies hold their NEW connection before either reads
			// OLD, as two sweeper workers regularly do.
			if arrived.Add(1) == 2 {
				close(both)
			}
			select {
			case <-both:
			case <-time.After(2 * time.Second):
			}
		}}})
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	errs := make(chan error, 2)
	for _, r := range [][2]int64{{0, 1000}, {1024, 2048}} {
		go func() { _, err := cp.CopyRange(cctx, r[0], r[1]); errs <- err }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("CopyRange with OLD and NEW on one pool of 2 connections: %v", err)
		}
	}
}
