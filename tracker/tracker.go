package tracker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/internal/keys"
)

var (
	// ErrInvalidKey is returned for a negative key or a range that is not
	// 0 <= lo <= hi. Nothing is written to Redis when it is returned.
	ErrInvalidKey = keys.ErrInvalid

	// ErrLayoutMismatch is returned when the table's bitmap in Redis was
	// written with another Config.SegmentBits than this Tracker's. Reading
	// it anyway would report keys as settled that never were.
	ErrLayoutMismatch = errors.New("tracker: bitmap in Redis has another segment layout")

	// ErrNotSetUp is returned by Rebuild when lazymigrate's schema (the
	// tombstone table) does not exist in NEW.
	ErrNotSetUp = errors.New("tracker: lazymigrate schema is not set up in NEW")
)

const (
	defaultPrefix      = "lazymigrate"
	defaultSegmentBits = 20
	minSegmentBits     = 10
	// maxSegmentBits keeps a segment at 32 MiB, whose first write stalls
	// Redis for about 20 ms; beyond that segments stop doing their job.
	maxSegmentBits = 28

	// maxSubOps caps the sub-operations of one BITFIELD. Redis runs a
	// command to completion in its only thread, so a 64k-key batch sent as
	// one command would stall every other client; 4096 ops take a few ms.
	maxSubOps = 4096

	// maxSetRange caps one SETRANGE payload, for the same reason, and lets
	// every SETRANGE share the one string of 0xFF bytes below.
	maxSetRange = 64 << 10
)

// ones is the payload of every SETRANGE: sub-slicing a string does not copy.
var ones = strings.Repeat("\xff", maxSetRange)

// uint types for BITFIELD, indexed by width; built once so that marking does
// not format a type name per key.
var uintTypes = func() (ts [64]string) {
	for i := range ts {
		ts[i] = "u" + strconv.Itoa(i)
	}
	return ts
}()

// Config configures a Tracker. The zero value is ready to use.
type Config struct {
	// Prefix starts every Redis key the tracker writes. Defaults to
	// "lazymigrate".
	Prefix string

	// SegmentBits is log2 of the number of keys per Redis string: each
	// segment holds 2^SegmentBits keys in 2^SegmentBits/8 bytes. It must be
	// between 10 and 28, and the same in every process that tracks the
	// table. Defaults to 20 (128 KiB per segment).
	SegmentBits uint

	// Registerer, when set, receives a collector exposing
	// lazymigrate_tracker_settled_keys{table}, read at scrape time with
	// Count, and lazymigrate_tracker_marked_keys_total{table}, the keys Mark
	// and Rebuild found unset. Defaults to nil: no metrics are registered.
	Registerer prometheus.Registerer
}

// Tracker is the bitmap of settled keys of one table. It is safe for
// concurrent use.
type Tracker struct {
	rdb   redis.UniversalClient
	table string
	bits  uint

	base      string // "<Prefix>:tracker:<table>:"
	segPrefix string // "<base>b<SegmentBits>:"; a segment key is this plus its number
	indexKey  string // set of segment numbers in use
	layoutKey string // SegmentBits the bitmap was written with

	// layoutOK is set once layoutKey has been found to agree with bits, or
	// claimed for them, so that later calls skip the round trip of the
	// check. A read that finds no layout recorded leaves it unset.
	layoutOK atomic.Bool

	marked prometheus.Counter
}

// New returns a tracker for the table named table. table only names the
// bitmap in Redis (and the metrics label); the same name must be used by
// every process that tracks the table. cfg may be nil.
func New(rdb redis.UniversalClient, table string, cfg *Config) (*Tracker, error) {
	if rdb == nil {
		return nil, errors.New("tracker: New needs a Redis client")
	}
	if table == "" {
		return nil, errors.New("tracker: New needs a table name")
	}
	var c Config
	if cfg != nil {
		c = *cfg
	}
	c.Prefix = cmp.Or(c.Prefix, defaultPrefix)
	c.SegmentBits = cmp.Or(c.SegmentBits, defaultSegmentBits)
	if c.SegmentBits < minSegmentBits || c.SegmentBits > maxSegmentBits {
		return nil, fmt.Errorf("tracker: Config.SegmentBits must be between %d and %d, got %d",
			minSegmentBits, maxSegmentBits, c.SegmentBits)
	}

	base := c.Prefix + ":tracker:" + table + ":"
	t := &Tracker{
		rdb:       rdb,
		table:     table,
		bits:      c.SegmentBits,
		base:      base,
		segPrefix: layoutPrefix(base, c.SegmentBits),
		indexKey:  layoutPrefix(base, c.SegmentBits) + "segments",
		layoutKey: base + "segment_bits",
	}
	if err := t.registerMetrics(c.Registerer); err != nil {
		return nil, err
	}
	return t, nil
}

// Table returns the table name the tracker was created with.
func (t *Tracker) Table() string { return t.table }

// Mark settles keys and reports how many of them were not settled before.
// Duplicates and any order are allowed. All keys are marked in one round
// trip; each segment's bits are set by BITFIELD commands that are atomic on
// their own, so a failed call may have marked some keys, and retrying it is
// always safe.
func (t *Tracker) Mark(ctx context.Context, ks []int64) (newly int, err error) {
	if len(ks) == 0 {
		return 0, nil
	}
	newly, err = t.mark(ctx, ks)
	if err != nil {
		return 0, fmt.Errorf("tracker: mark %d keys of %s: %w", len(ks), t.table, err)
	}
	return newly, nil
}

// bitRun is a run of consecutive keys of one segment, set by a single
// BITFIELD "SET u<width>" sub-op: dense batches (a swept chunk, a table
// scanned in key order) then cost one op per 63 keys instead of one per key.
type bitRun struct {
	off   int64
	width int64 // 1..63, the widest unsigned BITFIELD type
}

func (t *Tracker) mark(ctx context.Context, ks []int64) (int, error) {
	if err := keys.CheckAll(ks); err != nil {
		return 0, err
	}
	if err := t.claimLayout(ctx); err != nil {
		return 0, err
	}
	sorted := keys.SortedUnique(ks)

	pipe := t.rdb.Pipeline()
	// The segments are listed in the index both before and after their
	// bits are written; the second SADD costs no round trip. The first
	// makes a failure halfway (on a single node) leave a segment listed but
	// empty rather than written but unlisted, which Count and Reset would
	// miss. The second is for a Reset racing this call: with Reset's last
	// step, it makes sure that bits written after Reset deleted their
	// segment end up listed (see reset).
	members := t.segmentMembers(sorted)
	pipe.SAdd(ctx, t.indexKey, members...)

	var cmds []*redis.IntSliceCmd
	runs := make([]bitRun, 0, len(sorted)) // in the order their old values come back
	mask := int64(1)<<t.bits - 1
	for seg, group := range t.bySegment(sorted) {
		key := t.segmentKey(seg)
		first := len(runs)
		for i := 0; i < len(group); {
			j := i + 1
			for j < len(group) && j-i < 63 && group[j] == group[j-1]+1 {
				j++
			}
			runs = append(runs, bitRun{off: group[i] & mask, width: int64(j - i)})
			i = j
		}
		for ops := range slices.Chunk(runs[first:], maxSubOps) {
			args := make([]any, 2, 2+4*len(ops))
			args[0], args[1] = "bitfield", key
			for _, r := range ops {
				args = append(args, "SET", uintTypes[r.width], r.off, int64(1)<<r.width-1)
			}
			cmd := redis.NewIntSliceCmd(ctx, args...)
			_ = pipe.Process(ctx, cmd) // queued; errors come back from Exec
			cmds = append(cmds, cmd)
		}
	}
	pipe.SAdd(ctx, t.indexKey, members...)
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, err
	}

	// Each SET returns the old value of its run; its zero bits are the keys
	// this call settled.
	newly, i := 0, 0
	for _, cmd := range cmds {
		for _, old := range cmd.Val() {
			newly += int(runs[i].width) - bits.OnesCount64(uint64(old))
			i++
		}
	}
	t.marked.Add(float64(newly))
	return newly, nil
}

// MarkRange settles every key in [lo, hi). Whole bytes are written with
// SETRANGE and the partial bytes at either end with BITFIELD, so the range
// costs about one command per 512k keys rather than one op per key. Both
// commands only ever turn bits on, which keeps MarkRange correct against
// concurrent Mark and MarkRange calls without any read-modify-write.
//
// Unlike Mark, MarkRange cannot tell how many keys were newly settled, so
// they are not counted in lazymigrate_tracker_marked_keys_total.
func (t *Tracker) MarkRange(ctx context.Context, lo, hi int64) error {
	if err := t.markRange(ctx, lo, hi); err != nil {
		return fmt.Errorf("tracker: mark range [%d, %d) of %s: %w", lo, hi, t.table, err)
	}
	return nil
}

func (t *Tracker) markRange(ctx context.Context, lo, hi int64) error {
	if err := keys.CheckRange(lo, hi); err != nil {
		return err
	}
	if lo == hi {
		return nil
	}
	if err := t.claimLayout(ctx); err != nil {
		return err
	}

	pipe := t.rdb.Pipeline()
	var members []any
	for seg := range t.spans(lo, hi) {
		members = append(members, strconv.FormatInt(seg, 10))
	}
	pipe.SAdd(ctx, t.indexKey, members...) // before and after the bits, as in mark

	for seg, sp := range t.spans(lo, hi) {
		key := t.segmentKey(seg)
		// [from, headEnd) and [tailStart, to) are the partial bytes; the
		// bytes between are whole.
		headEnd := min(sp.to, (sp.from+7)&^7)
		tailStart := max(headEnd, sp.to&^7)

		// Highest offset first: Redis then grows the string once, to its
		// final length, instead of once per command.
		if tailStart < sp.to {
			setOnes(ctx, pipe, key, tailStart, sp.to-tailStart)
		}
		for end, start := tailStart/8, headEnd/8; end > start; {
			from := max(start, end-maxSetRange)
			pipe.SetRange(ctx, key, from, ones[:end-from])
			end = from
		}
		if sp.from < headEnd {
			setOnes(ctx, pipe, key, sp.from, headEnd-sp.from)
		}
	}
	pipe.SAdd(ctx, t.indexKey, members...)
	_, err := pipe.Exec(ctx)
	return err
}

// setOnes queues a BITFIELD that sets the n (< 64) bits at off to 1.
func setOnes(ctx context.Context, pipe redis.Pipeliner, key string, off, n int64) {
	pipe.BitField(ctx, key, "SET", uintTypes[n], off, int64(1)<<n-1)
}

// IsSettled reports whether key is settled.
func (t *Tracker) IsSettled(ctx context.Context, key int64) (bool, error) {
	settled, err := t.isSettled(ctx, key)
	if err != nil {
		return false, fmt.Errorf("tracker: is key %d of %s settled: %w", key, t.table, err)
	}
	return settled, nil
}

func (t *Tracker) isSettled(ctx context.Context, key int64) (bool, error) {
	if err := keys.Check(key); err != nil {
		return false, err
	}
	if recorded, err := t.readLayout(ctx); err != nil || !recorded {
		return false, err
	}
	bit, err := t.rdb.GetBit(ctx, t.segmentKey(key>>t.bits), key&(1<<t.bits-1)).Result()
	return bit == 1, err
}

// Settled reports, for each of keys, whether it is settled: result[i] is for
// keys[i]. Duplicates and any order are allowed. It costs one round trip.
func (t *Tracker) Settled(ctx context.Context, ks []int64) ([]bool, error) {
	out, err := t.settled(ctx, ks)
	if err != nil {
		return nil, fmt.Errorf("tracker: check %d keys of %s: %w", len(ks), t.table, err)
	}
	return out, nil
}

func (t *Tracker) settled(ctx context.Context, ks []int64) ([]bool, error) {
	out := make([]bool, len(ks))
	if len(ks) == 0 {
		return out, nil
	}
	if err := keys.CheckAll(ks); err != nil {
		return nil, err
	}
	recorded, err := t.readLayout(ctx)
	if err != nil {
		return nil, err
	}
	if !recorded {
		return out, nil
	}

	// order visits keys grouped by segment, so that each segment costs one
	// command. A batch from one request usually falls in one segment, and
	// sorting is skipped then.
	order := make([]int, len(ks))
	for i := range order {
		order[i] = i
	}
	seg0 := ks[0] >> t.bits
	if slices.ContainsFunc(ks, func(k int64) bool { return k>>t.bits != seg0 }) {
		slices.SortFunc(order, func(a, b int) int { return cmp.Compare(ks[a]>>t.bits, ks[b]>>t.bits) })
	}

	type lookup struct {
		cmd *redis.IntSliceCmd
		idx []int // positions in ks of the bits cmd reads, in order
	}
	var lookups []lookup
	mask := int64(1)<<t.bits - 1
	pipe := t.rdb.Pipeline()
	for len(order) > 0 {
		seg := ks[order[0]] >> t.bits
		n := 1
		for n < len(order) && n < maxSubOps && ks[order[n]]>>t.bits == seg {
			n++
		}
		args := make([]any, 2, 2+3*n)
		args[0], args[1] = "bitfield_ro", t.segmentKey(seg)
		for _, i := range order[:n] {
			args = append(args, "GET", "u1", ks[i]&mask)
		}
		cmd := redis.NewIntSliceCmd(ctx, args...)
		_ = pipe.Process(ctx, cmd) // queued; errors come back from Exec
		lookups = append(lookups, lookup{cmd: cmd, idx: order[:n]})
		order = order[n:]
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, err
	}
	for _, l := range lookups {
		for j, v := range l.cmd.Val() {
			out[l.idx[j]] = v == 1
		}
	}
	return out, nil
}

// Unsettled returns the keys in [lo, hi) that are not settled, in ascending
// order. It reads the bitmap only (GETRANGE of the bytes covering the range,
// one round trip) and never looks at a database, so a key that exists
// nowhere is reported too. The result holds up to hi-lo keys: callers walk
// big ranges in chunks.
func (t *Tracker) Unsettled(ctx context.Context, lo, hi int64) ([]int64, error) {
	out, err := t.unsettled(ctx, lo, hi)
	if err != nil {
		return nil, fmt.Errorf("tracker: find unsettled keys in [%d, %d) of %s: %w", lo, hi, t.table, err)
	}
	return out, nil
}

func (t *Tracker) unsettled(ctx context.Context, lo, hi int64) ([]int64, error) {
	if err := keys.CheckRange(lo, hi); err != nil {
		return nil, err
	}
	if lo == hi {
		return nil, nil
	}
	recorded, err := t.readLayout(ctx)
	if err != nil {
		return nil, err
	}
	if !recorded {
		out := make([]int64, 0, hi-lo)
		for k := lo; k < hi; k++ {
			out = append(out, k)
		}
		return out, nil
	}

	type read struct {
		base int64 // first key of the segment
		sp   span
		cmd  *redis.StringCmd
	}
	var reads []read
	pipe := t.rdb.Pipeline()
	for seg, sp := range t.spans(lo, hi) {
		cmd := pipe.GetRange(ctx, t.segmentKey(seg), sp.from/8, (sp.to-1)/8)
		reads = append(reads, read{base: seg << t.bits, sp: sp, cmd: cmd})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, err
	}

	hint := 0
	for _, r := range reads {
		hint += unsetHint(r.cmd.Val(), r.sp)
	}
	out := make([]int64, 0, hint)
	for _, r := range reads {
		out = appendUnset(out, r.cmd.Val(), r.base, r.sp)
	}
	return out, nil
}

// appendUnset appends base+off for every offset in sp whose bit is 0 in
// data, the segment's bytes from byte sp.from/8 on. Redis returns a string
// shorter than asked when the segment ends early (or is missing): the bits
// past its end are 0.
func appendUnset(out []int64, data string, base int64, sp span) []int64 {
	first := sp.from / 8
	for off := sp.from; off < sp.to; {
		i := off/8 - first
		if i >= int64(len(data)) {
			for ; off < sp.to; off++ {
				out = append(out, base+off)
			}
			break
		}
		// Walk the zero bits of one byte, clipped to [off, sp.to); a fully
		// settled byte, the common case in a swept range, costs nothing.
		byteStart := off &^ 7
		free := ^data[i] & (0xff >> (off - byteStart))
		if r := sp.to - byteStart; r < 8 {
			free &= 0xff << (8 - r)
		}
		for free != 0 {
			p := bits.LeadingZeros8(free)
			out = append(out, base+byteStart+int64(p))
			free &^= 0x80 >> p
		}
		off = byteStart + 8
	}
	return out
}

// unsetHint returns an upper bound on the keys appendUnset will find in
// data, within 14 of exact (set bits of the edge bytes outside sp), so that
// the result of a 10k-key range is allocated once.
func unsetHint(data string, sp span) int {
	ones := 0
	for i := 0; i < len(data); i++ {
		ones += bits.OnesCount8(data[i])
	}
	n := int(sp.to - sp.from)
	return min(n, max(0, n-ones)+14)
}

// Count returns the number of settled keys. It runs BITCOUNT over every
// segment in Redis: O(table size), meant for metrics and progress reports.
func (t *Tracker) Count(ctx context.Context) (int64, error) {
	n, err := t.count(ctx)
	if err != nil {
		return 0, fmt.Errorf("tracker: count settled keys of %s: %w", t.table, err)
	}
	return n, nil
}

func (t *Tracker) count(ctx context.Context) (int64, error) {
	// No layout check: a bit count does not depend on where bits live.
	segs, err := t.rdb.SMembers(ctx, t.indexKey).Result()
	if err != nil || len(segs) == 0 {
		return 0, err
	}
	pipe := t.rdb.Pipeline()
	cmds := make([]*redis.IntCmd, len(segs))
	for i, s := range segs {
		cmds[i] = pipe.BitCount(ctx, t.segPrefix+s, nil)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, err
	}
	var n int64
	for _, c := range cmds {
		n += c.Val()
	}
	return n, nil
}

// CountRange returns the number of settled keys in [lo, hi). It needs
// Redis 7 or later (BITCOUNT with BIT offsets).
func (t *Tracker) CountRange(ctx context.Context, lo, hi int64) (int64, error) {
	n, err := t.countRange(ctx, lo, hi)
	if err != nil {
		return 0, fmt.Errorf("tracker: count settled keys in [%d, %d) of %s: %w", lo, hi, t.table, err)
	}
	return n, nil
}

func (t *Tracker) countRange(ctx context.Context, lo, hi int64) (int64, error) {
	if err := keys.CheckRange(lo, hi); err != nil {
		return 0, err
	}
	if lo == hi {
		return 0, nil
	}
	if recorded, err := t.readLayout(ctx); err != nil || !recorded {
		return 0, err
	}
	var cmds []*redis.IntCmd
	pipe := t.rdb.Pipeline()
	for seg, sp := range t.spans(lo, hi) {
		var bc *redis.BitCount // nil counts the whole segment
		if sp.from != 0 || sp.to != 1<<t.bits {
			bc = &redis.BitCount{Start: sp.from, End: sp.to - 1, Unit: redis.BitCountIndexBit}
		}
		cmds = append(cmds, pipe.BitCount(ctx, t.segmentKey(seg), bc))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, err
	}
	var n int64
	for _, c := range cmds {
		n += c.Val()
	}
	return n, nil
}

// Reset deletes the table's whole bitmap: every segment, the index and the
// layout marker, and the bitmaps written with any other SegmentBits (or
// by versions that did not put SegmentBits in the keys). Every key reads
// as unsettled afterwards, which is safe
// (lazymigrate falls back to OLD and re-copies idempotently) but slow; it is
// meant for tests and for a full Rebuild, while nothing else writes the
// table. A Reset that fails leaves listed every segment it did not delete
// (short of a racing Mark, below), so calling it again finishes the job.
//
// A Mark, MarkRange or Rebuild racing Reset may survive it, whole or in
// part: its bits stay set and their segments stay listed, so Count counts
// them and the next Reset deletes them. A Tracker that checked the layout
// before Reset deleted the marker goes on writing without recording it
// again; the others read no key as settled until some write records a
// layout. That listing holds on a single Redis node, where each client's
// pipeline runs in order. On Redis Cluster go-redis sends a pipeline's
// commands to the nodes concurrently, in no set order, so a Mark whose bits
// reach their node only after this Reset has finished with that segment,
// while its listing reached the index's node before, still leaves the
// segment unlisted: its bits, uncounted, survive later Resets, and are read
// again by Trackers of the same SegmentBits.
func (t *Tracker) Reset(ctx context.Context) error {
	if err := t.reset(ctx); err != nil {
		return fmt.Errorf("tracker: reset %s: %w", t.table, err)
	}
	return nil
}

// reset deletes the listed segments, then takes them out of the index,
// then lists again those that exist by then. Each step waits for the
// previous one to be done on every node (one pipeline would let a cluster
// run them in any order). Together with the SADD that follows the bits in
// mark, this leaves no segment unlisted. Reset only unlists segments
// SMEMBERS returned; one of them that exists at the end was written after
// step 1 by a Mark. That Mark's last SADD, which follows its bits, came
// either after step 2, listing the segment again, or before it, and then
// so did the bits, which step 3 finds and lists.
func (t *Tracker) reset(ctx context.Context) error {
	// Bitmaps written with other SegmentBits live under keys of their own,
	// as did the bitmap of versions before the SegmentBits were in the
	// keys: Reset removes them too, as a full Rebuild to new SegmentBits
	// expects. SegmentBits has few possible values; one round trip asks
	// every index whether it lists a segment.
	type bitmap struct{ segPrefix, indexKey string }
	var others []bitmap
	for bits := uint(minSegmentBits); bits <= maxSegmentBits; bits++ {
		if bits != t.bits {
			p := layoutPrefix(t.base, bits)
			others = append(others, bitmap{p, p + "segments"})
		}
	}
	others = append(others, bitmap{t.base, t.base + "segments"}) // before SegmentBits were in the keys
	pipe := t.rdb.Pipeline()
	sizes := make([]*redis.IntCmd, len(others))
	for i, b := range others {
		sizes[i] = pipe.SCard(ctx, b.indexKey)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	for i, b := range others {
		if sizes[i].Val() > 0 {
			if err := resetSegments(ctx, t.rdb, b.segPrefix, b.indexKey); err != nil {
				return err
			}
		}
	}
	// The layout is checked again on the next call, whatever happens here.
	defer t.layoutOK.Store(false)
	return resetSegments(ctx, t.rdb, t.segPrefix, t.indexKey, t.layoutKey)
}

// resetSegments deletes the segments listed in indexKey (their keys are
// segPrefix plus their number) in the three steps reset describes; the
// keys also go in step 2, with the index entries.
func resetSegments(ctx context.Context, rdb redis.UniversalClient, segPrefix, indexKey string, also ...string) error {
	segs, err := rdb.SMembers(ctx, indexKey).Result()
	if err != nil {
		return err
	}

	// 1. The segments are deleted while still listed, so that after a
	// failure the next Reset finds those left. One key per UNLINK: segments
	// live in different cluster slots. UNLINK rather than DEL frees big
	// segments off Redis's main thread.
	if len(segs) > 0 {
		pipe := rdb.Pipeline()
		for _, s := range segs {
			pipe.Unlink(ctx, segPrefix+s)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
	}

	// 2. SREM of the segments deleted rather than UNLINK of the index: a
	// segment a Mark listed after SMEMBERS was not deleted and stays
	// listed. The layout marker goes only once the segments written with
	// it are gone.
	pipe := rdb.Pipeline()
	for chunk := range slices.Chunk(segs, maxSubOps) {
		members := make([]any, len(chunk))
		for i, s := range chunk {
			members[i] = s
		}
		pipe.SRem(ctx, indexKey, members...)
	}
	for _, k := range also {
		pipe.Unlink(ctx, k)
	}
	if pipe.Len() > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
	}
	if len(segs) == 0 {
		return nil
	}

	// 3. A segment that exists again was written by a Mark racing this
	// Reset, which may have listed it before step 2.
	pipe = rdb.Pipeline()
	exists := make([]*redis.IntCmd, len(segs))
	for i, s := range segs {
		exists[i] = pipe.Exists(ctx, segPrefix+s)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	var back []any
	for i, e := range exists {
		if e.Val() > 0 {
			back = append(back, segs[i])
		}
	}
	if len(back) > 0 {
		return rdb.SAdd(ctx, indexKey, back...).Err()
	}
	return nil
}

// claimLayout makes sure the bitmap in Redis was written with t.bits, and
// claims it for t.bits when nothing is recorded yet; every write calls it
// before writing. SET NX GET does both in one atomic step, so two processes
// starting together cannot each claim a different layout.
func (t *Tracker) claimLayout(ctx context.Context) error {
	if t.layoutOK.Load() {
		return nil
	}
	got, err := t.rdb.SetArgs(ctx, t.layoutKey, t.layout(), redis.SetArgs{Mode: "NX", Get: true}).Result()
	if errors.Is(err, redis.Nil) { // nothing recorded: now it is ours
		t.layoutOK.Store(true)
		return nil
	}
	return t.agree(got, err)
}

// readLayout makes sure the bitmap in Redis was written with t.bits, as
// claimLayout does, but never claims it: reads must leave no trace, or a
// reader configured with other SegmentBits (an operator's 'sweeper status'
// with the wrong flags) would lock every writer out. recorded is false when
// no layout is recorded; reads then answer that no key is settled without
// reading bits. Writes claim the layout before they write, so without one
// there are no bits but those a Mark racing Reset may leave, in a layout
// nothing records: reading them could put them at the wrong keys. "Not
// recorded" is not cached: any write may claim a layout later.
func (t *Tracker) readLayout(ctx context.Context) (recorded bool, err error) {
	if t.layoutOK.Load() {
		return true, nil
	}
	got, err := t.rdb.Get(ctx, t.layoutKey).Result()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	if err := t.agree(got, err); err != nil {
		return false, err
	}
	return true, nil
}

// agree checks got, the layout recorded in Redis as read with error err,
// against t.bits, and caches the agreement.
func (t *Tracker) agree(got string, err error) error {
	switch want := t.layout(); {
	case err != nil:
		return fmt.Errorf("check segment layout: %w", err)
	case got != want:
		return fmt.Errorf("%w: %s was written with SegmentBits %s, this tracker uses %s; "+
			"use the same SegmentBits everywhere, or Reset and Rebuild the bitmap",
			ErrLayoutMismatch, t.table, got, want)
	}
	t.layoutOK.Store(true)
	return nil
}

// layoutPrefix is the prefix of the keys of a bitmap written with bits
// (its segments and its index). Bitmaps of different SegmentBits never
// share a key: a process configured with other SegmentBits than the
// recorded ones (after Redis lost the record, say) reads no bit at the
// wrong key, only an empty bitmap, which is slow but safe.
func layoutPrefix(base string, bits uint) string {
	return base + "b" + strconv.FormatUint(uint64(bits), 10) + ":"
}

// layout is t.bits as the layout marker records it.
func (t *Tracker) layout() string { return strconv.FormatUint(uint64(t.bits), 10) }

func (t *Tracker) segmentKey(seg int64) string {
	return t.segPrefix + strconv.FormatInt(seg, 10)
}

// segmentMembers returns the distinct segment numbers of sorted keys, as
// index set members.
func (t *Tracker) segmentMembers(sorted []int64) []any {
	var members []any
	for seg := range t.bySegment(sorted) {
		members = append(members, strconv.FormatInt(seg, 10))
	}
	return members
}

// bySegment yields the runs of sorted keys that share a segment.
func (t *Tracker) bySegment(sorted []int64) func(yield func(seg int64, ks []int64) bool) {
	return func(yield func(int64, []int64) bool) {
		for len(sorted) > 0 {
			seg := sorted[0] >> t.bits
			n := 1
			for n < len(sorted) && sorted[n]>>t.bits == seg {
				n++
			}
			if !yield(seg, sorted[:n]) {
				return
			}
			sorted = sorted[n:]
		}
	}
}

// span is the part of a key range inside one segment, as bit offsets
// [from, to) of that segment.
type span struct{ from, to int64 }

// spans yields every segment that the non-empty range [lo, hi) touches.
func (t *Tracker) spans(lo, hi int64) func(yield func(seg int64, sp span) bool) {
	return func(yield func(int64, span) bool) {
		size := int64(1) << t.bits
		for lo < hi {
			seg := lo >> t.bits
			base := seg << t.bits
			end := hi
			if hi-base > size { // written so that base+size cannot overflow
				end = base + size
			}
			if !yield(seg, span{from: lo - base, to: end - base}) {
				return
			}
			lo = end
		}
	}
}
