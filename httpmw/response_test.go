package httpmw_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazymigrate/lazymigrate/httpmw"
	"github.com/lazymigrate/lazymigrate/internal/keys"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
)

// The tests in this file are about HTTP: what reaches the client of each
// attempt. Their databases are maps, which the middleware takes like any
// other handle, so every side and every failure is a line of code.

// store is a database for these tests: key -> body.
type store map[int64]string

// fromStore answers a key's body, or 404.
func fromStore(w http.ResponseWriter, r *http.Request) {
	k, _ := httpmw.Key(r.Context())
	body, ok := httpmw.DB[store](r.Context())[k]
	if !ok {
		http.NotFound(w, r)
		return
	}
	_, _ = io.WriteString(w, body)
}

type storeSetup struct {
	old, new store
	cfg      httpmw.Config
}

// serve wraps h with a middleware over s's stores on GET /items/{id} and
// returns the mux and the metrics registry.
func (s storeSetup) serve(t *testing.T, h http.HandlerFunc) (http.Handler, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg := s.cfg
	cfg.Key = httpmw.PathKey("id")
	cfg.NoTombstones = cfg.Tombstones == nil
	cfg.Registerer = reg
	if s.old == nil {
		s.old = store{}
	}
	if s.new == nil {
		s.new = store{}
	}
	mw, err := httpmw.New(s.old, s.new, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /items/{id}", mw.Wrap(h))
	return mux, reg
}

func itemMetric(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	l := map[string]string{"route": "GET /items/{id}"}
	for k, v := range labels {
		l[k] = v
	}
	return metric(t, reg, name, l)
}

func get(h http.Handler, path string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec
}

// A 404 from NEW larger than MaxBuffer goes out as NEW wrote it, whole,
// without asking OLD, and is counted.
func TestLargeNotFoundPassesThrough(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("n", 100)
	var oldRan bool
	h := func(w http.ResponseWriter, r *http.Request) {
		if httpmw.SourceOf(r.Context()) == httpmw.SourceOld {
			oldRan = true
			_, _ = io.WriteString(w, "from OLD")
			return
		}
		w.WriteHeader(http.StatusNotFound)
		for i := 0; i < len(big); i += 30 {
			_, _ = io.WriteString(w, big[i:min(i+30, len(big))])
		}
	}
	mux, reg := storeSetup{cfg: httpmw.Config{MaxBuffer: 64}}.serve(t, h)
	rec := get(mux, "/items/1")
	if rec.Code != http.StatusNotFound || rec.Body.String() != big || rec.Header().Get(httpmw.HeaderSource) != "new" {
		t.Fatalf("got %d %q from %q, want NEW's whole 404", rec.Code, rec.Body.String(), rec.Header().Get(httpmw.HeaderSource))
	}
	if oldRan {
		t.Fatal("OLD was asked after NEW's 404 had gone out")
	}
	if got := itemMetric(t, reg, "lazymigrate_http_passthroughs_total", nil); got != 1 {
		t.Fatalf("passthroughs = %v, want 1", got)
	}

	// A 404 that fits is held, and OLD answers.
	mux, reg = storeSetup{cfg: httpmw.Config{MaxBuffer: len(big)}}.serve(t, h)
	rec = get(mux, "/items/1")
	if rec.Code != http.StatusOK || rec.Body.String() != "from OLD" {
		t.Fatalf("got %d %q, want OLD's answer", rec.Code, rec.Body.String())
	}
	if got := itemMetric(t, reg, "lazymigrate_http_passthroughs_total", nil); got != 0 {
		t.Fatalf("passthroughs = %v, want 0", got)
	}
}

// A hit is never buffered, whatever its size: it streams with its own
// Content-Length.
func TestLargeHitStreams(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("x", 1<<20)
	h := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(big)))
		_, _ = io.WriteString(w, big)
	}
	mux, reg := storeSetup{cfg: httpmw.Config{MaxBuffer: 16}}.serve(t, h)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/items/1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || len(body) != len(big) || resp.ContentLength != int64(len(big)) {
		t.Fatalf("got %d, %d bytes, Content-Length %d; want 200 and %d bytes", resp.StatusCode, len(body), resp.ContentLength, len(big))
	}
	if got := itemMetric(t, reg, "lazymigrate_http_passthroughs_total", nil); got != 0 {
		t.Fatalf("passthroughs = %v, want 0", got)
	}
}

// Headers of a discarded attempt never reach the client; headers set before
// the middleware do, once.
func TestDiscardedAttemptLeavesNoHeaders(t *testing.T) {
	t.Parallel()
	h := func(w http.ResponseWriter, r *http.Request) {
		switch httpmw.SourceOf(r.Context()) {
		case httpmw.SourceNew:
			w.Header().Del("X-Request-Id")
			w.Header().Set("X-Attempt", "new")
			http.SetCookie(w, &http.Cookie{Name: "from", Value: "new"})
			w.Header().Set("Content-Length", "3")
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, "no!")
		default:
			w.Header().Add("X-Attempt", "old")
			_, _ = io.WriteString(w, "found")
		}
	}
	mux, _ := storeSetup{}.serve(t, h)
	outer := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Request-Id", "abc")
		mux.ServeHTTP(w, r)
	})
	rec := get(outer, "/items/1")
	want := http.Header{
		"X-Request-Id":      {"abc"},
		"X-Attempt":         {"old"},
		httpmw.HeaderSource: {"old"},
		"Content-Type":      {"text/plain; charset=utf-8"}, // sniffed by the recorder from OLD's body
	}
	got := rec.Result().Header
	if len(got) != len(want) {
		t.Fatalf("headers = %v, want %v", got, want)
	}
	for k, v := range want {
		if strings.Join(got[k], ",") != strings.Join(v, ",") {
			t.Fatalf("header %s = %q, want %q (all: %v)", k, got[k], v, got)
		}
	}
	if rec.Body.String() != "found" {
		t.Fatalf("body = %q, want OLD's alone", rec.Body.String())
	}
}

// recorder records what reaches the client, call by call.
type recorder struct {
	header  http.Header
	calls   []string
	flushes int
}

func newRecorder() *recorder { return &recorder{header: http.Header{}} }

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(code int) {
	r.calls = append(r.calls, "status "+strconv.Itoa(code))
}
func (r *recorder) Write(p []byte) (int, error) {
	r.calls = append(r.calls, "write "+string(p))
	return len(p), nil
}
func (r *recorder) Flush() { r.flushes++ }

// A panicking handler's panic reaches the caller unchanged, and nothing the
// attempt held back goes out.
func TestPanicsAreNotSwallowed(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name   string
		h      http.HandlerFunc
		source string
		sent   []string // calls that reached the client before the panic
	}{
		{"NEW before writing", func(http.ResponseWriter, *http.Request) { panic("boom") }, "new", nil},
		{"NEW after a 404", func(w http.ResponseWriter, r *http.Request) {
			http.NotFound(w, r)
			panic("boom")
		}, "new", nil},
		{"OLD before writing", func(w http.ResponseWriter, r *http.Request) {
			if httpmw.SourceOf(r.Context()) == httpmw.SourceNew {
				http.NotFound(w, r)
				return
			}
			panic("boom")
		}, "old", nil},
		{"OLD after a 500", func(w http.ResponseWriter, r *http.Request) {
			if httpmw.SourceOf(r.Context()) == httpmw.SourceNew {
				http.NotFound(w, r)
				return
			}
			http.Error(w, "db down", http.StatusInternalServerError)
			panic("boom")
		}, "old", nil},
		{"NEW midway through a 200", func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, "half")
			panic("boom")
		}, "new", []string{"write half"}}, // what the bare handler would have sent
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			mux, reg := storeSetup{}.serve(t, c.h)
			rec := newRecorder()
			func() {
				defer func() {
					if v := recover(); v != "boom" {
						t.Errorf("recovered %v, want the handler's panic", v)
					}
				}()
				mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/items/1", nil))
			}()
			if strings.Join(rec.calls, "|") != strings.Join(c.sent, "|") {
				t.Fatalf("sent %q, want %q", rec.calls, c.sent)
			}
			if got := itemMetric(t, reg, "lazymigrate_http_requests_total", map[string]string{"source": c.source, "outcome": "panic"}); got != 1 {
				t.Fatalf("requests{%s,panic} = %v, want 1", c.source, got)
			}
		})
	}
}

// Through a real server, a panic while a 404 is held reaches net/http, which
// logs it and drops the connection: the client gets no response at all.
func TestPanicReachesServer(t *testing.T) {
	t.Parallel()
	mux, _ := storeSetup{}.serve(t, func(w http.ResponseWriter, r *http.Request) {
		http.NotFound(w, r)
		panic("handler exploded")
	})
	srv := httptest.NewUnstartedServer(mux)
	var logged testenv.SyncBuffer
	srv.Config.ErrorLog = log.New(&logged, "", 0)
	srv.Start()
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/items/1")
	if err == nil {
		_ = resp.Body.Close()
		t.Fatalf("got a response (%d) from a panicking handler", resp.StatusCode)
	}
	srv.Close() // waits for the handler's goroutine
	if !strings.Contains(logged.String(), "handler exploded") {
		t.Fatalf("server log %q does not show the panic", logged.String())
	}
}

// Flush passes through once the response is going out; a held 404 is not
// flushed, so OLD can still answer.
func TestFlush(t *testing.T) {
	t.Parallel()
	h := func(w http.ResponseWriter, r *http.Request) {
		if httpmw.SourceOf(r.Context()) == httpmw.SourceNew && r.URL.Query().Has("miss") {
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, "missing")
			w.(http.Flusher).Flush()
			return
		}
		_, _ = io.WriteString(w, "a")
		if err := http.NewResponseController(w).Flush(); err != nil {
			t.Error(err)
		}
		_, _ = io.WriteString(w, "b")
	}
	mux, _ := storeSetup{}.serve(t, h)

	rec := newRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/items/1", nil))
	if got := strings.Join(rec.calls, "|"); got != "write a|write b" || rec.flushes != 1 {
		t.Fatalf("hit: calls %q, %d flushes; want a flush between a and b", got, rec.flushes)
	}
	if rec.header.Get(httpmw.HeaderSource) != "new" {
		t.Fatalf("hit: source %q", rec.header.Get(httpmw.HeaderSource))
	}

	rec = newRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/items/1?miss", nil))
	if got := strings.Join(rec.calls, "|"); got != "write a|write b" || rec.header.Get(httpmw.HeaderSource) != "old" {
		t.Fatalf("miss: calls %q from %q; want OLD's answer alone", got, rec.header.Get(httpmw.HeaderSource))
	}
}

// Flush before any write sends a 200, as net/http does.
func TestFlushBeforeWriteSends200(t *testing.T) {
	t.Parallel()
	mux, _ := storeSetup{}.serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.(http.Flusher).Flush()
		_, _ = io.WriteString(w, "streamed")
	})
	rec := newRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/items/1", nil))
	if got := strings.Join(rec.calls, "|"); got != "status 200|write streamed" || rec.flushes != 1 {
		t.Fatalf("calls %q, %d flushes", got, rec.flushes)
	}
}

// Trailers set after the body reach the client.
func TestTrailers(t *testing.T) {
	t.Parallel()
	mux, _ := storeSetup{}.serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		_, _ = io.WriteString(w, "body")
		w.Header().Set("X-Checksum", "abc")
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/items/1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadAll(resp.Body); err != nil {
		t.Fatal(err)
	}
	if resp.Trailer.Get("X-Checksum") != "abc" {
		t.Fatalf("trailer = %v, want X-Checksum: abc", resp.Trailer)
	}
}

// A handler that answers nothing answers 200, as with net/http (which
// writes it once the handler returns), with the source header.
func TestEmptyAnswerIs200(t *testing.T) {
	t.Parallel()
	mux, _ := storeSetup{}.serve(t, func(http.ResponseWriter, *http.Request) {})
	rec := newRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/items/1", nil))
	if got := strings.Join(rec.calls, "|"); got != "" || rec.header.Get(httpmw.HeaderSource) != "new" {
		t.Fatalf("calls %q, source %q", got, rec.header.Get(httpmw.HeaderSource))
	}
}

// Informational responses from an attempt that may be discarded are
// dropped: the client must not see hints from the side that does not
// answer.
func TestInformationalResponsesOfTentativeAttemptsAreDropped(t *testing.T) {
	t.Parallel()
	mux, _ := storeSetup{old: store{1: "old"}}.serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusEarlyHints)
		fromStore(w, r)
	})
	rec := newRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/items/1", nil))
	if got := strings.Join(rec.calls, "|"); got != "write old" {
		t.Fatalf("calls %q, want OLD's answer alone", got)
	}
}

// The handler sees the side it runs against and the parsed key.
func TestHandlerSeesSideAndKey(t *testing.T) {
	t.Parallel()
	mux, _ := storeSetup{old: store{9: "old nine"}, new: store{8: "new eight"}}.serve(t, fromStore)
	for path, want := range map[string]string{"/items/8": "new eight", "/items/9": "old nine"} {
		rec := get(mux, path)
		if rec.Code != http.StatusOK || rec.Body.String() != want {
			t.Fatalf("GET %s = %d %q, want %q", path, rec.Code, rec.Body.String(), want)
		}
	}
}

// Route labels metrics with a name of the caller's choosing, for routers
// that do not set r.Pattern.
func TestRouteName(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	mw, err := httpmw.New(store{}, store{3: "three"}, &httpmw.Config{
		NoTombstones: true,
		Key: func(r *http.Request) (int64, error) {
			k, err := strconv.ParseInt(r.URL.Query().Get("id"), 10, 64)
			if err != nil {
				return 0, errors.Join(httpmw.ErrInvalidKey, err)
			}
			return k, nil
		},
		Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	h := mw.Route("item")(http.HandlerFunc(fromStore))
	if rec := get(h, "/anything?id=3"); rec.Code != http.StatusOK {
		t.Fatalf("GET = %d", rec.Code)
	}
	if rec := get(h, "/anything?id=x"); rec.Code != http.StatusBadRequest {
		t.Fatalf("GET with a bad key = %d, want 400", rec.Code)
	}
	if got := metric(t, reg, "lazymigrate_http_requests_total", map[string]string{"route": "item", "source": "new", "outcome": "ok"}); got != 1 {
		t.Fatalf("requests{item,new,ok} = %v, want 1", got)
	}
	if got := metric(t, reg, "lazymigrate_http_requests_total", map[string]string{"route": "item", "source": "none", "outcome": "bad_key"}); got != 1 {
		t.Fatalf("requests{item,none,bad_key} = %v, want 1", got)
	}
}

// OnError replaces the JSON error body, and is given errors callers can
// test for.
func TestOnError(t *testing.T) {
	t.Parallel()
	var seen error
	onError := func(w http.ResponseWriter, r *http.Request, status int, err error) {
		seen = err
		http.Error(w, "custom", status)
	}
	oldDown := func(w http.ResponseWriter, r *http.Request) {
		if httpmw.SourceOf(r.Context()) == httpmw.SourceOld {
			http.Error(w, "connection refused", http.StatusInternalServerError)
			return
		}
		http.NotFound(w, r)
	}
	mux, _ := storeSetup{cfg: httpmw.Config{OnError: onError}}.serve(t, oldDown)
	rec := get(mux, "/items/nope")
	if rec.Code != http.StatusBadRequest || rec.Body.String() != "custom\n" || !errors.Is(seen, keys.ErrInvalid) {
		t.Fatalf("bad key: %d %q, err %v", rec.Code, rec.Body.String(), seen)
	}
	rec = get(mux, "/items/1")
	if rec.Code != http.StatusServiceUnavailable || rec.Body.String() != "custom\n" || !errors.Is(seen, httpmw.ErrOldUnavailable) {
		t.Fatalf("OLD down: %d %q, err %v", rec.Code, rec.Body.String(), seen)
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	key := httpmw.PathKey("id")
	for _, c := range []struct {
		name     string
		old, new store
		cfg      *httpmw.Config
		want     string
	}{
		{"nil database", nil, store{}, &httpmw.Config{Key: key}, "both databases"},
		{"no config", store{}, store{}, nil, "Config.Key"},
		{"no key", store{}, store{}, &httpmw.Config{}, "Config.Key"},
		{"no tombstones", store{}, store{}, &httpmw.Config{Key: key}, "Config.Tombstones is required"},
		{"negative buffer", store{}, store{}, &httpmw.Config{Key: key, NoTombstones: true, MaxBuffer: -1}, "Config.MaxBuffer"},
		{"negative timeout", store{}, store{}, &httpmw.Config{Key: key, NoTombstones: true, TrackerTimeout: -1}, "Config.TrackerTimeout"},
	} {
		if _, err := httpmw.New(c.old, c.new, c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want one naming %s", c.name, err, c.want)
		}
	}
}

func TestDBMisuse(t *testing.T) {
	t.Parallel()
	expectPanic := func(name, want string, f func()) {
		t.Helper()
		defer func() {
			if v := recover(); v == nil || !strings.Contains(v.(string), want) {
				t.Errorf("%s: panic %v, want one containing %q", name, v, want)
			}
		}()
		f()
	}
	expectPanic("outside", "no httpmw.Middleware routed", func() { httpmw.DB[store](context.Background()) })
	mux, _ := storeSetup{}.serve(t, func(w http.ResponseWriter, r *http.Request) {
		expectPanic("wrong type", "DB[*bytes.Buffer]: the middleware's databases are of type httpmw_test.store", func() {
			httpmw.DB[*bytes.Buffer](r.Context())
		})
	})
	get(mux, "/items/1")
	if s := httpmw.SourceOf(context.Background()); s != "" {
		t.Errorf("SourceOf outside = %q", s)
	}
	if _, ok := httpmw.Key(context.Background()); ok {
		t.Error("Key outside reported a key")
	}
}

func FuzzPathKey(f *testing.F) {
	for _, s := range []string{"0", "42", "-1", "+7", "007", "9223372036854775807", "9223372036854775808", "", "1e3", " 1", "٣", strings.Repeat("\x9c", 100)} {
		f.Add(s)
	}
	key := httpmw.PathKey("id")
	f.Fuzz(func(t *testing.T, v string) {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.SetPathValue("id", v)
		k, err := key(r)
		want, perr := strconv.ParseInt(v, 10, 64)
		switch {
		case perr == nil && want >= 0:
			if err != nil || k != want {
				t.Fatalf("PathKey(%q) = %d, %v; want %d", v, k, err, want)
			}
		case !errors.Is(err, httpmw.ErrInvalidKey):
			t.Fatalf("PathKey(%q) = %d, %v; want an error wrapping ErrInvalidKey", v, k, err)
		case len(err.Error()) > 400: // 64 bytes of input at most, quoted
			t.Fatalf("PathKey(%q): error of %d bytes echoes too much input", v, len(err.Error()))
		}
	})
}
