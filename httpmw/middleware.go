package httpmw

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"reflect"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazymigrate/lazymigrate/fallback"
	"github.com/lazymigrate/lazymigrate/internal/keys"
	"github.com/lazymigrate/lazymigrate/promote"
)

// Errors the middleware passes to Config.OnError. Test for them with
// errors.Is.
var (
	// ErrInvalidKey: the request names no valid key (400). KeyFuncs wrap it
	// to say so. It is the same error as lazy.ErrInvalidKey and
	// tracker.ErrInvalidKey.
	ErrInvalidKey = keys.ErrInvalid
	// ErrOldUnavailable: NEW lacks the key, it is not settled, and OLD
	// failed, so whether it exists is unknown (503). It is the same error as
	// lazy.ErrOldUnavailable.
	ErrOldUnavailable = promote.ErrOldUnavailable
	// ErrNewUnavailable: NEW lacks the key and its tombstone could not be
	// read (503). It is the same error as lazy.ErrNewUnavailable.
	ErrNewUnavailable = promote.ErrNewUnavailable
)

// Scheduler schedules promotion of keys without blocking.
// *promote.Enqueuer implements it.
type Scheduler interface {
	Schedule(keys ...int64) int
}

var _ Scheduler = (*promote.Enqueuer)(nil)

// ModeSource says which database serves reads of each key now.
// *fallback.Switch implements it.
type ModeSource interface {
	ModeOf(key int64) fallback.Mode
}

var _ ModeSource = (*fallback.Switch)(nil)

// Config configures a Middleware.
type Config struct {
	// Key extracts the key of the record a GET or HEAD request reads, e.g.
	// PathKey("id"). Required.
	Key KeyFunc
	// Tracker says whether a key NEW answered 404 for is settled, in which
	// case OLD is not asked (NEW is asked once more, since the key's
	// promotion may have committed in between). Usually the table's
	// *tracker.Tracker. When it fails or is slower than TrackerTimeout the
	// key counts as unsettled. Defaults to none: OLD is asked for every key
	// NEW lacks.
	Tracker Tracker
	// Tombstones says whether a key NEW answered 404 for was deleted through
	// lazymigrate, in which case the 404 stands whatever OLD holds and
	// whatever Redis has lost: see NewTombstones. When it fails, the
	// request is answered 503. Required, unless NoTombstones is set.
	Tombstones TombstoneChecker
	// NoTombstones runs without Tombstones: the tracker alone then guards
	// deleted keys, and a key deleted through lazymigrate can be served
	// from OLD again while its delete has not reached OLD (mirroring off or
	// behind) and Redis has lost its bit. For handlers over data that is
	// never deleted.
	NoTombstones bool
	// Scheduler receives the keys OLD served (2xx, or 304), for promotion. Usually
	// the table's *promote.Enqueuer. Defaults to none: nothing is promoted
	// by reads.
	Scheduler Scheduler
	// Mode switches reads between OLD only (rollback), NEW with fallback to
	// OLD (readthrough) and NEW only, for every key or, during a rollout,
	// for a share of them. Usually the table's *fallback.Switch. Defaults
	// to readthrough, always.
	Mode ModeSource
	// MaxBuffer is the most bytes of a 404 response from NEW held back
	// while the middleware decides whether OLD answers instead. A larger
	// 404 goes out as NEW wrote it, without asking OLD, and is counted in
	// lazymigrate_http_passthroughs_total. Other responses are never
	// buffered. Defaults to 64 KiB.
	MaxBuffer int
	// TrackerTimeout is how long a read waits for the tracker. Past it, or
	// when the tracker fails, the read goes on without it, and the tracker
	// is not asked again for a second. Defaults to 50ms.
	TrackerTimeout time.Duration
	// OnError writes the middleware's own error responses: 400 (err wraps
	// ErrInvalidKey), 500 (Key failed otherwise) and 503 (err wraps
	// ErrOldUnavailable or ErrNewUnavailable). It may set headers and must
	// write the status it is given. Defaults to a JSON body
	// {"error": "<message>"}.
	OnError func(w http.ResponseWriter, r *http.Request, status int, err error)
	// Logger receives tracker failures and Key's configuration errors.
	// Defaults to discarding.
	Logger *slog.Logger
	// Registerer receives lazymigrate_http_requests_total,
	// lazymigrate_http_request_duration_seconds,
	// lazymigrate_http_fallbacks_total, lazymigrate_http_passthroughs_total
	// and lazymigrate_http_tracker_errors_total. Defaults to none.
	Registerer prometheus.Registerer
}

// Middleware reads through from NEW to OLD at the HTTP layer for the
// handlers it wraps: one table's GET routes. Safe for concurrent use.
type Middleware struct {
	old, new any
	cfg      Config
	log      *slog.Logger
	met      *vecs

	trackerDownUntil atomic.Int64 // unix nanos
}

// New returns a Middleware whose handlers read oldDB and newDB, the handles
// they get from DB: pools, repositories, clients, of any type as long as both
// sides have the same. cfg.Key is required.
func New[D any](oldDB, newDB D, cfg *Config) (*Middleware, error) {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if isNil(oldDB) || isNil(newDB) {
		return nil, errors.New("httpmw: New needs both databases")
	}
	if c.Key == nil {
		return nil, errors.New("httpmw: Config.Key is required")
	}
	if c.Tombstones == nil && !c.NoTombstones {
		return nil, errors.New("httpmw: Config.Tombstones is required (see NewTombstones): without it a deleted key can be served from OLD again; set NoTombstones to run without")
	}
	c.MaxBuffer = cmp.Or(c.MaxBuffer, 64<<10)
	c.TrackerTimeout = cmp.Or(c.TrackerTimeout, 50*time.Millisecond)
	switch {
	case c.MaxBuffer < 0:
		return nil, fmt.Errorf("httpmw: Config.MaxBuffer must not be negative, got %d", c.MaxBuffer)
	case c.TrackerTimeout < 0:
		return nil, fmt.Errorf("httpmw: Config.TrackerTimeout must not be negative, got %s", c.TrackerTimeout)
	}
	if c.OnError == nil {
		c.OnError = WriteJSONError
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return &Middleware{old: oldDB, new: newDB, cfg: c, log: c.Logger, met: newVecs(c.Registerer)}, nil
}

func isNil(v any) bool {
	if v == nil {
		return true
	}
	switch rv := reflect.ValueOf(v); rv.Kind() {
	case reflect.Chan, reflect.Func, reflect.Interface, reflect.Map, reflect.Pointer, reflect.Slice:
		return rv.IsNil()
	}
	return false
}

// Wrap returns next with read-through, labelling its metrics with the
// pattern http.ServeMux routed the request by (r.Pattern). It has the usual
// middleware shape, func(http.Handler) http.Handler:
//
//	mux.Handle("GET /accounts/{id}", mw.Wrap(getAccount))
//
// Wrap the handler the mux routes to, not the mux: the key is read before
// the handler runs. With a router that does not set r.Pattern, use Route.
func (m *Middleware) Wrap(next http.Handler) http.Handler {
	return &handler{m: m, next: next}
}

// Route is Wrap with the route label name, for routers other than
// http.ServeMux. Names must be few (one per route), never taken from the
// request path.
func (m *Middleware) Route(name string) func(http.Handler) http.Handler {
	if name == "" {
		name = unnamedRoute
	}
	rm := m.met.route(name)
	return func(next http.Handler) http.Handler {
		return &handler{m: m, next: next, route: rm}
	}
}

type handler struct {
	m     *Middleware
	next  http.Handler
	route *routeMetrics // nil: by r.Pattern
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		// Writes, and anything else, run against NEW, the system of record,
		// untouched.
		h.next.ServeHTTP(w, r.WithContext(&routing{Context: r.Context(), db: h.m.new, source: SourceNew}))
		return
	}
	rm := h.route
	if rm == nil {
		rm = h.m.met.route(cmp.Or(r.Pattern, unnamedRoute))
	}
	start := time.Now()
	res := result{source: sourceNone, outcome: outcomePanic}
	// No recover: a panic goes on to net/http (or whatever recovers it)
	// untouched, and is only counted here on its way.
	defer func() { rm.record(res.source, res.outcome, start) }()
	h.m.serve(w, r, h.next, rm, &res)
}

// result is how a read ended, for the metrics. serve fills in source as it
// runs each attempt, so that a panic is counted against the side whose
// handler panicked.
type result struct {
	source  Source
	outcome string
}

// attempt is one run of the handler: its context and its writer, allocated
// together.
type attempt struct {
	ctx routing
	w   writer
}

func (m *Middleware) run(w http.ResponseWriter, r *http.Request, next http.Handler, src Source, p policy, key int64, res *result) *writer {
	a := &attempt{
		ctx: routing{Context: r.Context(), source: src, key: key, hasKey: true},
		w:   writer{w: w, policy: p, source: src, limit: m.cfg.MaxBuffer},
	}
	a.ctx.db = m.new
	if src == SourceOld {
		a.ctx.db = m.old
	}
	res.source = src
	next.ServeHTTP(&a.w, r.WithContext(&a.ctx))
	a.w.finish()
	return &a.w
}

func (m *Middleware) serve(w http.ResponseWriter, r *http.Request, next http.Handler, rm *routeMetrics, res *result) {
	key, err := checkKey(m.cfg.Key(r))
	if err != nil {
		status, outcome := http.StatusBadRequest, outcomeBadKey
		if !errors.Is(err, ErrInvalidKey) {
			status, outcome = http.StatusInternalServerError, outcomeKeyError
			m.log.ErrorContext(r.Context(), "lazymigrate: Config.Key failed", "route", r.Pattern, "error", err)
		}
		m.cfg.OnError(w, r, status, err)
		res.outcome = outcome
		return
	}

	mode := fallback.ModeReadthrough
	if m.cfg.Mode != nil {
		mode = m.cfg.Mode.ModeOf(key)
	}
	switch mode {
	case fallback.ModeOld:
		res.outcome = outcomeOf(m.run(w, r, next, SourceOld, final, key, res).status)
		return
	case fallback.ModeNew:
		res.outcome = outcomeOf(m.run(w, r, next, SourceNew, final, key, res).status)
		return
	}

	// The handlers write into the client's header map; keep what was there
	// before them, to put back when an attempt is discarded.
	before := snapshot(w.Header())
	nw := m.run(w, r, next, SourceNew, tryNew, key, res)
	if nw.spilt {
		rm.spills.Inc()
	}
	if nw.state != held {
		res.outcome = outcomeOf(nw.status)
		return
	}

	// NEW answered 404.
	v, err := m.checkMiss(r.Context(), key)
	switch {
	case err != nil && r.Context().Err() != nil:
		// The client went away while NEW was asked: not an outage.
		restore(w.Header(), before)
		m.cfg.OnError(w, r, http.StatusServiceUnavailable, fmt.Errorf("httpmw: key %d: %w", key, r.Context().Err()))
		rm.fallbacks.WithLabelValues(fallbackCanceled).Inc()
		res.source, res.outcome = sourceNone, outcomeCanceled
		return
	case err != nil:
		restore(w.Header(), before)
		m.cfg.OnError(w, r, http.StatusServiceUnavailable, fmt.Errorf("httpmw: key %d: %w", key, err))
		rm.fallbacks.WithLabelValues(fallbackError).Inc()
		res.source, res.outcome = sourceNone, outcomeUnavailable
		return
	case v == tombstoned:
		_ = nw.release()
		rm.fallbacks.WithLabelValues(fallbackTombstoned).Inc()
		res.outcome = outcomeNotFound
		return
	case v == settled:
		restore(w.Header(), before)
		rm.fallbacks.WithLabelValues(fallbackSettled).Inc()
		res.outcome = outcomeOf(m.run(w, r, next, SourceNew, final, key, res).status)
		return
	}

	restore(w.Header(), before)
	ow := m.run(w, r, next, SourceOld, tryOld, key, res)
	switch {
	case ow.state == dropped:
		restore(w.Header(), before)
		if r.Context().Err() != nil {
			m.cfg.OnError(w, r, http.StatusServiceUnavailable, fmt.Errorf("httpmw: key %d: %w", key, r.Context().Err()))
			rm.fallbacks.WithLabelValues(fallbackCanceled).Inc()
			res.outcome = outcomeCanceled
			return
		}
		m.cfg.OnError(w, r, http.StatusServiceUnavailable,
			fmt.Errorf("%w: key %d: OLD answered %d", ErrOldUnavailable, key, ow.status))
		rm.fallbacks.WithLabelValues(fallbackUnavailable).Inc()
		res.outcome = outcomeUnavailable
	case ow.status >= 200 && ow.status < 300, ow.status == http.StatusNotModified:
		// OLD has the record: a 304 to a conditional GET says so as well.
		if m.cfg.Scheduler != nil {
			m.cfg.Scheduler.Schedule(key)
		}
		rm.fallbacks.WithLabelValues(fallbackFound).Inc()
		res.outcome = outcomeOK
	case ow.status == http.StatusNotFound:
		rm.fallbacks.WithLabelValues(fallbackNotFound).Inc()
		res.outcome = outcomeNotFound
	default:
		rm.fallbacks.WithLabelValues(fallbackOther).Inc()
		res.outcome = outcomeOf(ow.status)
	}
}

// snapshot copies h, or returns nil when it is empty (the usual case, which
// then costs nothing).
func snapshot(h http.Header) http.Header {
	if len(h) == 0 {
		return nil
	}
	return h.Clone()
}

// restore makes h hold what before held.
func restore(h, before http.Header) {
	clear(h)
	for k, v := range before {
		h[k] = slices.Clone(v)
	}
}

// WriteJSONError is the default Config.OnError: it answers status with the
// JSON body {"error": "<message>"}. For a 4xx the message is err's, which
// tells the client what was wrong with its request. For a 5xx, whose error
// may carry database details, it is a fixed text naming the failure (OLD
// or NEW unavailable); log err itself from your own OnError, which may then
// call this one.
func WriteJSONError(w http.ResponseWriter, r *http.Request, status int, err error) {
	msg := err.Error()
	if status >= 500 {
		switch {
		case errors.Is(err, ErrOldUnavailable):
			msg = "OLD database unavailable: whether the record exists is unknown; retry later"
		case errors.Is(err, ErrNewUnavailable):
			msg = "NEW database unavailable: whether the record exists is unknown; retry later"
		default:
			msg = http.StatusText(status)
		}
	}
	h := w.Header()
	h.Del("Content-Length")
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // served as JSON with nosniff: ">=" may stay readable
	_ = enc.Encode(struct {
		Error string `json:"error"`
	}{msg})
}
