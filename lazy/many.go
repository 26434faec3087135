package lazy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lazymigrate/lazymigrate/fallback"
	"github.com/lazymigrate/lazymigrate/internal/keys"
)

// GetMany returns the records of keys that exist, by key, with one NEW query
// and, for the keys NEW lacks, one OLD query. Keys found in OLD are
// scheduled for promotion. If OLD cannot be read and some keys are
// unresolved, the error wraps ErrOldUnavailable and the map holds the keys
// that were found. If NEW fails after its first query (the tombstone
// lookup, or the re-read of keys the tracker calls settled), the error
// wraps ErrNewUnavailable and the map holds NEW's hits.
//
// While a mode is rolled out to some of the keys, the keys of each mode
// are read as a GetMany of their own, at the same time: two NEW queries
// and two OLD queries at most. The map then holds what each found, and
// the error joins theirs.
func (r *Repo[T]) GetMany(ctx context.Context, ks []int64) (map[int64]T, error) {
	start := time.Now()
	out, err := r.getMany(ctx, ks)
	outcome := "batch"
	if err != nil {
		outcome = "error"
	}
	r.duration.WithLabelValues(outcome).Observe(time.Since(start).Seconds())
	return out, err
}

// getManyOld reads the keys ks from OLD alone into out, counting the rows
// found as outcome.
func (r *Repo[T]) getManyOld(ctx context.Context, ks []int64, out map[int64]T, outcome string) (map[int64]T, error) {
	if err := queryKeyed(ctx, r.old, r.oldManySQL, ks, r.cfg.ScanOld, out); err != nil {
		r.reads.WithLabelValues("error").Add(float64(len(ks)))
		err = r.manyErr(ErrOldUnavailable, len(ks), err)
		if outcome == "old_new_down" && errors.Is(err, ErrOldUnavailable) {
			err = fmt.Errorf("%w, and %w", ErrNewUnavailable, err)
		}
		return nil, err
	}
	r.reads.WithLabelValues(outcome).Add(float64(len(out)))
	r.reads.WithLabelValues("not_found").Add(float64(len(ks) - len(out)))
	return out, nil
}

func (r *Repo[T]) getMany(ctx context.Context, ks []int64) (map[int64]T, error) {
	if err := keys.CheckAll(ks); err != nil {
		r.reads.WithLabelValues("error").Inc()
		return nil, fmt.Errorf("lazy: get %s: %w", r.cfg.Table, err)
	}
	ks = keys.SortedUnique(ks)
	if len(ks) == 0 {
		return map[int64]T{}, nil
	}
	groups := r.byMode(ks)
	if len(groups) == 1 {
		return r.getManyIn(ctx, groups[0].mode, groups[0].keys)
	}
	// A mode rolled out to some keys: each mode's keys are read as a
	// GetMany of their own, at the same time.
	res := make([]result[map[int64]T], len(groups))
	var wg sync.WaitGroup
	for i, g := range groups {
		wg.Go(func() {
			res[i].v, res[i].err = r.getManyIn(ctx, g.mode, g.keys)
		})
	}
	wg.Wait()
	out := make(map[int64]T, len(ks))
	var errs []error
	for _, g := range res {
		maps.Copy(out, g.v)
		if g.err != nil {
			errs = append(errs, g.err)
		}
	}
	return out, errors.Join(errs...)
}

// modeKeys are the keys of a GetMany that one mode serves.
type modeKeys struct {
	mode fallback.Mode
	keys []int64
}

// byMode splits ks by the mode that serves each, keeping their order: one
// group unless a mode is rolled out to some of them.
func (r *Repo[T]) byMode(ks []int64) []modeKeys {
	if r.cfg.Mode == nil {
		return []modeKeys{{fallback.ModeReadthrough, ks}}
	}
	p := r.cfg.Mode.Policy() // once: the batch must not straddle a change
	if p.Percent == 100 {
		return []modeKeys{{p.Mode, ks}}
	}
	var groups []modeKeys
	for _, k := range ks {
		m := p.ModeOf(k)
		i := slices.IndexFunc(groups, func(g modeKeys) bool { return g.mode == m })
		if i < 0 {
			i = len(groups)
			groups = append(groups, modeKeys{mode: m})
		}
		groups[i].keys = append(groups[i].keys, k)
	}
	return groups
}

// getManyIn reads ks, sorted and unique, in mode.
func (r *Repo[T]) getManyIn(ctx context.Context, mode fallback.Mode, ks []int64) (map[int64]T, error) {
	out := make(map[int64]T, len(ks))
	switch {
	case mode == fallback.ModeOld:
		out, err := r.getManyOld(ctx, ks, out, "old")
		if err == nil {
			r.shadowKeys(ctx, ks, fallback.ModeOld, nil)
		}
		return out, err
	case r.skipNew(mode):
		return r.getManyOld(ctx, ks, out, "old_new_down")
	}
	down, err := r.readNew(ctx, mode, func(ctx context.Context, db DB) error {
		clear(out) // rows scanned before a connection broke
		return queryKeyed(ctx, db, r.newManySQL, ks, r.cfg.Scan, out)
	})
	switch {
	case down:
		clear(out)
		return r.getManyOld(ctx, ks, out, "old_new_down")
	case err != nil:
		r.reads.WithLabelValues("error").Add(float64(len(ks)))
		return nil, r.manyErr(ErrNewUnavailable, len(ks), err)
	}
	r.reads.WithLabelValues("new").Add(float64(len(out)))
	misses := make([]int64, 0, len(ks)-len(out))
	for _, k := range ks {
		if _, ok := out[k]; !ok {
			misses = append(misses, k)
		}
	}
	if len(misses) == 0 {
		r.shadowKeys(ctx, ks, fallback.ModeNew, nil)
		return out, nil
	}
	if mode == fallback.ModeNew {
		r.reads.WithLabelValues("not_found").Add(float64(len(misses)))
		r.shadowKeys(ctx, ks, fallback.ModeNew, nil)
		return out, nil
	}

	tombc := make(chan result[[]int64], 1)
	go func() {
		rows, err := r.new.Query(ctx, r.tombsSQL, r.tableID, misses)
		if err != nil {
			tombc <- result[[]int64]{nil, err}
			return
		}
		tombs, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		tombc <- result[[]int64]{tombs, err}
	}()
	ask := func() pending[[]bool] {
		return askTracker(ctx, r, func(ctx context.Context) ([]bool, error) { return r.cfg.Tracker.Settled(ctx, misses) })
	}
	bits := noAnswer[[]bool]()
	if r.cfg.AskTrackerOnMiss {
		bits = ask()
	}
	found := make(map[int64]T, len(misses))
	oldErr := queryKeyed(ctx, r.old, r.oldManySQL, misses, r.cfg.ScanOld, found)
	if !r.cfg.AskTrackerOnMiss && oldUnavailable(oldErr) {
		bits = ask()
	}

	tombs := <-tombc
	if tombs.err != nil {
		bits.cancel()
		r.reads.WithLabelValues("error").Add(float64(len(misses)))
		return out, r.manyErr(ErrNewUnavailable, len(misses), tombs.err)
	}
	gone := make(map[int64]bool, len(tombs.v))
	for _, k := range tombs.v {
		gone[k] = true
	}
	// Settled keys without a tombstone are either gone or were promoted
	// since NEW was read; one more NEW query tells which (see fallback).
	var recheck []int64
	if settled, ok := awaitTracker(ctx, r, bits); ok {
		for i, k := range misses {
			if settled[i] && !gone[k] {
				recheck = append(recheck, k)
				gone[k] = true
			}
		}
	}
	if len(recheck) > 0 {
		before := len(out)
		if err := queryKeyed(ctx, r.new, r.newManySQL, recheck, r.cfg.Scan, out); err != nil {
			r.reads.WithLabelValues("error").Add(float64(len(misses)))
			return out, r.manyErr(ErrNewUnavailable, len(recheck), err)
		}
		r.reads.WithLabelValues("new").Add(float64(len(out) - before))
	}
	if isScanError(oldErr) {
		r.reads.WithLabelValues("error").Add(float64(len(misses)))
		return out, oldErr
	}

	var promote []int64
	notFound, unresolved := 0, 0
	for _, k := range misses {
		v, inOld := found[k]
		switch {
		case gone[k]:
			if _, promoted := out[k]; !promoted {
				notFound++
			}
		case oldErr != nil:
			unresolved++
		case inOld:
			out[k] = v
			promote = append(promote, k)
		default:
			notFound++
		}
	}
	r.reads.WithLabelValues("not_found").Add(float64(notFound))
	r.reads.WithLabelValues("old").Add(float64(len(promote)))
	if len(promote) > 0 && r.cfg.Scheduler != nil {
		r.cfg.Scheduler.Schedule(promote...)
	}
	if unresolved > 0 {
		r.reads.WithLabelValues("error").Add(float64(unresolved))
		return out, fmt.Errorf("%w: get %s: %d keys unresolved: %w", ErrOldUnavailable, r.cfg.Table, unresolved, oldErr)
	}
	r.shadowKeys(ctx, ks, fallback.ModeNew, promote) // promote: served by OLD
	return out, nil
}

func (r *Repo[T]) manyErr(sentinel error, n int, err error) error {
	if isScanError(err) {
		return err
	}
	return fmt.Errorf("%w: get %d keys of %s: %w", sentinel, n, r.cfg.Table, err)
}
