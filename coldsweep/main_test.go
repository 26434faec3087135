package coldsweep_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves goroutines behind: verify's
// workers, and their per-chunk OLD readers, must all stop, on error and on
// cancellation too.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
