package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lazymigrate/lazymigrate/fallback"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
)

// jsonError decodes a JSON error body, or fails the test.
func jsonError(t *testing.T, r reply) string {
	t.Helper()
	var e struct{ Error string }
	if err := json.Unmarshal(r.body, &e); err != nil || e.Error == "" {
		t.Fatalf("answer %d %q is not a JSON error", r.status, r.body)
	}
	return e.Error
}

// A JSON string may carry U+0000, which Postgres text cannot store
// (SQLSTATE 22021): decodeInput rejects it, and the other control
// characters, with a 400 that names the field, on the update path (a key
// OLD has) as on the create path (a key in neither database).
func TestPutRejectsControlCharacters(t *testing.T) {
	t.Parallel()
	b := setup(t, 10, serveConfig{Worker: false})
	for _, c := range []struct{ body, field string }{
		{`{"email":"a@example.org","name":"A\u0000B","balance_cents":1,"status":"active"}`, "name"},
		{`{"email":"a\u0000@example.org","name":"A","balance_cents":1,"status":"active"}`, "email"},
		{`{"email":"a@example.org","name":"A\u0007B","balance_cents":1,"status":"active"}`, "name"},
		{`{"email":"a@example.org\n","name":"A","balance_cents":1,"status":"active"}`, "email"},
		{`{"email":"a@example.org","name":"A\u007fB","balance_cents":1,"status":"active"}`, "name"},
	} {
		for _, path := range []string{"/accounts/1", "/accounts/500"} {
			r := b.do(t, http.MethodPut, path, c.body)
			if r.status != http.StatusBadRequest {
				t.Errorf("PUT %s %s = %d %s, want 400", path, c.body, r.status, r.body)
				continue
			}
			if msg := jsonError(t, r); !strings.Contains(msg, c.field+" must not contain control characters") {
				t.Errorf("PUT %s %s: error %q does not name the field %s", path, c.body, msg, c.field)
			}
		}
	}
	// Nothing was written, and the key is not left locked.
	if _, ok := accountIn(t, b.new, 1); ok {
		t.Error("a rejected PUT promoted key 1 into NEW")
	}
	if r := b.do(t, http.MethodPut, "/accounts/1", `{"email":"a@example.org","name":"A","balance_cents":1,"status":"active"}`); r.status != http.StatusOK {
		t.Fatalf("valid PUT after the rejected ones = %d %s", r.status, r.body)
	}
}

// A record the database rejects as invalid data (SQLSTATE class 22 or 23:
// here a CHECK constraint NEW has) is the client's fault: 422 with what
// the database objected to, not 500.
func TestPutDataErrorIs422(t *testing.T) {
	t.Parallel()
	b := setup(t, 10, serveConfig{Worker: false})
	if _, err := b.new.Pool.Exec(context.Background(),
		`ALTER TABLE accounts ADD CONSTRAINT balance_floor CHECK (balance_cents >= -1000000)`); err != nil {
		t.Fatal(err)
	}
	const bad = `{"email":"a@example.org","name":"A","balance_cents":-1000001,"status":"active"}`
	for _, path := range []string{"/accounts/1", "/accounts/500"} { // update (promotes first), create
		r := b.do(t, http.MethodPut, path, bad)
		if r.status != http.StatusUnprocessableEntity {
			t.Errorf("PUT %s violating a CHECK = %d %s, want 422", path, r.status, r.body)
			continue
		}
		if msg := jsonError(t, r); !strings.Contains(msg, "balance_floor") || !strings.Contains(msg, "SQLSTATE 23514") {
			t.Errorf("PUT %s: error %q, want the constraint and its SQLSTATE", path, msg)
		}
	}
	if _, ok := accountIn(t, b.old, 500); ok {
		t.Error("OLD has account 500 after its rejected creation")
	}
	if r := b.do(t, http.MethodPut, "/accounts/1", `{"email":"a@example.org","name":"A","balance_cents":-5,"status":"active"}`); r.status != http.StatusOK {
		t.Fatalf("valid PUT after the rejected ones = %d %s", r.status, r.body)
	}
}

// stallingService answers /healthz, and /accounts/{id} at once except every
// nth request, which hangs until the client gives up (or 10s).
func stallingService(t *testing.T, every int64) *httptest.Server {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			return
		}
		if every > 0 && n.Add(1)%every == 0 {
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
			return
		}
		w.Header().Set("Lazymigrate-Source", "new")
		_, _ = io.WriteString(w, `{}`)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// runLoadJSON runs `accounts load -json` with args against srv and returns
// the report it printed and the command's error.
func runLoadJSON(t *testing.T, srv *httptest.Server, args ...string) (LoadReport, time.Duration, error) {
	t.Helper()
	var out bytes.Buffer
	start := time.Now()
	err := run(context.Background(), append([]string{"load", "-addr", srv.URL, "-rows", "1000", "-json"}, args...), &out, io.Discard)
	took := time.Since(start)
	t.Logf("load %v: %v in %s; report: %s", args, err, took.Round(time.Millisecond), out.String())
	var rep LoadReport
	if jerr := json.Unmarshal(out.Bytes(), &rep); jerr != nil {
		t.Fatalf("decode the report: %v (load returned %v)", jerr, err)
	}
	return rep, took, err
}

// Requests in flight at the end of a --rate run (the slow ones, most
// likely) are waited for and, if still unanswered after -grace or their
// own -timeout, counted as errors with their latency to then: the tail is
// not censored, and the run fails. Here 1 request in 20 never answers.
func TestLoadCountsStalledRequests(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name    string
		args    []string
		givenUp bool
	}{
		{"given up after grace", []string{"-grace", "300ms"}, true},
		{"timed out", []string{"-timeout", "200ms", "-grace", "5s"}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			srv := stallingService(t, 20)
			// 100/s: a rate the generator holds under -race on two busy
			// cores (at 200/s it once sent only 335 of 400).
			args := append([]string{"-duration", "2s", "-rate", "100", "-max-p99", "20ms"}, c.args...)
			rep, took, err := runLoadJSON(t, srv, args...)
			if err == nil || !strings.Contains(err.Error(), "requests failed") || !strings.Contains(err.Error(), "above -max-p99") {
				t.Errorf("load returned %v, want a failure for the failed requests and the p99", err)
			}
			stalled := rep.Sent / 20
			if rep.Scheduled != 200 || rep.Sent < 190 || rep.Errors < stalled-1 || rep.Errors > stalled+1 {
				t.Errorf("report %+v: want 200 scheduled, about as many sent, and the %d or so stalled ones as errors", rep, stalled)
			}
			// 5% of requests took at least -grace or -timeout: p99 shows it.
			if rep.P99 < 200*time.Millisecond {
				t.Errorf("p99 %s: the stalled requests are missing from the latencies", rep.P99)
			}
			if c.givenUp {
				// The first stalled request was due ~0.2s in and given up
				// at 2.3s.
				if rep.GivenUp != rep.Errors || rep.Max < 2*time.Second {
					t.Errorf("report %+v: want every error given up, and a max latency measured to then", rep)
				}
			} else if rep.GivenUp != 0 || took > 4*time.Second {
				t.Errorf("report %+v after %s: want requests timed out on their own, not waiting for -grace 5s", rep, took)
			}
		})
	}
}

// A service that answers /healthz but no read fails the run, with or
// without --rate: every request sent is an error, and with --rate the
// run also says it could not send what the rate called for.
func TestLoadFailsAgainstHungService(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		args []string
		want []string
	}{
		{"open loop", []string{"-rate", "100"}, []string{"all 64 requests sent failed", "64 were still unanswered", "sent 64 of the 100 requests -rate 100 called for"}},
		{"closed loop", nil, []string{"all 16 requests sent failed", "16 were still unanswered"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			srv := stallingService(t, 1)
			rep, _, err := runLoadJSON(t, srv, append([]string{"-duration", "1s", "-grace", "300ms"}, c.args...)...)
			if err == nil {
				t.Fatal("load against a service that answered no read returned success")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("load returned %q, want %q in it", err, w)
				}
			}
			// Each waited -grace at least; the first sent, the whole run.
			if rep.Sent != rep.Concurrency || rep.Errors != rep.Sent || rep.GivenUp != rep.Sent ||
				rep.P50 < 300*time.Millisecond || rep.Max < 1200*time.Millisecond {
				t.Errorf("report %+v: want -concurrency requests sent, all given up about 1.3s into the run", rep)
			}
		})
	}
}

// Seeding again leaves out the ids deleted through the service (tombstoned
// in NEW): OLD keeps equal to NEW, and a rollback (mode old) does not
// serve the deleted account again. An id OLD lacks for another reason is
// still seeded.
func TestSeedAgainKeepsDeletedAccountsDeleted(t *testing.T) {
	t.Parallel()
	b := setup(t, 100, serveConfig{Worker: false})
	if r := b.do(t, http.MethodDelete, "/accounts/9", ""); r.status != http.StatusNoContent {
		t.Fatalf("DELETE = %d %s", r.status, r.body)
	}
	if _, ok := accountIn(t, b.old, 9); ok {
		t.Fatal("OLD still has 9 right after the DELETE")
	}
	if _, err := b.old.Pool.Exec(context.Background(), `DELETE FROM accounts WHERE id = 10`); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	args := []string{"seed", "-old-dsn", b.old.URL, "-new-dsn", b.new.URL, "-rows", strconv.Itoa(100)}
	if err := run(context.Background(), args, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); !strings.Contains(got, "(1 inserted)") || !strings.Contains(got, "leaving out 1 deleted through the service") {
		t.Errorf("seed again printed %q, want 1 inserted and 1 left out", got)
	}
	if _, ok := accountIn(t, b.old, 10); !ok {
		t.Error("seed again did not restore account 10, deleted from OLD behind the service's back")
	}
	b.srv.m.mode.Override(fallback.ModeOld) // a rollback
	r := b.get(t, "/accounts/9")
	if _, ok := accountIn(t, b.old, 9); ok || r.status != http.StatusNotFound {
		t.Fatalf("after seeding again, OLD has deleted account 9 (present %v) and GET in mode old = %d %s", ok, r.status, r.body)
	}
}

// Ids above -max-id are 400 on every route, before they cost anything:
// DELETEs of far ids would each add a tracker segment in Redis, and a PUT
// of 2^63-1 mirrored to OLD would make the sweeper's key range [1, 2^63).
func TestFarIdsAreRejected(t *testing.T) {
	t.Parallel()
	const maxID = 1<<20 - 1 // the first tracker segment
	b := setup(t, 10, serveConfig{Worker: false, MaxID: maxID})
	ctx := context.Background()
	const body = `{"email":"a@example.org","name":"A","balance_cents":1,"status":"active"}`
	for i := range int64(20) {
		id := (i+1)<<20 | (1<<20 - 1) // the top key of segments 1 to 20
		if r := b.do(t, http.MethodDelete, "/accounts/"+strconv.FormatInt(id, 10), ""); r.status != http.StatusBadRequest {
			t.Fatalf("DELETE %d = %d %s, want 400", id, r.status, r.body)
		}
	}
	for _, c := range []struct{ method, path, body string }{
		{http.MethodPut, "/accounts/9223372036854775807", body},
		{http.MethodPut, "/accounts/" + strconv.Itoa(maxID+1), body},
		{http.MethodGet, "/accounts/" + strconv.Itoa(maxID+1), ""},
		{http.MethodDelete, "/accounts/9223372036854775807", ""},
	} {
		r := b.do(t, c.method, c.path, c.body)
		if r.status != http.StatusBadRequest {
			t.Fatalf("%s %s = %d %s, want 400", c.method, c.path, r.status, r.body)
		}
		if msg := jsonError(t, r); !strings.Contains(msg, "-max-id") {
			t.Errorf("%s %s: error %q does not point at -max-id", c.method, c.path, msg)
		}
	}
	segs, err := b.rdb.Keys(ctx, b.prefix+":tracker:accounts:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	var maxInOld int64
	if err := b.old.Pool.QueryRow(ctx, `SELECT max(id) FROM accounts`).Scan(&maxInOld); err != nil {
		t.Fatal(err)
	}
	if len(segs) != 0 || maxInOld != 10 {
		t.Fatalf("rejected far ids left tracker keys %v in Redis and OLD max(id) %d", segs, maxInOld)
	}
	// -max-id itself is accepted.
	if r := b.do(t, http.MethodPut, "/accounts/"+strconv.Itoa(maxID), body); r.status != http.StatusOK {
		t.Fatalf("PUT of -max-id = %d %s, want 200", r.status, r.body)
	}
	if r := b.do(t, http.MethodDelete, "/accounts/"+strconv.Itoa(maxID), ""); r.status != http.StatusNoContent {
		t.Fatalf("DELETE of -max-id = %d %s, want 204", r.status, r.body)
	}

	// The default is 2^40.
	d := setup(t, 10, serveConfig{Worker: false})
	if r := d.get(t, "/accounts/1099511627776"); r.status != http.StatusNotFound {
		t.Errorf("GET of 2^40 with the default -max-id = %d %s, want 404", r.status, r.body)
	}
	for _, path := range []string{"/accounts/1099511627777", "/accounts/9223372036854775807"} {
		if r := d.do(t, http.MethodPut, path, body); r.status != http.StatusBadRequest {
			t.Errorf("PUT %s with the default -max-id = %d %s, want 400", path, r.status, r.body)
		}
	}
}

// When requests are still running at -shutdown-timeout, serve cuts them off
// (their contexts end) and returns; it does not close the pools under
// them, which would wait for them as long as they run.
func TestServeCutsOffRequestsAtShutdownTimeout(t *testing.T) {
	t.Parallel()
	b := newBundle(t, 100)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr := freeAddr(t)
	var logs testenv.SyncBuffer
	served := make(chan error, 1)
	go func() {
		served <- run(ctx, append([]string{"serve", "-addr", addr, "-worker=false", "-shutdown-timeout", "300ms"}, b.connArgs()...), io.Discard, &logs)
	}()
	base := "http://" + addr
	client := &http.Client{Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	put := func() (int, error) {
		req, err := http.NewRequest(http.MethodPut, base+"/accounts/1",
			strings.NewReader(`{"email":"a@example.org","name":"A","balance_cents":1,"status":"active"}`))
		if err != nil {
			return 0, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	testenv.Eventually(t, 20*time.Second, "serve answers /healthz", func() bool {
		resp, err := client.Get(base + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if status, err := put(); status != http.StatusOK {
		t.Fatalf("PUT /accounts/1 = %d, %v", status, err)
	}

	// Hold account 1's row in NEW: the next PUT of it waits for the lock.
	tx, err := b.new.Pool.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(context.Background(), `SELECT FROM accounts WHERE id = 1 FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	released := false
	release := func() {
		if !released {
			released = true
			_ = tx.Rollback(context.Background())
		}
	}
	defer release()
	hung := make(chan error, 1)
	go func() {
		_, err := put()
		hung <- err
	}()
	testenv.Eventually(t, 10*time.Second, "the PUT waits for the row lock", func() bool {
		var n int
		err := b.new.Pool.QueryRow(context.Background(),
			`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n)
		return err == nil && n > 0
	})

	cancel()
	select {
	case err := <-served:
		if err == nil || !strings.Contains(err.Error(), "cut off") {
			t.Errorf("serve returned %v, want the shutdown timeout's error", err)
		}
	case <-time.After(10 * time.Second):
		release() // let the request, and serve, finish
		err := <-served
		t.Fatalf("serve did not return within 10s of its context ending while a request hung (then: %v)\nlogs:\n%s", err, logs.String())
	}
	if err := <-hung; err == nil {
		t.Error("the PUT cut off at shutdown was answered")
	}
}
