// Package lazy is the repository wrapper users drop into their code to read
// one table during a migration from an OLD Postgres database to a NEW one.
//
// A [Repo] reads NEW first. When NEW lacks a key it reads OLD, unless the key
// is settled (a tombstone in NEW says it was deleted, or the tracker says its
// truth already lives in NEW), and schedules the key for promotion, so hot
// rows move to NEW within moments of being read. The hit path is the plain
// NEW query and nothing else: no Redis call, no extra query.
//
// Errors keep "not found" and "could not tell" apart: a key that is not
// settled while OLD is down returns [ErrOldUnavailable], never
// [ErrNotFound].
package lazy
