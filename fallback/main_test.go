package fallback_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves goroutines behind: every Run
// loop must return once its context ends.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
