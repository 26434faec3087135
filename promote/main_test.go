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
