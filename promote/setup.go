package promote

import (
	"context"

	"github.com/lazymigrate/lazymigrate/internal/schema"
)

// Setup creates what lazymigrate needs in the NEW database (the lazymigrate
// schema with its tombstone table, mirror outbox and table registry). It is idempotent and safe to run
// concurrently, e.g. from every process at start-up.
func Setup(ctx context.Context, newDB schema.Beginner) error {
	return schema.Setup(ctx, newDB)
}
