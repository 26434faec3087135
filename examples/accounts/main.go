package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/internal/connect"
)

const usage = `accounts is an example service that migrates its accounts table from an OLD
Postgres database to a NEW one with lazymigrate, while serving it.

Usage:
  accounts seed   [flags]   create the table in OLD and NEW and fill OLD
  accounts serve  [flags]   serve the JSON API, /status and /metrics
  accounts worker [flags]   run promotion tasks only (for more workers)
  accounts load   [flags]   drive a Zipf read load against a running service

Run "accounts <command> -h" for a command's flags. The databases and Redis
come from flags, or from LM_OLD_DSN, LM_NEW_DSN and LM_REDIS_ADDR.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C kills at once, should a graceful stop hang
	}()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// run runs the command args names. Output goes to stdout, logs to stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{errors.New("no command given (seed, serve, worker or load)")}
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "seed":
		return runSeed(ctx, args, stdout)
	case "serve":
		return runServe(ctx, args, stdout, stderr)
	case "worker":
		return runWorker(ctx, args, stdout, stderr)
	case "load":
		return runLoad(ctx, args, stdout)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return usageError{fmt.Errorf("unknown command %q (seed, serve, worker or load)", cmd)}
}

// usageError is a mistake in the command line: exit status 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// errHelp reports that -h printed the usage: exit status 0.
var errHelp = errors.New("help printed")

// exitCode prints err as one line on stderr and returns the exit status.
func exitCode(err error, stderr io.Writer) int {
	switch {
	case err == nil, errors.Is(err, errHelp):
		return 0
	case errors.Is(err, context.Canceled):
		return 130 // interrupted before the command was done
	}
	msg := strings.Join(strings.Fields(err.Error()), " ") // one line, whatever the error holds
	var u usageError
	if errors.As(err, &u) {
		fmt.Fprintf(stderr, "accounts: %s (run \"accounts help\")\n", msg)
		return 2
	}
	fmt.Fprintf(stderr, "accounts: %s\n", msg)
	return 1
}

// parse parses a command's flags. -h prints its usage on stdout; any other
// mistake is a usageError of one line, naming the command.
func parse(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.SetOutput(stdout)
		fmt.Fprintf(stdout, "Usage: accounts %s [flags]\n\nFlags:\n", fs.Name())
		fs.PrintDefaults()
		return errHelp
	case err != nil:
		return usageError{fmt.Errorf("%s: %w", fs.Name(), err)}
	case fs.NArg() > 0:
		return usageError{fmt.Errorf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))}
	}
	return nil
}

// connFlags are the flags that say where the databases and Redis are.
type connFlags struct {
	oldDSN, newDSN string
	redisAddr      string
	prefix, queue  string
	maxConns       int
}

// register adds the flags to fs; withRedis adds Redis, the key prefix and
// the queue.
func (c *connFlags) register(fs *flag.FlagSet, withRedis bool) {
	fs.StringVar(&c.oldDSN, "old-dsn", "", "OLD database `DSN` (default $"+connect.EnvOldDSN+")")
	fs.StringVar(&c.newDSN, "new-dsn", "", "NEW database `DSN` (default $"+connect.EnvNewDSN+")")
	fs.IntVar(&c.maxConns, "max-conns", 16, "connections per database pool")
	if !withRedis {
		return
	}
	fs.StringVar(&c.redisAddr, "redis", "",
		"Redis `address`: host:port, a redis:// URL, or host:port,host:port for a cluster (default $"+connect.EnvRedis+")")
	fs.StringVar(&c.prefix, "prefix", "lazymigrate",
		"Redis key `prefix` of the tracker, the read mode and the sweep's progress; the sweeper must use the same")
	fs.StringVar(&c.queue, "queue", "lazymigrate", "asynq `queue` of promotion and reconcile tasks")
}

// deps are the connections a command opened.
type deps struct {
	old, new *pgxpool.Pool
	rdb      redis.UniversalClient // nil unless asked for
}

// open connects to OLD, NEW and, if withRedis, Redis, each checked with a
// ping so that a wrong address fails now, in one line that names it.
func (c *connFlags) open(ctx context.Context, withRedis bool) (*deps, error) {
	if err := c.check(withRedis); err != nil {
		return nil, err
	}
	size := func(cfg *pgxpool.Config) {
		cfg.MaxConns = int32(c.maxConns)
		cfg.MinConns = min(4, cfg.MaxConns) // warm: the first requests need not dial
		if cfg.ConnConfig.RuntimeParams["application_name"] == "" {
			cfg.ConnConfig.RuntimeParams["application_name"] = "lazymigrate-accounts"
		}
	}
	d := &deps{}
	var err error
	if d.old, err = connect.Postgres(ctx, "OLD", c.oldDSN, size); err != nil {
		return nil, err
	}
	if d.new, err = connect.Postgres(ctx, "NEW", c.newDSN, size); err != nil {
		d.close()
		return nil, err
	}
	if withRedis {
		if d.rdb, err = connect.Redis(ctx, c.redisAddr); err != nil {
			d.close()
			return nil, err
		}
	}
	return d, nil
}

// check fills in the flags not given from the environment (which stands in
// for them rather than being their default: -h would print it, passwords
// and all), and checks that nothing is missing.
func (c *connFlags) check(withRedis bool) error {
	c.oldDSN = cmp.Or(c.oldDSN, os.Getenv(connect.EnvOldDSN))
	c.newDSN = cmp.Or(c.newDSN, os.Getenv(connect.EnvNewDSN))
	c.redisAddr = cmp.Or(c.redisAddr, os.Getenv(connect.EnvRedis))
	switch {
	case c.maxConns < 1:
		return usageError{fmt.Errorf("-max-conns must be at least 1, got %d", c.maxConns)}
	case strings.TrimSpace(c.oldDSN) == "":
		return usageError{errors.New("no OLD database: set -old-dsn or " + connect.EnvOldDSN)}
	case strings.TrimSpace(c.newDSN) == "":
		return usageError{errors.New("no NEW database: set -new-dsn or " + connect.EnvNewDSN)}
	case withRedis && strings.TrimSpace(c.redisAddr) == "":
		return usageError{errors.New("no Redis: set -redis or " + connect.EnvRedis)}
	}
	return nil
}

func (d *deps) close() {
	if d.old != nil {
		d.old.Close()
	}
	if d.new != nil {
		d.new.Close()
	}
	if d.rdb != nil {
		_ = d.rdb.Close()
	}
}

// newLogger logs text lines to w at Info and above.
func newLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}
