package fallback_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/lazymigrate/lazymigrate/fallback"
)

func TestParseMode(t *testing.T) {
	t.Parallel()
	good := []struct {
		in   string
		want fallback.Mode
	}{
		{"old", fallback.ModeOld},
		{"readthrough", fallback.ModeReadthrough},
		{"new", fallback.ModeNew},
		{"OLD", fallback.ModeOld},
		{"ReadThrough", fallback.ModeReadthrough},
		{"new\n", fallback.ModeNew}, // as `redis-cli -x SET` writes it
		{"  old\t", fallback.ModeOld},
	}
	for _, tt := range good {
		m, err := fallback.ParseMode(tt.in)
		if err != nil || m != tt.want {
			t.Errorf("ParseMode(%q) = %q, %v; want %q, nil", tt.in, m, err, tt.want)
		}
		if m.String() != string(tt.want) {
			t.Errorf("ParseMode(%q).String() = %q, want %q", tt.in, m.String(), tt.want)
		}
	}

	bad := []string{"", " ", "bogus", "read-through", "read through", "old,new", "ol", "newer", "\x00old", "旧"}
	for _, in := range bad {
		m, err := fallback.ParseMode(in)
		if !errors.Is(err, fallback.ErrInvalidMode) {
			t.Errorf("ParseMode(%q) = %q, %v; want ErrInvalidMode", in, m, err)
			continue
		}
		if m != "" {
			t.Errorf("ParseMode(%q) returned mode %q with its error", in, m)
		}
		if msg := err.Error(); !strings.HasPrefix(msg, "fallback: invalid mode") ||
			!strings.Contains(msg, "old, readthrough and new") {
			t.Errorf("ParseMode(%q): error %q should say the mode is invalid and name the valid ones", in, msg)
		}
	}
}

func TestParseModeErrorIsBounded(t *testing.T) {
	t.Parallel()
	_, err := fallback.ParseMode(strings.Repeat("x", 1<<20))
	if err == nil {
		t.Fatal("ParseMode accepted a megabyte of x")
	}
	if n := len(err.Error()); n > 200 {
		t.Fatalf("error for a 1 MiB value is %d bytes long, want it cut short", n)
	}
	if !strings.Contains(err.Error(), "1048576 bytes") {
		t.Errorf("error %q should give the value's length", err)
	}
}

func FuzzParseMode(f *testing.F) {
	for _, s := range []string{"old", "readthrough", "new", "NEW", " old\n", "", "bogus", "\xff\xfe", strings.Repeat("é", 40)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := fallback.ParseMode(s)
		if err != nil {
			if !errors.Is(err, fallback.ErrInvalidMode) || m != "" {
				t.Fatalf("ParseMode(%q) = %q, %v; want \"\", ErrInvalidMode", s, m, err)
			}
			if msg := err.Error(); len(msg) > 400 || !strings.Contains(msg, "old, readthrough and new") {
				t.Fatalf("ParseMode(%q): bad error message %q", s, msg)
			}
			return
		}
		switch m {
		case fallback.ModeOld, fallback.ModeReadthrough, fallback.ModeNew:
		default:
			t.Fatalf("ParseMode(%q) = %q, not one of the modes", s, m)
		}
		if !strings.EqualFold(strings.TrimSpace(s), m.String()) {
			t.Fatalf("ParseMode(%q) = %q, which is not what it says", s, m)
		}
		if again, err := fallback.ParseMode(m.String()); err != nil || again != m {
			t.Fatalf("ParseMode(%q) = %q, %v; want %q back", m.String(), again, err, m)
		}
	})
}
