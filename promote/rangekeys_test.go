package promote_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lazymigrate/lazymigrate/promote"
)

// CopyRangeKeys skips the parts of its range without keys: one key at each
// end of the widest range it takes copies at once. A wider range, which it
// would have to mark settled whole, is refused.
func TestCopyRangeKeysSkipsPartsWithoutKeys(t *testing.T) {
	t.Parallel()
	b := setup(t, &promote.CopierConfig{StripeBits: 2}) // 128 keys per transaction
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := b.copier.CopyRangeKeys(ctx, 0, promote.MaxRangeKeys, []int64{5, 99})
	if err != nil || res.Copied != 2 {
		t.Fatalf("CopyRangeKeys = %+v, %v; want 2 rows copied", res, err)
	}
	if _, err := b.copier.CopyRangeKeys(ctx, 0, promote.MaxRangeKeys+1, []int64{5}); err == nil {
		t.Fatal("a range past MaxRangeKeys: want an error")
	}
}

// Given keys, the bulk path's first attempt lists only their tombstones:
// a key NEW already holds though the tracker has no bit for it (a writer's
// commit not yet marked) fails that attempt, and the listed retry leaves
// NEW's row alone. Bulk and row path agree on NEW and on the counts.
func TestCopyRangeKeysBulkKeepsRowsNEWHolds(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var ks []int64
	for k := int64(0); k < 300; k++ {
		if k%3 == 0 || k == 5 || k == 20 || k == 77 || k == 150 {
			ks = append(ks, k)
		}
	}
	type outcome struct {
		res   promote.Result
		rows  map[int64]string
		locks int64
	}
	run := func(noBulk bool) outcome {
		b, locked := bulkFixture(t, noBulk)
		b.pair.New.Exec(t, `INSERT INTO lazymigrate.tombstones (table_name, key) VALUES ('public.accounts', 4)`)
		res, err := b.copier.CopyRangeKeys(ctx, 0, 300, ks)
		if err != nil {
			t.Fatalf("noBulk=%v: %v", noBulk, err)
		}
		return outcome{res, rowsText(t, b.pair.New, "accounts"), locked.Load()}
	}
	bulk, rows := run(false), run(true)
	// OLD has 1..100 but multiples of 10. Of the keys given, OLD has 32:
	// 30 multiples of 3, and 5 and 77. 3 and 77 are tombstoned, and 5 is
	// present in NEW: 29 copied. 20, tombstoned, is not in OLD; 4 is
	// tombstoned but not asked for; 150 is in NEW only.
	want := promote.Result{Copied: 29, Present: 1, Tombstoned: 3, Absent: len(ks) - 32 - 1}
	if bulk.res != want || rows.res != want {
		t.Fatalf("results: bulk %+v, row path %+v, want %+v", bulk.res, rows.res, want)
	}
	if !mapsEqual(bulk.rows, rows.rows) {
		t.Fatal("NEW differs between the bulk and the row path")
	}
	if r := bulk.rows[5]; !strings.Contains(r, "Written in NEW") {
		t.Fatalf("NEW's row 5 = %s, overwritten", r)
	}
	// 300 keys, 4 a stripe, 32 stripes a transaction: 3 parts, and the
	// first tried twice for key 5.
	if bulk.locks != 4 {
		t.Fatalf("bulk path ran %d transactions, want 4", bulk.locks)
	}
}

// Keys NEW holds but the tracker never marked (its marks failed while Redis
// was down) come in numbers: after one part's first attempt finds one, the
// following parts are listed in full at once instead of each paying a
// failed COPY first.
func TestCopyRangeKeysListsFirstAfterFindingUnmarkedRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b, locked := bulkFixture(t, false)
	// With 4-key stripes a part spans at most 128 keys from its first
	// key's stripe: here three parts. NEW holds one key OLD has in each (5
	// is the fixture's).
	b.pair.Old.Exec(t, `INSERT INTO accounts SELECT k, email, name, balance_cents, status, created_at, updated_at
		FROM accounts, unnest('{140,141,290,291}'::bigint[]) k WHERE id = 1`)
	b.pair.New.Exec(t, `INSERT INTO accounts VALUES
		(140, 'n140@example.com', 'Written in NEW', 1, 'active', '2021-01-01Z', '2021-01-01Z'),
		(290, 'n290@example.com', 'Written in NEW', 1, 'active', '2021-01-01Z', '2021-01-01Z')`)
	res, err := b.copier.CopyRangeKeys(ctx, 0, 400, []int64{5, 6, 140, 141, 290, 291})
	if want := (promote.Result{Copied: 3, Present: 3}); err != nil || res != want {
		t.Fatalf("CopyRangeKeys = %+v, %v; want %+v", res, err, want)
	}
	// The first part twice (its first attempt fails on key 5), the others
	// once each.
	if n := locked.Load(); n != 4 {
		t.Fatalf("bulk path ran %d transactions, want 4", n)
	}
	rows := rowsText(t, b.pair.New, "accounts")
	for _, k := range []int64{5, 140, 290} {
		if !strings.Contains(rows[k], "Written in NEW") {
			t.Fatalf("NEW's row %d = %s, overwritten", k, rows[k])
		}
	}
}
