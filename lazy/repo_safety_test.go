package lazy_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/lazymigrate/lazymigrate/lazy"
	"github.com/lazymigrate/lazymigrate/promote"
)

// promotingTracker promotes the keys it is asked about before answering,
// so that a promotion commits between a read's NEW miss and its tracker
// answer, as a concurrent worker or sweep can. It counts the questions.
type promotingTracker struct {
	lazy.Tracker
	cp    *promote.Copier
	asked *atomic.Int64
}

func (p promotingTracker) IsSettled(ctx context.Context, k int64) (bool, error) {
	p.asked.Add(1)
	if _, err := p.cp.CopyKeys(ctx, []int64{k}); err != nil {
		return false, err
	}
	return p.Tracker.IsSettled(ctx, k)
}

func (p promotingTracker) Settled(ctx context.Context, ks []int64) ([]bool, error) {
	p.asked.Add(1)
	if _, err := p.cp.CopyKeys(ctx, ks); err != nil {
		return nil, err
	}
	return p.Tracker.Settled(ctx, ks)
}

// A promotion landing in the middle of a read must not turn an existing key
// into "not found": whether the tracker is asked beside OLD
// (AskTrackerOnMiss) or, by default, once OLD has failed.
func TestReadDuringPromotionFindsKey(t *testing.T) {
	t.Parallel()
	for _, oldDown := range []bool{false, true} {
		t.Run(fmt.Sprintf("oldDown=%v", oldDown), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			b := setup(t, setupOpts{})
			asked := new(atomic.Int64)
			oldPool := b.pair.Old.NewPool(t, nil)
			repo, err := lazy.New(ctx, oldPool, b.pair.New.Pool, &lazy.Config[Account]{
				Table: "accounts", Tracker: promotingTracker{b.tracker, b.copier, asked}, AskTrackerOnMiss: !oldDown,
			})
			if err != nil {
				t.Fatal(err)
			}
			if oldDown {
				oldPool.Close()
			}
			if got, err := repo.Get(ctx, 5); err != nil || got.ID != 5 {
				t.Fatalf("Get(5) promoted mid-read = %+v, %v; want the record", got, err)
			}
			got, err := repo.GetMany(ctx, []int64{6, 7, 5000})
			if oldDown {
				// 5000 is in neither database and not settled: OLD's
				// answer is missing.
				if !errors.Is(err, lazy.ErrOldUnavailable) {
					t.Fatalf("GetMany(6, 7, 5000) err = %v, want ErrOldUnavailable for 5000", err)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if len(got) != 2 || got[6].ID != 6 || got[7].ID != 7 {
				t.Fatalf("GetMany(6, 7, 5000) promoted mid-read = %v, %v; want keys 6 and 7", keysOf(got), err)
			}
			if asked.Load() != 2 {
				t.Fatalf("the tracker was asked %d times, want 2: once by Get, once by GetMany", asked.Load())
			}
		})
	}
}

// GetMany must key rows correctly whatever the Scan reads: Values(), or a
// RowScanner such as pgx.RowToMap.
func TestGetManyWithValuesBasedScans(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	b.pair.New.Exec(t, `INSERT INTO accounts SELECT * FROM (VALUES (1::bigint, 'n1@example.com', 'NEW 1', 1::bigint, 'active', now(), now())) v`)
	byValues := func(row pgx.CollectableRow) (map[string]any, error) {
		vals, err := row.Values()
		if err != nil {
			return nil, err
		}
		m := map[string]any{}
		for i, fd := range row.FieldDescriptions() {
			m[fd.Name] = vals[i]
		}
		return m, nil
	}
	for name, scan := range map[string]pgx.RowToFunc[map[string]any]{"Values": byValues, "RowToMap": pgx.RowToMap} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			repo, err := lazy.New(ctx, b.pair.Old.Pool, b.pair.New.Pool, &lazy.Config[map[string]any]{Table: "accounts", Scan: scan})
			if err != nil {
				t.Fatal(err)
			}
			got, err := repo.GetMany(ctx, []int64{1, 2, 3})
			if err != nil {
				t.Fatal(err)
			}
			for k, email := range map[int64]string{1: "n1@example.com", 2: "user2@example.com", 3: "user3@example.com"} {
				if got[k]["email"] != email || got[k]["id"] != k {
					t.Fatalf("GetMany[%d] = %v, want email %s", k, got[k], email)
				}
			}
			if len(got) != 3 {
				t.Fatalf("GetMany returned keys %v", keysOf(got))
			}
		})
	}
}

// A record type that does not fit the columns is a scan error, not an
// unavailable database.
func TestScanMismatchIsNotUnavailability(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{})
	type tooFew struct {
		ID int64 `db:"id"`
	}
	repo, err := lazy.New(ctx, b.pair.Old.Pool, b.pair.New.Pool, &lazy.Config[tooFew]{Table: "accounts"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = repo.Get(ctx, 1)
	if err == nil || errors.Is(err, lazy.ErrOldUnavailable) || errors.Is(err, lazy.ErrNewUnavailable) || errors.Is(err, lazy.ErrNotFound) {
		t.Fatalf("Get with a mismatched record type: err = %v, want a scan error", err)
	}
	_, err = repo.GetMany(ctx, []int64{1})
	if err == nil || errors.Is(err, lazy.ErrOldUnavailable) || errors.Is(err, lazy.ErrNewUnavailable) {
		t.Fatalf("GetMany with a mismatched record type: err = %v, want a scan error", err)
	}
}
