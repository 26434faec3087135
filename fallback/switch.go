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

	// Registerer receives lazymigrate_read_mode{table,mode} (the share of
	// keys this process serves in each mode: 1 for the current mode, 0 for
	// the others, fractions during a rollout) and
	// lazymigrate_mode_poll_errors_total{table}. Defaults to nil: no
	// metrics are registered.
	Registerer prometheus.Registerer
}

// Switch holds the policy of one table for this process: the mode, and the
// share of keys it is rolled out to, last read from Redis or set through
// it, unless an override pins another. It is safe for concurrent use, and
// ModeOf, called on every read, is one atomic load (and, during a partial
// rollout, a hash of the key).
type Switch struct {
	rdb         redis.UniversalClient // nil for a local switch
	table       string
	key         string
	interval    time.Duration
	pollTimeout time.Duration
	def         state // Default, for every key
	log         *slog.Logger

	// cur is the policy reads use: override if set, else known. It is
	// written under mu and read without it.
	cur atomic.Uint32

	mu       sync.Mutex
	known    state  // the policy last read from Redis or Set; Default until then
	override state  // the pinned policy, or noOverride
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
	if modeIndex(string(c.Default)) < 0 {
		return nil, fmt.Errorf("fallback: Config.Default: %w %s; %s", ErrInvalidMode, quote(string(c.Default)), validModes)
	}
	def := fullState(modeIndex(string(c.Default)))
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
		override:    noOverride,
	}
	s.cur.Store(uint32(def))

	labels := prometheus.Labels{"table": table}
	gauges := metrics.Register(c.Registerer, prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: metrics.Namespace,
		Name:      "read_mode",
		Help:      "The share of the table's keys this process serves in each mode (old, readthrough, new): 1 for the current mode and 0 for the others, or fractions while a mode is rolled out to some keys.",
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

// Mode returns the mode every key of the table has reached now: the
// policy's mode at 100%, and during a rollout the mode before it (old at
// "readthrough 5%", readthrough at "new 5%"), so that a check such as
// "reads no longer fall back" holds for every key. Reads ask ModeOf.
func (s *Switch) Mode() Mode { return state(s.cur.Load()).policy().Before() }

// Policy returns the table's policy now.
func (s *Switch) Policy() Policy { return state(s.cur.Load()).policy() }

// ModeOf returns the mode that serves key now. It does not allocate and
// takes no lock.
func (s *Switch) ModeOf(key int64) Mode {
	st := state(s.cur.Load())
	if i := st.index(); i == 0 || inRollout(key, st.basisPoints()) {
		return modes[i]
	}
	return modes[st.index()-1]
}

// Set makes m the table's mode for every key and every process, as
// SetPolicy(ctx, Full(m)).
func (s *Switch) Set(ctx context.Context, m Mode) error {
	if modeIndex(string(m)) < 0 {
		_, err := ParseMode(string(m))
		return err
	}
	return s.SetPolicy(ctx, Full(m))
}

// SetPolicy makes p the table's policy for every process: it writes the
// Redis key, which other processes read within their PollInterval, and
// applies p here at once (an Override still pins this process's mode).
// When the write fails the local policy is left as it was, so that this
// process does not part from the others: use Override to pin a mode
// anyway. p must be valid (see ParsePolicy); nothing is written otherwise.
// A switch without Redis returns ErrNoRedis.
//
// To roll readthrough out step by step from old, set it at a few percent,
// watch the metrics, and raise it; a rollback is Set(ctx, ModeOld), for
// every key at once.
func (s *Switch) SetPolicy(ctx context.Context, p Policy) error {
	st, err := stateOf(p)
	if err != nil {
		return fmt.Errorf("fallback: set policy of %s: %w", s.table, err)
	}
	if s.rdb == nil {
		return fmt.Errorf("%w: cannot set the mode of %s (use Override for a local switch)", ErrNoRedis, s.table)
	}
	p = st.policy()
	if err := s.rdb.Set(ctx, s.key, p.String(), 0).Err(); err != nil {
		return fmt.Errorf("fallback: set mode of %s to %s: %w", s.table, p, err)
	}
	s.mu.Lock()
	s.sets++
	s.known = st
	from, to := s.publishLocked()
	s.mu.Unlock()
	s.logChange(ctx, from, to, "set")
	return nil
}

// Refresh reads the table's policy from Redis once and applies it (an
// Override still pins this process's mode). An absent key means Default.
// When Redis cannot be read, or the key holds something that is not a
// policy (ErrInvalidMode), the last known policy stays in force and the error is
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

	st := s.def
	v, err := s.rdb.Get(ctx, s.key).Result()
	switch {
	case errors.Is(err, redis.Nil): // no key: Default
	case err != nil:
		return fmt.Errorf("fallback: read mode of %s from Redis key %s: %w", s.table, s.key, err)
	default:
		p, err := ParsePolicy(v)
		if err != nil {
			return fmt.Errorf("%w in Redis key %s; the last known mode stays in force", err, s.key)
		}
		st, _ = stateOf(p)
	}

	s.mu.Lock()
	if s.sets != sets {
		// A Set of this process ran while the key was read: what was read
		// may predate it, and the Set's mode is at least as new.
		s.mu.Unlock()
		return nil
	}
	s.known = st
	from, to := s.publishLocked()
	s.mu.Unlock()
	s.logChange(ctx, from, to, "redis")
	return nil
}

// Override pins this process's mode to m for every key, whatever Redis
// says, until ClearOverride: for tests, and for emergencies when Redis
// cannot be reached. Refresh and Set go on recording the policy from Redis
// meanwhile. m must be valid (see ParseMode): Override panics otherwise.
func (s *Switch) Override(m Mode) {
	i := modeIndex(string(m))
	if i < 0 {
		panic(fmt.Sprintf("fallback: Override(%s): %s", quote(string(m)), validModes))
	}
	s.mu.Lock()
	s.override = fullState(i)
	from, to := s.publishLocked()
	s.mu.Unlock()
	s.logChange(context.Background(), from, to, "override")
}

// ClearOverride ends an Override: the mode is again the one last known from
// Redis (Default if none was read yet).
func (s *Switch) ClearOverride() {
	s.mu.Lock()
	s.override = noOverride
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
				"table", s.table, "mode", s.Policy(), "failed_polls", failed, "error", err)
		case failed > 0:
			s.log.InfoContext(ctx, "lazymigrate: read mode readable again",
				"table", s.table, "mode", s.Policy(), "failed_polls", failed)
			failed = 0
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// publishLocked makes the effective policy (override, else known) the one
// ModeOf follows and the gauges show, and returns the previous and the new
// one. s.mu must be held, so that changes reach cur and the gauges in the
// order they were made.
func (s *Switch) publishLocked() (from, to Policy) {
	st := s.known
	if s.override != noOverride {
		st = s.override
	}
	prev := state(s.cur.Load())
	if prev != st {
		s.cur.Store(uint32(st))
		s.setGauges(st)
	}
	return prev.policy(), st.policy()
}

// setGauges shows the share of keys each mode serves under st.
func (s *Switch) setGauges(st state) {
	share := float64(st.basisPoints()) / rolloutBuckets
	for i, g := range s.gauges {
		switch i {
		case st.index():
			g.Set(share)
		case st.index() - 1:
			g.Set(1 - share)
		default:
			g.Set(0)
		}
	}
}

// state is a Policy packed into one atomic word: the mode's index in modes
// in the low two bits, the percentage in hundredths above them.
type state uint32

// noOverride is no valid state: every valid one has a mode index below 3.
const noOverride state = 3

func fullState(i int) state { return state(i) | rolloutBuckets<<2 }

// stateOf checks p and packs it.
func stateOf(p Policy) (state, error) {
	bp, err := p.basisPoints()
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrInvalidMode, err)
	}
	return state(modeIndex(string(p.Mode))) | state(bp)<<2, nil
}

func (st state) index() int          { return int(st & 3) }
func (st state) basisPoints() uint32 { return uint32(st >> 2) }
func (st state) mode() Mode          { return modes[st.index()] }

func (st state) policy() Policy {
	return Policy{Mode: st.mode(), Percent: float64(st.basisPoints()) / 100}
}

func (s *Switch) logChange(ctx context.Context, from, to Policy, reason string) {
	if from != to {
		s.log.InfoContext(ctx, "lazymigrate: read mode changed",
			"table", s.table, "from", from, "to", to, "reason", reason)
	}
}
