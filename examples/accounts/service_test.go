package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
)

// accountIn reads key from db as the service answers it.
func accountIn(t *testing.T, db *testenv.Database, key int64) (Account, bool) {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), selectAccount, key)
	if err != nil {
		t.Fatal(err)
	}
	a, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[Account])
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return Account{}, false
	case err != nil:
		t.Fatal(err)
	}
	return a, true
}

func sameAccount(a, b Account) bool {
	return a.ID == b.ID && a.Email == b.Email && a.Name == b.Name && a.BalanceCents == b.BalanceCents &&
		a.Status == b.Status && a.CreatedAt.Equal(b.CreatedAt) && a.UpdatedAt.Equal(b.UpdatedAt)
}

// The service end to end over real HTTP, Postgres, Redis and asynq: reads
// fall back to OLD and promote, writes go to NEW and are mirrored to OLD,
// deletes stay deleted, bad keys are 400, and status.json tells it all.
func TestServiceEndToEnd(t *testing.T) {
	t.Parallel()
	b := setup(t, 1000, serveConfig{Worker: true})
	ctx := context.Background()

	// A read of a key only OLD has: served by OLD, then promoted by the
	// in-process worker, then served by NEW.
	want, _ := accountIn(t, b.old, 7)
	r := b.get(t, "/accounts/7")
	if r.status != http.StatusOK || r.source() != "old" || !sameAccount(r.account(t), want) {
		t.Fatalf("first GET /accounts/7 = %d from %q %s, want OLD's row from old", r.status, r.source(), r.body)
	}
	testenv.Eventually(t, 10*time.Second, "key 7 promoted and served by NEW", func() bool {
		r := b.get(t, "/accounts/7")
		return r.status == http.StatusOK && r.source() == "new"
	})
	if got, ok := accountIn(t, b.new, 7); !ok || !sameAccount(got, want) {
		t.Fatalf("NEW's key 7 = %+v (present %v), want OLD's %+v", got, ok, want)
	}

	// PUT replaces a promoted account, keeping created_at; the answer is
	// what GET reads afterwards, and OLD has the same row.
	r = b.do(t, http.MethodPut, "/accounts/7", `{"email":"ada@example.org","name":"Ada L.","balance_cents":4200,"status":"suspended"}`)
	if r.status != http.StatusOK {
		t.Fatalf("PUT /accounts/7 = %d %s", r.status, r.body)
	}
	put := r.account(t)
	if put.ID != 7 || put.Email != "ada@example.org" || put.Name != "Ada L." || put.BalanceCents != 4200 ||
		put.Status != "suspended" || !put.CreatedAt.Equal(want.CreatedAt) || !put.UpdatedAt.After(want.UpdatedAt) {
		t.Fatalf("PUT answered %+v; want the new values, created_at %v kept, a later updated_at", put, want.CreatedAt)
	}
	if r := b.get(t, "/accounts/7"); r.status != http.StatusOK || r.source() != "new" || !sameAccount(r.account(t), put) {
		t.Fatalf("GET after PUT = %d from %q %s, want %+v from new", r.status, r.source(), r.body, put)
	}
	if got, _ := accountIn(t, b.old, 7); !sameAccount(got, put) {
		t.Fatalf("OLD's key 7 = %+v, want the mirrored %+v", got, put)
	}

	// PUT of a key only OLD has promotes it first: created_at is OLD's.
	old8, _ := accountIn(t, b.old, 8)
	r = b.do(t, http.MethodPut, "/accounts/8", `{"email":"b@example.org","name":"B","balance_cents":-5,"status":"active"}`)
	if r.status != http.StatusOK || !r.account(t).CreatedAt.Equal(old8.CreatedAt) {
		t.Fatalf("PUT /accounts/8 = %d %s, want 200 keeping created_at %v", r.status, r.body, old8.CreatedAt)
	}

	// PUT of a key in neither database creates it, in both.
	r = b.do(t, http.MethodPut, "/accounts/5000", `{"email":"new@example.org","name":"New","balance_cents":0,"status":"active"}`)
	if r.status != http.StatusOK {
		t.Fatalf("PUT /accounts/5000 = %d %s", r.status, r.body)
	}
	created := r.account(t)
	if !created.CreatedAt.Equal(created.UpdatedAt) {
		t.Fatalf("created account %+v: created_at and updated_at differ", created)
	}
	if got, ok := accountIn(t, b.old, 5000); !ok || !sameAccount(got, created) {
		t.Fatalf("OLD's key 5000 = %+v (present %v), want the mirrored %+v", got, ok, created)
	}

	// DELETE is 204, twice; the key reads 404 for good, and OLD lost it too.
	for range 2 {
		if r := b.do(t, http.MethodDelete, "/accounts/9", ""); r.status != http.StatusNoContent {
			t.Fatalf("DELETE /accounts/9 = %d %s, want 204", r.status, r.body)
		}
	}
	if r := b.get(t, "/accounts/9"); r.status != http.StatusNotFound {
		t.Fatalf("GET after DELETE = %d %s, want 404", r.status, r.body)
	}
	if _, ok := accountIn(t, b.old, 9); ok {
		t.Fatal("OLD still has key 9 after DELETE: the delete was not mirrored")
	}
	var tomb bool
	if err := b.new.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM lazymigrate.tombstones WHERE key = 9)`).Scan(&tomb); err != nil || !tomb {
		t.Fatalf("tombstone of key 9 in NEW: %v, %v; want one", tomb, err)
	}

	// A key in neither database is 404; keys that do not parse are 400
	// with a JSON error, whatever the method; so is a bad body.
	if r := b.get(t, "/accounts/99999"); r.status != http.StatusNotFound {
		t.Fatalf("GET /accounts/99999 = %d, want 404", r.status)
	}
	for _, c := range []struct{ method, path, body string }{
		{http.MethodGet, "/accounts/abc", ""},
		{http.MethodGet, "/accounts/-1", ""},
		{http.MethodGet, "/accounts/99999999999999999999", ""},
		{http.MethodPut, "/accounts/x", `{"email":"a@b","name":"A","balance_cents":1,"status":"active"}`},
		{http.MethodDelete, "/accounts/1.5", ""},
		{http.MethodPut, "/accounts/1", `{"email":"a@b"}`},
		{http.MethodPut, "/accounts/1", `{"email":"a@b","name":"A","balance_cents":1,"status":"gone"}`},
		{http.MethodPut, "/accounts/1", `{"email":"a@b","name":"A","balance_cents":1,"status":"active","id":2}`},
		{http.MethodPut, "/accounts/1", `not json`},
	} {
		r := b.do(t, c.method, c.path, c.body)
		var e struct{ Error string }
		if r.status != http.StatusBadRequest || json.Unmarshal(r.body, &e) != nil || e.Error == "" {
			t.Errorf("%s %s %s = %d %s, want 400 with a JSON error", c.method, c.path, c.body, r.status, r.body)
		}
	}

	// status.json: OLD's key range grew to 5000 with the mirrored PUT;
	// keys 7, 8, 9 (deleted) and 5000 are settled.
	testenv.Eventually(t, 10*time.Second, "status.json counts the reads and promotions", func() bool {
		ts := b.status(t).Tables[0]
		return ts.Reads.PerSec > 0 && ts.Reads.NewShare > 0 && ts.Promotion.CopiedPerSec > 0
	})
	ts := b.status(t).Tables[0]
	if ts.Mode != "readthrough" || ts.KeyRange == nil || *ts.KeyRange != (KeyRange{1, 5000}) ||
		ts.TotalKeys != 5000 || ts.SettledKeys != 4 || ts.Percent != 100*4.0/5000 {
		t.Fatalf("status = mode %s, range %+v, %d of %d settled (%.3f%%); want readthrough, [1, 5000], 4 of 5000 (0.08%%)",
			ts.Mode, ts.KeyRange, ts.SettledKeys, ts.TotalKeys, ts.Percent)
	}
	if n := len(ts.Heatmap.Cells); n != 200 || ts.Heatmap.KeysPerCell != 25 {
		t.Fatalf("heatmap: %d cells of %d keys, want 200 of 25", n, ts.Heatmap.KeysPerCell)
	}
	if c := ts.Heatmap.Cells[0]; c.Lo != 1 || c.Hi != 25 || c.Settled != 3 || c.Fraction != 3.0/25 {
		t.Fatalf("first cell = %+v, want keys 1-25 with 3 settled", c)
	}
	if c := ts.Heatmap.Cells[199]; c.Lo != 4976 || c.Hi != 5000 || c.Settled != 1 {
		t.Fatalf("last cell = %+v, want keys 4976-5000 with 1 settled", c)
	}
	if ts.Sweep.State != "not started" || len(ts.Errors) != 0 || !ts.Promotion.WorkerInProcess {
		t.Fatalf("status sweep %+v, errors %v, worker in process %v", ts.Sweep, ts.Errors, ts.Promotion.WorkerInProcess)
	}

	// The operating surfaces.
	if r := b.get(t, "/healthz"); r.status != http.StatusOK || !strings.Contains(string(r.body), `"redis":"ok"`) {
		t.Fatalf("GET /healthz = %d %s", r.status, r.body)
	}
	r = b.get(t, "/metrics")
	for _, name := range []string{
		`lazymigrate_http_requests_total{outcome="ok",route="GET /accounts/{id}",source="old"}`,
		`lazymigrate_promotions_total{outcome="copied",table="accounts"}`,
		`lazymigrate_writes_total{op="delete",outcome="ok",table="accounts"} 2`,
		`lazymigrate_tracker_settled_keys{table="accounts"} 4`,
		`lazymigrate_read_mode{mode="readthrough",table="accounts"} 1`,
		"go_goroutines",
	} {
		if !strings.Contains(string(r.body), name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if r := b.get(t, "/status"); r.status != http.StatusOK || !strings.Contains(string(r.body), `id="percent-accounts">0.0%<`) {
		t.Fatalf("GET /status = %d, want the page with 0.0%%:\n%s", r.status, r.body)
	}
}

// The commands as an operator runs them: serve without its worker, and a
// worker of its own that promotes what the service's reads schedule. Both
// stop cleanly when their context ends (SIGINT or SIGTERM).
func TestServeAndWorkerCommands(t *testing.T) {
	t.Parallel()
	b := newBundle(t, 100)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	addr := freeAddr(t)
	var serveOut, logs testenv.SyncBuffer
	served := make(chan error, 1)
	go func() {
		served <- run(ctx, append([]string{"serve", "-addr", addr, "-worker=false"}, b.connArgs()...), &serveOut, &logs)
	}()
	worked := make(chan error, 1)
	go func() {
		worked <- run(ctx, append([]string{"worker", "-task-check-interval", "20ms"}, b.connArgs()...), io.Discard, &logs)
	}()

	base := "http://" + addr
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	source := func(path string) (int, string) {
		resp, err := client.Get(base + path)
		if err != nil {
			return 0, ""
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Lazymigrate-Source")
	}
	testenv.Eventually(t, 20*time.Second, "serve answers /healthz", func() bool {
		status, _ := source("/healthz")
		return status == http.StatusOK
	})
	if !strings.Contains(serveOut.String(), "serving accounts on "+base) {
		t.Errorf("serve printed %q, want its address", serveOut.String())
	}
	if status, src := source("/accounts/42"); status != http.StatusOK || src != "old" {
		t.Fatalf("GET /accounts/42 = %d from %q, want 200 from old", status, src)
	}
	testenv.Eventually(t, 20*time.Second, "the worker command promoted key 42", func() bool {
		status, src := source("/accounts/42")
		return status == http.StatusOK && src == "new"
	})

	cancel()
	for name, c := range map[string]chan error{"serve": served, "worker": worked} {
		select {
		case err := <-c:
			if err != nil {
				t.Errorf("%s returned %v after its context ended, want nil", name, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s did not stop within 30s of its context ending", name)
		}
	}
	if t.Failed() {
		t.Logf("logs:\n%s", logs.String())
	}
}
