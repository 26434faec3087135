package httpmw_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/lazymigrate/lazymigrate/httpmw"
)

// recordingScheduler records the keys it is asked to promote.
type recordingScheduler struct {
	mu   sync.Mutex
	keys []int64
}

func (s *recordingScheduler) Schedule(ks ...int64) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys = append(s.keys, ks...)
	return len(ks)
}

// A conditional GET that OLD answers 304 Not Modified is a record OLD has:
// it is scheduled for promotion like a 200, or a hot key read by caching
// clients (If-None-Match) would never be promoted by reads.
func TestOldNotModifiedIsScheduled(t *testing.T) {
	t.Parallel()
	sched := &recordingScheduler{}
	h := func(w http.ResponseWriter, r *http.Request) {
		k, _ := httpmw.Key(r.Context())
		if _, ok := httpmw.DB[store](r.Context())[k]; !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("ETag", `"v1"`)
		if r.Header.Get("If-None-Match") == `"v1"` {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		_, _ = io.WriteString(w, "body")
	}
	mux, _ := storeSetup{old: store{1: "x"}, cfg: httpmw.Config{Scheduler: sched}}.serve(t, h)
	req := httptest.NewRequest(http.MethodGet, "/items/1", nil)
	req.Header.Set("If-None-Match", `"v1"`)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, req)
	if rec.Code != http.StatusNotModified {
		t.Fatalf("status %d, want OLD's 304", rec.Code)
	}
	if len(sched.keys) != 1 {
		t.Fatalf("scheduled %v after OLD answered 304 for key 1, want [1]", sched.keys)
	}
}

// A client that goes away while the tombstone is read is counted as
// canceled, not as NEW unavailable: client disconnects must not page
// whoever alerts on NEW outages.
func TestClientCancelDuringTombstoneReadIsNotAnOutage(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	tombs := tombstonesFunc(func(ctx context.Context, _ int64) (bool, error) {
		cancel() // the client hangs up while NEW is asked
		<-ctx.Done()
		return false, ctx.Err()
	})
	mux, reg := storeSetup{old: store{1: "x"}, cfg: httpmw.Config{Tombstones: tombs}}.serve(t, fromStore)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/items/1", nil).WithContext(ctx))
	unavailable := itemMetric(t, reg, "lazymigrate_http_requests_total", map[string]string{"outcome": "unavailable"})
	canceled := itemMetric(t, reg, "lazymigrate_http_requests_total", map[string]string{"outcome": "canceled"})
	if unavailable != 0 || canceled != 1 {
		t.Fatalf("client cancel during the tombstone read: outcome unavailable=%v canceled=%v, body %q; want canceled=1",
			unavailable, canceled, rec.Body.String())
	}
}
