package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lazymigrate/lazymigrate/httpmw"
)

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var c connFlags
	c.register(fs, true)
	addr := fs.String("addr", "127.0.0.1:8080", "listen on `host:port`")
	cfg := serveConfig{Worker: true}
	fs.BoolVar(&cfg.Worker, "worker", true, "run the promotion worker in this process (-worker=false: run `accounts worker` instead)")
	cfg.WorkerConfig.register(fs)
	fs.IntVar(&cfg.HeatmapCells, "heatmap-cells", 200, "most cells of the status page's key-space heatmap")
	fs.Int64Var(&cfg.MaxID, "max-id", defaultMaxID,
		"largest account `id` the API accepts (a larger one is 400); set it a little above the ids the table "+
			"will reach: every 2^20 ids that writes touch cost up to 128 KiB of Redis in the tracker")
	shutdownTimeout := fs.Duration("shutdown-timeout", 10*time.Second,
		"on SIGINT or SIGTERM, how long requests in flight may take to finish before they are cut off")
	if err := parse(fs, args, stdout); err != nil {
		return err
	}
	switch {
	case cfg.MaxID < 1:
		return usageError{fmt.Errorf("-max-id must be at least 1, got %d", cfg.MaxID)}
	case *shutdownTimeout <= 0:
		return usageError{fmt.Errorf("-shutdown-timeout must be positive, got %s", *shutdownTimeout)}
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("-addr: %w", err)
	}
	defer ln.Close() // once Serve has it, Shutdown closes it; closing twice is harmless
	d, err := c.open(ctx, true)
	if err != nil {
		return err
	}
	defer d.close()
	cfg.Prefix, cfg.Queue, cfg.Logger = c.prefix, c.queue, newLogger(stderr)
	s, err := newServer(ctx, d, cfg)
	if err != nil {
		return err
	}
	defer s.close()
	if err := s.start(ctx); err != nil {
		return err
	}

	hs := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	url := "http://" + ln.Addr().String()
	fmt.Fprintf(stdout, "serving accounts on %s: status %s/status, metrics %s/metrics\n", url, url, url)
	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	s.log.Info("shutting down: finishing requests in flight")
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), *shutdownTimeout)
	defer cancel()
	if err := hs.Shutdown(shutdownCtx); err != nil {
		// Requests still running: close their connections, which ends their
		// contexts, before the deferred closes stop the enqueuer and close
		// the pools under them.
		_ = hs.Close()
		return fmt.Errorf("shutdown: requests in flight after -shutdown-timeout %s were cut off: %w", *shutdownTimeout, err)
	}
	return nil
}

// serveConfig configures the service.
type serveConfig struct {
	// Prefix starts the Redis keys of the tracker, the read mode and the
	// sweep's progress.
	Prefix string
	// Queue is the asynq queue of promotion and reconcile tasks.
	Queue string
	// Worker runs the asynq worker in the process.
	Worker       bool
	WorkerConfig workerConfig
	// HeatmapCells is the most cells of the status page's heatmap.
	HeatmapCells int
	// MaxID is the largest account id the API accepts, on every route;
	// larger ones are 400. It bounds the key range (OLD's max(id), which
	// a PUT mirrors there, is where the sweeper stops) and what a client
	// can make the tracker hold in Redis. Defaults to 2^40.
	MaxID int64
	// StatusTTL is how long a computed status is served again. Defaults
	// to a second.
	StatusTTL time.Duration
	Logger    *slog.Logger
}

// routeGet is the pattern of the read route, also its metrics label.
const routeGet = "GET /accounts/{id}"

// server is the accounts service: its handler, and the background work
// behind it (the enqueuer, the relay, the read-mode poll, the worker).
type server struct {
	d      *deps
	m      *migration
	log    *slog.Logger
	mux    *http.ServeMux
	key    httpmw.KeyFunc // parses {id}, on every route
	status *statusBoard
	rates  *rates

	worker    *asynq.Server // nil without cfg.Worker
	workerMux *asynq.ServeMux

	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

// newServer builds the service on d. Call start before serving its
// Handler, and close at the end.
func newServer(ctx context.Context, d *deps, cfg serveConfig) (*server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.StatusTTL == 0 {
		cfg.StatusTTL = time.Second
	}
	if cfg.MaxID == 0 {
		cfg.MaxID = defaultMaxID
	}
	if cfg.HeatmapCells < 1 {
		return nil, usageError{fmt.Errorf("-heatmap-cells must be at least 1, got %d", cfg.HeatmapCells)}
	}
	if cfg.MaxID < 0 {
		return nil, usageError{fmt.Errorf("-max-id must be at least 1, got %d", cfg.MaxID)}
	}
	// Three registries, all served at /metrics: lib's counters are sampled
	// every second for the status page's rates; the tracker's gauge counts
	// the whole bitmap in Redis whenever it is gathered, so it stays out of
	// that sampling; process has the Go runtime's and the process's.
	lib, trackerReg, process := prometheus.NewRegistry(), prometheus.NewRegistry(), prometheus.NewRegistry()
	process.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	m, err := newMigration(ctx, d, migrationConfig{
		Prefix: cfg.Prefix, Queue: cfg.Queue, Registerer: lib, TrackerRegisterer: trackerReg, Logger: cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	// Serve no read before the read mode is known: during a rollback, a
	// process starting in readthrough would serve NEW.
	if err := m.mode.Refresh(ctx); err != nil {
		m.repo.Close()
		return nil, fmt.Errorf("read the read mode from Redis: %w", err)
	}
	tombs, err := httpmw.NewTombstones(ctx, d.new, table)
	if err != nil {
		m.repo.Close()
		return nil, err
	}
	key := keyFunc(cfg.MaxID)
	mw, err := httpmw.New(d.old, d.new, &httpmw.Config{
		Key:        key,
		Tracker:    m.tracker,
		Tombstones: tombs,
		Scheduler:  m.enqueuer,
		Mode:       m.mode,
		Logger:     cfg.Logger,
		Registerer: lib,
	})
	if err != nil {
		m.repo.Close()
		return nil, err
	}

	s := &server{d: d, m: m, log: cfg.Logger, key: key, rates: newRates(lib, routeGet)}
	s.status = &statusBoard{
		cfg: statusConfig{
			Prefix: cfg.Prefix, Cells: cfg.HeatmapCells, TTL: cfg.StatusTTL,
			WorkerInProcess: cfg.Worker, Logger: cfg.Logger,
		},
		old: d.old, rdb: d.rdb, tracker: m.tracker, mode: m.mode, rates: s.rates,
	}
	if cfg.Worker {
		wc := cfg.WorkerConfig
		wc.Queue, wc.Logger, wc.Registerer = cfg.Queue, cfg.Logger, lib
		if s.worker, s.workerMux, err = newWorker(d.rdb, m, wc); err != nil {
			m.repo.Close()
			return nil, err
		}
	}

	mux := http.NewServeMux()
	mux.Handle(routeGet, mw.Wrap(http.HandlerFunc(getAccount)))
	mux.HandleFunc("PUT /accounts/{id}", s.putAccount)
	mux.HandleFunc("DELETE /accounts/{id}", s.deleteAccount)
	mux.Handle("GET /metrics", promhttp.HandlerFor(prometheus.Gatherers{lib, trackerReg, process}, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /status", s.status.servePage)
	mux.HandleFunc("GET /status.json", s.status.serveJSON)
	mux.Handle("GET /{$}", http.RedirectHandler("/status", http.StatusFound))
	s.mux = mux
	return s, nil
}

// Handler returns the service's HTTP handler.
func (s *server) Handler() http.Handler { return s.mux }

// start begins the background work: the enqueuer that turns OLD reads into
// promotion tasks, the read-mode poll, the relay that mirrors to OLD what
// writes left behind, the sampling of the status page's rates and, unless
// disabled, the promotion worker. It runs until close.
func (s *server) start(ctx context.Context) error {
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	if err := s.m.enqueuer.Start(bg); err != nil {
		cancel()
		return err
	}
	s.wg.Go(func() { _ = s.m.mode.Run(bg) })
	s.wg.Go(func() {
		if err := s.m.repo.RunRelay(bg); err != nil {
			s.log.Error("relay stopped", "error", err)
		}
	})
	s.wg.Go(func() { s.rates.run(bg) })
	if s.worker != nil {
		if err := s.worker.Start(s.workerMux); err != nil {
			s.close()
			return fmt.Errorf("start the asynq worker: %w", err)
		}
	}
	return nil
}

// close stops the background work, after the HTTP server has stopped:
// keys still waiting to be enqueued are enqueued, the worker finishes its
// tasks in flight, writes finish their bookkeeping. Safe to call twice.
func (s *server) close() {
	s.once.Do(func() {
		s.m.enqueuer.Stop()
		if s.worker != nil {
			s.worker.Shutdown()
		}
		if s.cancel != nil {
			s.cancel()
		}
		s.wg.Wait()
		s.m.repo.Close()
	})
}
