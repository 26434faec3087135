package httpmw_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves goroutines behind: tracker
// queries abandoned at their timeout must still end.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
