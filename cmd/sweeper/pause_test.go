package main

import (
	"context"
	"strings"
	"testing"

	"github.com/lazymigrate/lazymigrate/coldsweep"
)

// A pause of a table no sweep has reported under this Redis and --prefix
// (a typo, public.accounts for accounts, the application's prefix) would
// leave the real sweep running while the operator believes the load is
// off: it fails and names the sweeps that have reported, unless --force
// sets the flag for a sweep about to start.
func TestPauseOfAnUnknownSweepFails(t *testing.T) {
	t.Parallel()
	b := setup(t, 100)
	if r := b.sweeper(t, "run", "--quiet"); r.code != 0 {
		t.Fatalf("run: %v", r)
	}
	paused := func(table string) bool {
		t.Helper()
		p, err := coldsweep.IsPaused(context.Background(), b.rdb, b.prefix, table)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}

	r := b.sweeper(t, "pause", "--table", "acounts")
	wantOneLineError(t, r, `pause: no sweep of acounts has reported to this Redis under --prefix "`+b.prefix+`" (sweeps that have: accounts): check --table and --prefix, or give --force`)
	if paused("acounts") {
		t.Errorf("pause of an unknown sweep set the flag")
	}
	r = b.sweeper(t, "resume", "--table", "acounts")
	wantOneLineError(t, r, "resume: no sweep of acounts has reported")
	r = sweeper(t, "pause", "--redis", b.redis, "--prefix", b.prefix+"-app", "--table", "accounts")
	wantOneLineError(t, r, "pause: no sweep of accounts has reported to this Redis under --prefix \""+b.prefix+"-app\" (nor has any other sweep)")

	// --force: a sweep about to start holds before its first chunk.
	r = b.sweeper(t, "pause", "--table", "acounts", "--force")
	if r.code != 0 || !strings.Contains(r.stdout, "paused the sweep of acounts") || !strings.Contains(r.stderr, "no sweep of the table has reported") {
		t.Errorf("pause --force: want the flag set, with a warning: %v", r)
	}
	if !paused("acounts") {
		t.Errorf("pause --force did not set the flag")
	}
	// The flag is there to clear: no --force needed.
	if r := b.sweeper(t, "resume", "--table", "acounts"); r.code != 0 || !strings.Contains(r.stdout, "resumed the sweep of acounts") {
		t.Errorf("resume of a flag set with --force: %v", r)
	}

	// The sweep that reported needs no --force.
	if r := b.sweeper(t, "pause"); r.code != 0 || r.stderr != "" || !paused("accounts") {
		t.Errorf("pause of a known sweep: %v", r)
	}
	if r := b.sweeper(t, "resume"); r.code != 0 || r.stderr != "" || paused("accounts") {
		t.Errorf("resume of a known sweep: %v", r)
	}
}

func TestGlobEscape(t *testing.T) {
	t.Parallel()
	if got, want := globEscape(`lm*[a]?\:sweep:`), `lm\*\[a\]\?\\:sweep:`; got != want {
		t.Errorf("globEscape = %q, want %q", got, want)
	}
}
