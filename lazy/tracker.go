package lazy

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
)

type result[T any] struct {
	v   T
	err error
}

// pending is a tracker query under way.
type pending[V any] struct {
	c      chan result[V]
	cancel context.CancelFunc
}

// askTracker starts the tracker query q, unless there is no tracker or it
// failed within the last second. The query gets a context of its own, which
// awaitTracker cancels, so that it never outlives the read.
func askTracker[T, V any](ctx context.Context, r *Repo[T], q func(context.Context) (V, error)) pending[V] {
	if r.cfg.Tracker == nil || time.Now().UnixNano() < r.trackerDownUntil.Load() {
		return noAnswer[V]()
	}
	qctx, cancel := context.WithCancel(ctx)
	c := make(chan result[V], 1)
	go func() {
		v, err := q(qctx)
		c <- result[V]{v, err}
	}()
	return pending[V]{c: c, cancel: cancel}
}

// noAnswer is a tracker query never asked.
func noAnswer[V any]() pending[V] { return pending[V]{cancel: func() {}} }

// oldUnavailable reports whether err, from a read of OLD, leaves unknown
// whether the keys exist there.
func oldUnavailable(err error) bool {
	return err != nil && !errors.Is(err, pgx.ErrNoRows) && !isScanError(err)
}

// awaitTracker waits at most TrackerTimeout for the answer of askTracker; ok
// is false when there is none. A tracker that fails or is slow counts as
// "not settled": the read goes on to OLD, which is safe because tombstones,
// not the tracker, guard deleted keys.
func awaitTracker[T, V any](ctx context.Context, r *Repo[T], p pending[V]) (v V, ok bool) {
	defer p.cancel()
	if p.c == nil {
		return v, false
	}
	t := time.NewTimer(r.cfg.TrackerTimeout)
	defer t.Stop()
	select {
	case res := <-p.c:
		if res.err == nil {
			return res.v, true
		}
		if ctx.Err() == nil { // the caller giving up says nothing about Redis
			r.trackerDown(ctx, res.err)
		}
	case <-t.C:
		r.trackerDown(ctx, context.DeadlineExceeded)
	case <-ctx.Done():
	}
	return v, false
}

func (r *Repo[T]) trackerDown(ctx context.Context, err error) {
	r.trackerDownUntil.Store(time.Now().Add(time.Second).UnixNano())
	r.reads.WithLabelValues("tracker_unavailable").Inc()
	r.log.WarnContext(ctx, "lazymigrate: tracker unavailable; reads go on without it for a second", "table", r.cfg.Table, "error", err)
}
