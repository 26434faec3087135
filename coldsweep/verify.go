package coldsweep

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazymigrate/lazymigrate/internal/keys"
	"github.com/lazymigrate/lazymigrate/internal/metrics"
	"github.com/lazymigrate/lazymigrate/internal/pgtable"
	"github.com/lazymigrate/lazymigrate/internal/pgtext"
	"github.com/lazymigrate/lazymigrate/internal/schema"
	"github.com/lazymigrate/lazymigrate/promote"
)

// VerifyConfig configures Verify.
type VerifyConfig struct {
	// Table is the table in NEW, as written in SQL (accounts,
	// public.accounts). Required. It labels the metrics, and its canonical
	// name (pgtable.Table.ID) is the one tombstones are kept under.
	Table string
	// OldTable is the table in OLD. Defaults to Table.
	OldTable string
	// KeyColumn is the integer key column, of the same name on both sides.
	// Defaults to "id".
	KeyColumn string
	// Columns are the columns compared, by name, on both sides; the key is
	// always compared, listed or not. Defaults to every NEW column that OLD
	// also has, so that a column added in NEW alone does not make every row
	// differ.
	Columns []string
	// Chunk is the number of keys checked at a time, the unit of work and
	// of Shard. A chunk whose checksums differ is compared key by key, with
	// its keys and row hashes from both sides in memory (16 bytes a row a
	// side). Defaults to 10,000.
	Chunk int64
	// Workers is the number of chunks checked at once; each holds one OLD
	// and one NEW connection while it runs. Defaults to 2.
	Workers int
	// Range restricts the check to keys in [Range.Lo, Range.Hi). Defaults
	// (the zero Span) to every key either side holds: from the smaller of
	// OLD's and NEW's smallest keys to past the larger of their largest, so
	// that rows NEW holds past OLD's last key are found too.
	Range Span
	// Shard restricts the check to one shard of the chunks, as for the
	// sweep, so that n processes can verify a table between them. Defaults
	// to every chunk.
	Shard Shard
	// MaxListed bounds each key list of the Report (the smallest keys are
	// kept); counts are always exact. Defaults to 1000.
	MaxListed int
	// RecheckAfter is how long after a differing chunk was compared key by
	// key its suspect keys are read again on both sides, so that writes in
	// flight (NEW has committed, the mirror to OLD has not landed yet) are
	// not reported. Defaults to 100ms; a negative value rechecks at once.
	RecheckAfter time.Duration
	// Logger defaults to discarding.
	Logger *slog.Logger
	// Registerer receives lazymigrate_verify_chunks_total{table,outcome}
	// (outcome equal or different: the chunk's checksums matched, or it was
	// compared key by key) and lazymigrate_verify_keys_total{table,kind}
	// (kind missing, different, extra, tombstoned or resurrected, counted
	// after the recheck). Defaults to none.
	Registerer prometheus.Registerer
	// Progress, if set, is called after each chunk. It is called from the
	// worker goroutines, but never twice at once, and workers wait for it:
	// keep it quick. Defaults to none.
	Progress func(VerifyProgress)
}

// VerifyProgress is what Verify reports after each chunk.
type VerifyProgress struct {
	Table string
	// Chunk is the chunk just checked.
	Chunk Span
	// ChunksDone of Chunks are checked; chunks are checked Workers at a
	// time, so they finish in no particular order.
	ChunksDone, Chunks int64
	// DifferingChunks, RowsOld and RowsNew are the Report's so far.
	DifferingChunks  int64
	RowsOld, RowsNew int64
	// Differences counts the missing, different, extra and resurrected keys
	// found so far.
	Differences int64
	Elapsed     time.Duration
}

// Report is what Verify found. Each key list is sorted and holds at most
// VerifyConfig.MaxListed keys, the smallest; the counts beside it are exact.
type Report struct {
	Table string
	// Range is the key range checked (of which Shard's chunks only, if a
	// shard was given).
	Range Span
	// Chunks were checked; DifferingChunks of them had differing checksums
	// and were compared key by key. A chunk can differ and yield no key
	// once rechecked: it was written to while it was checked.
	Chunks, DifferingChunks int64
	// RowsOld and RowsNew count the rows each side holds in the chunks
	// checked; RowsOld includes tombstoned keys.
	RowsOld, RowsNew int64

	// Missing keys are in OLD, not tombstoned, and not in NEW: the sweep
	// has not copied them yet, or lost them.
	Missing      []int64
	MissingCount int64
	// Different keys are on both sides with different values in the
	// compared columns.
	Different      []int64
	DifferentCount int64
	// Extra keys are in NEW only, not tombstoned: written to NEW without
	// reaching OLD (no mirroring), or inserted behind lazymigrate's back.
	Extra      []int64
	ExtraCount int64
	// Tombstoned keys were deleted through lazymigrate and are absent from
	// NEW while OLD still holds them, as expected when OLD is not mirrored.
	// They are listed for information and do not make the report unequal.
	// (A tombstoned key absent from both sides is not counted at all.)
	Tombstoned      []int64
	TombstonedCount int64
	// Resurrected keys are tombstoned yet present in NEW: a deleted key
	// came back, which lazymigrate must never let happen.
	Resurrected      []int64
	ResurrectedCount int64

	// Closed says the table's migration was closed (lazy's
	// PurgeTombstones) when Verify started. Its tombstones are gone, so a
	// key deleted through lazymigrate that OLD still holds (writes were
	// not mirrored) shows as Missing, not Tombstoned: verify before the
	// purge.
	Closed bool

	Duration time.Duration
}

// Equal reports whether NEW matches OLD: no key missing, different, extra
// or resurrected. Tombstoned keys are expected to be absent from NEW and do
// not count.
func (r *Report) Equal() bool {
	return r.MissingCount == 0 && r.DifferentCount == 0 && r.ExtraCount == 0 && r.ResurrectedCount == 0
}

// Verify compares NEW's table with OLD's, chunk by chunk, and reports every
// key whose row differs, is missing from NEW, is extra in NEW, or was
// deleted through lazymigrate and came back.
//
// Each chunk costs one scan of its key range on each side, run in both
// databases at once, that returns only a row count and a checksum: the sum
// of a 64-bit hash of each row's text form, computed under pinned output
// settings (see pgtext.PinOutput) so that servers with different TimeZone,
// DateStyle or float settings print, and so hash, the same row the same
// way. OLD's checksum leaves out the keys NEW holds tombstones for. Only
// when the checksums differ are the keys and row hashes of the chunk
// fetched from both sides and merged, and the keys found suspect are read
// again after RecheckAfter: only those still differing are reported.
//
// Verify runs while the migration does. A key written while it is checked
// can look different for a moment (NEW has the write, OLD's mirror has not
// landed); the recheck hides that, but not a key that is written again
// during its recheck, nor one whose mirror lags longer than RecheckAfter
// (OLD down, the relay's RelayDelay): run Verify again and compare, or
// check such keys by hand. Verify compares against OLD, so it is meaningful
// only while writes are mirrored to OLD (or stopped); and it is not a
// snapshot: rows inserted into OLD outside lazymigrate during the check
// show as missing. Two differing rows are taken for equal only if their
// 64-bit hashes collide.
//
// A failure to read OLD wraps promote.ErrOldUnavailable and one to read
// NEW promote.ErrNewUnavailable; both say which side in their message.
// NEW must have lazymigrate's schema (promote.Setup).
func Verify(ctx context.Context, oldDB, newDB Querier, cfg *VerifyConfig) (*Report, error) {
	start := time.Now()
	v, err := newVerifier(ctx, oldDB, newDB, cfg)
	if err != nil {
		return nil, err
	}
	span, err := v.span(ctx)
	if err != nil {
		return nil, v.fail(err)
	}
	rep := &Report{Table: v.cfg.Table, Range: span}
	if err := v.new.QueryRow(ctx, `SELECT `+schema.ClosedSQL, v.tableID).Scan(&rep.Closed); err != nil {
		return nil, v.fail(fmt.Errorf("%w: NEW: read whether %s is closed: %w", promote.ErrNewUnavailable, v.cfg.Table, err))
	}
	if err := v.run(ctx, rep, start); err != nil {
		return nil, v.fail(err)
	}
	rep.Duration = time.Since(start)
	v.log.Info("verify done", "table", v.cfg.Table, "range", span.String(), "shard", v.cfg.Shard.String(),
		"chunks", rep.Chunks, "differing_chunks", rep.DifferingChunks, "rows_old", rep.RowsOld, "rows_new", rep.RowsNew,
		"missing", rep.MissingCount, "different", rep.DifferentCount, "extra", rep.ExtraCount,
		"tombstoned", rep.TombstonedCount, "resurrected", rep.ResurrectedCount, "duration", rep.Duration)
	return rep, nil
}

// verifier holds what Verify prepared from the catalog.
type verifier struct {
	old, new Querier
	cfg      VerifyConfig
	tableID  string // NEW's canonical name, as tombstones record it
	log      *slog.Logger

	oldIdent, newIdent, keyIdent string // quoted for SQL

	// Per side: the chunk checksum, the chunk's key-hash pairs, and the
	// key-hash pairs of given keys. oldSumDead is OLD's checksum leaving
	// out the keys in $3.
	oldSum, oldSumDead, oldRange, oldKeys string
	newSum, newRange, newKeys             string
	tombRange, tombKeys                   string

	chunks *prometheus.CounterVec // by outcome
	keys   *prometheus.CounterVec // by kind
}

func newVerifier(ctx context.Context, oldDB, newDB Querier, cfg *VerifyConfig) (*verifier, error) {
	var c VerifyConfig
	if cfg != nil {
		c = *cfg
	}
	if c.Table == "" {
		return nil, errors.New("coldsweep: VerifyConfig.Table is required")
	}
	c.OldTable = cmp.Or(c.OldTable, c.Table)
	c.KeyColumn = cmp.Or(c.KeyColumn, "id")
	switch {
	case c.Chunk < 0:
		return nil, fmt.Errorf("coldsweep: VerifyConfig.Chunk must be positive, got %d", c.Chunk)
	case c.Workers < 0:
		return nil, fmt.Errorf("coldsweep: VerifyConfig.Workers must be positive, got %d", c.Workers)
	case c.MaxListed < 0:
		return nil, fmt.Errorf("coldsweep: VerifyConfig.MaxListed must be positive, got %d", c.MaxListed)
	case c.Range != (Span{}) && (c.Range.Lo < 0 || c.Range.Hi <= c.Range.Lo):
		return nil, fmt.Errorf("coldsweep: VerifyConfig.Range %v: want 0 <= Lo < Hi: %w", c.Range, keys.ErrInvalid)
	case c.Shard != (Shard{}) && (c.Shard.N < 1 || c.Shard.I < 0 || c.Shard.I >= c.Shard.N):
		return nil, fmt.Errorf("coldsweep: VerifyConfig.Shard %d/%d: want 0 <= I < N", c.Shard.I, c.Shard.N)
	}
	c.Chunk = cmp.Or(c.Chunk, 10_000)
	c.Workers = cmp.Or(c.Workers, 2)
	c.MaxListed = cmp.Or(c.MaxListed, 1000)
	c.RecheckAfter = cmp.Or(c.RecheckAfter, 100*time.Millisecond)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}

	nt, err := pgtable.Describe(ctx, newDB, c.Table)
	if err != nil {
		return nil, describeError(ctx, "NEW", "Table", err)
	}
	ot, err := pgtable.Describe(ctx, oldDB, c.OldTable)
	if err != nil {
		return nil, describeError(ctx, "OLD", "OldTable", err)
	}
	if _, err := nt.CheckKey(ctx, newDB, c.KeyColumn, false); err != nil {
		return nil, fmt.Errorf("coldsweep: VerifyConfig.KeyColumn: NEW: %w", err)
	}
	if _, err := ot.CheckKey(ctx, oldDB, c.KeyColumn, false); err != nil {
		return nil, fmt.Errorf("coldsweep: VerifyConfig.KeyColumn: OLD: %w", err)
	}
	cols, err := verifyColumns(nt, ot, c.Columns, c.KeyColumn)
	if err != nil {
		return nil, err
	}
	if err := schema.Check(ctx, newDB); err != nil {
		if errors.Is(err, schema.ErrNotSetUp) {
			return nil, fmt.Errorf("coldsweep: verify %s: %w", c.Table, err)
		}
		return nil, describeError(ctx, "NEW", "", err)
	}

	v := &verifier{old: oldDB, new: newDB, cfg: c, tableID: nt.ID, log: c.Logger}
	v.buildSQL(ot, nt, cols)
	v.chunks = metrics.CounterVec(c.Registerer, "verify_chunks_total",
		"Chunks checked by verify, by outcome: equal (checksums matched) or different (compared key by key).",
		"table", "outcome").MustCurryWith(prometheus.Labels{"table": c.Table})
	v.keys = metrics.CounterVec(c.Registerer, "verify_keys_total",
		"Keys verify found, after the recheck, by kind: missing, different, extra, tombstoned, resurrected.",
		"table", "kind").MustCurryWith(prometheus.Labels{"table": c.Table})
	return v, nil
}

// verifyColumns returns the names of the columns to compare: those asked
// for, or every NEW column OLD also has; the key always, first.
func verifyColumns(nt, ot *pgtable.Table, names []string, key string) ([]string, error) {
	if len(names) == 0 {
		for _, col := range nt.Columns {
			if _, ok := ot.Column(col.Name); ok {
				names = append(names, col.Name)
			}
		}
		if len(names) == 1 && len(nt.Columns) > 1 {
			return nil, fmt.Errorf("coldsweep: verify: NEW's %s and OLD's %s have no column in common but the key %q: nothing to compare (their schemas differ; set VerifyConfig.Columns)",
				nt.ID, ot.ID, key)
		}
	}
	if _, err := nt.Select(names); err != nil {
		return nil, fmt.Errorf("coldsweep: VerifyConfig.Columns: NEW %w", err)
	}
	if _, err := ot.Select(names); err != nil {
		return nil, fmt.Errorf("coldsweep: VerifyConfig.Columns: OLD %w", err)
	}
	out := []string{key}
	for _, n := range names {
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out, nil
}

// buildSQL prepares every query. Each data query pins the output settings
// in a materialized CTE joined to the table, so that no row is printed
// before they are set, in the statement's own (implicit) transaction: the
// settings end with it, and one statement needs nothing but Query. Columns
// are qualified (lm_t.) so that none can collide with the CTE's.
func (v *verifier) buildSQL(ot, nt *pgtable.Table, names []string) {
	v.oldIdent, v.newIdent, v.keyIdent = ot.Ident, nt.Ident, pgtable.Quote(names[0])
	pin := "WITH lm_pin AS MATERIALIZED (" + pgtext.PinOutput + ")\n"
	key := "lm_t." + pgtable.Quote(names[0])
	refs := make([]string, len(names))
	for i, n := range names {
		refs[i] = "lm_t." + pgtable.Quote(n)
	}
	// The row's text form is exact and unambiguous (NULL prints as nothing,
	// an empty string as ""); COLLATE "C" keeps the hash from depending on
	// a nondeterministic default collation.
	hash := fmt.Sprintf(`hashtextextended((ROW(%s)::text) COLLATE "C", 0)`, strings.Join(refs, ", "))
	// Bounds are cast to bigint: left to infer them from a smallint key,
	// Postgres would make them smallint, and a chunk's end past 32767 would
	// not fit.
	inRange := fmt.Sprintf(`%[1]s >= $1::bigint AND %[1]s < $2::bigint`, key)
	inKeys := key + ` = ANY($1::bigint[])`
	from := func(t *pgtable.Table) string { return " FROM " + t.Ident + " AS lm_t, lm_pin WHERE " }
	sum := func(t *pgtable.Table) string {
		return pin + "SELECT count(*), coalesce(sum(" + hash + "), 0)::text" + from(t) + inRange
	}
	pairs := func(t *pgtable.Table, where string) string {
		return pin + "SELECT " + key + "::bigint, " + hash + from(t) + where + " ORDER BY " + key
	}
	v.oldSum, v.newSum = sum(ot), sum(nt)
	v.oldSumDead = pin + `SELECT count(*) FILTER (WHERE NOT lm_dead), coalesce(sum(lm_h) FILTER (WHERE NOT lm_dead), 0)::text,
	coalesce(array_agg(lm_k ORDER BY lm_k) FILTER (WHERE lm_dead), '{}')
FROM (SELECT ` + key + `::bigint AS lm_k, ` + key + ` = ANY($3::bigint[]) AS lm_dead, ` + hash + ` AS lm_h` +
		from(ot) + inRange + `) AS lm_s`
	v.oldRange, v.newRange = pairs(ot, inRange), pairs(nt, inRange)
	v.oldKeys, v.newKeys = pairs(ot, inKeys), pairs(nt, inKeys)
	v.tombRange = `SELECT key FROM ` + schema.Tombstones + ` WHERE table_name = $1 AND key >= $2 AND key < $3 ORDER BY key`
	v.tombKeys = `SELECT key FROM ` + schema.Tombstones + ` WHERE table_name = $1 AND key = ANY($2::bigint[]) ORDER BY key`
}

// span returns the range to check: the configured one, or the hull of
// both sides' keys, each read from the two ends of its key's index.
func (v *verifier) span(ctx context.Context) (Span, error) {
	if v.cfg.Range != (Span{}) {
		return v.cfg.Range, nil
	}
	var oldSpan, newSpan Span
	err := v.onBoth(ctx,
		func(ctx context.Context) (err error) {
			oldSpan, err = keyBounds(ctx, v.old, "OLD", v.oldIdent, v.keyIdent)
			switch {
			case errors.Is(err, ErrEmptyTable):
				return nil
			case errors.Is(err, keys.ErrInvalid), errors.Is(err, errUnrangeable):
				return err // the keys', not the database's fault; it says OLD
			}
			return sideError(ctx, "OLD", err)
		},
		func(ctx context.Context) (err error) {
			newSpan, err = keyBounds(ctx, v.new, "NEW", v.newIdent, v.keyIdent)
			switch {
			case errors.Is(err, ErrEmptyTable):
				return nil
			case errors.Is(err, keys.ErrInvalid), errors.Is(err, errUnrangeable):
				return err
			}
			return sideError(ctx, "NEW", err)
		})
	switch {
	case err != nil:
		return Span{}, err
	case oldSpan.Len() == 0:
		return newSpan, nil
	case newSpan.Len() == 0:
		return oldSpan, nil
	}
	return Span{min(oldSpan.Lo, newSpan.Lo), max(oldSpan.Hi, newSpan.Hi)}, nil
}

// run checks the chunks of rep.Range, Workers at a time, and adds what
// each finds to rep. The first error stops every worker.
func (v *verifier) run(ctx context.Context, rep *Report, start time.Time) error {
	total := countChunks(rep.Range, v.cfg.Chunk, v.cfg.Shard)
	if total == 0 {
		return nil
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		mu sync.Mutex // guards rep, and serializes Progress
		wg sync.WaitGroup
	)
	work := make(chan Span)
	for range min(int64(v.cfg.Workers), total) {
		wg.Go(func() {
			for ch := range work {
				res, err := v.check(ctx, ch)
				if err != nil {
					cancel(fmt.Errorf("chunk %v: %w", ch, err))
					return
				}
				mu.Lock()
				v.add(rep, ch, res, total, start)
				mu.Unlock()
			}
		})
	}
feed:
	for ch := range chunks(rep.Range, v.cfg.Chunk, v.cfg.Shard) {
		select {
		case work <- ch:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return nil
}

// verifyDiff is what a comparison found, each list sorted.
type verifyDiff struct {
	missing, different, extra, tombstoned, resurrected []int64
}

// chunkResult is what one chunk check found.
type chunkResult struct {
	verifyDiff
	differed         bool // the checksums differed
	rowsOld, rowsNew int64
}

// verifyRow is a row as verify sees it: its key and the hash of its text.
type verifyRow struct{ k, h int64 }

// check compares one chunk: counts and checksums first, key by key only
// if they differ.
func (v *verifier) check(ctx context.Context, ch Span) (*chunkResult, error) {
	dead, err := v.tombstones(ctx, v.tombRange, v.tableID, ch.Lo, ch.Hi)
	if err != nil {
		return nil, err
	}
	var (
		oldCount, newCount int64
		oldSum, newSum     string
		deadInOld          []int64
	)
	err = v.onBoth(ctx,
		func(ctx context.Context) error {
			if len(dead) == 0 {
				return sideError(ctx, "OLD", v.old.QueryRow(ctx, v.oldSum, ch.Lo, ch.Hi).Scan(&oldCount, &oldSum))
			}
			return sideError(ctx, "OLD", v.old.QueryRow(ctx, v.oldSumDead, ch.Lo, ch.Hi, dead).Scan(&oldCount, &oldSum, &deadInOld))
		},
		func(ctx context.Context) error {
			return sideError(ctx, "NEW", v.new.QueryRow(ctx, v.newSum, ch.Lo, ch.Hi).Scan(&newCount, &newSum))
		})
	if err != nil {
		return nil, err
	}
	res := &chunkResult{rowsOld: oldCount + int64(len(deadInOld)), rowsNew: newCount}
	if oldCount == newCount && oldSum == newSum {
		// NEW holds OLD's rows but the tombstoned ones, and none of those
		// (a tombstoned row in NEW would have made the sums differ).
		res.tombstoned = deadInOld
		return res, nil
	}
	res.differed = true
	if res.verifyDiff, err = v.compare(ctx, ch, dead); err != nil {
		return nil, err
	}
	return res, nil
}

// compare fetches the keys and row hashes of a chunk from both sides and
// merges them; then it reads the suspect keys again, once, and keeps only
// those that still differ.
func (v *verifier) compare(ctx context.Context, ch Span, dead []int64) (verifyDiff, error) {
	var oldRows, newRows []verifyRow
	err := v.onBoth(ctx,
		func(ctx context.Context) (err error) {
			oldRows, err = v.pairs(ctx, v.old, "OLD", v.oldRange, ch.Lo, ch.Hi)
			return err
		},
		func(ctx context.Context) (err error) {
			newRows, err = v.pairs(ctx, v.new, "NEW", v.newRange, ch.Lo, ch.Hi)
			return err
		})
	if err != nil {
		return verifyDiff{}, err
	}
	read := time.Now()
	first := classify(oldRows, newRows, dead)
	suspects := slices.Concat(first.missing, first.different, first.extra, first.resurrected)
	if len(suspects) == 0 {
		return first, nil // written to between the checksum and now
	}
	slices.Sort(suspects)

	if wait := v.cfg.RecheckAfter - time.Since(read); wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return verifyDiff{}, context.Cause(ctx)
		}
	}
	if dead, err = v.tombstones(ctx, v.tombKeys, v.tableID, suspects); err != nil {
		return verifyDiff{}, err
	}
	err = v.onBoth(ctx,
		func(ctx context.Context) (err error) {
			oldRows, err = v.pairs(ctx, v.old, "OLD", v.oldKeys, suspects)
			return err
		},
		func(ctx context.Context) (err error) {
			newRows, err = v.pairs(ctx, v.new, "NEW", v.newKeys, suspects)
			return err
		})
	if err != nil {
		return verifyDiff{}, err
	}
	again := classify(oldRows, newRows, dead)
	// A suspect may turn out tombstoned (deleted meanwhile); the first
	// pass's tombstoned keys were no suspects, so the two are disjoint.
	again.tombstoned = slices.Concat(first.tombstoned, again.tombstoned)
	slices.Sort(again.tombstoned)
	v.log.Debug("verify: chunk differs", "table", v.cfg.Table, "chunk", ch.String(), "suspects", len(suspects),
		"missing", len(again.missing), "different", len(again.different), "extra", len(again.extra),
		"resurrected", len(again.resurrected))
	return again, nil
}

// classify merges rows of OLD and NEW, both sorted by key, given the
// sorted tombstoned keys. A key OLD holds twice counts as different when
// NEW has it: OLD's key should be unique, and a copy of it would fail.
func classify(oldRows, newRows []verifyRow, dead []int64) verifyDiff {
	var d verifyDiff
	isDead := func(k int64) bool { _, ok := slices.BinarySearch(dead, k); return ok }
	// run returns the number of rows from i on with rows[i]'s key.
	run := func(rows []verifyRow, i int) int {
		n := 1
		for i+n < len(rows) && rows[i+n].k == rows[i].k {
			n++
		}
		return n
	}
	i, j := 0, 0
	for i < len(oldRows) || j < len(newRows) {
		switch {
		case j == len(newRows) || (i < len(oldRows) && oldRows[i].k < newRows[j].k):
			k := oldRows[i].k
			if isDead(k) {
				d.tombstoned = append(d.tombstoned, k)
			} else {
				d.missing = append(d.missing, k)
			}
			i += run(oldRows, i)
		case i == len(oldRows) || newRows[j].k < oldRows[i].k:
			k := newRows[j].k
			if isDead(k) {
				d.resurrected = append(d.resurrected, k)
			} else {
				d.extra = append(d.extra, k)
			}
			j += run(newRows, j)
		default:
			k := oldRows[i].k
			no, nn := run(oldRows, i), run(newRows, j)
			switch {
			case isDead(k):
				d.resurrected = append(d.resurrected, k)
			case no != 1 || nn != 1 || oldRows[i].h != newRows[j].h:
				d.different = append(d.different, k)
			}
			i, j = i+no, j+nn
		}
	}
	return d
}

// add counts a checked chunk into rep, the metrics and Progress. The
// caller holds the lock that guards rep.
func (v *verifier) add(rep *Report, ch Span, res *chunkResult, total int64, start time.Time) {
	rep.Chunks++
	rep.RowsOld += res.rowsOld
	rep.RowsNew += res.rowsNew
	outcome := "equal"
	if res.differed {
		rep.DifferingChunks++
		outcome = "different"
	}
	v.chunks.WithLabelValues(outcome).Inc()
	for _, kind := range []struct {
		name  string
		found []int64
		list  *[]int64
		count *int64
	}{
		{"missing", res.missing, &rep.Missing, &rep.MissingCount},
		{"different", res.different, &rep.Different, &rep.DifferentCount},
		{"extra", res.extra, &rep.Extra, &rep.ExtraCount},
		{"tombstoned", res.tombstoned, &rep.Tombstoned, &rep.TombstonedCount},
		{"resurrected", res.resurrected, &rep.Resurrected, &rep.ResurrectedCount},
	} {
		if len(kind.found) == 0 {
			continue
		}
		*kind.count += int64(len(kind.found))
		*kind.list = smallest(*kind.list, kind.found, v.cfg.MaxListed)
		v.keys.WithLabelValues(kind.name).Add(float64(len(kind.found)))
	}
	if v.cfg.Progress != nil {
		v.cfg.Progress(VerifyProgress{
			Table: v.cfg.Table, Chunk: ch, ChunksDone: rep.Chunks, Chunks: total,
			DifferingChunks: rep.DifferingChunks, RowsOld: rep.RowsOld, RowsNew: rep.RowsNew,
			Differences: rep.MissingCount + rep.DifferentCount + rep.ExtraCount + rep.ResurrectedCount,
			Elapsed:     time.Since(start),
		})
	}
}

// smallest returns the n smallest keys of list and more, sorted; list is
// sorted already, and the two share no key (chunks do not overlap).
func smallest(list, more []int64, n int) []int64 {
	if len(list) == n && more[0] > list[n-1] {
		return list
	}
	list = append(list, more...)
	slices.Sort(list)
	return slices.Clip(list[:min(len(list), n)])
}

// pairs returns the key-hash pairs sql selects from one side, by key.
func (v *verifier) pairs(ctx context.Context, q Querier, side, sql string, args ...any) ([]verifyRow, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, sideError(ctx, side, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (verifyRow, error) {
		var x verifyRow
		err := r.Scan(&x.k, &x.h)
		return x, err
	})
	return out, sideError(ctx, side, err)
}

// tombstones returns, sorted, the tombstoned keys sql selects from NEW.
func (v *verifier) tombstones(ctx context.Context, sql string, args ...any) ([]int64, error) {
	rows, err := v.new.Query(ctx, sql, args...)
	if err != nil {
		return nil, sideError(ctx, "NEW", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	return out, sideError(ctx, "NEW", err)
}

// onBoth runs onOld and onNew at once, the first on a goroutine of its
// own; when one fails it cancels the other, and returns the failure rather
// than the cancellation it caused.
func (v *verifier) onBoth(ctx context.Context, onOld, onNew func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	oldDone := make(chan error, 1)
	go func() {
		err := onOld(ctx)
		if err != nil {
			cancel()
		}
		oldDone <- err
	}()
	errNew := onNew(ctx)
	if errNew != nil {
		cancel()
	}
	errOld := <-oldDone
	for _, err := range []error{errOld, errNew} {
		if err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
	}
	return cmp.Or(errOld, errNew)
}

// sideError says which side a failure to read came from, and wraps
// promote's sentinel for it; a cancelled read returns the cancellation.
func sideError(ctx context.Context, side string, err error) error {
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return context.Cause(ctx)
	case side == "OLD":
		return fmt.Errorf("read OLD: %w: %w", promote.ErrOldUnavailable, err)
	default:
		return fmt.Errorf("read NEW: %w: %w", promote.ErrNewUnavailable, err)
	}
}

// describeError words a failure to describe a side's table: a table that
// does not exist is the config's fault (field names it); anything else is
// the database's.
func describeError(ctx context.Context, side, field string, err error) error {
	if errors.Is(err, pgtable.ErrNotFound) {
		return fmt.Errorf("coldsweep: VerifyConfig.%s: %s: %w", field, side, err)
	}
	return fmt.Errorf("coldsweep: verify: %w", sideError(ctx, side, err))
}

// fail words an error of a run.
func (v *verifier) fail(err error) error {
	return fmt.Errorf("coldsweep: verify %s: %w", v.cfg.Table, err)
}
