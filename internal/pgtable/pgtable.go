// Package pgtable describes a Postgres table from the catalog: its canonical
// name, its columns and whether a column can serve as lazymigrate's key.
//
// Names given by users are resolved by Postgres itself (to_regclass), so
// search_path, quoting and case follow Postgres's rules; what comes back is
// safe to splice into SQL.
package pgtable

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// ErrNotFound is returned when the named table does not exist.
var ErrNotFound = errors.New("table not found")

// ErrBadKey is returned when the key column is missing, not an integer, or
// not unique.
var ErrBadKey = errors.New("unusable key column")

// Querier is the subset of pgx used to read the catalog.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Table is a table as the catalog describes it.
type Table struct {
	// ID is the table's stable identity: schema and name joined by a dot,
	// each quoted only where SQL needs it (public.accounts,
	// "Odd Schema"."My Table"), so that no two tables share one. It names
	// the table in tombstones, locks and lazymigrate.tables.
	ID string
	// Ident is the table's name quoted for SQL, schema-qualified.
	Ident string
	// Columns are the table's ordinary columns in attribute order; dropped
	// and generated columns are left out.
	Columns []Column

	oid uint32
}

// Column is one column of a Table.
type Column struct {
	Name string
	// Type is the column's type as format_type prints it, with its type
	// modifier (e.g. "character varying(40)").
	Type string
	// BaseType names the type without its modifier, by its catalog name
	// (pg_catalog.bpchar, pg_catalog."varchar", public.mood). Cast to it,
	// not to Type, and let the INSERT's assignment apply the modifier: an
	// explicit cast to varchar(5) silently truncates where an assignment
	// fails. (The SQL spelling format_type prints without a modifier is no
	// good either: "character" means char(1).)
	BaseType   string
	TypeOID    uint32
	NotNull    bool
	HasDefault bool
	num        int16
}

// Ident returns the column name quoted for SQL.
func (c Column) Ident() string { return Quote(c.Name) }

// Quote quotes a single identifier for SQL.
func Quote(name string) string { return pgx.Identifier{name}.Sanitize() }

// Describe reads the catalog entry of the table called name (as it would be
// written in SQL: accounts, public.accounts, "MixedCase").
func Describe(ctx context.Context, q Querier, name string) (*Table, error) {
	var (
		t          Table
		nsp, rel   string
		foundTable bool
	)
	err := q.QueryRow(ctx, `
		SELECT c.oid, n.nspname, c.relname, quote_ident(n.nspname) || '.' || quote_ident(c.relname)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.oid = to_regclass($1) AND c.relkind IN ('r', 'p')`, name).Scan(&t.oid, &nsp, &rel, &t.ID)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return nil, fmt.Errorf("describe table %q: %w", name, err)
	default:
		foundTable = true
	}
	if !foundTable {
		return nil, fmt.Errorf("%w: %q (check the name and the search_path)", ErrNotFound, name)
	}
	t.Ident = pgx.Identifier{nsp, rel}.Sanitize()

	rows, err := q.Query(ctx, `
		SELECT a.attname, format_type(a.atttypid, a.atttypmod), quote_ident(n.nspname) || '.' || quote_ident(t.typname),
		       a.atttypid, a.attnotnull, a.atthasdef, a.attnum
		FROM pg_attribute a
		JOIN pg_type t ON t.oid = a.atttypid
		JOIN pg_namespace n ON n.oid = t.typnamespace
		WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
		ORDER BY a.attnum`, t.oid)
	if err != nil {
		return nil, fmt.Errorf("describe columns of %s: %w", t.ID, err)
	}
	t.Columns, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Column, error) {
		var c Column
		err := r.Scan(&c.Name, &c.Type, &c.BaseType, &c.TypeOID, &c.NotNull, &c.HasDefault, &c.num)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("describe columns of %s: %w", t.ID, err)
	}
	return &t, nil
}

// Column returns the column called name.
func (t *Table) Column(name string) (Column, bool) {
	i := slices.IndexFunc(t.Columns, func(c Column) bool { return c.Name == name })
	if i < 0 {
		return Column{}, false
	}
	return t.Columns[i], true
}

// ColumnNames returns the names of all columns, in order.
func (t *Table) ColumnNames() []string {
	names := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		names[i] = c.Name
	}
	return names
}

// Select returns the columns called names, in that order, or an error naming
// the first that does not exist.
func (t *Table) Select(names []string) ([]Column, error) {
	cols := make([]Column, 0, len(names))
	for _, n := range names {
		c, ok := t.Column(n)
		if !ok {
			return nil, fmt.Errorf("table %s has no column %q", t.ID, n)
		}
		cols = append(cols, c)
	}
	return cols, nil
}

// integer type OIDs: int2, int4, int8.
var integerOIDs = []uint32{21, 23, 20}

// MaxKey returns the largest key an integer column holds: that of smallint,
// integer or bigint.
func (c Column) MaxKey() int64 {
	switch c.TypeOID {
	case 21:
		return math.MaxInt16
	case 23:
		return math.MaxInt32
	}
	return math.MaxInt64
}

// CheckKey returns an error wrapping ErrBadKey unless column name exists and
// has an integer type. With unique set, it must also carry a unique index of
// its own (needed for INSERT ... ON CONFLICT).
func (t *Table) CheckKey(ctx context.Context, q Querier, name string, unique bool) (Column, error) {
	c, ok := t.Column(name)
	if !ok {
		return Column{}, fmt.Errorf("%w: table %s has no column %q", ErrBadKey, t.ID, name)
	}
	if !slices.Contains(integerOIDs, c.TypeOID) {
		return Column{}, fmt.Errorf("%w: %s.%s is %s; lazymigrate keys must be smallint, integer or bigint", ErrBadKey, t.ID, name, c.Type)
	}
	if !unique {
		return c, nil
	}
	var ok2 bool
	err := q.QueryRow(ctx, `
		SELECT EXISTS (
			SELECT 1 FROM pg_index
			WHERE indrelid = $1 AND indisunique AND indnkeyatts = 1
			  AND indkey[0] = $2 AND indpred IS NULL)`, t.oid, c.num).Scan(&ok2)
	if err != nil {
		return Column{}, fmt.Errorf("check unique index on %s.%s: %w", t.ID, name, err)
	}
	if !ok2 {
		return Column{}, fmt.Errorf("%w: %s.%s has no unique index or primary key of its own", ErrBadKey, t.ID, name)
	}
	return c, nil
}

// Idents returns the quoted names of cols joined by ", ".
func Idents(cols []Column) string {
	parts := make([]string, len(cols))
	for i, c := range cols {
		parts[i] = c.Ident()
	}
	return strings.Join(parts, ", ")
}
