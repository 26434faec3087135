package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/push"
	dto "github.com/prometheus/client_model/go"
)

// pushJob is the Pushgateway job the sweeper pushes under.
const pushJob = "lazymigrate_sweeper"

// serveMetrics serves reg's metrics, and the process's, at /metrics on
// addr until stop is called.
func (c *cli) serveMetrics(addr string, reg *prometheus.Registry) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, flagError("metrics-addr", addr, "%v", err)
	}
	runtime := prometheus.NewRegistry()
	runtime.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(prometheus.Gatherers{reg, runtime}, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			c.log.Error("metrics server stopped", "err", err)
		}
	}()
	c.log.Info("serving metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}, nil
}

// pusher pushes a registry to a Pushgateway every interval and once more
// at the end, as batch jobs do.
type pusher struct {
	c    *cli
	p    *push.Pusher
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// startPusher starts pushing reg under job lazymigrate_sweeper, grouped by
// table and shard, so that each shard of each table's sweep has its own
// group. Pushes add to the group (POST): a metric pushed only on success,
// like the last success time, survives the pushes of later failed runs.
// gateway is the URL --pushgateway checked; its user information, if any,
// is sent as basic auth.
func (c *cli) startPusher(gateway *url.URL, table, shard string, reg prometheus.Gatherer, every time.Duration) *pusher {
	// client_golang's push errors quote the URL it was given: without the
	// user information, the password stays out of the log.
	u := *gateway
	u.User = nil
	// The grouping labels are attached by the Pushgateway; the metrics'
	// own table label would collide with them.
	pp := push.New(u.String(), pushJob).Grouping("table", table).Grouping("shard", shard).
		Gatherer(withoutLabel{reg, "table"})
	if gateway.User != nil {
		pass, _ := gateway.User.Password()
		pp = pp.BasicAuth(gateway.User.Username(), pass)
	}
	p := &pusher{
		c:    c,
		p:    pp,
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	go func() {
		defer close(p.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				p.push(context.Background())
			case <-p.stop:
				return
			}
		}
	}()
	return p
}

func (p *pusher) push(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := p.p.AddContext(ctx); err != nil {
		p.c.log.Warn("cannot push metrics to the Pushgateway", "err", err)
	}
}

// finish stops the periodic pushes and pushes the final state.
func (p *pusher) finish(ctx context.Context) {
	p.once.Do(func() {
		close(p.stop)
		<-p.done
		p.push(ctx)
	})
}

// withoutLabel gathers g's metrics without the label called name.
type withoutLabel struct {
	g    prometheus.Gatherer
	name string
}

func (w withoutLabel) Gather() ([]*dto.MetricFamily, error) {
	mfs, err := w.g.Gather()
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			// A new slice: the gathered metric shares its labels with the
			// collector, which must keep them.
			kept := make([]*dto.LabelPair, 0, len(m.Label))
			for _, l := range m.Label {
				if l.GetName() != w.name {
					kept = append(kept, l)
				}
			}
			m.Label = kept
		}
	}
	if err != nil {
		return mfs, fmt.Errorf("gather metrics: %w", err)
	}
	return mfs, nil
}
