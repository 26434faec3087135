// Command sweeper is the batch job of a lazymigrate migration: it copies the
// rows nobody reads from OLD to NEW (the "cold sweep"), checks that NEW
// matches OLD, and reports how far the migration is. It wraps the coldsweep
// and tracker packages for operators.
//
// Subcommands:
//
//	sweeper init             create lazymigrate's schema in NEW (idempotent)
//	sweeper run              sweep a table: copy every unsettled key, in chunks,
//	                         throttled, resumable after any stop, shardable
//	sweeper verify           compare OLD and NEW chunk by chunk with checksums;
//	                         list missing, different, extra, resurrected and
//	                         tombstoned keys
//	sweeper status           settled keys, the sweep's rate and state, and a
//	                         heatmap of the key space
//	sweeper rebuild-tracker  rebuild the tracker's bitmap from NEW's keys and
//	                         tombstones, after Redis lost it
//	sweeper pause            hold every sweeper of a table after its chunks in flight
//	sweeper resume           let them go on
//	sweeper mode             show or set the read mode of a table: roll back
//	                         (--set old), roll out ('readthrough 5%'), finish
//
// Connections come from --old-dsn, --new-dsn and --redis, or from the
// environment: LM_OLD_DSN, LM_NEW_DSN and LM_REDIS_ADDR. 'sweeper help' lists
// the subcommands and 'sweeper <command> -h' their flags.
//
// Exit codes: 0 success; 1 verify found differences, or run left chunks NEW
// refused; 2 an error (bad flags, unknown table, unreachable server ...),
// reported on one line of stderr; 130 interrupted by SIGINT or SIGTERM, after
// the chunks in flight were finished: run again to resume.
package main
