package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/lazymigrate/lazymigrate/fallback"
)

// 'sweeper mode' shows the read mode and sets it as processes read it: a
// fallback.Switch with the same prefix follows every step, a rollout
// included, and a bad policy changes nothing.
func TestModeShowsAndSets(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, 10)
	sw, err := fallback.New(b.rdb, "accounts", &fallback.Config{Prefix: b.prefix})
	if err != nil {
		t.Fatal(err)
	}
	follows := func(want fallback.Policy) {
		t.Helper()
		if err := sw.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		if got := sw.Policy(); got != want {
			t.Fatalf("the application's switch: %v, want %v", got, want)
		}
	}

	statusSays := func(want string) {
		t.Helper()
		r := b.sweeper(t, "status", "--json")
		var st struct {
			ReadMode string `json:"read_mode"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || r.code != 0 || st.ReadMode != want {
			t.Fatalf("status --json: read_mode %q, want %q: %v (%v)", st.ReadMode, want, r, err)
		}
	}

	r := b.sweeper(t, "mode")
	if r.code != 0 || !strings.Contains(r.stdout, "read mode of accounts: not set") {
		t.Fatalf("mode before any set: %v", r)
	}
	statusSays("")
	r = b.sweeper(t, "mode", "--set", "readthrough 5%")
	if r.code != 0 || !strings.Contains(r.stdout, "read mode of accounts set to readthrough 5% (was not set)") {
		t.Fatalf("mode --set 'readthrough 5%%': %v", r)
	}
	follows(fallback.Policy{Mode: fallback.ModeReadthrough, Percent: 5})
	statusSays("readthrough 5%")
	if r := b.sweeper(t, "status"); r.code != 0 || !strings.Contains(r.stdout, "read mode  readthrough 5%\n") {
		t.Fatalf("status does not show the read mode: %v", r)
	}

	r = b.sweeper(t, "mode", "--set", "OLD")
	if r.code != 0 || !strings.Contains(r.stdout, "set to old (was readthrough 5%)") {
		t.Fatalf("mode --set OLD: %v", r)
	}
	follows(fallback.Full(fallback.ModeOld))

	r = b.sweeper(t, "mode", "--json")
	var got modeJSON
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || r.code != 0 {
		t.Fatalf("mode --json: %v (%v)", r, err)
	}
	if want := (modeJSON{Table: "accounts", Key: b.prefix + ":mode:accounts", Set: true, Policy: "old", Mode: "old", Percent: 100}); got != want {
		t.Fatalf("mode --json = %+v, want %+v", got, want)
	}

	for _, bad := range []string{"old 50%", "readthrough 5.001%", "sideways"} {
		r := b.sweeper(t, "mode", "--set", bad)
		wantOneLineError(t, r, "mode: --set: fallback: invalid mode")
	}
	follows(fallback.Full(fallback.ModeOld))
	if r := b.sweeper(t, "mode"); r.code != 0 || !strings.Contains(r.stdout, "read mode of accounts: old\n") {
		t.Fatalf("mode after refused sets: %v", r)
	}

	// A value written by hand that is no policy: shown as an error, and
	// --set replaces it.
	if err := b.rdb.Set(ctx, b.prefix+":mode:accounts", "rollback please", 0).Err(); err != nil {
		t.Fatal(err)
	}
	wantOneLineError(t, b.sweeper(t, "mode"), "processes keep their last known mode")
	statusSays("invalid")
	if r := b.sweeper(t, "mode", "--set", "readthrough"); r.code != 0 || !strings.Contains(r.stdout, "set to readthrough (was an invalid value)") {
		t.Fatalf("mode --set over an invalid value: %v", r)
	}
	follows(fallback.Full(fallback.ModeReadthrough))

	wantOneLineError(t, sweeper(t, "mode", "--redis", b.redis), "--table is required")
}
