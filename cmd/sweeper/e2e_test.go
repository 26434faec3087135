package main

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lazymigrate/lazymigrate/internal/schema"
	"github.com/lazymigrate/lazymigrate/lazy"
)

type Account struct {
	ID           int64     `db:"id"`
	Email        string    `db:"email"`
	Name         string    `db:"name"`
	BalanceCents int64     `db:"balance_cents"`
	Status       string    `db:"status"`
	CreatedAt    time.Time `db:"created_at"`
	UpdatedAt    time.Time `db:"updated_at"`
}

// The JSON outputs, as a script reads them.
type (
	runOut struct {
		Outcome       string `json:"outcome"`
		Chunks        int64  `json:"chunks"`
		ChunksDone    int64  `json:"chunks_done"`
		ChunksSkipped int64  `json:"chunks_skipped"`
		Keys          int64  `json:"keys"`
		Range         *struct {
			From int64 `json:"from"`
			To   int64 `json:"to"`
		} `json:"range"`
		Rows struct {
			Copied int64 `json:"copied"`
		} `json:"rows"`
		ThrottledSeconds float64 `json:"throttled_seconds"`
	}
	keysOut struct {
		Count int64   `json:"count"`
		Keys  []int64 `json:"keys"`
	}
	verifyOut struct {
		Equal       bool    `json:"equal"`
		Chunks      int64   `json:"chunks"`
		Missing     keysOut `json:"missing"`
		Different   keysOut `json:"different"`
		Extra       keysOut `json:"extra"`
		Resurrected keysOut `json:"resurrected"`
		Tombstoned  keysOut `json:"tombstoned"`
		Closed      bool    `json:"closed"`
	}
	statusOut struct {
		TotalKeys   int64   `json:"total_keys"`
		SettledKeys int64   `json:"settled_keys"`
		Percent     float64 `json:"percent"`
		Paused      bool    `json:"paused"`
		Shards      []struct {
			Shard      string `json:"shard"`
			State      string `json:"state"`
			ChunksDone int64  `json:"chunks_done"`
		} `json:"shards"`
		Heatmap struct {
			Cells []float64 `json:"cells"`
			Text  string    `json:"text"`
		} `json:"heatmap"`
	}
)

// status runs 'status --json' and decodes it.
func (b *bundle) status(t *testing.T, extra ...string) statusOut {
	t.Helper()
	r := b.sweeper(t, "status", append([]string{"--json"}, extra...)...)
	if r.code != 0 {
		t.Fatalf("status: %v", r)
	}
	return decode[statusOut](t, r)
}

// TestEndToEnd sweeps a table with gaps whose keys were partly promoted,
// rewritten and deleted through lazymigrate; verify, status and
// rebuild-tracker then agree that the migration is complete.
func TestEndToEnd(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const n = 20_000
	b := setup(t, n)
	cp := b.copier(t)

	// Reads promoted a key in 50.
	var promoted []int64
	for k := int64(1); k <= n; k += 50 {
		promoted = append(promoted, k)
	}
	if _, err := cp.CopyKeys(ctx, promoted); err != nil {
		t.Fatal(err)
	}
	repo, err := lazy.New(ctx, b.pair.Old.Pool, b.pair.New.Pool, &lazy.Config[Account]{Table: "accounts", Copier: cp, Tracker: b.tr})
	if err != nil {
		t.Fatal(err)
	}
	defer repo.Close()
	unmirrored, err := lazy.New(ctx, b.pair.Old.Pool, b.pair.New.Pool, &lazy.Config[Account]{
		Table: "accounts", Copier: cp, Tracker: b.tr, DisableMirror: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer unmirrored.Close()
	// Rewritten through lazymigrate (mirrored to OLD): promoted keys and
	// others.
	for _, k := range []int64{51, 101, 3004, 9998, 15_002} {
		if _, err := repo.Update(ctx, k, func(a *Account) error { a.Name += " (renamed)"; return nil }); err != nil {
			t.Fatalf("update %d: %v", k, err)
		}
	}
	// Deleted through lazymigrate: mirrored (gone from OLD too), and not
	// mirrored (OLD still has the row, verify lists it as tombstoned).
	for _, k := range []int64{151, 4005, 12_345} {
		if err := repo.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	stillInOld := []int64{201, 5006, 18_001}
	for _, k := range stillInOld {
		if err := unmirrored.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}

	oldRows := count(t, b.pair.Old, `SELECT count(*) FROM accounts`)
	newRows := count(t, b.pair.New, `SELECT count(*) FROM accounts`)
	if r := b.sweeper(t, "init"); r.code != 0 || !strings.Contains(r.stdout, "already set up") {
		t.Errorf("init again: %v", r)
	}
	if st := b.status(t); st.Percent >= 100 || st.SettledKeys == 0 {
		t.Errorf("before the sweep: settled %d of %d keys (%.1f%%)", st.SettledKeys, st.TotalKeys, st.Percent)
	}

	r := b.sweeper(t, "run", "--json", "--chunk", "1000", "--workers", "3")
	if r.code != 0 {
		t.Fatalf("run: %v", r)
	}
	sum := decode[runOut](t, r)
	wantCopied := oldRows - newRows - int64(len(stillInOld))
	if sum.Outcome != "done" || sum.Rows.Copied != wantCopied || sum.ChunksDone != sum.Chunks || sum.Chunks != 21 ||
		sum.Range == nil || sum.Range.From != 1 || sum.Range.To != n {
		t.Errorf("run: want outcome done, %d rows copied, 21 chunks over keys 1..%d; got %+v\n%s", wantCopied, n, sum, r.stdout)
	}
	if got := count(t, b.pair.New, `SELECT count(*) FROM accounts a JOIN lazymigrate.tombstones t ON t.key = a.id`); got != 0 {
		t.Errorf("%d tombstoned keys are in NEW", got)
	}

	r = b.sweeper(t, "verify", "--json", "--chunk", "3000")
	if r.code != 0 {
		t.Fatalf("verify: %v", r)
	}
	if v := decode[verifyOut](t, r); !v.Equal || v.Missing.Count+v.Different.Count+v.Extra.Count+v.Resurrected.Count != 0 ||
		!slices.Equal(v.Tombstoned.Keys, stillInOld) || v.Tombstoned.Count != 3 {
		t.Errorf("verify: want equal, tombstoned %v; got %+v", stillInOld, v)
	}
	r = b.sweeper(t, "verify")
	if r.code != 0 || !strings.Contains(r.stdout, "NEW matches OLD") || !strings.Contains(r.stdout, "tombstoned   3: 201 5006 18001") {
		t.Errorf("verify: %v", r)
	}

	const total = n // OLD's keys run from 1 to 20000
	if st := b.status(t); st.Percent != 100 || st.SettledKeys != total || st.TotalKeys != total ||
		len(st.Shards) != 1 || st.Shards[0].State != "done" || st.Heatmap.Text != strings.Repeat("█", 64) {
		t.Errorf("status after the sweep: %+v", st)
	}
	r = b.sweeper(t, "status")
	if r.code != 0 || !strings.Contains(r.stdout, "20,000 of 20,000 keys (100.0%)") || !strings.Contains(r.stdout, strings.Repeat("█", 64)) ||
		!strings.Contains(r.stdout, "shard 0/1: done, 21/21 chunks (100.0%)") {
		t.Errorf("status: %v", r)
	}

	r = b.sweeper(t, "rebuild-tracker")
	if r.code != 0 || !strings.Contains(r.stdout, "0 keys newly marked, 20,000 settled in all") {
		t.Errorf("rebuild-tracker: %v", r)
	}
	if st := b.status(t); st.Percent != 100 {
		t.Errorf("status after rebuild-tracker: %+v", st)
	}

	// Redis loses the bitmap: the rebuild restores every key NEW holds or
	// tombstoned, and a second sweep settles the rest without copying.
	if err := b.tr.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	inNew := count(t, b.pair.New, `SELECT count(*) FROM accounts`) + count(t, b.pair.New, `SELECT count(*) FROM lazymigrate.tombstones`)
	r = b.sweeper(t, "rebuild-tracker")
	if r.code != 0 || !strings.Contains(r.stdout, human(inNew)+" keys newly marked") {
		t.Errorf("rebuild-tracker after the loss of Redis: want %d keys marked: %v", inNew, r)
	}
	if st := b.status(t); st.SettledKeys != inNew {
		t.Errorf("status after rebuild: %d keys settled, want %d", st.SettledKeys, inNew)
	}
	r = b.sweeper(t, "run", "--json", "--chunk", "1000")
	if sum := decode[runOut](t, r); r.code != 0 || sum.Rows.Copied != 0 || sum.Outcome != "done" {
		t.Errorf("run after rebuild: want nothing copied: %v", r)
	}
	if st := b.status(t); st.Percent != 100 {
		t.Errorf("status after the second sweep: %+v", st)
	}
	if r := b.sweeper(t, "verify", "--json"); r.code != 0 || !decode[verifyOut](t, r).Equal {
		t.Errorf("verify after the second sweep: %v", r)
	}
}

// TestVerifyFindsDifferences: rows changed, removed and added in NEW behind
// lazymigrate's back are listed, and verify exits 1.
func TestVerifyFindsDifferences(t *testing.T) {
	t.Parallel()
	const n = 5_000
	b := setup(t, n)
	if r := b.sweeper(t, "run", "--quiet"); r.code != 0 {
		t.Fatalf("run: %v", r)
	}
	b.pair.New.Exec(t, `UPDATE accounts SET balance_cents = balance_cents + 1 WHERE id IN (1234, 4321)`)
	b.pair.New.Exec(t, `DELETE FROM accounts WHERE id = 2500`)
	b.pair.New.Exec(t, `INSERT INTO accounts SELECT id + 10000, email, name, balance_cents, status, created_at, updated_at FROM accounts WHERE id = 1`)

	r := b.sweeper(t, "verify", "--json", "--chunk", "1000", "--recheck-after", "0")
	if r.code != exitDifferent {
		t.Fatalf("verify: want exit 1: %v", r)
	}
	v := decode[verifyOut](t, r)
	if v.Equal || !slices.Equal(v.Different.Keys, []int64{1234, 4321}) || !slices.Equal(v.Missing.Keys, []int64{2500}) ||
		!slices.Equal(v.Extra.Keys, []int64{10_001}) || v.Different.Count != 2 || v.Tombstoned.Count != 0 || v.Closed {
		t.Errorf("verify: %+v", v)
	}

	r = b.sweeper(t, "verify", "--max-listed", "1")
	if r.code != exitDifferent || !strings.Contains(r.stdout, "NEW differs from OLD") ||
		!strings.Contains(r.stdout, "missing      1: 2500\n") || !strings.Contains(r.stdout, "different    2: 1234 … and 1 more\n") ||
		!strings.Contains(r.stdout, "extra        1: 10001\n") {
		t.Errorf("verify: %v", r)
	}
	// A range that leaves the differences out.
	if r := b.sweeper(t, "verify", "--from", "1", "--to", "1000"); r.code != 0 {
		t.Errorf("verify of keys 1..1000: %v", r)
	}

	// After the purge, a missing key may be one deleted through
	// lazymigrate: verify says the table is closed.
	b.pair.New.Exec(t, schema.CloseSQL, "public.accounts", int(schema.DefaultStripeBits))
	if v := decode[verifyOut](t, b.sweeper(t, "verify", "--json", "--recheck-after", "0")); !v.Closed || v.Missing.Count != 1 {
		t.Errorf("verify of a closed table: %+v", v)
	}
	if r := b.sweeper(t, "verify", "--recheck-after", "0"); !strings.Contains(r.stdout, "the migration of this table is closed") {
		t.Errorf("verify of a closed table does not say so: %v", r)
	}
}

// TestPartialAndShardedSweeps: a sweep of part of the range shows in the
// heatmap; two shards then finish the rest between them.
func TestPartialAndShardedSweeps(t *testing.T) {
	t.Parallel()
	const n = 6_400 // OLD's keys run from 1 to 6400
	b := setup(t, n)
	r := b.sweeper(t, "run", "--to", "3200", "--chunk", "500", "--json")
	if sum := decode[runOut](t, r); r.code != 0 || sum.Range.From != 1 || sum.Range.To != 3200 || sum.Keys != 3200 {
		t.Fatalf("run --to 3200: %v", r)
	}
	// 64 cells of 99 or 100 keys: the first 32 end at key 3200.
	st := b.status(t, "--from", "1", "--to", "6400")
	if st.SettledKeys != 3200 || st.Percent != 50 || st.Heatmap.Text != strings.Repeat("█", 32)+strings.Repeat("·", 32) {
		t.Errorf("status after the first half: %+v", st)
	}
	// Cells of 100 keys over keys 51..3250: 31 full, and one half full.
	if st := b.status(t, "--from", "51", "--to", "3250", "--cells", "32"); st.Heatmap.Text != strings.Repeat("█", 31)+"▄" {
		t.Errorf("heatmap of keys 51..3250: %q", st.Heatmap.Text)
	}

	// Two processes, one shard each.
	var waits []func() result
	for _, shard := range []string{"0/2", "1/2"} {
		_, wait := background(b.args("run", "--from", "3201", "--chunk", "500", "--shard", shard, "--json", "--quiet")...)
		waits = append(waits, wait)
	}
	var copied int64
	for _, wait := range waits {
		r := wait()
		sum := decode[runOut](t, r)
		if r.code != 0 || sum.Outcome != "done" {
			t.Fatalf("sharded run: %v", r)
		}
		copied += sum.Rows.Copied
	}
	if want := count(t, b.pair.Old, `SELECT count(*) FROM accounts WHERE id > 3200`); copied != want {
		t.Errorf("the shards copied %d rows, want %d", copied, want)
	}
	// The sharded sweep's layout replaced the unsharded one's, and with it
	// that run's progress.
	st = b.status(t)
	if st.Percent != 100 || len(st.Shards) != 2 {
		t.Errorf("status after the shards: %+v", st)
	}
	// Chunks 0..6 of 1000 keys: shard 1/3 holds chunks 1 and 4.
	if r := b.sweeper(t, "verify", "--chunk", "1000", "--shard", "1/3", "--json"); r.code != 0 || decode[verifyOut](t, r).Chunks != 2 {
		t.Errorf("verify --shard 1/3: %v", r)
	}
}
