// Package fallback decides which database serves reads of a table during a
// migration, and lets an operator switch it at runtime for every process at
// once, rollback included; a [Shadow] compares a sample of reads with the
// other database first.
//
// # Modes
//
// A table's reads are in one of three modes:
//
//   - [ModeOld]: OLD only. The state before the migration, and where a
//     rollback goes.
//   - [ModeReadthrough]: NEW first, OLD on a miss (the key is then promoted).
//     The default, for the whole migration.
//   - [ModeNew]: NEW only, no fallback. For after the sweeper has finished
//     and verified the table: a key still missing from NEW would read as
//     not found.
//
// A [Switch] holds the mode of one table for one process. The read path asks
// it on every read with [Switch.ModeOf], a single atomic load that does not
// allocate.
//
// # Rolling out
//
// A mode can also be rolled out to a share of the keys first: a [Policy],
// such as "readthrough 5%", serves 5% of the keys in readthrough and the
// rest in the mode before it, old. "new 20%" serves a fifth of the keys
// from NEW alone and the rest in readthrough. The keys in a rollout are
// fixed by their value, the same in every process ([Policy.ModeOf]):
// raising the percentage only adds keys, so a key that went to NEW never
// goes back to OLD on the next step, and the keys rolled out to
// readthrough first are the first to go to new. The read path asks
// [Switch.ModeOf] for each key; writes do not depend on the mode.
//
// A migration can so start at "readthrough 1%", with mirroring on, and be
// raised while the metrics stay healthy. A rollback is Set(ctx, ModeOld),
// for every key at once.
//
// # Where the mode lives
//
// The mode is the Redis string <Prefix>:mode:<table> (lazymigrate:mode:accounts
// by default), holding the mode's name, or a policy as "readthrough 5%".
// [Switch.Set] and [Switch.SetPolicy] write it and apply it to their own
// process at once; every process running [Switch.Run] reads it again every
// PollInterval (1s by default). An absent key means Config.Default. The
// value may also be written with any Redis client:
//
//	redis-cli SET lazymigrate:mode:accounts old
//	redis-cli SET lazymigrate:mode:accounts 'readthrough 5%'
//
// Processes of a version before rollouts read a policy with a percentage
// as an invalid value, and keep their last known mode.
//
// Every process serving a table, and every tool switching it, must use the
// same Prefix and table name.
//
// # Rolling back
//
// To send reads back to OLD, call Set(ctx, ModeOld) from any process, or set
// the key from a CLI. Processes follow within PollInterval; until then some
// may still serve from NEW. To resume the migration, set ModeReadthrough.
//
// A rollback is only as good as OLD: OLD holds the writes made during the
// migration only while they are mirrored to it (the write path's default,
// see DESIGN.md). Do not roll back a table whose writes were not mirrored.
//
// A process reads the mode at its first Refresh, not in [New]: until then it
// serves Config.Default. Start a process with one Refresh before it serves
// reads, then `go sw.Run(ctx)`, so that a process started during a rollback
// does not serve from NEW for its first poll interval. If that first Refresh
// fails, the process does not know the mode: refuse to start, or (during a
// rollback) run with Config.Default set to ModeOld.
//
// # When Redis is unreachable
//
// A failed read of the key, or a key holding something that is not a mode,
// keeps the last known mode in force: the error is returned by Refresh, and
// Run logs it (Warn for the first failure of a series, Debug after) and
// counts it in lazymigrate_mode_poll_errors_total. The mode never falls back
// to Default because Redis is down: if it did, a table rolled back to OLD
// would return to readthrough, serving from NEW, whenever Redis blinked,
// undoing the rollback with nobody asking and flapping as Redis came and
// went. An outage freezes the mode instead; an operator who must change it
// then uses [Switch.Override] on each process.
//
// A key that is absent, on the other hand, does mean Default: a Redis that
// loses its data (FLUSHALL, eviction, a replaced server) ends a rollback.
// Run Redis with maxmemory-policy noeviction, as the tracker requires, and
// set the mode again after replacing Redis.
//
// # Override
//
// [Switch.Override] pins one process's mode, whatever Redis says, until
// [Switch.ClearOverride]: for tests, and for emergencies when Redis cannot
// be reached. Refresh and Set go on recording the mode from Redis meanwhile,
// so ClearOverride returns at once to the mode the other processes follow.
// A switch made with a nil Redis client is local: it follows only Default
// and Override.
//
// # Shadow reads
//
// Before a switch, a [Shadow] tells whether it would change what callers
// see: lazy.Repo hands it a sample of the keys it reads
// (ShadowConfig.Rate, 1% by default), and a comparison in the background
// reads each from both
// databases: after a read served by NEW, OLD must match it, as mirroring
// keeps it for a rollback; after a read in mode old, NEW must. A
// difference is read again after RecheckDelay, since a write reaches OLD a
// moment after NEW, and one whose change is still in the outbox counts as
// "pending". Only a difference that stays is a mismatch: logged (Warn,
// with the key and the names of the fields that differ, never their
// values) and counted in lazymigrate_shadow_reads_total{table,outcome}.
// Keys NEW has not received yet count as "unmigrated". At most
// MaxInFlight comparisons run at once; reads sampled beyond that count as
// "busy" and are not compared, so a slow database never piles up work.
// Call [Shadow.Close] at shutdown.
//
// # Metrics
//
// With Config.Registerer set, lazymigrate_read_mode{table,mode} is the
// share of keys this process serves in each mode (overrides included): 1
// for the current mode and 0 for the other two, or, at "readthrough 5%",
// 0.05 for readthrough and 0.95 for old.
// lazymigrate_mode_poll_errors_total{table} counts failed reads of the key.
// Switches of one table sharing a registry share these series.
package fallback
