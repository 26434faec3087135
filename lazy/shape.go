package lazy

import "sync/atomic"

// missRate tells Get which of two statements to read NEW with, from how
// often NEW lacked the keys read lately. Both answer the same; they cost
// differently:
//
//   - newSQL, the plain query, is the cheapest hit; but a miss then needs a
//     second query of NEW, for the tombstone, beside the read of OLD.
//   - foldSQL folds the tombstone check into the read, in a branch that
//     runs only when the row is missing: a miss needs nothing more of NEW,
//     but a hit costs a few percent more, for the relations the statement
//     names.
//
// Measured on two cores with the servers local, the folded statement pays
// off above about one miss in ten (BENCHMARKS.md); over a network, where
// the tombstone query overlaps the read of OLD, it costs little either way.
// Early in a migration most reads miss and take the folded statement;
// once the hot keys have moved, hits take the plain one. Every miss counts,
// keys in neither database and deleted ones too, since the fold saves each
// of them a query: a workload that keeps asking for absent keys, one read
// in ten or more, keeps the folded statement, and its hits keep paying
// for it.
//
// The folded statement names lazymigrate's tombstones and tables, and
// Postgres locks every relation a statement names, branch run or not: a
// lock that excludes readers on either (VACUUM FULL, ALTER TABLE) holds
// back folded hits too.
type missRate struct {
	reads, misses atomic.Uint32
	fold          atomic.Bool
}

const (
	// missWindow is how many reads each choice is made from.
	missWindow = 128
	// foldAbove is the share of misses, in a window, above which reads take
	// the folded statement.
	foldAbove = 0.1
)

// folded reports whether reads should take the folded statement now.
func (m *missRate) folded() bool { return m.fold.Load() }

// observe counts a read of NEW that found its key (miss false) or not.
// Concurrent reads may land a count in the next window: it is an estimate.
func (m *missRate) observe(miss bool) {
	if miss {
		m.misses.Add(1)
	}
	if m.reads.Add(1)%missWindow == 0 {
		m.fold.Store(float64(m.misses.Swap(0)) > foldAbove*missWindow)
	}
}
