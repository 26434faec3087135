package promote

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazymigrate/lazymigrate/internal/metrics"
)

// SettledChecker reports which keys are already settled. *tracker.Tracker
// implements it.
type SettledChecker interface {
	Settled(ctx context.Context, keys []int64) ([]bool, error)
}

// HandlerConfig configures a Handler.
type HandlerConfig struct {
	// Settled, when set, is asked which keys of a task are already settled;
	// those are skipped without touching Postgres. Usually the same tracker
	// as the copiers'. Defaults to none: every key is copied (idempotently).
	Settled map[string]SettledChecker
	// Logger defaults to discarding.
	Logger *slog.Logger
	// Registerer receives lazymigrate_promotions_total and
	// lazymigrate_promote_tasks_total. Defaults to none.
	Registerer prometheus.Registerer
}

// Handler runs promotion tasks: register it on an asynq.ServeMux for
// TaskType. It serves every table it has a Copier for.
type Handler struct {
	copiers  map[string]*Copier
	settled  map[string]SettledChecker
	tasks    *prometheus.CounterVec
	outcomes *prometheus.CounterVec
	log      *slog.Logger
}

var _ asynq.Handler = (*Handler)(nil)

// NewHandler returns a Handler for the tables of copiers.
func NewHandler(copiers []*Copier, cfg *HandlerConfig) (*Handler, error) {
	var c HandlerConfig
	if cfg != nil {
		c = *cfg
	}
	if len(copiers) == 0 {
		return nil, errors.New("promote: NewHandler needs at least one Copier")
	}
	h := &Handler{copiers: map[string]*Copier{}, settled: c.Settled, log: c.Logger}
	for _, cp := range copiers {
		if _, dup := h.copiers[cp.Table()]; dup {
			return nil, fmt.Errorf("promote: NewHandler: two copiers for table %q", cp.Table())
		}
		h.copiers[cp.Table()] = cp
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	h.tasks = metrics.CounterVec(c.Registerer, "promote_tasks_total",
		"Promotion tasks handled, by outcome: ok, error (retried by asynq) or bad_payload (archived at once).",
		"table", "outcome")
	h.outcomes = metrics.CounterVec(c.Registerer, "promotions_total",
		"Keys through the promotion pipeline, by outcome: enqueued, deduplicated or dropped when scheduled; copied, present, tombstoned, absent or settled when handled.",
		"table", "outcome")
	return h, nil
}

// ProcessTask promotes the keys a task carries. A malformed payload returns
// an error wrapping ErrBadPayload and asynq.SkipRetry; a database or Redis
// failure returns an error asynq retries, which is safe: the copy is
// idempotent.
func (h *Handler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	p, err := DecodePayload(t.Payload())
	if err != nil {
		h.tasks.WithLabelValues("unknown", "bad_payload").Inc()
		h.log.ErrorContext(ctx, "lazymigrate: promotion task discarded", "error", err)
		return err
	}
	cp, ok := h.copiers[p.Table]
	if !ok {
		// Not a bad payload: a worker deployed without this table's copier
		// must not archive the work of the workers that have it.
		h.tasks.WithLabelValues(p.Table, "error").Inc()
		return fmt.Errorf("promote: no copier for table %q on this worker", p.Table)
	}
	res, skipped, err := h.promote(ctx, cp, p.Keys)
	if err != nil {
		h.tasks.WithLabelValues(p.Table, "error").Inc()
		return err
	}
	out := h.outcomes.MustCurryWith(prometheus.Labels{"table": p.Table})
	out.WithLabelValues("settled").Add(float64(skipped))
	out.WithLabelValues("copied").Add(float64(res.Copied))
	out.WithLabelValues("present").Add(float64(res.Present))
	out.WithLabelValues("tombstoned").Add(float64(res.Tombstoned))
	out.WithLabelValues("absent").Add(float64(res.Absent))
	h.tasks.WithLabelValues(p.Table, "ok").Inc()
	return nil
}

// promote copies the keys that are not settled yet; skipped counts the rest.
func (h *Handler) promote(ctx context.Context, cp *Copier, ks []int64) (res Result, skipped int, err error) {
	if sc := h.settled[cp.Table()]; sc != nil {
		done, err := sc.Settled(ctx, ks)
		if err != nil {
			// The tracker only saves work; without it the copy is still safe.
			h.log.WarnContext(ctx, "lazymigrate: tracker unavailable; copying every key of the task",
				"table", cp.Table(), "error", err)
		} else {
			todo := ks[:0:0]
			for i, k := range ks {
				if !done[i] {
					todo = append(todo, k)
				}
			}
			skipped, ks = len(ks)-len(todo), todo
		}
	}
	res, err = cp.CopyKeys(ctx, ks)
	return res, skipped, err
}
