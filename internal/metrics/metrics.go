// Package metrics registers lazymigrate's Prometheus collectors on a
// caller-supplied Registerer, sharing one collector between every component
// that asks for the same metric.
package metrics

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Namespace prefixes every lazymigrate metric name.
const Namespace = "lazymigrate"

// Register registers c on reg and returns the collector to use: c itself, or
// the identical collector registered earlier (two repositories on one
// registry share their vectors). A nil reg leaves c unregistered, which keeps
// it working but invisible.
func Register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		// A conflicting definition is a programming error in lazymigrate,
		// not something a caller can handle.
		panic(err)
	}
	return c
}

// CounterVec registers (or reuses) a counter vector named lazymigrate_<name>.
func CounterVec(reg prometheus.Registerer, name, help string, labels ...string) *prometheus.CounterVec {
	return Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: name, Help: help,
	}, labels))
}

// HistogramVec registers (or reuses) a histogram vector named
// lazymigrate_<name> with the given buckets.
func HistogramVec(reg prometheus.Registerer, name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	return Register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Name: name, Help: help, Buckets: buckets,
	}, labels))
}

// LatencyBuckets suit database and Redis calls: 50µs to 10s.
var LatencyBuckets = prometheus.ExponentialBucketsRange(50e-6, 10, 16)

// GaugeVec registers (or reuses) a gauge vector named lazymigrate_<name>.
func GaugeVec(reg prometheus.Registerer, name, help string, labels ...string) *prometheus.GaugeVec {
	return Register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace, Name: name, Help: help,
	}, labels))
}
