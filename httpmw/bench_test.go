package httpmw_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/hibiken/asynq"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lazymigrate/lazymigrate/httpmw"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
	"github.com/lazymigrate/lazymigrate/promote"
	"github.com/lazymigrate/lazymigrate/tracker"
)

// pair times the bare handler and the wrapped one interleaved and reports
// both, the overhead and their ratio.
func pair(b *testing.B, raw, lm func(i int) error) {
	b.Helper()
	rawT, lmT := testenv.Interleave(b, raw, lm)
	b.ReportMetric(float64(rawT.Nanoseconds())/float64(b.N), "raw-ns/op")
	b.ReportMetric(float64(lmT.Nanoseconds())/float64(b.N), "httpmw-ns/op")
	b.ReportMetric(float64(lmT-rawT)/float64(b.N), "overhead-ns/op")
	b.ReportMetric(float64(lmT)/float64(rawT), "ratio")
}

// sink is a reusable ResponseWriter, so that neither side pays for a
// recorder.
type sink struct {
	h      http.Header
	status int
	n      int
}

func (s *sink) Header() http.Header         { return s.h }
func (s *sink) WriteHeader(code int)        { s.status = code }
func (s *sink) Write(p []byte) (int, error) { s.n += len(p); return len(p), nil }

// serve runs h on req and returns the status it answered.
func (s *sink) serve(h http.Handler, req *http.Request) int {
	clear(s.h)
	s.status, s.n = 0, 0
	h.ServeHTTP(s, req)
	if s.status == 0 {
		return http.StatusOK
	}
	return s.status
}

func expect(got, want int) error {
	if got != want {
		return fmt.Errorf("status %d, want %d", got, want)
	}
	return nil
}

const benchRows = 100_000

// writeAccount is the body of the benchmark's handler, bare or wrapped: one
// pgx query and a JSON answer.
func writeAccount(w http.ResponseWriter, r *http.Request, pool *pgxpool.Pool, id int64) {
	var a account
	err := pool.QueryRow(r.Context(), `SELECT id, email, name FROM accounts WHERE id = $1`, id).Scan(&a.ID, &a.Email, &a.Name)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		http.NotFound(w, r)
	case err != nil:
		http.Error(w, "database error", http.StatusInternalServerError)
	default:
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(a)
	}
}

// discard is an asynq client that accepts every task: the miss benchmark
// measures scheduling, not Redis.
type discard struct{}

func (discard) EnqueueContext(context.Context, *asynq.Task, ...asynq.Option) (*asynq.TaskInfo, error) {
	return &asynq.TaskInfo{}, nil
}

// BenchmarkHit compares, in one run, a handler wrapped by the middleware
// with the same handler bare, both routed by an http.ServeMux:
//
//   - Hit: a key in NEW; the handler runs one pgx query. The target is a
//     ratio of at most 1.05.
//   - HitNoDB: the handler writes a constant: the middleware's own cost in
//     nanoseconds (its ratio means little).
//   - Miss: a key only in OLD, against "query NEW, then query OLD" by hand;
//     the middleware also asks the tracker and schedules the promotion.
func BenchmarkHit(b *testing.B) {
	ctx := context.Background()
	p := testenv.NewPair(b)
	testenv.SeedAccounts(b, p.Old, 1, benchRows+1)
	testenv.SeedAccounts(b, p.New, 1, benchRows/2+1) // keys up to benchRows/2 are migrated
	p.Old.Exec(b, `VACUUM ANALYZE accounts`)
	p.New.Exec(b, `VACUUM ANALYZE accounts`)
	if err := promote.Setup(ctx, p.New.Pool); err != nil {
		b.Fatal(err)
	}
	rdb, prefix := testenv.Redis(b)
	tr, err := tracker.New(rdb, "accounts", &tracker.Config{Prefix: prefix})
	if err != nil {
		b.Fatal(err)
	}
	enq, err := promote.NewEnqueuer(discard{}, "accounts", nil)
	if err != nil {
		b.Fatal(err)
	}
	if err := enq.Start(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(enq.Stop)
	tombs, err := httpmw.NewTombstones(ctx, p.New.Pool, "accounts")
	if err != nil {
		b.Fatal(err)
	}
	mw, err := httpmw.New(p.Old.Pool, p.New.Pool, &httpmw.Config{Key: httpmw.PathKey("id"), Tracker: tr, Tombstones: tombs, Scheduler: enq})
	if err != nil {
		b.Fatal(err)
	}

	bare := http.NewServeMux()
	bare.HandleFunc(route, func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
		if err != nil || id < 0 {
			http.Error(w, "bad key", http.StatusBadRequest)
			return
		}
		writeAccount(w, r, p.New.Pool, id)
	})
	bareMiss := http.NewServeMux()
	bareMiss.HandleFunc(route, func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
		if err != nil || id < 0 {
			http.Error(w, "bad key", http.StatusBadRequest)
			return
		}
		var a account
		err = p.New.Pool.QueryRow(r.Context(), `SELECT id, email, name FROM accounts WHERE id = $1`, id).Scan(&a.ID, &a.Email, &a.Name)
		if !errors.Is(err, pgx.ErrNoRows) {
			http.Error(w, "want a miss", http.StatusInternalServerError)
			return
		}
		writeAccount(w, r, p.Old.Pool, id)
	})
	wrapped := http.NewServeMux()
	wrapped.Handle(route, mw.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, _ := httpmw.Key(r.Context())
		writeAccount(w, r, httpmw.DB[*pgxpool.Pool](r.Context()), id)
	})))

	// requests for n random keys in [lo, lo+span), reused round-robin: the
	// mux sets a request's path values in place, which is fine one at a
	// time.
	requests := func(seed uint64, lo, span int64) []*http.Request {
		r := rand.New(rand.NewPCG(seed, seed+1))
		reqs := make([]*http.Request, 4096)
		for i := range reqs {
			reqs[i] = httptest.NewRequest(http.MethodGet, "/accounts/"+strconv.FormatInt(lo+r.Int64N(span), 10), nil)
		}
		return reqs
	}
	s := &sink{h: http.Header{}}

	b.Run("Hit", func(b *testing.B) {
		reqs := requests(1, 1, benchRows/2)
		pair(b,
			func(i int) error { return expect(s.serve(bare, reqs[i%len(reqs)]), http.StatusOK) },
			func(i int) error { return expect(s.serve(wrapped, reqs[i%len(reqs)]), http.StatusOK) })
	})

	b.Run("HitNoDB", func(b *testing.B) {
		const body = `{"id":1,"email":"user1@example.com","name":"User 1"}` + "\n"
		write := func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(body))
		}
		bareConst := http.NewServeMux()
		bareConst.HandleFunc(route, func(w http.ResponseWriter, r *http.Request) {
			if _, err := strconv.ParseInt(r.PathValue("id"), 10, 64); err != nil {
				http.Error(w, "bad key", http.StatusBadRequest)
				return
			}
			write(w)
		})
		wrappedConst := http.NewServeMux()
		wrappedConst.Handle(route, mw.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_ = httpmw.DB[*pgxpool.Pool](r.Context())
			write(w)
		})))
		reqs := requests(2, 1, benchRows/2)
		pair(b,
			func(i int) error { return expect(s.serve(bareConst, reqs[i%len(reqs)]), http.StatusOK) },
			func(i int) error { return expect(s.serve(wrappedConst, reqs[i%len(reqs)]), http.StatusOK) })
	})

	b.Run("Miss", func(b *testing.B) {
		reqs := requests(3, benchRows/2+1, benchRows/2)
		pair(b,
			func(i int) error { return expect(s.serve(bareMiss, reqs[i%len(reqs)]), http.StatusOK) },
			func(i int) error { return expect(s.serve(wrapped, reqs[i%len(reqs)]), http.StatusOK) })
	})
}
