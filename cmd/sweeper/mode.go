package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/fallback"
)

const modeHelp = `
Shows the read mode of a table, or sets it with --set for every process
that serves the table through a fallback.Switch with the same Redis and
--prefix. Processes follow within their poll interval (1s by default).

A mode is old (OLD only: a rollback), readthrough (NEW, then OLD on a
miss) or new (NEW only). It may be rolled out to a share of the keys
first: --set 'readthrough 5%' serves 5% of the keys in readthrough and the
rest in old, and raising the percentage only adds keys. A rollback is
--set old, for every key at once. Until a mode is set, each process serves
its fallback.Config.Default.`

// modeJSON is the mode, as --json prints it.
type modeJSON struct {
	Table string `json:"table"`
	Key   string `json:"key"`
	// Set is false while the key is absent: processes serve their Default.
	Set     bool    `json:"set"`
	Policy  string  `json:"policy,omitempty"`
	Mode    string  `json:"mode,omitempty"`
	Percent float64 `json:"percent,omitempty"`
	// Was is the policy before --set changed it: "" if none was set, "an
	// invalid value" if the key held something else.
	Was string `json:"was,omitempty"`
}

func cmdMode(ctx context.Context, c *cli, args []string) (int, error) {
	var (
		cs     conns
		table  string
		prefix string
		set    string
		asJSON bool
	)
	c.flags("--table NAME [--set POLICY] [flags]", modeHelp)
	c.redisFlag(&cs)
	c.stringFlag(&table, "table", "", "the `table` whose read mode to show or set, as the applications' fallback.New names it (required)")
	c.stringFlag(&prefix, "prefix", defaultPrefix, "`prefix` of lazymigrate's Redis keys: the applications' fallback.Config.Prefix")
	c.stringFlag(&set, "set", "", "the `policy` to set: old, readthrough or new, optionally followed by a percentage of the keys ('readthrough 5%')")
	c.fs.BoolVar(&asJSON, "json", false, "print the mode as JSON on stdout")
	if err := c.parse(args); err != nil {
		return exitError, err
	}
	if table == "" {
		return exitError, fmt.Errorf("--table is required")
	}
	if err := checkPrefix(prefix); err != nil {
		return exitError, err
	}
	var want fallback.Policy
	if set != "" {
		p, err := fallback.ParsePolicy(set)
		if err != nil {
			return exitError, fmt.Errorf("--set: %w", err)
		}
		want = p
	}
	rdb, err := c.openRedis(ctx, cs)
	if err != nil {
		return exitError, err
	}
	defer func() { _ = rdb.Close() }()

	key := prefix + ":mode:" + table
	out := modeJSON{Table: table, Key: key}
	cur, err := readPolicy(ctx, rdb, key)
	invalid := errors.Is(err, fallback.ErrInvalidMode)
	if err != nil && (set == "" || !invalid) {
		return exitError, err
	}
	if set != "" {
		// The switch writes the key exactly as processes read it.
		sw, err := fallback.New(rdb, table, &fallback.Config{Prefix: prefix})
		if err != nil {
			return exitError, err
		}
		if err := sw.SetPolicy(ctx, want); err != nil {
			return exitError, err
		}
		switch {
		case cur != nil:
			out.Was = cur.String()
		case invalid:
			out.Was = "an invalid value"
		}
		cur = &want
	}
	if cur != nil {
		out.Set, out.Policy, out.Mode, out.Percent = true, cur.String(), string(cur.Mode), cur.Percent
	}
	if asJSON {
		return exitOK, writeJSON(c.stdout, out)
	}
	switch {
	case !out.Set:
		fmt.Fprintf(c.stdout, "read mode of %s: not set (%s is absent): each process serves its fallback.Config.Default, readthrough unless configured otherwise\n", table, key)
	case set == "":
		fmt.Fprintf(c.stdout, "read mode of %s: %s\n", table, out.Policy)
	default:
		was := out.Was
		if was == "" {
			was = "not set"
		}
		fmt.Fprintf(c.stdout, "read mode of %s set to %s (was %s); processes follow within their poll interval\n", table, out.Policy, was)
	}
	return exitOK, nil
}

// readPolicy reads the policy stored at key: nil when the key is absent;
// an error wrapping fallback.ErrInvalidMode when it holds something else.
func readPolicy(ctx context.Context, rdb redis.UniversalClient, key string) (*fallback.Policy, error) {
	v, err := rdb.Get(ctx, key).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	p, err := fallback.ParsePolicy(v)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (processes keep their last known mode; set one with --set)", key, err)
	}
	return &p, nil
}
