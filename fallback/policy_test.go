package fallback_test

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazymigrate/lazymigrate/fallback"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
)

func TestParsePolicy(t *testing.T) {
	t.Parallel()
	good := map[string]fallback.Policy{
		"readthrough":        fallback.Full(fallback.ModeReadthrough),
		" OLD \n":            fallback.Full(fallback.ModeOld),
		"old 100%":           fallback.Full(fallback.ModeOld),
		"readthrough 5%":     {Mode: fallback.ModeReadthrough, Percent: 5},
		"readthrough\t0.01%": {Mode: fallback.ModeReadthrough, Percent: 0.01},
		"new 33.33":          {Mode: fallback.ModeNew, Percent: 33.33},
		"new 0%":             {Mode: fallback.ModeNew, Percent: 0},
		"new 100%":           fallback.Full(fallback.ModeNew),
	}
	for in, want := range good {
		got, err := fallback.ParsePolicy(in)
		if err != nil || got != want {
			t.Errorf("ParsePolicy(%q) = %+v, %v; want %+v", in, got, err, want)
			continue
		}
		if again, err := fallback.ParsePolicy(got.String()); err != nil || again != got {
			t.Errorf("ParsePolicy(%q.String() = %q) = %+v, %v", in, got.String(), again, err)
		}
	}
	bad := map[string]string{
		"":                    "want a mode",
		"readthrough 5% more": "want a mode",
		"sideways 5%":         "valid modes are",
		"readthrough five%":   "not a percentage",
		"readthrough 101%":    "between 0 and 100",
		"readthrough -1%":     "between 0 and 100",
		"readthrough NaN%":    "between 0 and 100",
		"readthrough 5.001%":  "at most two decimals",
		"old 50%":             "old has no mode before it",
	}
	for in, msg := range bad {
		p, err := fallback.ParsePolicy(in)
		if !errors.Is(err, fallback.ErrInvalidMode) || !strings.Contains(err.Error(), msg) {
			t.Errorf("ParsePolicy(%q) = %+v, %v; want ErrInvalidMode saying %q", in, p, err, msg)
		}
	}
}

func TestPolicyString(t *testing.T) {
	t.Parallel()
	for p, want := range map[fallback.Policy]string{
		fallback.Full(fallback.ModeNew):                    "new",
		{Mode: fallback.ModeReadthrough, Percent: 12.5}:    "readthrough 12.5%",
		{Mode: fallback.ModeReadthrough, Percent: 0}:       "readthrough 0%",
		{Mode: fallback.ModeNew, Percent: 0.01}:            "new 0.01%",
		{Mode: fallback.ModeReadthrough, Percent: 99.99}:   "readthrough 99.99%",
		{Mode: fallback.ModeReadthrough, Percent: 100.00}:  "readthrough",
		{Mode: fallback.ModeOld, Percent: 100}:             "old",
		{Mode: fallback.ModeNew, Percent: 50}:              "new 50%",
		{Mode: fallback.ModeReadthrough, Percent: 33.3300}: "readthrough 33.33%",
	} {
		if got := p.String(); got != want {
			t.Errorf("%+v.String() = %q, want %q", p, got, want)
		}
	}
}

// TestRolloutIsStickyAndSpread: raising the percentage only adds keys, a
// percentage takes about that share of any key range, and the keys in a
// rollout of new are in the same rollout of readthrough.
func TestRolloutIsStickyAndSpread(t *testing.T) {
	t.Parallel()
	const n = 100_000
	inAt := func(m fallback.Mode, pct float64, key int64) bool {
		return fallback.Policy{Mode: m, Percent: pct}.ModeOf(key) == m
	}
	for _, base := range []int64{0, 1 << 40} {
		before := make([]bool, n) // in at the step before
		for _, pct := range []float64{0, 0.01, 1, 5, 25, 50, 99.99, 100} {
			count := 0
			for i := range int64(n) {
				k := base + i
				in := inAt(fallback.ModeReadthrough, pct, k)
				if before[i] && !in {
					t.Fatalf("key %d in the rollout below %v%%, not at %v%%", k, pct, pct)
				}
				if inAt(fallback.ModeNew, pct, k) != in {
					t.Fatalf("key %d: in the %v%% rollout of readthrough = %v, of new = %v", k, pct, in, !in)
				}
				before[i] = in
				if in {
					count++
				}
			}
			if got := float64(count) / n * 100; math.Abs(got-pct) > 0.5 {
				t.Errorf("keys from %d: %.2f%% of them in a %v%% rollout", base, got, pct)
			}
		}
	}
	// Outside the rollout, the mode before serves.
	p := fallback.Policy{Mode: fallback.ModeNew, Percent: 0}
	if m := p.ModeOf(7); m != fallback.ModeReadthrough {
		t.Errorf("new 0%%: key 7 served in %s, want readthrough", m)
	}
	p = fallback.Policy{Mode: fallback.ModeReadthrough, Percent: 0}
	if m := p.ModeOf(7); m != fallback.ModeOld {
		t.Errorf("readthrough 0%%: key 7 served in %s, want old", m)
	}
}

func TestSetPolicyReachesOtherSwitches(t *testing.T) {
	t.Parallel()
	b := setup(t)
	reg := prometheus.NewRegistry()
	a := b.newSwitch(t, b.rdb, nil)
	other := b.newSwitch(t, b.rdb, &fallback.Config{Registerer: reg})
	ctx := testContext(t)

	want := fallback.Policy{Mode: fallback.ModeReadthrough, Percent: 25}
	if err := a.SetPolicy(ctx, want); err != nil {
		t.Fatal(err)
	}
	if v, err := b.rdb.Get(ctx, b.key("accounts")).Result(); err != nil || v != "readthrough 25%" {
		t.Fatalf("Redis holds %q, %v; want \"readthrough 25%%\"", v, err)
	}
	mustRefresh(t, other)
	for _, sw := range []*fallback.Switch{a, other} {
		if got := sw.Policy(); got != want {
			t.Fatalf("Policy() = %+v, want %+v", got, want)
		}
		if got := sw.Mode(); got != fallback.ModeOld {
			t.Fatalf("Mode() = %s, want old: the mode every key has reached", got)
		}
		for k := range int64(1000) {
			if got, w := sw.ModeOf(k), want.ModeOf(k); got != w {
				t.Fatalf("ModeOf(%d) = %s, want %s", k, got, w)
			}
		}
	}
	for m, share := range map[string]float64{"old": 0.75, "readthrough": 0.25, "new": 0} {
		if got := testenv.GaugeValue(t, reg, "lazymigrate_read_mode", "mode", m); got != share {
			t.Errorf("read_mode{mode=%q} = %v, want %v", m, got, share)
		}
	}

	// An override pins every key; clearing it returns to the rollout.
	other.Override(fallback.ModeOld)
	for k := range int64(1000) {
		if m := other.ModeOf(k); m != fallback.ModeOld {
			t.Fatalf("overridden to old: ModeOf(%d) = %s", k, m)
		}
	}
	other.ClearOverride()
	if got := other.Policy(); got != want {
		t.Fatalf("after ClearOverride: Policy() = %+v, want %+v", got, want)
	}

	// A value an operator writes by hand is read the same way.
	if err := b.rdb.Set(ctx, b.key("accounts"), "new 0.5%", 0).Err(); err != nil {
		t.Fatal(err)
	}
	mustRefresh(t, other)
	if got := other.Policy(); got != (fallback.Policy{Mode: fallback.ModeNew, Percent: 0.5}) {
		t.Fatalf("after SET new 0.5%%: Policy() = %+v", got)
	}
	// Set is SetPolicy at 100%.
	mustSet(t, a, fallback.ModeOld)
	mustRefresh(t, other)
	if got := other.Policy(); got != fallback.Full(fallback.ModeOld) {
		t.Fatalf("after Set(old): Policy() = %+v", got)
	}
}

func TestSetPolicyRejectsInvalidPolicies(t *testing.T) {
	t.Parallel()
	b := setup(t)
	sw := b.newSwitch(t, b.rdb, nil)
	ctx := testContext(t)
	for _, p := range []fallback.Policy{
		{Mode: fallback.ModeOld, Percent: 50},
		{Mode: fallback.ModeReadthrough, Percent: 100.5},
		{Mode: fallback.ModeReadthrough, Percent: math.Inf(1)},
		{Mode: fallback.ModeNew, Percent: 1.234},
		{Mode: "sideways", Percent: 100},
		{},
	} {
		if err := sw.SetPolicy(ctx, p); !errors.Is(err, fallback.ErrInvalidMode) {
			t.Errorf("SetPolicy(%+v) = %v, want ErrInvalidMode", p, err)
		}
	}
	if n, err := b.rdb.Exists(ctx, b.key("accounts")).Result(); err != nil || n != 0 {
		t.Fatalf("Redis key written by a rejected SetPolicy (exists = %d, %v)", n, err)
	}
	if got := sw.Policy(); got != fallback.Full(fallback.ModeReadthrough) {
		t.Fatalf("Policy() = %+v after rejected sets", got)
	}
}

// TestModeOfDoesNotAllocate is not parallel: see TestModeDoesNotAllocate.
func TestModeOfDoesNotAllocate(t *testing.T) {
	sw, err := fallback.New(nil, "accounts", &fallback.Config{Default: fallback.ModeNew})
	if err != nil {
		t.Fatal(err)
	}
	var m fallback.Mode
	if n := testing.AllocsPerRun(1000, func() { m = sw.ModeOf(12345) }); n != 0 {
		t.Fatalf("ModeOf allocates %v times per call, want 0", n)
	}
	if m != fallback.ModeNew {
		t.Fatalf("ModeOf = %s", m)
	}
}

func FuzzParsePolicy(f *testing.F) {
	for _, s := range []string{"old", "readthrough 5%", "new 33.33", "new 1e1%", "readthrough 0x10%", "old 100", " new\t50% ", "readthrough 1e-300%", strings.Repeat("9", 400)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := fallback.ParsePolicy(s)
		if err != nil {
			if !errors.Is(err, fallback.ErrInvalidMode) || p != (fallback.Policy{}) {
				t.Fatalf("ParsePolicy(%q) = %+v, %v; want the zero Policy, ErrInvalidMode", s, p, err)
			}
			if len(err.Error()) > 600 {
				t.Fatalf("ParsePolicy(%q): error of %d bytes", s, len(err.Error()))
			}
			return
		}
		if p.Percent < 0 || p.Percent > 100 || (p.Mode == fallback.ModeOld && p.Percent != 100) {
			t.Fatalf("ParsePolicy(%q) = %+v", s, p)
		}
		if again, err := fallback.ParsePolicy(p.String()); err != nil || again != p {
			t.Fatalf("ParsePolicy(%q) = %+v; its String %q reads back as %+v, %v", s, p, p.String(), again, err)
		}
	})
}

// A Switch not made by New serves old, as it did before rollouts, and
// does not panic.
func TestZeroSwitchServesOld(t *testing.T) {
	t.Parallel()
	var sw fallback.Switch
	if m := sw.ModeOf(12345); m != fallback.ModeOld {
		t.Fatalf("zero Switch: ModeOf = %s, want old", m)
	}
	if m := sw.Mode(); m != fallback.ModeOld {
		t.Fatalf("zero Switch: Mode = %s, want old", m)
	}
}
