package promote

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/lazymigrate/lazymigrate/internal/pgtable"
	"github.com/lazymigrate/lazymigrate/internal/pgtext"
	"github.com/lazymigrate/lazymigrate/internal/schema"
)

// oldRows are rows read from OLD, ready for NEW: per row its key and its
// value for each NEW column in Postgres's text form (nil for NULL).
type oldRows struct {
	keys []int64
	vals [][]*string
}

func (c *Copier) buildSQL(ot, nt *pgtable.Table, oldKey pgtable.Column) {
	keyRef := oldKey.Ident()
	sel := make([]string, len(c.oldCols))
	for i, col := range c.oldCols {
		if c.cfg.Transform == nil {
			sel[i] = col.Ident() + "::text"
		} else {
			sel[i] = col.Ident()
		}
	}
	list := strings.Join(sel, ", ")
	from := ot.Ident
	if c.cfg.Transform != nil {
		// The transform path reads some columns in text form with result
		// formats of its own, which a batch cannot carry; so the settings
		// are pinned in the statement: no row is produced, let alone
		// printed, before the CTE has run.
		from = ot.Ident + ", lm_pin"
	}
	c.selectSQL = fmt.Sprintf(`SELECT %s FROM %s WHERE %s = ANY($1::bigint[])`, list, from, keyRef)
	c.selectRangeSQL = fmt.Sprintf(`SELECT %s FROM %s WHERE %s >= $1::bigint AND %s < $2::bigint`, list, from, keyRef, keyRef)
	if c.cfg.Transform != nil {
		pin := "WITH lm_pin AS MATERIALIZED (" + pgtext.PinOutput + ") "
		c.selectSQL, c.selectRangeSQL = pin+c.selectSQL, pin+c.selectRangeSQL
	}

	names := make([]string, len(c.cols))
	arrays := make([]string, len(c.cols))
	casts := make([]string, len(c.cols))
	aliases := make([]string, len(c.cols))
	for i, col := range c.cols {
		names[i] = col.Ident()
		arrays[i] = fmt.Sprintf("$%d::text[]", i+1)
		// The base type, not the declared one: the INSERT's assignment then
		// applies the modifier and fails on a value too long, where a cast
		// to varchar(5) would silently cut it.
		casts[i] = fmt.Sprintf("u.c%d::%s", i, col.BaseType)
		aliases[i] = fmt.Sprintf("c%d", i)
	}
	key := fmt.Sprintf("u.c%d::bigint", c.keyIdx)
	// ORDER BY the key so that concurrent overlapping batches take index
	// entries in the same order; the advisory locks already serialize them.
	c.insertSQL = fmt.Sprintf(`INSERT INTO %s (%s)
SELECT %s FROM unnest(%s) AS u(%s)
WHERE %s AND NOT EXISTS (SELECT 1 FROM %s t WHERE t.table_name = $%d AND t.key = %s)
ORDER BY %s
ON CONFLICT (%s) DO NOTHING
RETURNING %s`,
		nt.Ident, strings.Join(names, ", "),
		strings.Join(casts, ", "), strings.Join(arrays, ", "), strings.Join(aliases, ", "),
		openSQL(len(c.cols)+1), schema.Tombstones, len(c.cols)+1, key,
		key,
		c.cols[c.keyIdx].Ident(),
		c.cols[c.keyIdx].Ident())
	c.tombSQL = `SELECT key FROM ` + schema.Tombstones + ` WHERE table_name = $1 AND key = ANY($2::bigint[])`
	c.tombRangeSQL = `SELECT key FROM ` + schema.Tombstones + ` WHERE table_name = $1 AND key >= $2 AND key < $3`
}

// readOld reads the rows sql selects from OLD.
func (c *Copier) readOld(ctx context.Context, sql string, args []any) (oldRows, error) {
	if c.cfg.Transform != nil {
		return c.readOldTransformed(ctx, sql, args)
	}
	b := &pgx.Batch{}
	b.Queue(pgtext.PinOutput)
	b.Queue(sql, args...)
	br := c.old.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return oldRows{}, oldError(c.cfg.Table, err)
	}
	rows, err := br.Query()
	if err != nil {
		return oldRows{}, oldError(c.cfg.Table, err)
	}
	defer rows.Close()
	var out oldRows
	seen := map[int64]struct{}{}
	for rows.Next() {
		raw := rows.RawValues()
		vals := make([]*string, len(raw))
		for i, v := range raw {
			if v != nil {
				s := string(v)
				vals[i] = &s
			}
		}
		k, err := strconv.ParseInt(string(raw[c.keyIdx]), 10, 64)
		if err != nil {
			return oldRows{}, fmt.Errorf("promote: copy %s: key %q read from OLD: %w", c.cfg.Table, raw[c.keyIdx], err)
		}
		if err := c.add(&out, seen, k, vals); err != nil {
			return oldRows{}, err
		}
	}
	if err := rows.Err(); err != nil {
		return oldRows{}, oldError(c.cfg.Table, err)
	}
	if err := br.Close(); err != nil {
		return oldRows{}, oldError(c.cfg.Table, err)
	}
	return out, nil
}

// add appends a row, refusing a key OLD returned twice: which of the two
// would reach NEW would be chance.
func (c *Copier) add(out *oldRows, seen map[int64]struct{}, k int64, vals []*string) error {
	if _, dup := seen[k]; dup {
		return fmt.Errorf("%w: copy %s: OLD holds key %d more than once; the key column must be unique", ErrRowRejected, c.cfg.Table, k)
	}
	seen[k] = struct{}{}
	out.keys = append(out.keys, k)
	out.vals = append(out.vals, vals)
	return nil
}

// readOldTransformed reads whole OLD rows, passes each through the
// Transform and renders the result in text form for NEW. Columns pgx would
// change on the way (json numbers past 2^53, json key order) or does not
// know (enums, domains, composites) are read as text, printed under pinned
// settings (see pgtext.PinOutput) like the plain path's; the rest are
// decoded from the binary form.
func (c *Copier) readOldTransformed(ctx context.Context, sql string, args []any) (oldRows, error) {
	m := pgtype.NewMap()
	formats := make(pgx.QueryResultFormats, len(c.oldCols))
	for i, col := range c.oldCols {
		formats[i] = pgx.BinaryFormatCode
		if _, known := m.TypeForOID(col.TypeOID); !known || pgtext.IsJSON(col.TypeOID) {
			formats[i] = pgx.TextFormatCode
		}
	}
	rows, err := c.old.Query(ctx, sql, append([]any{formats}, args...)...)
	if err != nil {
		return oldRows{}, oldError(c.cfg.Table, err)
	}
	defer rows.Close()
	var out oldRows
	seen := map[int64]struct{}{}
	for rows.Next() {
		raw := rows.RawValues()
		fds := rows.FieldDescriptions()
		old := make(Row, len(c.oldCols))
		for i, col := range c.oldCols {
			switch {
			case raw[i] == nil:
				old[col.Name] = nil
			case pgtext.IsJSON(col.TypeOID):
				old[col.Name] = json.RawMessage(string(raw[i]))
			case formats[i] == pgx.TextFormatCode:
				old[col.Name] = string(raw[i])
			default:
				// The server names the type it sent, a domain's base type
				// included; decode with that.
				t, ok := m.TypeForOID(fds[i].DataTypeOID)
				if !ok {
					old[col.Name] = string(raw[i])
					continue
				}
				v, err := t.Codec.DecodeValue(m, fds[i].DataTypeOID, pgx.BinaryFormatCode, raw[i])
				if err != nil {
					return oldRows{}, fmt.Errorf("%w: copy %s: decode column %q: %w", ErrRowRejected, c.cfg.Table, col.Name, err)
				}
				old[col.Name] = v
			}
		}
		k, err := keyOf(old[c.cfg.KeyColumn])
		if err != nil {
			return oldRows{}, fmt.Errorf("promote: copy %s: %w", c.cfg.Table, err)
		}
		row, err := c.cfg.Transform(ctx, old)
		if err != nil {
			return oldRows{}, fmt.Errorf("%w: copy %s: transform of key %d: %w", ErrRowRejected, c.cfg.Table, k, err)
		}
		vals := make([]*string, len(c.cols))
		for i, col := range c.cols {
			v, ok := row[col.Name]
			if !ok {
				return oldRows{}, fmt.Errorf("%w: copy %s: transform of key %d returned no column %q", ErrRowRejected, c.cfg.Table, k, col.Name)
			}
			if vals[i], err = pgtext.Encode(m, col.TypeOID, col.Type, v); err != nil {
				return oldRows{}, fmt.Errorf("%w: copy %s: transform of key %d: column %q: %w", ErrRowRejected, c.cfg.Table, k, col.Name, err)
			}
		}
		if nk, err := keyOf(row[c.cfg.KeyColumn]); err != nil || nk != k {
			return oldRows{}, fmt.Errorf("%w: copy %s: transform changed key %d to %v", ErrRowRejected, c.cfg.Table, k, row[c.cfg.KeyColumn])
		}
		if err := c.add(&out, seen, k, vals); err != nil {
			return oldRows{}, err
		}
	}
	if err := rows.Err(); err != nil {
		return oldRows{}, oldError(c.cfg.Table, err)
	}
	return out, nil
}

func keyOf(v any) (int64, error) {
	switch k := v.(type) {
	case int64:
		return k, nil
	case int32:
		return int64(k), nil
	case int16:
		return int64(k), nil
	case int:
		return int64(k), nil
	}
	return 0, fmt.Errorf("key has type %T, want an integer", v)
}
