package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/lazymigrate/lazymigrate/internal/pgtable"
	"github.com/lazymigrate/lazymigrate/internal/schema"
)

// describe reads the table called name on one side (OLD or NEW) and checks
// its key column, so that a wrong --table or --key fails before anything
// runs, with a message naming the flag. unique also requires a unique
// index on the key (NEW's, for ON CONFLICT).
func describe(ctx context.Context, db pgtable.Querier, side, flagName, name, key string, unique bool) (*pgtable.Table, error) {
	t, err := pgtable.Describe(ctx, db, name)
	switch {
	case errors.Is(err, pgtable.ErrNotFound):
		return nil, fmt.Errorf("--%s %q: %s has no such table (check the name and the search_path)", flagName, name, side)
	case err != nil:
		return nil, fmt.Errorf("%s database: %w", side, err)
	}
	if _, err := t.CheckKey(ctx, db, key, unique); err != nil {
		if errors.Is(err, pgtable.ErrBadKey) {
			why := strings.TrimPrefix(err.Error(), pgtable.ErrBadKey.Error()+": ")
			return nil, fmt.Errorf("--key %q: %s: %s", key, side, why)
		}
		return nil, fmt.Errorf("%s database: %w", side, err)
	}
	return t, nil
}

// checkSchema fails unless lazymigrate's schema is set up in NEW.
func checkSchema(ctx context.Context, db schema.Querier) error {
	if err := schema.Check(ctx, db); err != nil {
		if errors.Is(err, schema.ErrNotSetUp) {
			return errors.New("lazymigrate's schema is not set up in NEW: run 'sweeper init' first")
		}
		return fmt.Errorf("NEW database: %w", err)
	}
	return nil
}

// keyBounds returns the smallest and the largest key of a table; ok is
// false when it is empty. side names it in errors.
func keyBounds(ctx context.Context, db pgtable.Querier, side string, t *pgtable.Table, key string) (lo, hi int64, ok bool, err error) {
	var min, max *int64
	k := pgtable.Quote(key)
	if err := db.QueryRow(ctx, fmt.Sprintf(`SELECT min(%s)::bigint, max(%s)::bigint FROM %s`, k, k, t.Ident)).Scan(&min, &max); err != nil {
		return 0, 0, false, fmt.Errorf("%s database: key range of %s: %w", side, t.ID, err)
	}
	if min == nil {
		return 0, 0, false, nil
	}
	if *min < 0 {
		return 0, 0, false, fmt.Errorf("%s's %s holds key %d: lazymigrate keys are integers >= 0 (give --from 0)", side, t.ID, *min)
	}
	return *min, *max, true, nil
}
