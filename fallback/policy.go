package fallback

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// A Policy is a mode rolled out to a share of a table's keys: Mode serves
// the keys in the rollout, and the mode before it serves the others
// (ModeOld before ModeReadthrough, ModeReadthrough before ModeNew). A
// policy at 100% is its mode alone; ModeOld, with no mode before it, is
// always at 100%.
//
// Which keys are in the rollout is sticky: each key has a fixed place
// (see [Policy.ModeOf]), the same in every process and every table, so that
// raising Percent only adds keys, lowering it only removes them, and the
// keys that went to readthrough first are also the first to go to new.
type Policy struct {
	Mode Mode
	// Percent is the share of keys Mode serves, from 0 to 100, in steps of
	// 0.01.
	Percent float64
}

// Full returns the policy of m for every key.
func Full(m Mode) Policy { return Policy{Mode: m, Percent: 100} }

// String returns the policy as ParsePolicy reads it: the mode's name,
// followed for a partial rollout by the percentage, as in "readthrough 5%".
func (p Policy) String() string {
	if p.Percent == 100 {
		return string(p.Mode)
	}
	return string(p.Mode) + " " + strconv.FormatFloat(p.Percent, 'f', -1, 64) + "%"
}

// Before returns the mode that serves the keys outside p's rollout: the
// mode before p.Mode, or p.Mode itself when p is at 100%.
func (p Policy) Before() Mode {
	if p.Percent == 100 {
		return p.Mode
	}
	switch p.Mode {
	case ModeNew:
		return ModeReadthrough
	case ModeReadthrough:
		return ModeOld
	}
	return p.Mode
}

// ParsePolicy reads a policy written as a mode's name (see ParseMode),
// optionally followed by white space and the percentage of keys it serves:
// "readthrough", "readthrough 5%", "new 50%". The percent sign is optional,
// as are up to two decimals. Anything else returns an error that wraps
// ErrInvalidMode.
func ParsePolicy(s string) (Policy, error) {
	fields := strings.Fields(s)
	if len(fields) == 0 || len(fields) > 2 {
		return Policy{}, fmt.Errorf("%w %s; want a mode, optionally followed by a percentage (\"readthrough 5%%\"); %s",
			ErrInvalidMode, quote(s), validModes)
	}
	m, err := ParseMode(fields[0])
	if err != nil {
		return Policy{}, err
	}
	p := Full(m)
	if len(fields) == 2 {
		pct, err := strconv.ParseFloat(strings.TrimSuffix(fields[1], "%"), 64)
		if err != nil {
			return Policy{}, fmt.Errorf("%w %s: %s is not a percentage", ErrInvalidMode, quote(s), quote(fields[1]))
		}
		p.Percent = pct
	}
	bp, err := p.basisPoints()
	if err != nil {
		return Policy{}, fmt.Errorf("%w %s: %w", ErrInvalidMode, quote(s), err)
	}
	p.Percent = float64(bp) / 100 // "-0" and "1e1" read as 0 and 10
	return p, nil
}

// basisPoints checks p and returns its percentage in hundredths of a
// percent.
func (p Policy) basisPoints() (uint32, error) {
	if modeIndex(string(p.Mode)) < 0 {
		return 0, fmt.Errorf("%s is not a mode; %s", quote(string(p.Mode)), validModes)
	}
	bp := math.Round(p.Percent * 100)
	switch {
	case math.IsNaN(p.Percent) || bp < 0 || bp > rolloutBuckets:
		return 0, fmt.Errorf("a rollout percentage is between 0 and 100, not %v", p.Percent)
	case math.Abs(bp-p.Percent*100) > 1e-6:
		return 0, fmt.Errorf("a rollout percentage has at most two decimals, not %v", p.Percent)
	case p.Mode == ModeOld && bp != rolloutBuckets:
		return 0, fmt.Errorf("old has no mode before it: a rollback is old for every key (old 100%%), not old %v%%", p.Percent)
	}
	return uint32(bp), nil
}

// rolloutBuckets is the number of places a key can take in a rollout: one
// per hundredth of a percent.
const rolloutBuckets = 10_000

// ModeOf returns the mode that serves key under p.
func (p Policy) ModeOf(key int64) Mode {
	if p.Percent == 100 {
		return p.Mode
	}
	bp, err := p.basisPoints()
	if err != nil || inRollout(key, bp) {
		return p.Mode
	}
	return p.Before()
}

// inRollout reports whether key is among the first basisPoints
// hundredths of a percent of keys to be rolled out.
func inRollout(key int64, basisPoints uint32) bool {
	return basisPoints == rolloutBuckets || bucket(key) < uint64(basisPoints)
}

// bucket returns key's place in every rollout, in [0, rolloutBuckets): the
// SplitMix64 finalizer of the key, so that neighbouring keys, which are
// often created together, land far apart. It must never change: processes
// of different versions must agree on which keys are in.
func bucket(key int64) uint64 {
	x := uint64(key)
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x % rolloutBuckets
}
