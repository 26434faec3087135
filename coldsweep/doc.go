// Package coldsweep copies the rows of a table that reads never promoted,
// and checks the result: the sweep and verify of a lazymigrate migration.
//
// A [Sweeper] walks the key range in chunks. For each chunk it asks the
// tracker which keys are unsettled (one Redis call; a settled chunk costs
// nothing more), copies those through the same [promote.Copier] as
// promotion, so that tombstones and no-overwrite hold, and marks the whole
// chunk settled, keys absent from OLD included. Workers copy chunks in
// parallel, under a rate limit and a throttle that holds them while OLD or
// NEW is slow, a replica lags, or an operator paused the sweep. The tracker
// is the checkpoint: a sweep stopped or killed at any point, and started
// again, skips what is done. Shards split one sweep between processes.
//
// [Verify] compares OLD and NEW chunk by chunk with checksums computed
// inside each database, and lists the keys of differing chunks: missing
// from NEW, different, extra in NEW, tombstoned, and resurrected.
//
// cmd/sweeper is the batch job around this package.
package coldsweep
