package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/lazy"
	"github.com/lazymigrate/lazymigrate/promote"
)

func runWorker(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	var c connFlags
	c.register(fs, true)
	var wc workerConfig
	wc.register(fs)
	metricsAddr := fs.String("metrics-addr", "", "serve /metrics on this `host:port` (default: none)")
	if err := parse(fs, args, stdout); err != nil {
		return err
	}
	d, err := c.open(ctx, true)
	if err != nil {
		return err
	}
	defer d.close()
	log := newLogger(stderr)
	reg := prometheus.NewRegistry()
	m, err := newMigration(ctx, d, migrationConfig{
		Prefix: c.prefix, Queue: c.queue, Registerer: reg, TrackerRegisterer: reg, Logger: log,
	})
	if err != nil {
		return err
	}
	defer m.repo.Close()
	wc.Queue, wc.Logger, wc.Registerer = c.queue, log, reg
	srv, mux, err := newWorker(d.rdb, m, wc)
	if err != nil {
		return err
	}

	if *metricsAddr != "" {
		ln, err := net.Listen("tcp", *metricsAddr)
		if err != nil {
			return fmt.Errorf("-metrics-addr: %w", err)
		}
		hs := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = hs.Serve(ln) }()
		defer hs.Close()
	}
	if err := srv.Start(mux); err != nil {
		return fmt.Errorf("start the asynq worker: %w", err)
	}
	log.Info("worker running; Ctrl-C stops it", "queue", c.queue, "concurrency", wc.Concurrency)
	<-ctx.Done()
	srv.Shutdown() // waits for the tasks in flight (asynq's ShutdownTimeout, 8s)
	log.Info("worker stopped")
	return nil
}

// workerConfig configures the asynq server that runs promotion and
// reconcile tasks.
type workerConfig struct {
	Queue string
	// Concurrency is the number of tasks run at once.
	Concurrency int
	// TaskCheckInterval is how often an idle worker looks for tasks: the
	// longest a promotion waits to start.
	TaskCheckInterval time.Duration
	Logger            *slog.Logger
	Registerer        prometheus.Registerer
}

func (c *workerConfig) register(fs *flag.FlagSet) {
	fs.IntVar(&c.Concurrency, "concurrency", 4, "promotion tasks run at once")
	fs.DurationVar(&c.TaskCheckInterval, "task-check-interval", 100*time.Millisecond,
		"how often an idle worker polls its queue: the longest a promotion waits to start")
}

// newWorker returns an asynq server, not started, and the ServeMux to start
// it with: promotion tasks go to promote's Handler, reconcile tasks (writes
// that could not be mirrored to OLD at once) to lazy's.
func newWorker(rdb redis.UniversalClient, m *migration, c workerConfig) (*asynq.Server, *asynq.ServeMux, error) {
	if c.Concurrency < 1 {
		return nil, nil, usageError{fmt.Errorf("-concurrency must be at least 1, got %d", c.Concurrency)}
	}
	if c.TaskCheckInterval <= 0 {
		return nil, nil, usageError{errors.New("-task-check-interval must be positive")}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	promotions, err := promote.NewHandler([]*promote.Copier{m.copier}, &promote.HandlerConfig{
		Settled:    map[string]promote.SettledChecker{table: m.tracker},
		Logger:     c.Logger,
		Registerer: c.Registerer,
	})
	if err != nil {
		return nil, nil, err
	}
	reconciles, err := lazy.NewReconcileHandler(m.repo)
	if err != nil {
		return nil, nil, err
	}
	mux := asynq.NewServeMux()
	mux.Handle(promote.TaskType, promotions)
	mux.Handle(lazy.ReconcileTaskType, reconciles)
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Queues:            map[string]int{c.Queue: 1},
		Concurrency:       c.Concurrency,
		TaskCheckInterval: c.TaskCheckInterval,
		Logger:            asynqLogger{c.Logger},
		LogLevel:          asynq.WarnLevel,
	})
	return srv, mux, nil
}

// asynqLogger sends asynq's logs to slog.
type asynqLogger struct{ log *slog.Logger }

var _ asynq.Logger = asynqLogger{}

func (l asynqLogger) Debug(args ...any) { l.log.Debug(fmt.Sprint(args...), "component", "asynq") }
func (l asynqLogger) Info(args ...any)  { l.log.Info(fmt.Sprint(args...), "component", "asynq") }
func (l asynqLogger) Warn(args ...any)  { l.log.Warn(fmt.Sprint(args...), "component", "asynq") }
func (l asynqLogger) Error(args ...any) { l.log.Error(fmt.Sprint(args...), "component", "asynq") }

// Fatal is what asynq calls when it cannot go on; the contract is to exit.
func (l asynqLogger) Fatal(args ...any) {
	l.log.Error(fmt.Sprint(args...), "component", "asynq")
	os.Exit(1)
}
