package httpmw

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazymigrate/lazymigrate/internal/metrics"
)

// Outcomes of a read, the outcome label of lazymigrate_http_requests_total.
const (
	outcomeOK          = "ok"           // a status below 400
	outcomeNotFound    = "not_found"    // 404
	outcomeClientError = "client_error" // another 4xx from the handler
	outcomeServerError = "server_error" // a 5xx from the handler
	outcomeBadKey      = "bad_key"      // 400 from the middleware: Config.Key found no valid key
	outcomeKeyError    = "key_error"    // 500 from the middleware: Config.Key failed
	outcomeUnavailable = "unavailable"  // 503 from the middleware: OLD failed, or NEW's tombstones could not be read
	outcomeCanceled    = "canceled"     // the client went away while OLD was asked
	outcomePanic       = "panic"        // the handler panicked; the panic went on to net/http
)

// Outcomes of a fallback, the outcome label of
// lazymigrate_http_fallbacks_total.
const (
	fallbackFound       = "found"           // OLD answered 2xx or 304; the key was scheduled for promotion
	fallbackNotFound    = "not_found"       // OLD answered 404 too
	fallbackOther       = "other"           // OLD answered another status below 500
	fallbackUnavailable = "old_unavailable" // OLD answered 5xx: 503
	fallbackSettled     = "settled"         // the tracker's bit: NEW asked again, OLD not asked
	fallbackTombstoned  = "tombstoned"      // deleted: NEW's 404 stands, OLD not asked
	fallbackError       = "error"           // the tombstone could not be read: 503
	fallbackCanceled    = "canceled"        // the client went away
)

// sourceNone labels responses the middleware wrote itself.
const sourceNone Source = "none"

// unnamedRoute labels requests whose route has no name: wrapped with Wrap
// but not routed by an http.ServeMux.
const unnamedRoute = "unnamed"

// vecs are the middleware's collectors, shared by every Middleware on one
// Registerer.
type vecs struct {
	requests      *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	fallbacks     *prometheus.CounterVec
	spills        *prometheus.CounterVec
	trackerErrors prometheus.Counter

	routes sync.Map // route name -> *routeMetrics
}

func newVecs(reg prometheus.Registerer) *vecs {
	return &vecs{
		requests: metrics.CounterVec(reg, "http_requests_total",
			"GET and HEAD requests through httpmw, by route, the side that answered or was being asked (new, old, or none for the middleware's own errors before any fallback to OLD) "+
				"and outcome: ok, not_found, client_error, server_error, bad_key, key_error, unavailable, canceled or panic.",
			"route", "source", "outcome"),
		duration: metrics.HistogramVec(reg, "http_request_duration_seconds",
			"Latency of GET and HEAD requests through httpmw, both attempts included, by route and the side that answered.",
			metrics.LatencyBuckets, "route", "source"),
		fallbacks: metrics.CounterVec(reg, "http_fallbacks_total",
			"GET and HEAD requests NEW answered 404 for, by route and what followed: found (OLD served it; promotion scheduled), "+
				"not_found, other, old_unavailable, settled, tombstoned, error or canceled.",
			"route", "outcome"),
		spills: metrics.CounterVec(reg, "http_passthroughs_total",
			"404 responses from NEW larger than MaxBuffer, sent as they were without asking OLD.",
			"route"),
		trackerErrors: metrics.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metrics.Namespace,
			Name:      "http_tracker_errors_total",
			Help:      "Tracker queries of httpmw that failed or timed out; the reads went on as if their keys were unsettled.",
		})),
	}
}

// routeMetrics are the series of one route, resolved once.
type routeMetrics struct {
	requests  *prometheus.CounterVec // curried with the route
	fallbacks *prometheus.CounterVec
	spills    prometheus.Counter
	hits      prometheus.Counter // source new, outcome ok: the hot series
	duration  [3]prometheus.Observer
}

func sourceIndex(s Source) int {
	switch s {
	case SourceNew:
		return 1
	case SourceOld:
		return 2
	}
	return 0
}

func (v *vecs) route(name string) *routeMetrics {
	if rm, ok := v.routes.Load(name); ok {
		return rm.(*routeMetrics)
	}
	l := prometheus.Labels{"route": name}
	rm := &routeMetrics{
		requests:  v.requests.MustCurryWith(l),
		fallbacks: v.fallbacks.MustCurryWith(l),
		spills:    v.spills.With(l),
	}
	rm.hits = rm.requests.WithLabelValues(string(SourceNew), outcomeOK)
	d := v.duration.MustCurryWith(l)
	for _, s := range []Source{sourceNone, SourceNew, SourceOld} {
		rm.duration[sourceIndex(s)] = d.WithLabelValues(string(s))
	}
	actual, _ := v.routes.LoadOrStore(name, rm)
	return actual.(*routeMetrics)
}

func (rm *routeMetrics) record(src Source, outcome string, start time.Time) {
	if src == SourceNew && outcome == outcomeOK {
		rm.hits.Inc()
	} else {
		rm.requests.WithLabelValues(string(src), outcome).Inc()
	}
	rm.duration[sourceIndex(src)].Observe(time.Since(start).Seconds())
}

// outcomeOf classifies a handler's status.
func outcomeOf(status int) string {
	switch {
	case status == 0: // hijacked before answering
		return outcomeOK
	case status == 404:
		return outcomeNotFound
	case status >= 500:
		return outcomeServerError
	case status >= 400:
		return outcomeClientError
	}
	return outcomeOK
}
