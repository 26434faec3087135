package httpmw

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lazymigrate/lazymigrate/internal/pgtable"
	"github.com/lazymigrate/lazymigrate/internal/schema"
	"github.com/lazymigrate/lazymigrate/tracker"
)

// Tracker tells whether a key is settled: its truth lives in NEW, so NEW's
// 404 stands without asking OLD. *tracker.Tracker implements it.
type Tracker interface {
	IsSettled(ctx context.Context, key int64) (bool, error)
}

var _ Tracker = (*tracker.Tracker)(nil)

// TombstoneChecker tells whether a key was deleted through lazymigrate.
// *Tombstones implements it.
type TombstoneChecker interface {
	IsTombstoned(ctx context.Context, key int64) (bool, error)
}

var _ TombstoneChecker = (*Tombstones)(nil)

// Querier is the part of pgx that Tombstones uses. *pgxpool.Pool implements
// it.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Tombstones reads the tombstones lazymigrate writes in NEW when a key of
// one table is deleted through it (lazy.Repo.Delete). Safe for concurrent
// use.
type Tombstones struct {
	db    Querier
	table string // pgtable.Table.ID
}

// NewTombstones returns the tombstones of table (as written in SQL) in
// newDB. It checks that the table and lazymigrate's schema exist.
func NewTombstones(ctx context.Context, newDB Querier, table string) (*Tombstones, error) {
	if newDB == nil {
		return nil, errors.New("httpmw: NewTombstones needs NEW's database")
	}
	if table == "" {
		return nil, errors.New("httpmw: NewTombstones needs a table name")
	}
	t, err := pgtable.Describe(ctx, newDB, table)
	if err != nil {
		return nil, fmt.Errorf("httpmw: NEW: %w", err)
	}
	if err := schema.Check(ctx, newDB); err != nil {
		return nil, fmt.Errorf("httpmw: %w", err)
	}
	return &Tombstones{db: newDB, table: t.ID}, nil
}

// IsTombstoned reports whether key was deleted through lazymigrate, or is
// gone for good because the table's migration is closed (its tombstones
// purged): either way the middleware must not fall back to OLD for it.
func (t *Tombstones) IsTombstoned(ctx context.Context, key int64) (bool, error) {
	var tomb bool
	if err := t.db.QueryRow(ctx, schema.GoneSQL, t.table, key).Scan(&tomb); err != nil {
		return false, fmt.Errorf("httpmw: tombstone of %s key %d: %w", t.table, key, err)
	}
	return tomb, nil
}

// verdict is what the middleware knows of a key NEW answered 404 for.
type verdict uint8

const (
	unsettled  verdict = iota // ask OLD
	settled                   // the tracker's bit: ask NEW again, not OLD
	tombstoned                // deleted: NEW's 404 stands
)

// checkMiss decides what to do with a key NEW answered 404 for. The tracker
// is asked while the tombstone is read. A tombstone that cannot be read is
// an error (OLD might serve a deleted key); a tracker that fails, or is
// slower than TrackerTimeout, only means "unsettled".
func (m *Middleware) checkMiss(ctx context.Context, key int64) (verdict, error) {
	bit := m.askTracker(ctx, key)
	if m.cfg.Tombstones != nil {
		tomb, err := m.cfg.Tombstones.IsTombstoned(ctx, key)
		if err != nil || tomb {
			bit.cancel()
			if err != nil {
				return unsettled, fmt.Errorf("%w: %w", ErrNewUnavailable, err)
			}
			return tombstoned, nil
		}
	}
	if m.awaitTracker(ctx, bit) {
		return settled, nil
	}
	return unsettled, nil
}

type answer struct {
	settled bool
	err     error
}

// question is a tracker query under way; c is nil when none was asked.
type question struct {
	c      chan answer
	cancel context.CancelFunc
}

// askTracker starts asking the tracker about key, unless there is none or
// it failed within the last second. The query has a context of its own,
// cancelled once the read stops waiting for it.
func (m *Middleware) askTracker(ctx context.Context, key int64) question {
	if m.cfg.Tracker == nil || time.Now().UnixNano() < m.trackerDownUntil.Load() {
		return question{cancel: func() {}}
	}
	qctx, cancel := context.WithCancel(ctx)
	c := make(chan answer, 1)
	go func() {
		s, err := m.cfg.Tracker.IsSettled(qctx, key)
		c <- answer{s, err}
	}()
	return question{c: c, cancel: cancel}
}

// awaitTracker waits at most TrackerTimeout for q's answer and reports
// whether the key is settled. No answer, or a failure, is "not settled": a
// lost Redis costs speed, not answers.
func (m *Middleware) awaitTracker(ctx context.Context, q question) bool {
	defer q.cancel()
	if q.c == nil {
		return false
	}
	t := time.NewTimer(m.cfg.TrackerTimeout)
	defer t.Stop()
	select {
	case a := <-q.c:
		if a.err == nil {
			return a.settled
		}
		if ctx.Err() == nil { // the client giving up says nothing about Redis
			m.trackerDown(ctx, a.err)
		}
	case <-t.C:
		m.trackerDown(ctx, context.DeadlineExceeded)
	case <-ctx.Done():
	}
	return false
}

func (m *Middleware) trackerDown(ctx context.Context, err error) {
	m.trackerDownUntil.Store(time.Now().Add(time.Second).UnixNano())
	m.met.trackerErrors.Inc()
	m.log.WarnContext(ctx, "lazymigrate: tracker unavailable; reads ask OLD for every key NEW lacks, for a second", "error", err)
}
