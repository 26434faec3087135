// Package lazy is the repository wrapper users drop into their code to read
// and write one table during a migration from an OLD Postgres database to a
// NEW one.
//
// # Reads
//
// A [Repo] reads NEW first. When NEW lacks a key it reads OLD, unless a
// tombstone in NEW says the key was deleted, and schedules the key for
// promotion, so hot rows move to NEW within moments of being read. The hit
// path is the plain NEW query and nothing else: no Redis call, no extra
// query. While most reads miss, as early in a migration, NEW is read with a
// statement that also tells whether a missing key is tombstoned, so that a
// miss costs one query of each database and no Redis call. The tracker is
// asked about a missing key only when OLD cannot be read, so that settled
// keys still answer, or on every miss with [Config.AskTrackerOnMiss].
//
// Errors keep "not found" and "could not tell" apart: a key that is not
// settled while OLD is down returns [ErrOldUnavailable], never
// [ErrNotFound]. While NEW cannot be reached, reads return
// [ErrNewUnavailable], or, with [Config.ServeOldWhileNewDown], are served
// from OLD, which mirroring keeps current.
//
// # Writes
//
// NEW is the system of record. [Repo.Put], [Repo.Update] and [Repo.Delete]
// write NEW; a delete leaves a tombstone so that no promotion or sweep
// brings the key back. Unless mirroring is disabled, each change is then
// applied to OLD, in the order NEW committed the changes of the key (a
// per-key lock in NEW is held until OLD has it), so reads can be rolled back
// to OLD at any moment. An outbox row written with the change keeps the
// intent to mirror across crashes; [Repo.Reconcile], reconcile tasks
// ([ReconcileHandler]) and the relay ([Repo.RunRelay]) copy NEW's current
// state to OLD for whatever was left behind.
//
// # Modes
//
// [Config.Mode], usually a fallback.Switch shared by every process, chooses
// where reads go: readthrough (the above), old (OLD alone: a rollback) or
// new (NEW alone, once the migration is complete).
package lazy
