package coldsweep

import (
	"context"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/lazymigrate/lazymigrate/internal/keys"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
)

func TestChunks(t *testing.T) {
	got := slices.Collect(chunks(Span{5, 35}, 10, Shard{}))
	want := []Span{{5, 10}, {10, 20}, {20, 30}, {30, 35}}
	if !slices.Equal(got, want) {
		t.Fatalf("chunks = %v, want %v", got, want)
	}
	if n := countChunks(Span{5, 35}, 10, Shard{}); n != 4 {
		t.Fatalf("countChunks = %d, want 4", n)
	}
	if got := slices.Collect(chunks(Span{7, 7}, 10, Shard{})); len(got) != 0 {
		t.Fatalf("empty span yields %v", got)
	}
	top := slices.Collect(chunks(Span{math.MaxInt64 - 15, math.MaxInt64}, 10, Shard{}))
	if len(top) == 0 || top[len(top)-1].Hi != math.MaxInt64 {
		t.Fatalf("chunks near MaxInt64 = %v", top)
	}
}

func TestShardsAreDisjointAndComplete(t *testing.T) {
	for _, s := range []Span{{0, 100}, {3, 97}, {10, 11}, {0, 1}, {25, 26}} {
		for _, n := range []int64{1, 2, 3, 7} {
			seen := map[int64]int{}
			var total int64
			for i := range n {
				sh := Shard{I: i, N: n}
				cnt := int64(0)
				for ch := range chunks(s, 10, sh) {
					cnt++
					for k := ch.Lo; k < ch.Hi; k++ {
						seen[k]++
					}
				}
				if want := countChunks(s, 10, sh); cnt != want {
					t.Fatalf("span %v shard %v: %d chunks, countChunks says %d", s, sh, cnt, want)
				}
				total += cnt
			}
			for k := s.Lo; k < s.Hi; k++ {
				if seen[k] != 1 {
					t.Fatalf("span %v, %d shards: key %d covered %d times", s, n, k, seen[k])
				}
			}
			if total != countChunks(s, 10, Shard{}) {
				t.Fatalf("span %v: shards hold %d chunks, whole sweep %d", s, total, countChunks(s, 10, Shard{}))
			}
		}
	}
}

func TestParseShard(t *testing.T) {
	if sh, err := ParseShard("2/5"); err != nil || sh != (Shard{2, 5}) {
		t.Fatalf("ParseShard(2/5) = %v, %v", sh, err)
	}
	for _, bad := range []string{"", "1", "5/5", "-1/3", "a/b", "1/0", "0/3/4"} {
		if _, err := ParseShard(bad); err == nil {
			t.Errorf("ParseShard(%q) accepted", bad)
		}
	}
}

// keyBounds gives the half-open range of a table's keys, and refuses keys
// no such range can hold: a negative key, and math.MaxInt64, for which
// max+1 would wrap around to math.MinInt64.
func TestKeyBoundsRefusesKeysNoSpanCanHold(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDatabase(t, "bounds")
	db.Exec(t, `CREATE TABLE t (id bigint PRIMARY KEY)`)
	if _, err := keyBounds(ctx, db.Pool, "OLD", "t", "id"); !errors.Is(err, ErrEmptyTable) {
		t.Fatalf("empty table: err = %v, want ErrEmptyTable", err)
	}
	db.Exec(t, `INSERT INTO t VALUES (3), (9)`)
	if s, err := keyBounds(ctx, db.Pool, "OLD", "t", "id"); err != nil || s != (Span{3, 10}) {
		t.Fatalf("keys 3 and 9: keyBounds = %v, %v; want [3, 10)", s, err)
	}
	db.Exec(t, `INSERT INTO t VALUES (9223372036854775807)`)
	if s, err := keyBounds(ctx, db.Pool, "OLD", "t", "id"); err == nil || !strings.Contains(err.Error(), "9223372036854775806") {
		t.Fatalf("key MaxInt64: keyBounds = %v, %v; want an error naming the largest key a range can hold", s, err)
	}
	db.Exec(t, `INSERT INTO t VALUES (-1)`)
	if s, err := keyBounds(ctx, db.Pool, "OLD", "t", "id"); !errors.Is(err, keys.ErrInvalid) {
		t.Fatalf("key -1: keyBounds = %v, %v; want keys.ErrInvalid", s, err)
	}
}
