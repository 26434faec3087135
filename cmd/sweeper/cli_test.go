package main

import (
	"context"
	"math"
	"strings"
	"testing"

	"github.com/lazymigrate/lazymigrate/coldsweep"
	"github.com/lazymigrate/lazymigrate/internal/connect"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
)

// wantOneLineError checks that r failed with exit 2 and one line on stderr
// that contains want, and printed nothing on stdout.
func wantOneLineError(t *testing.T, r result, want string) {
	t.Helper()
	if r.code != exitError {
		t.Errorf("exit %d, want %d\n%v", r.code, exitError, r)
	}
	if n := strings.Count(r.stderr, "\n"); n != 1 || !strings.HasSuffix(r.stderr, "\n") || !strings.HasPrefix(r.stderr, "sweeper: ") {
		t.Errorf("stderr has %d lines, want one starting with \"sweeper: \":\n%s", n, r.stderr)
	}
	if !strings.Contains(r.stderr, want) {
		t.Errorf("stderr does not say %q:\n%s", want, r.stderr)
	}
	if r.stdout != "" {
		t.Errorf("stdout is not empty:\n%s", r.stdout)
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}} {
		r := sweeper(t, args...)
		if r.code != 0 || !strings.Contains(r.stdout, "Usage: sweeper <command>") || r.stderr != "" {
			t.Errorf("%v: %v", args, r)
		}
		for _, cmd := range commands {
			if !strings.Contains(r.stdout, "  "+cmd.name+" ") {
				t.Errorf("%v does not list %s:\n%s", args, cmd.name, r.stdout)
			}
		}
	}
	for _, cmd := range commands {
		for _, args := range [][]string{{cmd.name, "-h"}, {cmd.name, "--help"}, {"help", cmd.name}} {
			r := sweeper(t, args...)
			if r.code != 0 || !strings.HasPrefix(r.stdout, "Usage: sweeper "+cmd.name+" ") || r.stderr != "" {
				t.Errorf("%v: %v", args, r)
			}
			if !strings.Contains(r.stdout, "--log-level level") {
				t.Errorf("%v does not list the flags:\n%s", args, r.stdout)
			}
		}
	}
	r := sweeper(t)
	if r.code != exitError || !strings.Contains(r.stderr, "Usage: sweeper <command>") {
		t.Errorf("no arguments: %v", r)
	}
}

// TestUsageErrors covers command lines that cannot be read, and flag values
// that are wrong: each is one line naming the problem, exit 2, before any
// connection is opened.
func TestUsageErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"frob"}, `unknown command "frob" (see 'sweeper help')`},
		{[]string{"run", "--bogus"}, `run: flag provided but not defined: -bogus (see 'sweeper run -h')`},
		{[]string{"run", "--table", "accounts", "now"}, `unexpected argument "now" (see 'sweeper run -h')`},
		{[]string{"run", "--chunk", "abc"}, `invalid value "abc" for flag -chunk`},
		{[]string{"run", "--log-level", "loud"}, `invalid value "loud" for flag -log-level`},
		{[]string{"run"}, "run: --table is required"},
		{[]string{"run", "--table", "accounts", "--key", ""}, `--key "": name the key column`},
		{[]string{"run", "--table", "accounts", "--chunk", "0"}, "run: --chunk 0: must be between 1 and 131072"},
		{[]string{"run", "--table", "accounts", "--chunk", "-3"}, "run: --chunk -3: must be between 1 and 131072"},
		{[]string{"run", "--table", "accounts", "--chunk", "200000"}, "run: --chunk 200000: must be between 1 and 131072"},
		{[]string{"run", "--table", "accounts", "--workers", "0"}, "run: --workers 0: must be between 1 and 1024"},
		// int32(workers) sizes the pools.
		{[]string{"run", "--table", "accounts", "--workers", "3000000000"}, "run: --workers 3000000000: must be between 1 and 1024"},
		{[]string{"run", "--table", "accounts", "--rate", "-5"}, "run: --rate -5: must be a number >= 0 (0 means no limit)"},
		// The rate limiter takes NaN for no limit at all.
		{[]string{"run", "--table", "accounts", "--rate", "NaN"}, "run: --rate NaN: must be a number >= 0"},
		{[]string{"run", "--table", "accounts", "--rate", "Inf"}, "run: --rate +Inf: must be a number >= 0"},
		{[]string{"run", "--table", "accounts", "--nice", "-1"}, "run: --nice -1: must be between 0 and 1000"},
		{[]string{"run", "--table", "accounts", "--nice", "NaN"}, "run: --nice NaN: must be between 0 and 1000"},
		// time.Duration(1e300 * took) overflows: no rest at all.
		{[]string{"run", "--table", "accounts", "--nice", "1e300"}, "run: --nice 1e+300: must be between 0 and 1000"},
		// run saves its progress to Redis every --interval.
		{[]string{"run", "--table", "accounts", "--interval", "1ns"}, "run: --interval 1ns: must be at least 100ms"},
		{[]string{"run", "--table", "accounts", "--interval", "-1s"}, "run: --interval -1s: must be at least 100ms"},
		{[]string{"run", "--table", "accounts", "--max-lag", "-1s"}, "run: --max-lag -1s: must not be negative"},
		{[]string{"run", "--table", "accounts", "--shard", "3/2"}, `run: --shard "3/2": want i/n with 0 <= i < n`},
		{[]string{"run", "--table", "accounts", "--shard", "half"}, `run: --shard "half": want i/n with 0 <= i < n`},
		{[]string{"run", "--table", "accounts", "--from", "10", "--to", "5"}, "run: --from 10 --to 5: --from must not exceed --to"},
		{[]string{"run", "--table", "accounts", "--from", "-1"}, "run: --from -1: keys are integers >= 0"},
		{[]string{"run", "--table", "accounts", "--to", "x"}, `invalid value "x" for flag -to: not an integer`},
		{[]string{"run", "--table", "accounts", "--segment-bits", "5"}, "run: --segment-bits 5: must be between 10 and 28"},
		{[]string{"run", "--table", "accounts", "--prefix", ""}, `run: --prefix "": must not be empty`},
		{[]string{"run", "--table", "accounts", "--progress", "fancy"}, `run: --progress "fancy": want auto, bar, plain or none`},
		{[]string{"run", "--table", "accounts", "--pushgateway", "pushgw:9091"}, `run: --pushgateway "pushgw:9091": want the Pushgateway's http:// or https:// URL`},
		{[]string{"verify", "--table", "accounts", "--max-listed", "0"}, "verify: --max-listed 0: must be at least 1"},
		{[]string{"verify", "--table", "accounts", "--chunk", "0"}, "verify: --chunk 0: must be at least 1"},
		{[]string{"verify", "--table", "accounts", "--workers", "5000"}, "verify: --workers 5000: must be between 1 and 1024"},
		{[]string{"verify", "--table", "accounts", "--shard", "2/2"}, `verify: --shard "2/2": want i/n`},
		{[]string{"verify", "--table", "accounts", "--columns", "name,,email"}, `verify: --columns "name,,email": an empty column name`},
		{[]string{"status", "--table", "accounts", "--cells", "0"}, "status: --cells 0: must be between 1 and 1024"},
		{[]string{"status"}, "status: --table is required"},
		{[]string{"pause"}, "pause: --table is required"},
		{[]string{"rebuild-tracker", "--table", "accounts", "--segment-bits", "40"}, "rebuild-tracker: --segment-bits 40: must be between 10 and 28"},
		{[]string{"init", "--table", "accounts"}, "init: flag provided but not defined: -table"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			wantOneLineError(t, sweeper(t, tc.args...), tc.want)
		})
	}
}

// Secrets given on the command line stay out of stderr (CI logs,
// journald): a redis:// URL that cannot be used, a --pushgateway URL that
// is not one, are named without their password.
func TestFlagErrorsHidePasswords(t *testing.T) {
	t.Parallel()
	const secret = "s3cretpw"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"pause", "--table", "accounts", "--redis", "redis://:" + secret + "@127.0.0.1:6379/notadb"},
			`pause: Redis address "redis://:xxxxx@127.0.0.1:6379/notadb": redis: invalid database number`},
		{[]string{"pause", "--table", "accounts", "--redis", "redis://u:" + secret + "@127.0.0.1:port"},
			`pause: Redis address "redis://xxxxx@127.0.0.1:port": invalid port`},
		{[]string{"run", "--table", "accounts", "--pushgateway", "htp://admin:" + secret + "@pg:9091"},
			`run: --pushgateway "htp://admin:xxxxx@pg:9091": want the Pushgateway's http:// or https:// URL`},
	} {
		r := sweeper(t, tc.args...)
		wantOneLineError(t, r, tc.want)
		if strings.Contains(r.stderr, secret) {
			t.Errorf("%s: the password is printed:\n%s", tc.args[0], r.stderr)
		}
	}
}

// TestMissingConnection: no flag and no environment variable. (Not
// parallel: it clears the environment.)
func TestMissingConnection(t *testing.T) {
	for _, env := range []string{connect.EnvOldDSN, connect.EnvNewDSN} {
		t.Setenv(env, "")
	}
	wantOneLineError(t, sweeper(t, "run", "--table", "accounts"), "run: no OLD database given: set --old-dsn or LM_OLD_DSN")
	wantOneLineError(t, sweeper(t, "init"), "init: no NEW database given: set --new-dsn or LM_NEW_DSN")
}

// TestRuntimeErrors covers what only the servers can tell: unreachable
// servers, unknown tables, unusable key columns, a NEW without lazymigrate's
// schema, a tracker of another layout.
func TestRuntimeErrors(t *testing.T) {
	t.Parallel()
	p := testenv.NewPair(t)
	bare := testenv.NewDatabase(t, "bare") // no lazymigrate schema
	bare.Exec(t, testenv.AccountsDDL)
	// NEW: a table whose integer column has no unique index.
	p.New.Exec(t, `CREATE TABLE ledger (id bigint, amount bigint)`)
	p.Old.Exec(t, `CREATE TABLE ledger (id bigint, amount bigint)`)
	rdb, prefix := testenv.Redis(t)
	redisAddr := testenv.Require(t, "LM_REDIS_ADDR")
	if r := sweeper(t, "init", "--new-dsn", p.New.URL); r.code != 0 {
		t.Fatalf("init: %v", r)
	}
	// A bitmap written with 20 segment bits.
	if err := rdb.Set(context.Background(), prefix+":tracker:accounts:segment_bits", "20", 0).Err(); err != nil {
		t.Fatal(err)
	}

	const down = "postgres://postgres@127.0.0.1:1/nowhere?connect_timeout=5"
	old, nw := []string{"--old-dsn", p.Old.URL}, []string{"--new-dsn", p.New.URL}
	rd := []string{"--redis", redisAddr, "--prefix", prefix}
	run := concat([]string{"run", "--table", "accounts"}, old, nw, rd)
	verify := concat([]string{"verify", "--table", "accounts"}, old, nw)
	status := concat([]string{"status", "--table", "accounts"}, old, rd)
	rebuild := concat([]string{"rebuild-tracker", "--table", "accounts"}, nw, rd)

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"run OLD down", concat(run, []string{"--old-dsn", down}), "run: OLD database at 127.0.0.1:1/nowhere is unreachable: "},
		{"run NEW down", concat(run, []string{"--new-dsn", down}), "run: NEW database at 127.0.0.1:1/nowhere is unreachable: "},
		{"run Redis down", concat(run, []string{"--redis", "127.0.0.1:1"}), "run: Redis at 127.0.0.1:1 is unreachable: "},
		{"run bad DSN", concat(run, []string{"--old-dsn", "postgres://h:port/db"}), "run: OLD database: bad DSN: "},
		{"run bad Redis address", concat(run, []string{"--redis", "localhost"}), `run: Redis address "localhost": want host:port`},
		{"verify OLD down", concat(verify, []string{"--old-dsn", down}), "verify: OLD database at 127.0.0.1:1/nowhere is unreachable: "},
		{"verify NEW down", concat(verify, []string{"--new-dsn", down}), "verify: NEW database at 127.0.0.1:1/nowhere is unreachable: "},
		{"status OLD down", concat(status, []string{"--old-dsn", down}), "status: OLD database at 127.0.0.1:1/nowhere is unreachable: "},
		{"status Redis down", concat(status, []string{"--redis", "127.0.0.1:1"}), "status: Redis at 127.0.0.1:1 is unreachable: "},
		{"rebuild Redis down", concat(rebuild, []string{"--redis", "127.0.0.1:1"}), "rebuild-tracker: Redis at 127.0.0.1:1 is unreachable: "},
		{"init NEW down", []string{"init", "--new-dsn", down}, "init: NEW database at 127.0.0.1:1/nowhere is unreachable: "},
		{"pause Redis down", []string{"pause", "--table", "accounts", "--redis", "127.0.0.1:1"}, "pause: Redis at 127.0.0.1:1 is unreachable: "},

		{"run unknown table", concat(run, []string{"--table", "acounts"}), `run: --table "acounts": NEW has no such table (check the name and the search_path)`},
		{"run unknown OLD table", concat(run, []string{"--old-table", "legacy.accounts"}), `run: --old-table "legacy.accounts": OLD has no such table`},
		{"verify unknown table", concat(verify, []string{"--table", "nope"}), `verify: --table "nope": NEW has no such table`},
		{"status unknown OLD table", concat(status, []string{"--table", "nope"}), `status: --table "nope": OLD has no such table`},
		{"rebuild unknown table", concat(rebuild, []string{"--table", "nope"}), `rebuild-tracker: --table "nope": NEW has no such table`},

		{"run missing key", concat(run, []string{"--key", "uid"}), `run: --key "uid": NEW: table public.accounts has no column "uid"`},
		{"run text key", concat(run, []string{"--key", "email"}), `run: --key "email": NEW: public.accounts.email is text; lazymigrate keys must be smallint, integer or bigint`},
		{"run key not unique", concat(run, []string{"--table", "ledger"}), `run: --key "id": NEW: public.ledger.id has no unique index or primary key of its own`},
		{"verify missing key", concat(verify, []string{"--key", "uid"}), `verify: --key "uid": NEW: table public.accounts has no column "uid"`},
		{"status text key", concat(status, []string{"--key", "email"}), `status: --key "email": OLD: public.accounts.email is text`},
		{"rebuild missing key", concat(rebuild, []string{"--key", "uid"}), `rebuild-tracker: --key "uid": NEW: table public.accounts has no column "uid"`},

		{"run not set up", concat(run, []string{"--new-dsn", bare.URL}), "run: lazymigrate's schema is not set up in NEW: run 'sweeper init' first"},
		{"verify not set up", concat(verify, []string{"--new-dsn", bare.URL}), "verify: lazymigrate's schema is not set up in NEW: run 'sweeper init' first"},
		{"rebuild not set up", concat(rebuild, []string{"--new-dsn", bare.URL}), "rebuild-tracker: lazymigrate's schema is not set up in NEW: run 'sweeper init' first"},

		{"status other layout", concat(status, []string{"--segment-bits", "12"}), "status: --segment-bits 12: the tracker of accounts in Redis was written with 20 (give --segment-bits 20"},
		{"run other layout", concat(run, []string{"--segment-bits", "12"}), "run: --segment-bits 12: the tracker of accounts in Redis was written with 20"},
		{"run metrics address taken", concat(run, []string{"--metrics-addr", "127.0.0.1:-1"}), `run: --metrics-addr "127.0.0.1:-1": listen tcp: `},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			wantOneLineError(t, sweeper(t, tc.args...), tc.want)
		})
	}
}

// The ends of a range read from the tables must be keys a range can start
// and end at: a negative key, or math.MaxInt64 (one past it would wrap
// around to math.MinInt64), is an error that names the flag to give.
func TestRangeSpanRefusesBoundsNoRangeCanHold(t *testing.T) {
	t.Parallel()
	bounds := func(lo, hi int64) func() (int64, int64, bool, error) {
		return func() (int64, int64, bool, error) { return lo, hi, true, nil }
	}
	var r rangeFlags
	if s, _, err := r.span(bounds(1, math.MaxInt64)); err == nil || !strings.Contains(err.Error(), "give --to 9223372036854775806") {
		t.Errorf("largest key MaxInt64: span = %v, %v; want an error pointing to --to", s, err)
	}
	if s, _, err := r.span(bounds(-3, 10)); err == nil || !strings.Contains(err.Error(), "give --from 0") {
		t.Errorf("smallest key -3: span = %v, %v; want an error pointing to --from", s, err)
	}
	// The flags given replace the bounds read.
	r.from, r.to = optInt{v: 0, set: true}, optInt{v: 50, set: true}
	if s, ok, err := r.span(bounds(-3, math.MaxInt64)); err != nil || !ok || s != (coldsweep.Span{Lo: 0, Hi: 51}) {
		t.Errorf("--from 0 --to 50: span = %v, %v, %v; want [0, 51)", s, ok, err)
	}
}
