package main

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// rateWindow is the span the status page's rates are measured over.
const rateWindow = 10 * time.Second

// counters are the service's own counters at one moment: the numbers the
// status page turns into rates.
type counters struct {
	at                  time.Time
	readsNew, readsOld  float64 // GET /accounts/{id} answered by each side
	scheduled, promoted float64 // keys enqueued for promotion; keys copied by this process's worker
}

// rates samples the service's counters once a second and keeps a minute of
// samples, so that the status page can tell rates over a window without
// keeping state in the browser.
type rates struct {
	gatherer prometheus.Gatherer
	route    string // the httpmw route label of GET /accounts/{id}

	mu      sync.Mutex
	samples []counters // oldest first
}

func newRates(g prometheus.Gatherer, route string) *rates {
	return &rates{gatherer: g, route: route}
}

// run samples every second until ctx ends.
func (r *rates) run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		r.sample()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sample reads the counters now. The gatherer holds only in-process
// counters (the tracker's gauge, which counts in Redis, is registered
// elsewhere), so this costs no I/O.
func (r *rates) sample() {
	mfs, err := r.gatherer.Gather()
	if err != nil {
		return // a partial gather would show false rates; skip this second
	}
	c := counters{at: time.Now()}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "lazymigrate_http_requests_total":
			for _, m := range mf.GetMetric() {
				if label(m, "route") != r.route {
					continue
				}
				switch label(m, "source") {
				case "new":
					c.readsNew += m.GetCounter().GetValue()
				case "old":
					c.readsOld += m.GetCounter().GetValue()
				}
			}
		case "lazymigrate_promotions_total":
			for _, m := range mf.GetMetric() {
				if label(m, "table") != table {
					continue
				}
				switch label(m, "outcome") {
				case "enqueued":
					c.scheduled += m.GetCounter().GetValue()
				case "copied":
					c.promoted += m.GetCounter().GetValue()
				}
			}
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.samples = append(r.samples, c)
	if len(r.samples) > 60 {
		r.samples = r.samples[len(r.samples)-60:]
	}
}

func label(m *dto.Metric, name string) string {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name {
			return lp.GetValue()
		}
	}
	return ""
}

// over returns the newest sample and the oldest one within window of it;
// ok is false until two samples are that far apart, at least a second.
func (r *rates) over(window time.Duration) (from, to counters, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.samples) < 2 {
		return counters{}, counters{}, false
	}
	to = r.samples[len(r.samples)-1]
	for _, s := range r.samples {
		if to.at.Sub(s.at) <= window {
			from = s
			break
		}
	}
	return from, to, to.at.Sub(from.at) >= time.Second
}
