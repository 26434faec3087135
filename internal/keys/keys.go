// Package keys validates the integer keys lazymigrate tracks.
//
// Every package that takes a key from outside (tracker, promote, lazy) checks
// it here, so that an invalid key fails the same way everywhere and callers
// can test for it with errors.Is(err, keys.ErrInvalid) or the public aliases
// each package re-exports.
package keys

import (
	"errors"
	"fmt"
	"slices"
)

// ErrInvalid is returned for a key lazymigrate cannot track: keys must be
// integers >= 0.
var ErrInvalid = errors.New("lazymigrate: invalid key: keys must be integers >= 0")

// Check returns an error wrapping ErrInvalid when k is negative.
func Check(k int64) error {
	if k < 0 {
		return fmt.Errorf("%w (got %d)", ErrInvalid, k)
	}
	return nil
}

// CheckAll returns an error wrapping ErrInvalid for the first negative key.
func CheckAll(ks []int64) error {
	for _, k := range ks {
		if err := Check(k); err != nil {
			return err
		}
	}
	return nil
}

// CheckRange returns an error wrapping ErrInvalid unless 0 <= lo <= hi.
func CheckRange(lo, hi int64) error {
	if lo < 0 || hi < lo {
		return fmt.Errorf("%w: range [%d, %d) must satisfy 0 <= lo <= hi", ErrInvalid, lo, hi)
	}
	return nil
}

// SortedUnique returns the distinct keys of ks in ascending order, in a new
// slice.
func SortedUnique(ks []int64) []int64 {
	out := slices.Clone(ks)
	slices.Sort(out)
	return slices.Compact(out)
}
