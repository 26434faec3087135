package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/coldsweep"
	"github.com/lazymigrate/lazymigrate/internal/connect"
)

// appName names the sweeper's sessions in pg_stat_activity.
const appName = "lazymigrate-sweeper"

// cli is what a subcommand works with: its outputs, its flags, its logger.
type cli struct {
	name, summary string
	stdout        io.Writer
	stderr        io.Writer

	fs       *flag.FlagSet
	synopsis string
	help     string
	logLevel slog.Level
	quiet    bool
	con      *console
	log      *slog.Logger
}

// errHelp is returned by parse when -h was given: usage went to stdout.
var errHelp = errors.New("help requested")

// usageError is a command line the flag package could not read. It is
// reported with a pointer to the command's help.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// flagError is a flag whose value is wrong: "--name value: problem".
func flagError(name string, value any, format string, args ...any) error {
	return fmt.Errorf("--%s %s: %s", name, quoteValue(value), fmt.Sprintf(format, args...))
}

func quoteValue(v any) string {
	if s, ok := v.(string); ok {
		return strconv.Quote(s)
	}
	return fmt.Sprint(v)
}

// flags starts the command's flag set. synopsis follows "Usage: "; help
// is a paragraph printed before the flags.
func (c *cli) flags(synopsis, help string) *flag.FlagSet {
	c.fs = flag.NewFlagSet("sweeper "+c.name, flag.ContinueOnError)
	c.fs.SetOutput(io.Discard) // parse reports errors itself, on one line
	c.fs.Usage = func() {}
	c.synopsis, c.help = synopsis, help
	c.fs.TextVar(&c.logLevel, "log-level", slog.LevelInfo, "log `level`: debug, info, warn or error")
	c.fs.BoolVar(&c.quiet, "quiet", false, "no progress on stderr, and log warnings and errors only")
	return c.fs
}

// parse reads args and sets up the logger.
func (c *cli) parse(args []string) error {
	if err := c.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			c.printUsage(c.stdout)
			return errHelp
		}
		return usageError{err.Error()}
	}
	if c.fs.NArg() > 0 {
		return usageError{fmt.Sprintf("unexpected argument %q", c.fs.Arg(0))}
	}
	if c.quiet && c.logLevel < slog.LevelWarn {
		c.logLevel = slog.LevelWarn
	}
	c.con = newConsole(c.stderr)
	c.log = slog.New(slog.NewTextHandler(c.con, &slog.HandlerOptions{Level: c.logLevel}))
	return nil
}

// printUsage prints the command's help: synopsis, paragraph, flags with
// their double-dash spelling (the flag package accepts both).
func (c *cli) printUsage(w io.Writer) {
	fmt.Fprintf(w, "Usage: sweeper %s %s\n\n%s\n", c.name, c.synopsis, strings.TrimSpace(c.help))
	fmt.Fprintf(w, "\nFlags:\n")
	c.fs.VisitAll(func(f *flag.Flag) {
		name, text := flag.UnquoteUsage(f)
		head := "  --" + f.Name
		if name != "" {
			head += " " + name
		}
		if def := f.DefValue; def != "" && def != "0" && def != "false" && def != "0s" {
			if _, isString := f.Value.(*stringValue); isString || strings.ContainsAny(def, " \t") {
				def = strconv.Quote(def)
			}
			text += " (default " + def + ")"
		}
		if len(head) <= 22 {
			fmt.Fprintf(w, "%-24s%s\n", head, text)
		} else {
			fmt.Fprintf(w, "%s\n%24s%s\n", head, "", text)
		}
	})
}

// stringValue is a string flag; usage quotes its default.
type stringValue string

func (s *stringValue) Set(v string) error { *s = stringValue(v); return nil }
func (s *stringValue) String() string     { return string(*s) }

func (c *cli) stringFlag(p *string, name, def, usage string) {
	*p = def
	c.fs.Var((*stringValue)(p), name, usage)
}

// optInt is an int64 flag that knows whether it was given.
type optInt struct {
	v   int64
	set bool
}

func (o *optInt) Set(s string) error {
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return errors.New("not an integer")
	}
	o.v, o.set = v, true
	return nil
}

func (o *optInt) String() string {
	if o == nil || !o.set {
		return ""
	}
	return strconv.FormatInt(o.v, 10)
}

// conns are the connection flags.
type conns struct {
	oldDSN, newDSN, redis string
}

func (c *cli) oldFlag(cs *conns) {
	c.fs.StringVar(&cs.oldDSN, "old-dsn", "", "OLD database `DSN` (default $"+connect.EnvOldDSN+")")
}

func (c *cli) newFlag(cs *conns) {
	c.fs.StringVar(&cs.newDSN, "new-dsn", "", "NEW database `DSN` (default $"+connect.EnvNewDSN+")")
}

func (c *cli) redisFlag(cs *conns) {
	c.fs.StringVar(&cs.redis, "redis", "", "Redis `address`: host:port, a redis:// URL, or host:port,host:port for a cluster (default $"+connect.EnvRedis+")")
}

// openPostgres connects to one side. dsn falls back to env; maxConns, if
// larger than the pool's own maximum, raises it.
func (c *cli) openPostgres(ctx context.Context, side, flagName, dsn, env string, maxConns int32) (*pgxpool.Pool, error) {
	if dsn == "" {
		dsn = os.Getenv(env)
	}
	if strings.TrimSpace(dsn) == "" {
		return nil, fmt.Errorf("no %s database given: set --%s or %s", side, flagName, env)
	}
	pool, err := connect.Postgres(ctx, side, dsn, func(cfg *pgxpool.Config) {
		cfg.MaxConns = max(cfg.MaxConns, maxConns)
		if cfg.ConnConfig.RuntimeParams["application_name"] == "" {
			cfg.ConnConfig.RuntimeParams["application_name"] = appName
		}
	})
	if err != nil {
		return nil, err
	}
	c.log.Debug("connected", "side", side)
	return pool, nil
}

func (c *cli) openOld(ctx context.Context, cs conns, maxConns int32) (*pgxpool.Pool, error) {
	return c.openPostgres(ctx, "OLD", "old-dsn", cs.oldDSN, connect.EnvOldDSN, maxConns)
}

func (c *cli) openNew(ctx context.Context, cs conns, maxConns int32) (*pgxpool.Pool, error) {
	return c.openPostgres(ctx, "NEW", "new-dsn", cs.newDSN, connect.EnvNewDSN, maxConns)
}

func (c *cli) openRedis(ctx context.Context, cs conns) (redis.UniversalClient, error) {
	addr := cs.redis
	if addr == "" {
		addr = os.Getenv(connect.EnvRedis)
	}
	if strings.TrimSpace(addr) == "" {
		return nil, fmt.Errorf("no Redis given: set --redis or %s", connect.EnvRedis)
	}
	rdb, err := connect.Redis(ctx, addr)
	if err != nil {
		return nil, err
	}
	c.log.Debug("connected", "side", "Redis")
	return rdb, nil
}

// tableFlags name the table on both sides and its key.
type tableFlags struct {
	table, oldTable, key string
	oldTableFlag         string // the flag that named oldTable
}

func (c *cli) tableFlags(t *tableFlags, old bool) {
	c.stringFlag(&t.table, "table", "", "the `table` in NEW, as written in SQL (accounts, public.accounts); it also names the tracker's bitmap (required)")
	if old {
		c.stringFlag(&t.oldTable, "old-table", "", "the `table` in OLD (default --table)")
	}
	c.stringFlag(&t.key, "key", "id", "the integer key `column`, of the same name on both sides")
}

func (t *tableFlags) check() error {
	if t.table == "" {
		return errors.New("--table is required")
	}
	t.oldTableFlag = "old-table"
	if t.oldTable == "" {
		t.oldTable, t.oldTableFlag = t.table, "table"
	}
	if t.key == "" {
		return errors.New(`--key "": name the key column`)
	}
	return nil
}

// rangeFlags restrict a command to part of the key space.
type rangeFlags struct {
	from, to optInt
	shard    string
	sh       coldsweep.Shard
}

func (c *cli) rangeFlags(r *rangeFlags, shard bool) {
	c.fs.Var(&r.from, "from", "first `key` of the range, inclusive (default: the smallest key)")
	c.fs.Var(&r.to, "to", "last `key` of the range, inclusive (default: the largest key)")
	if shard {
		c.stringFlag(&r.shard, "shard", "", "take only shard `i/n` of the chunks (chunk c belongs to shard c mod n), so that n processes share the work")
	}
}

func (r *rangeFlags) check() error {
	switch {
	case r.from.set && r.from.v < 0:
		return flagError("from", r.from.v, "keys are integers >= 0")
	case r.to.set && r.to.v < 0:
		return flagError("to", r.to.v, "keys are integers >= 0")
	case r.to.set && r.to.v == math.MaxInt64:
		return flagError("to", r.to.v, "must be below %d", int64(math.MaxInt64))
	case r.from.set && r.to.set && r.from.v > r.to.v:
		return fmt.Errorf("--from %d --to %d: --from must not exceed --to", r.from.v, r.to.v)
	}
	if r.shard != "" {
		sh, err := coldsweep.ParseShard(r.shard)
		if err != nil {
			return flagError("shard", r.shard, "want i/n with 0 <= i < n, e.g. 0/4")
		}
		r.sh = sh
	}
	return nil
}

// span returns the range as a half-open Span, filling the ends not given
// from bounds (the inclusive smallest and largest keys), which is called
// only when needed. ok is false when there is no key at all. A bound that
// no Span can start or end at (a negative key, or math.MaxInt64, as Hi
// would overflow) is an error that says which flag to give.
func (r *rangeFlags) span(bounds func() (lo, hi int64, ok bool, err error)) (s coldsweep.Span, ok bool, err error) {
	lo, hi := r.from.v, r.to.v
	if !r.from.set || !r.to.set {
		blo, bhi, ok, err := bounds()
		if err != nil {
			return coldsweep.Span{}, false, err
		}
		if !ok {
			return coldsweep.Span{}, false, nil
		}
		if !r.from.set {
			lo = blo
			if lo < 0 {
				return coldsweep.Span{}, false, fmt.Errorf("the smallest key is %d: lazymigrate keys are integers >= 0 (give --from 0)", lo)
			}
		}
		if !r.to.set {
			hi = bhi
			if hi == math.MaxInt64 {
				return coldsweep.Span{}, false, fmt.Errorf("the largest key is %d, past the largest key a range can hold: "+
					"give --to %d, and handle that key on its own", hi, hi-1)
			}
		}
		if lo > hi {
			return coldsweep.Span{}, false, nil
		}
	}
	return coldsweep.Span{Lo: lo, Hi: hi + 1}, true, nil
}

// inclusive prints a half-open span as the keys it holds.
func inclusive(s coldsweep.Span) string {
	if s.Len() <= 0 {
		return "no keys"
	}
	return fmt.Sprintf("keys %s..%s", human(s.Lo), human(s.Hi-1))
}
