package fallback

import (
	"errors"
	"fmt"
	"strings"
)

// Mode says which database serves reads of a table.
type Mode string

// The modes, in the order a migration goes through them. ModeOld is also
// where a rollback goes.
const (
	// ModeOld serves reads from OLD only: the state before the migration,
	// and the rollback target.
	ModeOld Mode = "old"
	// ModeReadthrough serves reads from NEW first and from OLD on a miss,
	// promoting what OLD served. It is the default.
	ModeReadthrough Mode = "readthrough"
	// ModeNew serves reads from NEW only, with no fallback: for after the
	// sweeper has finished.
	ModeNew Mode = "new"
)

// modes lists every valid Mode; a Switch stores the index of its current
// mode so that Mode is one atomic load.
var modes = [...]Mode{ModeOld, ModeReadthrough, ModeNew}

// validModes names the valid modes in error messages.
const validModes = "valid modes are old, readthrough and new"

// ErrInvalidMode is returned for a string or a Redis value that is not one
// of the modes.
var ErrInvalidMode = errors.New("fallback: invalid mode")

// ParseMode returns the Mode named s: "old", "readthrough" or "new". Case
// and surrounding white space are ignored (a value written by
// `redis-cli -x` ends with a newline). Any other s returns an error that
// wraps ErrInvalidMode and names the valid modes.
func ParseMode(s string) (Mode, error) {
	if i := modeIndex(s); i >= 0 {
		return modes[i], nil
	}
	return "", fmt.Errorf("%w %s; %s", ErrInvalidMode, quote(s), validModes)
}

// String returns the mode's name, as ParseMode reads it.
func (m Mode) String() string { return string(m) }

// modeIndex returns the index in modes of the mode s names, or -1.
func modeIndex(s string) int {
	s = strings.TrimSpace(s)
	for i, m := range modes {
		if strings.EqualFold(s, string(m)) {
			return i
		}
	}
	return -1
}

// maxQuoted bounds how much of a bad value goes into an error: a Redis key
// holding a megabyte of garbage must not make every poll log a megabyte.
const maxQuoted = 64

// quote returns s quoted for an error message, cut to maxQuoted bytes.
func quote(s string) string {
	if len(s) <= maxQuoted {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q... (%d bytes)", s[:maxQuoted], len(s))
}
