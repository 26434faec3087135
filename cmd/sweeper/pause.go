package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/coldsweep"
)

const pauseHelp = `
Sets the pause flag of a table's sweep in Redis: every 'sweeper run' of the
table that uses the same Redis and --prefix, on any machine, finishes its
chunks in flight and then holds until 'sweeper resume'. A sweep started
while the flag is set holds before its first chunk.

When no sweep of the table has reported to this Redis and --prefix, pause
lists the sweeps that have and sets nothing, as the table or prefix is
likely mistyped; --force sets the flag anyway, for a sweep about to start.`

const resumeHelp = `
Clears the pause flag of a table's sweep: paused sweepers go on within
their --check-interval.

When the flag is not set and no sweep of the table has reported to this
Redis and --prefix, resume lists the sweeps that have and fails, as the
table or prefix is likely mistyped; --force makes it succeed.`

func cmdPause(ctx context.Context, c *cli, args []string) (int, error) {
	return setPaused(ctx, c, args, true)
}

func cmdResume(ctx context.Context, c *cli, args []string) (int, error) {
	return setPaused(ctx, c, args, false)
}

func setPaused(ctx context.Context, c *cli, args []string, paused bool) (int, error) {
	var (
		cs     conns
		table  string
		prefix string
		force  bool
	)
	help := pauseHelp
	if !paused {
		help = resumeHelp
	}
	c.flags("--table NAME [flags]", help)
	c.redisFlag(&cs)
	c.stringFlag(&table, "table", "", "the `table` whose sweep to "+c.name+", as given to 'sweeper run --table' (required)")
	c.prefixFlag(&prefix)
	c.fs.BoolVar(&force, "force", false, c.name+" even when no sweep of the table has reported to this Redis and --prefix")
	if err := c.parse(args); err != nil {
		return exitError, err
	}
	if table == "" {
		return exitError, fmt.Errorf("--table is required")
	}
	if err := checkPrefix(prefix); err != nil {
		return exitError, err
	}
	rdb, err := c.openRedis(ctx, cs)
	if err != nil {
		return exitError, err
	}
	defer func() { _ = rdb.Close() }()
	was, err := coldsweep.IsPaused(ctx, rdb, prefix, table)
	if err != nil {
		return exitError, err
	}
	progress, err := coldsweep.LoadProgress(ctx, rdb, prefix, table)
	if err != nil {
		return exitError, err
	}
	// A table or prefix mistyped would leave the real sweep running. A flag
	// already set was set for a sweep about to start (--force): no check.
	if len(progress) == 0 && !was {
		known := knownSweeps(ctx, rdb, prefix)
		if !force {
			return exitError, fmt.Errorf("no sweep of %s has reported to this Redis under --prefix %q (%s): check --table and --prefix, or give --force to %s it anyway",
				table, prefix, known, c.name)
		}
		c.log.Warn("no sweep of the table has reported to this Redis and prefix", "table", table, "prefix", prefix, "known", known)
	}
	if err := coldsweep.SetPaused(ctx, rdb, prefix, table, paused); err != nil {
		return exitError, err
	}
	switch {
	case paused && was:
		fmt.Fprintf(c.stdout, "the sweep of %s was paused already\n", table)
	case paused:
		fmt.Fprintf(c.stdout, "paused the sweep of %s: running sweepers hold after their chunks in flight; 'sweeper resume --table %s' lets them go on\n", table, table)
	case was:
		fmt.Fprintf(c.stdout, "resumed the sweep of %s\n", table)
	default:
		fmt.Fprintf(c.stdout, "the sweep of %s was not paused\n", table)
	}
	return exitOK, nil
}

// Bounds of knownSweeps' scan of a Redis that may hold many other keys.
const (
	knownSweepsMax     = 20
	knownSweepsTimeout = 5 * time.Second
)

// knownSweeps names, for a message, the tables whose sweeps saved their
// progress under prefix: the hashes <prefix>:sweep:<table>, found with SCAN
// (of one node of a cluster). It is best effort: a scan that fails is
// reported in the text, and at most knownSweepsMax tables are named.
func knownSweeps(ctx context.Context, rdb redis.UniversalClient, prefix string) string {
	ctx, cancel := context.WithTimeout(ctx, knownSweepsTimeout)
	defer cancel()
	head := prefix + ":sweep:"
	var (
		tables []string
		cursor uint64
	)
	for {
		keys, next, err := rdb.ScanType(ctx, cursor, globEscape(head)+"*", 1000, "hash").Result()
		if err != nil {
			return "the sweeps that have cannot be listed: " + oneLine(err.Error())
		}
		for _, k := range keys {
			if t := strings.TrimPrefix(k, head); !slices.Contains(tables, t) {
				tables = append(tables, t)
			}
		}
		cursor = next
		if cursor == 0 || len(tables) > knownSweepsMax {
			break
		}
	}
	slices.Sort(tables)
	switch {
	case len(tables) == 0:
		return "nor has any other sweep"
	case len(tables) > knownSweepsMax:
		return "sweeps that have: " + strings.Join(tables[:knownSweepsMax], ", ") + ", …"
	}
	return "sweeps that have: " + strings.Join(tables, ", ")
}

// globEscape escapes the characters special in Redis's glob patterns.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
