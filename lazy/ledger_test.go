package lazy_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/lazymigrate/lazymigrate/lazy"
)

// event is an acknowledged write, or a read, of one key: the record's name
// (unique per write; gone for a delete or a not-found read) and when the
// call started and returned.
type event struct {
	name       string
	start, end time.Time
}

const gone = "<gone>"

type ledger struct {
	mu     sync.Mutex
	writes map[int64][]event
	reads  map[int64][]event
}

func (l *ledger) add(m map[int64][]event, k int64, e event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	m[k] = append(m[k], e)
}

// Invariant 4: many goroutines put, update, delete and read a few keys
// while promotions run. Every read returns a value no completed later write
// had replaced, every key ends in the state of a write nothing followed,
// and OLD ends equal to NEW.
func TestNoLostUpdates(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, setupOpts{worker: true})
	repo := writeRepo(t, b, lazy.Config[Account]{Scheduler: b.enqueuer})
	const nkeys, workers, ops = 5, 8, 120
	l := &ledger{writes: map[int64][]event{}, reads: map[int64][]event{}}
	for k := int64(1); k <= nkeys; k++ { // what OLD was seeded with
		l.writes[k] = []event{{name: fmt.Sprintf("User %d", k)}}
	}

	var wg sync.WaitGroup
	for g := range workers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 42))
			for i := range ops {
				k := 1 + r.Int64N(nkeys)
				name := fmt.Sprintf("g%d-%d", g, i)
				start := time.Now()
				switch op := r.IntN(100); {
				case op < 30:
					if _, err := repo.Put(ctx, k, account(k, name)); err != nil {
						t.Errorf("Put: %v", err)
						return
					}
					l.add(l.writes, k, event{name, start, time.Now()})
				case op < 60:
					_, err := repo.Update(ctx, k, func(a *Account) error { a.Name = name; a.BalanceCents++; return nil })
					switch {
					case errors.Is(err, lazy.ErrNotFound): // deleted: nothing written
					case err != nil:
						t.Errorf("Update: %v", err)
						return
					default:
						l.add(l.writes, k, event{name, start, time.Now()})
					}
				case op < 75:
					if err := repo.Delete(ctx, k); err != nil {
						t.Errorf("Delete: %v", err)
						return
					}
					l.add(l.writes, k, event{gone, start, time.Now()})
				default:
					a, err := repo.Get(ctx, k)
					switch {
					case errors.Is(err, lazy.ErrNotFound):
						l.add(l.reads, k, event{gone, start, time.Now()})
					case err != nil:
						t.Errorf("Get: %v", err)
						return
					default:
						l.add(l.reads, k, event{a.Name, start, time.Now()})
					}
				}
			}
		})
	}
	wg.Wait()
	repo.Close()
	if t.Failed() {
		return
	}

	for k := int64(1); k <= nkeys; k++ {
		writes := l.writes[k]
		final := gone
		if a, err := repo.Get(ctx, k); err == nil {
			final = a.Name
		} else if !errors.Is(err, lazy.ErrNotFound) {
			t.Fatal(err)
		}
		// The final state comes from a write no other write strictly follows.
		ok := false
		for _, w := range writes {
			if w.name == final || (w.name == gone && final == gone) {
				if !followed(w, writes) {
					ok = true
				}
			}
		}
		if !ok {
			t.Errorf("key %d ends as %q, which a later acknowledged write replaced: lost update", k, final)
		}
		// No read returns what a write completed before the read began had
		// already replaced.
		for _, rd := range l.reads[k] {
			if stale(rd, writes) {
				t.Errorf("key %d: read at %v returned %q, replaced before the read began", k, rd.start, rd.name)
			}
		}
	}
	requireOldEqualsNew(t, b)
	for k := range tableText(t, b.pair.Old) {
		if _, inNew := tableText(t, b.pair.New)[k]; !inNew && k <= nkeys {
			if _, err := repo.Get(ctx, k); err == nil {
				t.Errorf("key %d is in OLD but neither in NEW nor deleted", k)
			}
		}
	}
	if n := outboxLen(t, b); n != 0 {
		t.Errorf("%d outbox entries left: mirroring did not converge", n)
	}
}

// followed reports whether some write began after w had returned.
func followed(w event, writes []event) bool {
	for _, o := range writes {
		if o.start.After(w.end) {
			return true
		}
	}
	return false
}

// stale reports whether read rd returned the value of a write that another
// write, begun after it had returned and done before rd began, replaced.
// Deletes share one name, so a "gone" read is stale only if every delete is.
func stale(rd event, writes []event) bool {
	fresh := false
	for _, w := range writes {
		if w.name != rd.name {
			continue
		}
		replaced := false
		for _, o := range writes {
			if o.start.After(w.end) && o.end.Before(rd.start) {
				replaced = true
				break
			}
		}
		if !replaced {
			fresh = true
		}
	}
	return !fresh
}
