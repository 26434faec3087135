// Package tracker records, per table, which keys have already settled in the
// NEW database, so that reads, promotions and the sweeper can skip work that
// is done.
//
// A key is settled when its truth lives in NEW: it was copied, written or
// deleted through lazymigrate, or the sweeper found it absent from OLD. The
// tracker keeps one bit per key in Redis. Bits are only ever set, never
// cleared (except by [Tracker.Reset]), so concurrent writers cannot undo each
// other and every operation is safe to retry.
//
// # Layout
//
// Keys are integers >= 0. Key k lives in segment s = k >> SegmentBits, at bit
// offset k & (2^SegmentBits - 1), offset 0 being the most significant bit of
// the first byte (Redis's own bit order). Each segment is its own Redis
// string:
//
//	<Prefix>:tracker:<table>:b<SegmentBits>:<s>       one segment, 2^SegmentBits bits
//	<Prefix>:tracker:<table>:b<SegmentBits>:segments  set of the segment numbers in use
//	<Prefix>:tracker:<table>:segment_bits             the SegmentBits the bitmap is written with
//
// One big bitmap would be simpler, but Redis allocates a string up to the
// highest bit ever set, inside its single thread: a first write near bit
// 2^32 allocates 512 MiB and blocks every client for about 300 ms, and
// 512 MiB is also the hard limit of a Redis string, so keys from 2^32 up
// could not be tracked at all. With the default SegmentBits of 20 a segment is 128 KiB,
// so the worst first write allocates 128 KiB (well under a millisecond), any
// int64 key can be tracked, and a sparse key space pays only for the segments
// it touches. Segments carry no hash tag, so on Redis Cluster they spread over
// the nodes; the tracker only uses single-key commands in non-transactional
// pipelines, which go-redis splits per node.
//
// The segments set lets [Tracker.Count] and [Tracker.Reset] find every
// segment without SCAN, which is slow and node-local on a cluster. Writes
// list a segment there both before and after writing its bits, so that a
// Reset racing them leaves no segment unlisted (on a single Redis node; see
// [Tracker.Reset] for what a racing write may still do).
//
// Two processes configured with different SegmentBits for the same table
// would read each other's bits at the wrong keys and skip keys never
// copied. Bitmaps of different SegmentBits therefore never share a key
// (the b<SegmentBits> part): a misconfigured process sees an empty bitmap,
// which costs copies and never skips one, even after Redis lost the
// segment_bits record, which a process that checked it before does not
// write again. The record surfaces the mistake: the first call of a
// Tracker checks it and fails with [ErrLayoutMismatch]. The first write
// records it (SET NX); reads only look, so that a reader with the wrong
// SegmentBits, such as an operator's tool, cannot lock the writers out.
// Until a write records a layout, reads answer that no key is settled
// without reading bits, and look again on their next call.
// [Tracker.Reset] removes the bitmaps of every SegmentBits.
//
// # Cost
//
// Marking, testing and listing keys each cost one pipelined round trip,
// whatever the number of keys, plus one more for the layout check on the
// first call of a Tracker (a read that finds no layout recorded costs that
// one alone, and checks again on the next call). Count costs two round
// trips, Reset five (plus four per bitmap of other SegmentBits, and one
// when a write raced it; three when there are no segments). Marking a batch uses
// BITFIELD, which returns each bit's previous value, so [Tracker.Mark]
// learns how many keys were newly settled at no extra cost. Counting runs
// BITCOUNT over every segment inside Redis (about 40 µs per 128 KiB
// segment); keep [Tracker.Count] off hot paths.
//
// A call waits as long as the client lets it: go-redis applies a context's
// deadline only with Options.ContextTimeoutEnabled, and otherwise its own
// ReadTimeout (3s by default). lazy bounds its wait for the tracker on its
// own (Config.TrackerTimeout), whatever the client's settings.
//
// The tracker needs Redis 7 or later (BITCOUNT with BIT offsets, SET with
// both NX and GET). Redis must run with maxmemory-policy noeviction: an
// evicted segment does not break correctness, but it silently throws away
// progress.
//
// # Losing Redis
//
// The tracker is an index, not a source of truth. A bit that is missing only
// makes lazymigrate look in OLD and copy a key again, which is idempotent
// (copies never overwrite rows in NEW, and deleted keys stay tombstoned in
// NEW). If Redis loses the bitmap, [Tracker.Rebuild] restores it from NEW's
// keys and tombstones; until then reads are slower, never wrong.
package tracker
