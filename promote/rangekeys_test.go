package promote_test

import (
	"context"
	"testing"
	"time"

	"github.com/lazymigrate/lazymigrate/promote"
)

// CopyRangeKeys skips the parts of its range without keys: one key at each
// end of the widest range it takes copies at once. A wider range, which it
// would have to mark settled whole, is refused.
func TestCopyRangeKeysSkipsPartsWithoutKeys(t *testing.T) {
	t.Parallel()
	b := setup(t, &promote.CopierConfig{StripeBits: 2}) // 128 keys per transaction
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := b.copier.CopyRangeKeys(ctx, 0, promote.MaxRangeKeys, []int64{5, 99})
	if err != nil || res.Copied != 2 {
		t.Fatalf("CopyRangeKeys = %+v, %v; want 2 rows copied", res, err)
	}
	if _, err := b.copier.CopyRangeKeys(ctx, 0, promote.MaxRangeKeys+1, []int64{5}); err == nil {
		t.Fatal("a range past MaxRangeKeys: want an error")
	}
}
