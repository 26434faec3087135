package promote

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazymigrate/lazymigrate/internal/keys"
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
		"Promotion tasks handled, by outcome: ok, error (retried by asynq), rejected (rows NEW refused; archived), bad_payload (archived at once) or closed (the table's migration was closed; nothing to do).",
		"table", "outcome")
	h.outcomes = metrics.CounterVec(c.Registerer, "promotions_total", promotionsHelp,
		"table", "outcome")
	return h, nil
}

// ProcessTask promotes the keys a task carries. A malformed payload returns
// an error wrapping ErrBadPayload and asynq.SkipRetry; a database or Redis
// failure returns an error asynq retries, which is safe: the copy is
// idempotent. Rows NEW rejects (or the Transform fails on) are isolated by
// halving the batch, so one bad row does not hold back the others: the rest
// are copied, and the task fails without retry with an error wrapping
// ErrRowRejected that names the rejected keys.
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
	res, skipped, rejected, err := h.promote(ctx, cp, p.Keys)
	if errors.Is(err, ErrClosed) {
		// Scheduled before the table's migration was closed: NEW holds
		// its whole truth now, and there is nothing left to do.
		h.tasks.WithLabelValues(p.Table, "closed").Inc()
		h.log.InfoContext(ctx, "lazymigrate: promotion task dropped: the table's migration is closed", "table", p.Table, "keys", len(p.Keys))
		return nil
	}
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
	out.WithLabelValues("rejected").Add(float64(len(rejected)))
	if len(rejected) > 0 {
		h.tasks.WithLabelValues(p.Table, "rejected").Inc()
		ks := make([]int64, len(rejected))
		for i, r := range rejected {
			ks[i] = r.key
			h.log.ErrorContext(ctx, "lazymigrate: row rejected by NEW; fix the data or the schema, then the sweeper copies it",
				"table", p.Table, "key", r.key, "error", r.err)
		}
		// asynq keeps the message with the archived task: name a few keys.
		named := ks[:min(len(ks), 20)]
		return fmt.Errorf("promote %s: %d of %d keys rejected, among them %v; first error: %w: %w",
			p.Table, len(ks), len(p.Keys), named, rejected[0].err, asynq.SkipRetry)
	}
	h.tasks.WithLabelValues(p.Table, "ok").Inc()
	return nil
}

type rejection struct {
	key int64
	err error
}

// copyIsolating copies ks; when rows are rejected it halves the batch until
// each rejected key stands alone, and copies the others. A batch that fails
// partway may have committed some of its transactions: the halves then find
// those rows present, which is what makes halving safe. Once budget copies
// are spent, a rejected batch is given up whole.
func copyIsolating(ctx context.Context, cp *Copier, ks []int64, budget *int) (Result, []rejection, error) {
	if *budget <= 0 {
		// Some of these keys may be fine; a later read or the sweeper
		// copies those. They are reported rather than retried for ever.
		err := fmt.Errorf("%w: not isolated: the task's budget of %d copies is spent", ErrRowRejected, isolationBudget)
		rej := make([]rejection, len(ks))
		for i, k := range ks {
			rej[i] = rejection{k, err}
		}
		return Result{}, rej, nil
	}
	*budget--
	res, err := cp.CopyKeys(ctx, ks)
	switch {
	case err == nil:
		return res, nil, nil
	case !errors.Is(err, ErrRowRejected):
		return Result{}, nil, err
	case len(ks) == 1 || *budget < 2:
		rej := make([]rejection, len(ks))
		for i, k := range ks {
			rej[i] = rejection{k, err}
		}
		return Result{Copied: res.Copied}, rej, nil
	}
	mid := len(ks) / 2
	r1, rej1, err := copyIsolating(ctx, cp, ks[:mid], budget)
	if err != nil {
		return Result{}, nil, err
	}
	r2, rej2, err := copyIsolating(ctx, cp, ks[mid:], budget)
	if err != nil {
		return Result{}, nil, err
	}
	return Result{Copied: res.Copied}.Add(r1).Add(r2), append(rej1, rej2...), nil
}

// promote copies the keys that are not settled yet; skipped counts the rest.
func (h *Handler) promote(ctx context.Context, cp *Copier, ks []int64) (res Result, skipped int, rejected []rejection, err error) {
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
	budget := isolationBudget
	res, rejected, err = copyIsolating(ctx, cp, keys.SortedUnique(ks), &budget)
	return res, skipped, rejected, err
}

// isolationBudget caps the copies one task spends isolating rejected rows:
// halving finds a few bad rows in a batch cheaply, but a batch where every
// row is bad (NEW gained a constraint OLD's data breaks) would take twice
// as many copies as keys, past the task's timeout.
const isolationBudget = 64
