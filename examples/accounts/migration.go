package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazymigrate/lazymigrate/fallback"
	"github.com/lazymigrate/lazymigrate/lazy"
	"github.com/lazymigrate/lazymigrate/promote"
	"github.com/lazymigrate/lazymigrate/tracker"
)

// migration is lazymigrate's plumbing for the accounts table, the same in
// the service and in workers.
type migration struct {
	tracker  *tracker.Tracker
	copier   *promote.Copier
	mode     *fallback.Switch
	client   *asynq.Client // enqueues promotion and reconcile tasks
	enqueuer *promote.Enqueuer
	repo     *lazy.Repo[Account]
}

type migrationConfig struct {
	// Prefix starts the Redis keys of the tracker and the read mode.
	Prefix string
	// Queue is the asynq queue of promotion and reconcile tasks.
	Queue string
	// Registerer receives lazymigrate's metrics but the tracker's.
	Registerer prometheus.Registerer
	// TrackerRegisterer receives the tracker's, whose settled-keys gauge
	// counts the bitmap in Redis at every scrape.
	TrackerRegisterer prometheus.Registerer
	Logger            *slog.Logger
}

// newMigration sets up lazymigrate's schema in NEW (idempotent) and builds
// the tracker, the copier, the read-mode switch, the enqueuer (not started)
// and the repository that writes go through.
func newMigration(ctx context.Context, d *deps, c migrationConfig) (*migration, error) {
	if err := promote.Setup(ctx, d.new); err != nil {
		return nil, err
	}
	m := &migration{client: asynq.NewClientFromRedisClient(d.rdb)}
	var err error
	if m.tracker, err = tracker.New(d.rdb, table, &tracker.Config{Prefix: c.Prefix, Registerer: c.TrackerRegisterer}); err != nil {
		return nil, err
	}
	m.copier, err = promote.NewCopier(ctx, d.old, d.new, &promote.CopierConfig{
		Table: table, Marker: m.tracker, Logger: c.Logger, Registerer: c.Registerer,
	})
	if err != nil {
		return nil, fmt.Errorf("%w (has `accounts seed` run?)", err)
	}
	if m.mode, err = fallback.New(d.rdb, table, &fallback.Config{Prefix: c.Prefix, Logger: c.Logger, Registerer: c.Registerer}); err != nil {
		return nil, err
	}
	m.enqueuer, err = promote.NewEnqueuer(m.client, table, &promote.EnqueuerConfig{
		Queue: c.Queue, Logger: c.Logger, Registerer: c.Registerer,
	})
	if err != nil {
		return nil, err
	}
	m.repo, err = lazy.New(ctx, d.old, d.new, &lazy.Config[Account]{
		Table:          table,
		Tracker:        m.tracker,
		Scheduler:      m.enqueuer,
		Mode:           m.mode,
		Copier:         m.copier,
		Reconciler:     m.client,
		ReconcileQueue: c.Queue,
		Logger:         c.Logger,
		Registerer:     c.Registerer,
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}
