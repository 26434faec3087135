package coldsweep

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"math"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/lazymigrate/lazymigrate/internal/keys"
)

// Span is a half-open key range [Lo, Hi).
type Span struct {
	Lo int64 `json:"lo"`
	Hi int64 `json:"hi"`
}

// Len returns the number of keys in s.
func (s Span) Len() int64 { return s.Hi - s.Lo }

func (s Span) String() string { return fmt.Sprintf("[%d, %d)", s.Lo, s.Hi) }

// Shard selects one of N disjoint sets of chunks: chunk c belongs to shard
// c mod N. Chunks are numbered from key 0 (chunk c holds keys
// [c*size, (c+1)*size)), so the sets do not depend on the range swept, and n
// processes given shards 0/n .. n-1/n split any range between them. The zero
// Shard is the whole sweep.
type Shard struct{ I, N int64 }

// ParseShard reads "i/n" with 0 <= i < n.
func ParseShard(s string) (Shard, error) {
	is, ns, ok := strings.Cut(s, "/")
	i, err1 := strconv.ParseInt(is, 10, 64)
	n, err2 := strconv.ParseInt(ns, 10, 64)
	if !ok || err1 != nil || err2 != nil || n < 1 || i < 0 || i >= n {
		return Shard{}, fmt.Errorf("shard %q: want i/n with 0 <= i < n, e.g. 0/4", s)
	}
	return Shard{I: i, N: n}, nil
}

func (sh Shard) String() string {
	if sh.N <= 1 {
		return "0/1"
	}
	return fmt.Sprintf("%d/%d", sh.I, sh.N)
}

// owns reports whether chunk number c belongs to the shard.
func (sh Shard) owns(c int64) bool { return sh.N <= 1 || c%sh.N == sh.I }

// chunks yields, in ascending order, the parts of s that fall into the
// shard's chunks of the given size.
func chunks(s Span, size int64, sh Shard) iter.Seq[Span] {
	return func(yield func(Span) bool) {
		if s.Len() <= 0 {
			return
		}
		last := (s.Hi - 1) / size
		for c := s.Lo / size; c <= last; c++ {
			if !sh.owns(c) {
				continue
			}
			ch := Span{max(c*size, s.Lo), s.Hi}
			if c < last { // (c+1)*size could overflow for the last chunk
				ch.Hi = (c + 1) * size
			}
			if !yield(ch) {
				return
			}
		}
	}
}

// countChunks returns how many chunks chunks(s, size, sh) yields.
func countChunks(s Span, size int64, sh Shard) int64 {
	if s.Len() <= 0 {
		return 0
	}
	first, last := s.Lo/size, (s.Hi-1)/size
	if sh.N <= 1 {
		return last - first + 1
	}
	// Chunks c in [first, last] with c mod N == I.
	below := func(c int64) int64 { // chunks of the shard in [0, c)
		return c/sh.N + btoi(c%sh.N > sh.I)
	}
	return below(last+1) - below(first)
}

func btoi(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// ErrEmptyTable is returned when a range is to be read from OLD and OLD's
// table has no rows.
var ErrEmptyTable = errors.New("coldsweep: OLD table is empty")

// Querier is the part of pgx coldsweep uses to read a database.
// *pgxpool.Pool implements it.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// keyBounds returns [min(key), max(key)+1) of a table, reading only the
// two ends of the key's index. It fails as inclusiveSpan does.
func keyBounds(ctx context.Context, q Querier, side, tableIdent, keyIdent string) (Span, error) {
	var lo, hi *int64
	sql := fmt.Sprintf(`SELECT min(%s)::bigint, max(%s)::bigint FROM %s`, keyIdent, keyIdent, tableIdent)
	if err := q.QueryRow(ctx, sql).Scan(&lo, &hi); err != nil {
		return Span{}, err
	}
	if lo == nil {
		return Span{}, ErrEmptyTable
	}
	s, err := inclusiveSpan(*lo, *hi)
	if err != nil {
		return Span{}, fmt.Errorf("coldsweep: key range of %s in %s: %w", tableIdent, side, err)
	}
	return s, nil
}

// inclusiveSpan returns the Span [lo, hi+1) of the keys lo to hi. It fails
// when lo is negative, with an error wrapping keys.ErrInvalid, and when hi
// is math.MaxInt64: a Span is half-open, so the largest key one can hold
// is math.MaxInt64-1 (hi+1 would wrap around to math.MinInt64).
// errUnrangeable marks a key no Span can hold, so that it is not taken for
// a database failure.
var errUnrangeable = errors.New("key out of range")

func inclusiveSpan(lo, hi int64) (Span, error) {
	switch {
	case lo < 0:
		return Span{}, fmt.Errorf("smallest key is %d: %w", lo, keys.ErrInvalid)
	case hi == math.MaxInt64:
		return Span{}, fmt.Errorf("%w: largest key is %d, past the largest key a half-open range can hold (%d): "+
			"give a range that ends before it, and handle that key on its own", errUnrangeable, hi, int64(math.MaxInt64-1))
	}
	return Span{lo, hi + 1}, nil
}
