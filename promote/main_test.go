package promote_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves goroutines behind: the
// enqueuer loop, asynq workers and read-path helpers must all stop.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitingInOwnDatabase counts the advisory locks waited for in the
// database of the session that runs it, and only there: tests running in
// parallel wait for locks of their own in other databases.
const waitingInOwnDatabase = `SELECT count(*) FROM pg_locks
	WHERE locktype = 'advisory' AND NOT granted
	  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`
