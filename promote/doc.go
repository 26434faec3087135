// Package promote copies records of one table forward from the OLD database
// to the NEW one: the [Copier] that does the copy, and the asynq task,
// [Enqueuer] and [Handler] that run it in the background after a read
// misses NEW.
//
// # The copy
//
// [Copier.CopyKeys] and [Copier.CopyRange] read the current rows from OLD,
// apply an optional [Transform], and insert them into NEW in READ COMMITTED
// transactions (one per group of at most [MaxLocksPerTx] lock stripes, all
// sent in one round trip) that
//
//   - take the advisory locks of the keys' stripes (key >> StripeBits, in
//     ascending order, so a sweep's 32,768-key chunk holds 32 locks and
//     two copies can never deadlock), serializing the copy with deletes;
//   - insert with ON CONFLICT DO NOTHING, so a row NEW already has (written
//     by the application, or copied before) is never replaced;
//   - skip keys with a tombstone, so a deleted key never comes back.
//
// Values travel in Postgres's own text form, read and parsed under pinned
// session settings, so a copy is exact whatever either server's DateStyle,
// float or bytea settings are, and a value too long for NEW fails with
// [ErrRowRejected] rather than being cut.
//
// [Copier.CopyRange] and [Copier.CopyRangeKeys] take a faster path when no
// Transform is set, the columns have the same built-in types on both sides
// and both databases are pools (see CopierConfig.NoBulk): OLD's rows are read
// first with binary COPY, then each group of at most [MaxLocksPerTx] stripes
// is locked in a NEW transaction of its own, the keys NEW has or has
// tombstoned are left out, and the rest goes in with binary COPY. A row a
// writer inserts meanwhile without the stripe locks makes the COPY fail; the
// group is listed and written again, and after three tries goes through the
// row path above.
//
// After the commits the settled keys are marked in the tracker. A copy killed
// at any point can simply run again: that is how asynq retries, the sweeper
// and synchronous migration all stay idempotent.
//
// # Background promotion
//
// An [Enqueuer] takes keys from the read path without any I/O, deduplicates
// them for a while (a hot key missed by a thousand requests is promoted
// once) and enqueues them in batches, one asynq task per batch, so that
// promotion throughput is not bound to one Redis round trip per key. The
// [Handler] runs those tasks: it skips keys the tracker already knows are
// settled and copies the rest, isolating any row NEW rejects so that it
// does not hold back the others. A malformed task fails at once without
// retries; a failed copy is retried by asynq, and whatever is given up on is
// left to the sweeper.
//
// Run [Setup] on NEW once (it is idempotent) before creating a Copier.
package promote
