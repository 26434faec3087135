package fallback

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/internal/metrics"
)

// ErrNoRedis is returned by Set on a Switch made without a Redis client:
// such a switch has nobody to tell.
var ErrNoRedis = errors.New("fallback: switch has no Redis client")

const (
	defaultPrefix       = "lazymigrate"
	defaultPollInterval = time.Second

	// minPollTimeout is the least time one poll of Run may take before it
	// is abandoned (each poll gets max(PollInterval, minPollTimeout)), so
	// that a hung Redis delays the next poll rather than stopping them.
	minPollTimeout = time.Second
)

// Config configures a Switch. The zero value is ready to use.
type Config struct {
	// Prefix starts the Redis key of the mode, <Prefix>:mode:<table>.
	// Every process serving the table, and any tool that sets its mode,
	// must use the same. Defaults to "lazymigrate".
	Prefix string

	// PollInterval is how often Run reads the key: how long other processes
	// take, at most, to follow a Set. Defaults to 1s.
	PollInterval time.Duration

	// Default is the mode while the key is absent from Redis, and until the
	// first Refresh. Defaults to ModeReadthrough.
	Default Mode

	// Logger receives mode changes (Info) and failed polls of Run (Warn for
	// the first of a run of failures, Debug for the rest). Defaults to
	// discarding.
	Logger *slog.Logger

	// Registerer receives lazymigrate_read_mode{table,mode} (1 for the mode
	// this process serves, 0 for the others) and
	// lazymigrate_mode_poll_errors_total{table}. Defaults to nil: no
	// metrics are registered.
	Registerer prometheus.Registerer
}

// Switch holds the mode of one table for this process: the mode last read
// from Redis or set through it, unless an override pins another. It is safe
// for concurrent use, and Mode, called on every read, is a single atomic
// load.
type Switch struct {
	rdb         redis.UniversalClient // nil for a local switch
	table       string
	key         string
	interval    time.Duration
	pollTimeout time.Duration
	def         int // index of Default in modes
	log         *slog.Logger

	// cur is the index in modes of the mode reads use: override if set,
	// else known. It is written under mu and read without it.
	cur atomic.Uint32

	mu       sync.Mutex
	known    int    // index of the mode last read from Redis or Set; Default's until then
	override int    // index of the pinned mode, or -1
	sets     uint64 // Sets applied so far; a Refresh that read Redis before one must not undo it

	gauges     [len(modes)]prometheus.Gauge // lazymigrate_read_mode, one per mode
	pollErrors prometheus.Counter
}

// New returns the switch of table. rdb may be nil: the switch is then local
// to this process, following only Default and Override. New does no I/O;
// Mode returns Default until the first Refresh (Run does one at once).
// table only names the Redis key and the metrics label. cfg may be nil.
func New(rdb redis.UniversalClient, table string, cfg *Config) (*Switch, error) {
	if table == "" {
		return nil, errors.New("fallback: New needs a table name")
	}
	var c Config
	if cfg != nil {
		c = *cfg
	}
	c.Prefix = cmp.Or(c.Prefix, defaultPrefix)
	c.PollInterval = cmp.Or(c.PollInterval, defaultPollInterval)
	if c.PollInterval < 0 {
		return nil, fmt.Errorf("fallback: Config.PollInterval must not be negative, got %s", c.PollInterval)
	}
	c.Default = cmp.Or(c.Default, ModeReadthrough)
	def := modeIndex(string(c.Default))
	if def < 0 {
		return nil, fmt.Errorf("fallback: Config.Default: %w %s; %s", ErrInvalidMode, quote(string(c.Default)), validModes)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}

	s := &Switch{
		rdb:         rdb,
		table:       table,
		key:         c.Prefix + ":mode:" + table,
		interval:    c.PollInterval,
		pollTimeout: max(c.PollInterval, minPollTimeout),
		def:         def,
		log:         c.Logger,
		known:       def,
		override:    -1,
	}
	s.cur.Store(uint32(def))

	labels := prometheus.Labels{"table": table}
	gauges := metrics.Register(c.Registerer, prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: metrics.Namespace,
		Name:      "read_mode",
		Help:      "The mode this process serves reads of the table in: 1 for the current mode (old, readthrough or new), 0 for the others.",
	}, []string{"table", "mode"})).MustCurryWith(labels)
	for i, m := range modes {
		s.gauges[i] = gauges.WithLabelValues(string(m))
	}
	s.setGauges(def)
	s.pollErrors = metrics.CounterVec(c.Registerer, "mode_poll_errors_total",
		"Reads of the table's mode from Redis that failed or found an invalid value; the last known mode stayed in force.",
		"table").With(labels)
	return s, nil
}

// Table returns the table name the switch was created with.
func (s *Switch) Table() string { return s.table }

// Mode returns the mode reads of the table use now. It does not allocate
// and takes no lock.
func (s *Switch) Mode() Mode { return modes[s.cur.Load()] }

// Set makes m the table's mode for every process: it writes the Redis key,
// which other processes read within their PollInterval, and applies m here
// at once (an Override still pins this process's mode). When the write
// fails the local mode is left as it was, so that this process does not
// part from the others: use Override to pin it anyway. m must be valid (see
// ParseMode); nothing is written otherwise. A switch without Redis returns
// ErrNoRedis.
func (s *Switch) Set(ctx context.Context, m Mode) error {
	i := modeIndex(string(m))
	if i < 0 {
		_, err := ParseMode(string(m))
		return err
	}
	if s.rdb == nil {
		return fmt.Errorf("%w: cannot set the mode of %s (use Override for a local switch)", ErrNoRedis, s.table)
	}
	if err := s.rdb.Set(ctx, s.key, string(modes[i]), 0).Err(); err != nil {
		return fmt.Errorf("fallback: set mode of %s to %s: %w", s.table, modes[i], err)
	}
	s.mu.Lock()
	s.sets++
	s.known = i
	from, to := s.publishLocked()
	s.mu.Unlock()
	s.logChange(ctx, from, to, "set")
	return nil
}

// Refresh reads the table's mode from Redis once and applies it (an
// Override still pins this process's mode). An absent key means Default.
// When Redis cannot be read, or the key holds something that is not a mode
// (ErrInvalidMode), the last known mode stays in force and the error is
// returned and counted in lazymigrate_mode_poll_errors_total, unless it
// came from ctx ending. On a switch without Redis it does nothing.
func (s *Switch) Refresh(ctx context.Context) error {
	err := s.refresh(ctx)
	if err != nil && ctx.Err() == nil {
		s.pollErrors.Inc()
	}
	return err
}

func (s *Switch) refresh(ctx context.Context) error {
	if s.rdb == nil {
		return nil
	}
	s.mu.Lock()
	sets := s.sets
	s.mu.Unlock()

	i := -1
	v, err := s.rdb.Get(ctx, s.key).Result()
	switch {
	case errors.Is(err, redis.Nil): // no key: Default, taken below
	case err != nil:
		return fmt.Errorf("fallback: read mode of %s from Redis key %s: %w", s.table, s.key, err)
	default:
		if i = modeIndex(v); i < 0 {
			return fmt.Errorf("%w %s in Redis key %s (%s); the last known mode stays in force",
				ErrInvalidMode, quote(v), s.key, validModes)
		}
	}

	s.mu.Lock()
	if s.sets != sets {
		// A Set of this process ran while the key was read: what was read
		// may predate it, and the Set's mode is at least as new.
		s.mu.Unlock()
		return nil
	}
	if i < 0 {
		i = s.def
	}
	s.known = i
	from, to := s.publishLocked()
	s.mu.Unlock()
	s.logChange(ctx, from, to, "redis")
	return nil
}

// Override pins this process's mode to m, whatever Redis says, until
// ClearOverride: for tests, and for emergencies when Redis cannot be
// reached. Refresh and Set go on recording the mode from Redis meanwhile.
// m must be valid (see ParseMode): Override panics otherwise.
func (s *Switch) Override(m Mode) {
	i := modeIndex(string(m))
	if i < 0 {
		panic(fmt.Sprintf("fallback: Override(%s): %s", quote(string(m)), validModes))
	}
	s.mu.Lock()
	s.override = i
	from, to := s.publishLocked()
	s.mu.Unlock()
	s.logChange(context.Background(), from, to, "override")
}

// ClearOverride ends an Override: the mode is again the one last known from
// Redis (Default if none was read yet).
func (s *Switch) ClearOverride() {
	s.mu.Lock()
	s.override = -1
	from, to := s.publishLocked()
	s.mu.Unlock()
	s.logChange(context.Background(), from, to, "clear_override")
}

// Run polls the table's mode every PollInterval, starting at once, until
// ctx ends, and then returns nil. A poll that fails or finds an invalid
// value is logged and counted, and the last known mode stays in force; a
// poll taking longer than PollInterval (or 1s, whichever is longer) is
// abandoned. On a switch without Redis, Run returns nil at once.
//
// The poll's deadline reaches Redis through its context, which go-redis
// honours only for a client with Options.ContextTimeoutEnabled. Without
// it, the client's ReadTimeout (3s by default) bounds a poll, and with no
// ReadTimeout (-1) a Redis that accepts connections but never answers
// stops Run until the connection breaks.
//
// Run is the switch's only background loop: start it with `go sw.Run(ctx)`
// (or in an errgroup) and cancel ctx to stop it.
func (s *Switch) Run(ctx context.Context) error {
	if s.rdb == nil {
		return nil
	}
	t := time.NewTicker(s.interval)
	defer t.Stop()
	failed := 0 // consecutive failed polls
	for {
		pctx, cancel := context.WithTimeout(ctx, s.pollTimeout)
		err := s.refresh(pctx)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		switch {
		case err != nil:
			s.pollErrors.Inc()
			failed++
			level := slog.LevelDebug
			if failed == 1 {
				level = slog.LevelWarn
			}
			s.log.Log(ctx, level, "lazymigrate: cannot read the read mode; keeping the last known mode",
				"table", s.table, "mode", s.Mode(), "failed_polls", failed, "error", err)
		case failed > 0:
			s.log.InfoContext(ctx, "lazymigrate: read mode readable again",
				"table", s.table, "mode", s.Mode(), "failed_polls", failed)
			failed = 0
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// publishLocked makes the effective mode (override, else known) the one
// Mode returns and the gauges show, and returns the previous and the new
// one. s.mu must be held, so that changes reach cur and the gauges in the
// order they were made.
func (s *Switch) publishLocked() (from, to Mode) {
	i := s.known
	if s.override >= 0 {
		i = s.override
	}
	prev := s.cur.Load()
	if prev != uint32(i) {
		s.cur.Store(uint32(i))
		s.setGauges(i)
	}
	return modes[prev], modes[i]
}

func (s *Switch) setGauges(cur int) {
	for i, g := range s.gauges {
		if i == cur {
			g.Set(1)
		} else {
			g.Set(0)
		}
	}
}

func (s *Switch) logChange(ctx context.Context, from, to Mode, reason string) {
	if from != to {
		s.log.InfoContext(ctx, "lazymigrate: read mode changed",
			"table", s.table, "from", from, "to", to, "reason", reason)
	}
}
