package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
)

// seed fills OLD fast, once: running it again inserts nothing, and NEW
// gets the table and lazymigrate's schema but no rows.
func TestSeed(t *testing.T) {
	t.Parallel()
	old, new := testenv.NewDatabase(t, "old"), testenv.NewDatabase(t, "new")
	args := []string{"seed", "-old-dsn", old.URL, "-new-dsn", new.URL, "-rows", "200000"}
	var out bytes.Buffer
	start := time.Now()
	if err := run(context.Background(), args, &out, &out); err != nil {
		t.Fatalf("seed: %v", err)
	}
	took := time.Since(start)
	t.Logf("seeded 200,000 accounts in %s", took)
	if took > 30*time.Second {
		t.Errorf("seeding 200,000 accounts took %s; it should take seconds", took)
	}
	if !strings.Contains(out.String(), "(200000 inserted)") {
		t.Errorf("seed printed %q", out.String())
	}
	ctx := context.Background()
	var n, lo, hi, emails, statuses int64
	err := old.Pool.QueryRow(ctx, `SELECT count(*), min(id), max(id), count(DISTINCT email), count(DISTINCT status) FROM accounts`).
		Scan(&n, &lo, &hi, &emails, &statuses)
	if err != nil || n != 200_000 || lo != 1 || hi != 200_000 || emails != n || statuses != 3 {
		t.Fatalf("OLD holds %d accounts %d..%d, %d emails, %d statuses (%v); want 200,000 with ids 1..200,000, distinct emails, 3 statuses",
			n, lo, hi, emails, statuses, err)
	}
	if err := new.Pool.QueryRow(ctx, `SELECT count(*) FROM accounts`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("NEW holds %d accounts (%v), want an empty table", n, err)
	}
	if err := new.Pool.QueryRow(ctx, `SELECT count(*) FROM lazymigrate.tombstones`).Scan(&n); err != nil {
		t.Fatalf("lazymigrate's schema is not set up in NEW: %v", err)
	}

	out.Reset()
	if err := run(ctx, []string{"seed", "-old-dsn", old.URL, "-new-dsn", new.URL, "-rows", "200001"}, &out, &out); err != nil {
		t.Fatalf("seed again: %v", err)
	}
	if !strings.Contains(out.String(), "(1 inserted)") {
		t.Errorf("seed again printed %q, want 1 inserted", out.String())
	}
}

// Mistakes are one line on stderr and a non-zero exit status; -h is not a
// mistake.
func TestCommandErrors(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		args   []string
		status int
		msg    string
	}{
		{nil, 2, "no command given"},
		{[]string{"migrate"}, 2, `unknown command "migrate"`},
		{[]string{"seed", "-rows", "x"}, 2, `seed: invalid value "x" for flag -rows`},
		{[]string{"seed", "-rows", "-1"}, 2, "-rows must not be negative"},
		{[]string{"seed", "extra"}, 2, `seed: unexpected argument "extra"`},
		{[]string{"serve", "-old-dsn", "", "-new-dsn", "postgres://x/y"}, 2, "no OLD database: set -old-dsn or LM_OLD_DSN"},
		{[]string{"seed", "-old-dsn", "postgres://127.0.0.1:1/x?connect_timeout=2", "-new-dsn", "postgres://127.0.0.1:1/y"}, 1, "OLD database at 127.0.0.1:1/x is unreachable"},
		{[]string{"load", "-addr", "127.0.0.1:1", "-duration", "1s"}, 1, "the service at http://127.0.0.1:1 does not answer"},
		{[]string{"load", "-zipf-s", "1"}, 2, "-zipf-s must be above 1"},
		{[]string{"seed", "-h"}, 0, ""},
		{[]string{"help"}, 0, ""},
	} {
		var stdout, stderr bytes.Buffer
		status := exitCode(run(context.Background(), c.args, &stdout, &stderr), &stderr)
		lines := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n")
		switch {
		case status != c.status:
			t.Errorf("accounts %v: exit status %d, want %d; stderr %q", c.args, status, c.status, stderr.String())
		case c.msg == "" && stderr.Len() > 0:
			t.Errorf("accounts %v: stderr %q, want nothing", c.args, stderr.String())
		case c.msg != "" && (len(lines) != 1 || !strings.HasPrefix(lines[0], "accounts: ") || !strings.Contains(lines[0], c.msg)):
			t.Errorf("accounts %v: stderr %q, want one line with %q", c.args, stderr.String(), c.msg)
		}
	}
}

// The load generator against the service: it holds its rate, every answer
// carries its source, and the share of NEW climbs as reads promote keys.
// The rate is one the service holds under -race on two cores while other
// packages' tests run beside it: at 300/s it fell below 90% there.
func TestLoad(t *testing.T) {
	t.Parallel()
	b := setup(t, 2000, serveConfig{Worker: true})
	var out bytes.Buffer
	args := []string{"load", "-addr", b.http.URL, "-duration", "3s", "-rate", "150", "-rows", "2000", "-json"}
	if err := run(context.Background(), args, &out, &out); err != nil {
		t.Fatalf("load: %v\n%s", err, out.String())
	}
	var rep LoadReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("decode the report: %v\n%s", err, out.String())
	}
	t.Logf("report: %+v", rep)
	if rep.Scheduled != 450 || rep.Sent < 405 || rep.Sent > rep.Scheduled || rep.Errors != 0 || rep.NotFound != 0 ||
		rep.FromNew+rep.FromOld != rep.Sent {
		t.Fatalf("report %+v: want 450 requests scheduled, about as many sent, all answered with a source, no errors", rep)
	}
	if rep.LastNewShare <= rep.NewShare || rep.LastNewShare < 0.5 || rep.P99 <= 0 || rep.P50 > rep.P99 {
		t.Errorf("report %+v: want NEW's share to climb above half by the last second, and sane latencies", rep)
	}
}

// keys maps Zipf ranks onto every id from 1 to n exactly once.
func TestKeysCoverTheKeySpace(t *testing.T) {
	t.Parallel()
	for _, n := range []int64{1, 2, 10, 97, 1000, 200_000} {
		k := newKeys(loadConfig{Rows: n, ZipfS: 1.1, ZipfV: 1}, 0)
		seen := make(map[int64]bool, n)
		for r := range uint64(n) {
			id := k.id(r)
			if id < 1 || id > n || seen[id] {
				t.Fatalf("n=%d: rank %d maps to %d, out of range or taken", n, r, id)
			}
			seen[id] = true
		}
		for range 1000 {
			if id := k.next(); id < 1 || id > n {
				t.Fatalf("n=%d: drew %d", n, id)
			}
		}
	}
}
