package promote_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazymigrate/lazymigrate/internal/schema"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/promote"
)

// closeMigration closes accounts' migration as lazy's PurgeTombstones does.
func closeMigration(t *testing.T, b *testBundle) {
	t.Helper()
	if _, err := b.pair.New.Pool.Exec(context.Background(), schema.CloseSQL, "public.accounts", int(schema.DefaultStripeBits)); err != nil {
		t.Fatal(err)
	}
}

// Once a table's migration is closed (its tombstones purged), every copy
// refuses, on the row path and on each listing of the bulk path, and
// leaves NEW and the tracker as they were.
func TestCopiesOfAClosedTableRefuse(t *testing.T) {
	t.Parallel()
	for _, listFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk path lists NEW's keys first: %v", listFirst), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			b := setup(t, nil)
			if listFirst {
				// A key NEW holds that the tracker does not know makes the
				// bulk path list NEW's keys, not only its tombstones, for
				// its next parts.
				b.pair.New.Exec(t, `INSERT INTO accounts VALUES (5, 'e', 'n', 0, 's', now(), now())`)
				if res, err := b.copier.CopyRangeKeys(ctx, 1, 11, []int64{5, 6}); err != nil || res.Copied != 1 || res.Present != 1 {
					t.Fatalf("CopyRangeKeys before the closure = %+v, %v", res, err)
				}
				b.pair.New.Exec(t, `DELETE FROM accounts`)
			}
			closeMigration(t, b)
			for name, copy := range map[string]func() (promote.Result, error){
				"CopyKeys":      func() (promote.Result, error) { return b.copier.CopyKeys(ctx, []int64{51, 52}) },
				"CopyRange":     func() (promote.Result, error) { return b.copier.CopyRange(ctx, 1, 101) },
				"CopyRangeKeys": func() (promote.Result, error) { return b.copier.CopyRangeKeys(ctx, 1, 101, []int64{53, 54}) },
				"CopyRangeKeys, most of them": func() (promote.Result, error) {
					return b.copier.CopyRangeKeys(ctx, 1, 11, []int64{1, 2, 3, 4, 5, 6, 7, 8})
				},
			} {
				res, err := copy()
				if !errors.Is(err, promote.ErrClosed) || errors.Is(err, promote.ErrRowRejected) || res.Copied != 0 {
					t.Errorf("%s of a closed table = %+v, %v; want nothing copied and ErrClosed only", name, res, err)
				}
			}
			if n := len(rowsText(t, b.pair.New, "accounts")); n != 0 {
				t.Errorf("NEW holds %d rows, want 0", n)
			}
			for _, k := range []int64{51, 53, 55} {
				if ok, err := b.tracker.IsSettled(ctx, k); err != nil || ok {
					t.Errorf("key %d marked settled by a refused copy: %v, %v", k, ok, err)
				}
			}
		})
	}
}

// A promotion task that arrives after the closure has nothing to do: it
// succeeds (asynq must not retry it for hours) and is counted as closed.
func TestHandlerDropsTasksOfAClosedTable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, nil)
	closeMigration(t, b)
	reg := prometheus.NewRegistry()
	h, err := promote.NewHandler([]*promote.Copier{b.copier}, &promote.HandlerConfig{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	task, err := promote.NewTask("accounts", []int64{1, 2, 3})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.ProcessTask(ctx, task); err != nil {
		t.Fatalf("task of a closed table: %v, want nil", err)
	}
	if got := testenv.CounterValue(t, reg, "lazymigrate_promote_tasks_total", "outcome", "closed"); got != 1 {
		t.Errorf("promote_tasks_total{outcome=closed} = %v, want 1", got)
	}
	if n := len(rowsText(t, b.pair.New, "accounts")); n != 0 {
		t.Errorf("NEW holds %d rows, want 0", n)
	}
}

// Rows OLD's side rejects (a Transform that fails, a key OLD holds twice)
// fail before any statement in NEW. On a closed table they must still read
// as the closure: a rejection asks for data to be fixed that nothing will
// copy again, and archives the task.
func TestClosedTableRefusalIsNotARejection(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	t.Run("a Transform that fails, through a task", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &promote.CopierConfig{Transform: func(context.Context, promote.Row) (promote.Row, error) {
			return nil, errors.New("bad row")
		}})
		closeMigration(t, b)
		reg := prometheus.NewRegistry()
		h, err := promote.NewHandler([]*promote.Copier{b.copier}, &promote.HandlerConfig{Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		task, err := promote.NewTask("accounts", []int64{1, 2})
		if err != nil {
			t.Fatal(err)
		}
		err = h.ProcessTask(ctx, task)
		if closed := testenv.CounterValue(t, reg, "lazymigrate_promote_tasks_total", "outcome", "closed"); err != nil || closed != 1 {
			t.Errorf("task of a closed table whose rows the Transform refuses: %v, closed = %v; want nil and 1", err, closed)
		}
	})
	t.Run("a key OLD holds twice, on the bulk path", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		b.pair.Old.Exec(t, `ALTER TABLE accounts DROP CONSTRAINT accounts_pkey`)
		b.pair.Old.Exec(t, `INSERT INTO accounts SELECT * FROM accounts WHERE id = 5`)
		closeMigration(t, b)
		if _, err := b.copier.CopyRange(ctx, 1, 101); !errors.Is(err, promote.ErrClosed) || errors.Is(err, promote.ErrRowRejected) {
			t.Errorf("CopyRange of a closed table, OLD holding key 5 twice: %v, want ErrClosed only", err)
		}
	})
}
