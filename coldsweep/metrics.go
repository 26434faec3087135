package coldsweep

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazymigrate/lazymigrate/internal/metrics"
)

// sweepMetrics are a sweep's collectors, curried with its table.
type sweepMetrics struct {
	rows, chunks     *prometheus.CounterVec // by outcome
	keys, retries    prometheus.Counter
	chunkSeconds     prometheus.Observer
	throttledSeconds *prometheus.CounterVec // by reason
	throttled        prometheus.Gauge
	lag, latency     *prometheus.GaugeVec // by side
	progress         prometheus.Gauge
	chunksTotal      prometheus.Gauge
	chunksDone       prometheus.Gauge
}

func newSweepMetrics(reg prometheus.Registerer, table string) *sweepMetrics {
	l := prometheus.Labels{"table": table}
	return &sweepMetrics{
		rows: metrics.CounterVec(reg, "sweep_rows_total",
			"Keys of swept chunks handled by the copier, by outcome (copied, present, tombstoned, absent).", "table", "outcome").MustCurryWith(l),
		chunks: metrics.CounterVec(reg, "sweep_chunks_total",
			"Chunks finished, by outcome: settled (nothing to do), keys (the unsettled keys copied), range (the whole range copied), failed (NEW refused rows).", "table", "outcome").MustCurryWith(l),
		keys: metrics.CounterVec(reg, "sweep_keys_total",
			"Keys of the key space covered by finished chunks.", "table").With(l),
		retries: metrics.CounterVec(reg, "sweep_retries_total",
			"Chunk attempts retried because a database or Redis was unavailable.", "table").With(l),
		chunkSeconds: metrics.HistogramVec(reg, "sweep_chunk_duration_seconds",
			"Time to sweep one chunk, tracker calls included.", metrics.LatencyBuckets, "table").With(l),
		throttledSeconds: metrics.CounterVec(reg, "sweep_throttled_seconds_total",
			"Time workers spent held back, by reason (paused, latency, lag).", "table", "reason").MustCurryWith(l),
		throttled: metrics.GaugeVec(reg, "sweep_throttled",
			"1 while the sweep is held back, else 0.", "table").With(l),
		lag: metrics.GaugeVec(reg, "sweep_replication_lag_seconds",
			"Replication lag last measured by the throttle, by side (old, new).", "table", "side").MustCurryWith(l),
		latency: metrics.GaugeVec(reg, "sweep_probe_latency_seconds",
			"Round trip of the throttle's probe query, by side (old, new).", "table", "side").MustCurryWith(l),
		progress: metrics.GaugeVec(reg, "sweep_progress_ratio",
			"Share of the sweep's chunks done, from 0 to 1.", "table").With(l),
		chunksTotal: metrics.GaugeVec(reg, "sweep_chunks",
			"Chunks in the sweep (of this process's shard).", "table").With(l),
		chunksDone: metrics.GaugeVec(reg, "sweep_chunks_done",
			"Chunks of the sweep finished.", "table").With(l),
	}
}
