// Package coldsweep is the sweeper: it walks a table's key ranges, skips
// what the tracker says is settled, copies the rest in chunks and verifies
// them by checksum.
//
// It is being built; see issue 4.
package coldsweep
