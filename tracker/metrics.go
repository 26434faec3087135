package tracker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// scrapeTimeout bounds the Count behind each scrape, below Prometheus's
// default scrape timeout of 10s.
const scrapeTimeout = 5 * time.Second

// collector exposes a Tracker's metrics. The settled gauge is read from
// Redis at scrape time, so it is right even when other processes mark keys.
type collector struct {
	t       *Tracker
	settled *prometheus.Desc
	marked  prometheus.Counter
}

var _ prometheus.Collector = (*collector)(nil)

func newCollector(t *Tracker) *collector {
	labels := prometheus.Labels{"table": t.table}
	return &collector{
		t: t,
		settled: prometheus.NewDesc("lazymigrate_tracker_settled_keys",
			"Keys whose truth lives in NEW, as recorded in the tracker bitmap.", nil, labels),
		marked: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "lazymigrate_tracker_marked_keys_total",
			Help:        "Keys this process marked as settled that were not settled before (Mark and Rebuild; MarkRange is not counted).",
			ConstLabels: labels,
		}),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.settled
	c.marked.Describe(ch)
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	// When Redis is down the gauge is left out rather than reported as an
	// invalid metric: that would fail the whole scrape (promhttp's default)
	// and hide every other lazymigrate metric exactly when they matter.
	if n, err := c.t.Count(ctx); err == nil {
		ch <- prometheus.MustNewConstMetric(c.settled, prometheus.GaugeValue, float64(n))
	}
	ch <- c.marked
}

// registerMetrics registers t's collector on reg, or only creates its counter
// when reg is nil. Trackers of the same table registered on the same reg
// share the first one's counter instead of failing, so that several parts of
// a program may each build their own Tracker.
func (t *Tracker) registerMetrics(reg prometheus.Registerer) error {
	c := newCollector(t)
	t.marked = c.marked
	if reg == nil {
		return nil
	}
	err := reg.Register(c)
	var dup prometheus.AlreadyRegisteredError
	if errors.As(err, &dup) {
		if existing, ok := dup.ExistingCollector.(*collector); ok {
			t.marked = existing.marked
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("tracker: register metrics of %s: %w", t.table, err)
	}
	return nil
}
