package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/lazymigrate/lazymigrate/internal/schema"
	"github.com/lazymigrate/lazymigrate/promote"
)

const initHelp = `
Creates what lazymigrate keeps in NEW: the lazymigrate schema with its
tombstone table, its mirror outbox and its table registry. It changes
nothing that exists already, so it is safe to run any number of times,
from several processes at once.`

func cmdInit(ctx context.Context, c *cli, args []string) (int, error) {
	var cs conns
	c.flags("[flags]", initHelp)
	c.newFlag(&cs)
	if err := c.parse(args); err != nil {
		return exitError, err
	}
	nw, err := c.openNew(ctx, cs, 0)
	if err != nil {
		return exitError, err
	}
	defer nw.Close()

	err = schema.Check(ctx, nw)
	switch {
	case err == nil:
		fmt.Fprintf(c.stdout, "lazymigrate's schema is already set up in NEW (%s, %s, %s): nothing to do\n",
			schema.Tombstones, schema.Outbox, schema.Tables)
		return exitOK, nil
	case !errors.Is(err, schema.ErrNotSetUp):
		return exitError, fmt.Errorf("NEW database: %w", err)
	}
	if err := promote.Setup(ctx, nw); err != nil {
		return exitError, fmt.Errorf("NEW database: %w", err)
	}
	fmt.Fprintf(c.stdout, "created lazymigrate's schema in NEW: %s, %s and %s\n", schema.Tombstones, schema.Outbox, schema.Tables)
	return exitOK, nil
}
