package httpmw_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lazymigrate/lazymigrate/httpmw"
)

// The tests in this file pin guards of the middleware that a mutation pass
// found no other test relied on. They run over the map stores of
// response_test.go.

// A 5xx from NEW says NEW's database failed, not that the record is missing:
// it goes to the client as NEW wrote it, and OLD is not asked, even for a key
// OLD has.
func TestNewServerErrorIsNotAMiss(t *testing.T) {
	t.Parallel()
	for _, code := range []int{http.StatusInternalServerError, http.StatusServiceUnavailable} {
		var oldRan atomic.Bool
		h := func(w http.ResponseWriter, r *http.Request) {
			if httpmw.SourceOf(r.Context()) == httpmw.SourceOld {
				oldRan.Store(true)
				fromStore(w, r)
				return
			}
			http.Error(w, "NEW's database failed", code)
		}
		sched := &recordingScheduler{}
		mux, reg := storeSetup{old: store{1: "from OLD"}, cfg: httpmw.Config{Scheduler: sched}}.serve(t, h)
		rec := get(mux, "/items/1")
		if rec.Code != code || rec.Body.String() != "NEW's database failed\n" || rec.Header().Get(httpmw.HeaderSource) != "new" {
			t.Fatalf("NEW answered %d: got %d %q from %q, want NEW's own %d", code, rec.Code, rec.Body.String(), rec.Header().Get(httpmw.HeaderSource), code)
		}
		if oldRan.Load() {
			t.Fatalf("NEW answered %d and OLD was asked", code)
		}
		if len(sched.keys) != 0 {
			t.Fatalf("NEW answered %d: scheduled %v", code, sched.keys)
		}
		if got := itemMetric(t, reg, "lazymigrate_http_requests_total", map[string]string{"source": "new", "outcome": "server_error"}); got != 1 {
			t.Fatalf("NEW answered %d: requests{new,server_error} = %v, want 1", code, got)
		}
		if got := itemMetric(t, reg, "lazymigrate_http_fallbacks_total", nil); got != 0 {
			t.Fatalf("NEW answered %d: %v fallbacks counted, want none", code, got)
		}
	}
}

// Every path that discards an attempt puts the client's header map back as
// it was before the middleware: the settled key's second look at NEW, OLD's
// 5xx, a tombstone that cannot be read and a client gone during the
// tombstone read. (TestDiscardedAttemptLeavesNoHeaders covers OLD answering.)
func TestDiscardedAttemptLeavesNoHeadersOnEveryPath(t *testing.T) {
	t.Parallel()
	// dirty is an attempt that rewrites the headers, then answers status.
	dirty := func(tag string, status int) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Del("X-Request-Id")
			w.Header().Add("X-Attempt", tag)
			http.SetCookie(w, &http.Cookie{Name: "from", Value: tag})
			w.Header().Set("Content-Length", "3")
			w.WriteHeader(status)
			_, _ = io.WriteString(w, "no!")
		}
	}
	clean := func(tag string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Add("X-Attempt", tag)
			_, _ = io.WriteString(w, "found")
		}
	}
	jsonError := http.Header{
		"X-Request-Id":           {"abc"},
		"Content-Type":           {"application/json; charset=utf-8"},
		"X-Content-Type-Options": {"nosniff"},
	}
	for _, c := range []struct {
		name     string
		cfg      func(cancel context.CancelFunc) httpmw.Config
		attempts []http.HandlerFunc // in the order the middleware runs them
		status   int
		want     http.Header
	}{
		{
			name: "settled key",
			cfg: func(context.CancelFunc) httpmw.Config {
				return httpmw.Config{Tracker: trackerFunc(func(context.Context, int64) (bool, error) { return true, nil })}
			},
			attempts: []http.HandlerFunc{dirty("new-1", http.StatusNotFound), clean("new-2")},
			status:   http.StatusOK,
			want: http.Header{
				"X-Request-Id":      {"abc"},
				"X-Attempt":         {"new-2"},
				httpmw.HeaderSource: {"new"},
				"Content-Type":      {"text/plain; charset=utf-8"}, // sniffed by the recorder
			},
		},
		{
			name:     "OLD answers 5xx",
			cfg:      func(context.CancelFunc) httpmw.Config { return httpmw.Config{} },
			attempts: []http.HandlerFunc{dirty("new", http.StatusNotFound), dirty("old", http.StatusInternalServerError)},
			status:   http.StatusServiceUnavailable,
			want:     jsonError,
		},
		{
			name: "tombstone unreadable",
			cfg: func(context.CancelFunc) httpmw.Config {
				return httpmw.Config{Tombstones: tombstonesFunc(func(context.Context, int64) (bool, error) {
					return false, errors.New("NEW is down")
				})}
			},
			attempts: []http.HandlerFunc{dirty("new", http.StatusNotFound)},
			status:   http.StatusServiceUnavailable,
			want:     jsonError,
		},
		{
			name: "client gone during the tombstone read",
			cfg: func(cancel context.CancelFunc) httpmw.Config {
				return httpmw.Config{Tombstones: tombstonesFunc(func(ctx context.Context, _ int64) (bool, error) {
					cancel()
					return false, ctx.Err()
				})}
			},
			attempts: []http.HandlerFunc{dirty("new", http.StatusNotFound)},
			status:   http.StatusServiceUnavailable,
			want:     jsonError,
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var n atomic.Int64
			h := func(w http.ResponseWriter, r *http.Request) {
				i := int(n.Add(1)) - 1
				if i >= len(c.attempts) {
					t.Errorf("attempt %d (against %s): want %d attempts", i+1, httpmw.SourceOf(r.Context()), len(c.attempts))
					return
				}
				c.attempts[i](w, r)
			}
			mux, _ := storeSetup{cfg: c.cfg(cancel)}.serve(t, h)
			outer := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("X-Request-Id", "abc")
				mux.ServeHTTP(w, r)
			})
			rec := httptest.NewRecorder()
			outer.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/items/1", nil).WithContext(ctx))
			if rec.Code != c.status {
				t.Fatalf("status %d, want %d; body %q", rec.Code, c.status, rec.Body.String())
			}
			if got := int(n.Load()); got != len(c.attempts) {
				t.Fatalf("%d attempts, want %d", got, len(c.attempts))
			}
			got := rec.Result().Header
			if len(got) != len(c.want) {
				t.Fatalf("headers = %v, want %v", got, c.want)
			}
			for k, v := range c.want {
				if strings.Join(got[k], ",") != strings.Join(v, ",") {
					t.Fatalf("header %s = %q, want %q (all: %v)", k, got[k], v, got)
				}
			}
		})
	}
}

// A tracker query that fails because the client went away says nothing about
// Redis: it is not counted as a tracker failure, and the tracker is asked
// for the next read as usual, not switched off for a second. (The port of
// lazy's TestAwaitTrackerIgnoresCallerCancellation.)
func TestTrackerFailureFromClientCancelDoesNotSwitchTrackerOff(t *testing.T) {
	t.Parallel()
	const settledKey = 1000
	// call is one cancelled read: its client's cancel, and closed once the
	// tracker query it started has failed.
	type call struct {
		cancel   context.CancelFunc
		returned chan struct{}
	}
	var cur *call // set before each read; read by the tracker and tombstones it calls
	var asked atomic.Int64
	tr := trackerFunc(func(ctx context.Context, key int64) (bool, error) {
		asked.Add(1)
		if key == settledKey {
			return true, nil
		}
		c := cur
		defer close(c.returned)
		<-ctx.Done() // the client hangs up; the query fails for it
		return false, ctx.Err()
	})
	tombs := tombstonesFunc(func(_ context.Context, key int64) (bool, error) {
		if key == settledKey {
			return false, nil
		}
		// The tombstone's row came back just as the client hung up: the
		// middleware then finds the tracker's failure and the cancelled
		// request both ready, and picks either.
		c := cur
		c.cancel()
		<-c.returned
		return false, nil
	})
	old := store{settledKey: "in OLD"}
	for k := int64(1); k <= 50; k++ {
		old[k] = "in OLD"
	}
	mux, reg := storeSetup{old: old, cfg: httpmw.Config{Tracker: tr, Tombstones: tombs, TrackerTimeout: time.Minute}}.serve(t, fromStore)
	for k := 1; k <= 50; k++ { // the middleware's select is random: 50 draws
		ctx, cancel := context.WithCancel(context.Background())
		cur = &call{cancel: cancel, returned: make(chan struct{})}
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/items/"+strconv.Itoa(k), nil).WithContext(ctx))
		cancel()
		if rec.Code != http.StatusOK || rec.Header().Get(httpmw.HeaderSource) != "old" {
			t.Fatalf("read %d: %d from %q, want OLD's answer (the failed tracker counts as unsettled)", k, rec.Code, rec.Header().Get(httpmw.HeaderSource))
		}
		// Checked at once: a tracker switched off is not asked again, and
		// the next read's tombstones would wait for it forever.
		if got := metric(t, reg, "lazymigrate_http_tracker_errors_total", nil); got != 0 {
			t.Fatalf("read %d: a client's cancel counted as %v tracker failures", k, got)
		}
	}
	before := asked.Load()
	rec := get(mux, "/items/1000")
	if asked.Load() != before+1 {
		t.Fatal("the tracker was not asked after reads whose clients had gone away: it was switched off")
	}
	if rec.Code != http.StatusNotFound || rec.Header().Get(httpmw.HeaderSource) != "new" {
		t.Fatalf("settled key: %d from %q, want NEW's 404", rec.Code, rec.Header().Get(httpmw.HeaderSource))
	}
}

// The tracker query must not outlive the read that started it: once the read
// stops waiting (TrackerTimeout), the query's context is cancelled, even
// though the request's own context is still live. (The port of lazy's
// TestAwaitTrackerCancelsQuery.)
func TestTrackerQueryCancelledWhenReadStopsWaiting(t *testing.T) {
	t.Parallel()
	ended := make(chan error, 1)
	tr := trackerFunc(func(ctx context.Context, _ int64) (bool, error) {
		<-ctx.Done()
		ended <- ctx.Err()
		return false, ctx.Err()
	})
	mux, reg := storeSetup{old: store{1: "in OLD"}, cfg: httpmw.Config{Tracker: tr, TrackerTimeout: 10 * time.Millisecond}}.serve(t, fromStore)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel() // only ends the query if the middleware did not
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/items/1", nil).WithContext(ctx))
	if rec.Code != http.StatusOK || rec.Header().Get(httpmw.HeaderSource) != "old" {
		t.Fatalf("hung tracker: %d from %q, want OLD's answer", rec.Code, rec.Header().Get(httpmw.HeaderSource))
	}
	if got := metric(t, reg, "lazymigrate_http_tracker_errors_total", nil); got != 1 {
		t.Fatalf("tracker errors = %v after a timeout, want 1", got)
	}
	select {
	case err := <-ended:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("tracker query ended with %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second): // a bound on failure: the pass ends at once
		t.Fatal("the tracker query was still running 5s after the read had answered without it")
	}
}

// OLD's 5xx after the client went away is a cancel, not an outage: counted
// as canceled (source old, as OLD's attempt was the last), never as
// unavailable, and OnError gets the context's error, not ErrOldUnavailable.
func TestClientCancelDuringOldReadIsNotAnOutage(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var seen error
	var seenStatus int
	onError := func(w http.ResponseWriter, r *http.Request, status int, err error) {
		seen, seenStatus = err, status
		httpmw.WriteJSONError(w, r, status, err)
	}
	h := func(w http.ResponseWriter, r *http.Request) {
		if httpmw.SourceOf(r.Context()) == httpmw.SourceNew {
			http.NotFound(w, r)
			return
		}
		cancel() // the client hangs up while OLD is queried
		<-r.Context().Done()
		http.Error(w, "query: "+r.Context().Err().Error(), http.StatusInternalServerError)
	}
	sched := &recordingScheduler{}
	mux, reg := storeSetup{old: store{1: "in OLD"}, cfg: httpmw.Config{OnError: onError, Scheduler: sched}}.serve(t, h)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/items/1", nil).WithContext(ctx))
	if rec.Code != http.StatusServiceUnavailable || seenStatus != http.StatusServiceUnavailable {
		t.Fatalf("status %d (OnError given %d), want 503; body %q", rec.Code, seenStatus, rec.Body.String())
	}
	reqs := func(outcome string) float64 {
		return itemMetric(t, reg, "lazymigrate_http_requests_total", map[string]string{"outcome": outcome})
	}
	if c, u := itemMetric(t, reg, "lazymigrate_http_requests_total", map[string]string{"source": "old", "outcome": "canceled"}), reqs("unavailable"); c != 1 || u != 0 {
		t.Errorf("requests{old,canceled} = %v, requests{unavailable} = %v; want 1 and 0", c, u)
	}
	fbs := func(outcome string) float64 {
		return itemMetric(t, reg, "lazymigrate_http_fallbacks_total", map[string]string{"outcome": outcome})
	}
	if c, u := fbs("canceled"), fbs("old_unavailable"); c != 1 || u != 0 {
		t.Errorf("fallbacks{canceled} = %v, fallbacks{old_unavailable} = %v; want 1 and 0", c, u)
	}
	if !errors.Is(seen, context.Canceled) || errors.Is(seen, httpmw.ErrOldUnavailable) {
		t.Errorf("OnError got %v, want the client's context.Canceled, not ErrOldUnavailable", seen)
	}
	if len(sched.keys) != 0 {
		t.Errorf("scheduled %v", sched.keys)
	}
}

// OLD answering a status that is neither 2xx, 304, 404 nor 5xx (a redirect,
// 403, 410) does not say OLD has the record: the answer goes to the client
// as OLD wrote it, nothing is scheduled for promotion, and the fallback is
// counted as other.
func TestOldOtherStatusIsNotScheduled(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		status  int
		outcome string // of lazymigrate_http_requests_total
	}{
		{http.StatusMultipleChoices, "ok"},
		{http.StatusMovedPermanently, "ok"},
		{http.StatusFound, "ok"},
		{http.StatusSeeOther, "ok"},
		{http.StatusTemporaryRedirect, "ok"},
		{http.StatusPermanentRedirect, "ok"},
		{http.StatusForbidden, "client_error"},
		{http.StatusGone, "client_error"},
	} {
		t.Run(strconv.Itoa(c.status), func(t *testing.T) {
			t.Parallel()
			h := func(w http.ResponseWriter, r *http.Request) {
				if httpmw.SourceOf(r.Context()) == httpmw.SourceNew {
					http.NotFound(w, r)
					return
				}
				if c.status < 400 {
					http.Redirect(w, r, "/elsewhere", c.status)
					return
				}
				http.Error(w, "OLD says no", c.status)
			}
			sched := &recordingScheduler{}
			mux, reg := storeSetup{cfg: httpmw.Config{Scheduler: sched}}.serve(t, h)
			rec := get(mux, "/items/1")
			if rec.Code != c.status || rec.Header().Get(httpmw.HeaderSource) != "old" {
				t.Fatalf("OLD answered %d: got %d from %q, want OLD's answer", c.status, rec.Code, rec.Header().Get(httpmw.HeaderSource))
			}
			if c.status < 400 && rec.Header().Get("Location") != "/elsewhere" {
				t.Fatalf("OLD answered %d: Location %q, want OLD's", c.status, rec.Header().Get("Location"))
			}
			if len(sched.keys) != 0 {
				t.Fatalf("OLD answered %d: scheduled %v for promotion", c.status, sched.keys)
			}
			fbs := func(outcome string) float64 {
				return itemMetric(t, reg, "lazymigrate_http_fallbacks_total", map[string]string{"outcome": outcome})
			}
			if o, f := fbs("other"), fbs("found"); o != 1 || f != 0 {
				t.Fatalf("OLD answered %d: fallbacks{other} = %v, {found} = %v; want 1 and 0", c.status, o, f)
			}
			if got := itemMetric(t, reg, "lazymigrate_http_requests_total", map[string]string{"source": "old", "outcome": c.outcome}); got != 1 {
				t.Fatalf("OLD answered %d: requests{old,%s} = %v, want 1", c.status, c.outcome, got)
			}
		})
	}
}
