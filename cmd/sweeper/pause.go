package main

import (
	"context"
	"fmt"

	"github.com/lazymigrate/lazymigrate/coldsweep"
)

const pauseHelp = `
Sets the pause flag of a table's sweep in Redis: every 'sweeper run' of the
table that uses the same Redis and --prefix, on any machine, finishes its
chunks in flight and then holds until 'sweeper resume'. A sweep started
while the flag is set holds before its first chunk.`

const resumeHelp = `
Clears the pause flag of a table's sweep: paused sweepers go on within
their --check-interval.`

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
	)
	help := pauseHelp
	if !paused {
		help = resumeHelp
	}
	c.flags("--table NAME [flags]", help)
	c.redisFlag(&cs)
	c.stringFlag(&table, "table", "", "the `table` whose sweep to "+c.name+", as given to 'sweeper run --table' (required)")
	c.prefixFlag(&prefix)
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
