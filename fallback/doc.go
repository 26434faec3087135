// Package fallback decides which database serves a key during a migration:
// the migration mode (old, readthrough, new) switched at runtime for every
// process, rollout percentages with sticky hashing, a circuit breaker on NEW,
// and shadow comparison of the two sides.
//
// It is being built; see issue 3.
package fallback
