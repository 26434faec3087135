// Package fallback decides which database serves reads of a table during a
// migration, and lets an operator switch it at runtime for every process at
// once, rollback included.
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
// it on every read with [Switch.Mode], a single atomic load that does not
// allocate.
//
// # Where the mode lives
//
// The mode is the Redis string <Prefix>:mode:<table> (lazymigrate:mode:accounts
// by default), holding the mode's name. [Switch.Set] writes it and applies it
// to its own process at once; every process running [Switch.Run] reads it
// again every PollInterval (1s by default). An absent key means
// Config.Default. The value may also be written with any Redis client:
//
//	redis-cli SET lazymigrate:mode:accounts old
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
// # Metrics
//
// With Config.Registerer set, lazymigrate_read_mode{table,mode} is 1 for the
// mode this process serves (overrides included) and 0 for the other two, and
// lazymigrate_mode_poll_errors_total{table} counts failed reads of the key.
// Switches of one table sharing a registry share these series.
package fallback
