package lazy

import (
	"testing"
	"time"
)

func TestRecordDiff(t *testing.T) {
	t.Parallel()
	type rec struct {
		ID      int64
		Name    string
		Tags    []string
		At      time.Time
		private int
	}
	at := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	base := rec{ID: 1, Name: "a", Tags: []string{"x"}, At: at, private: 1}
	same := base
	same.Tags = []string{"x"}
	same.At = at.In(time.FixedZone("CET", 3600)) // the same instant, as pgx may return it
	same.private = 2                             // unexported: not the record's data
	if d := recordDiff(base, same); d != "" {
		t.Errorf("equal records: %q", d)
	}
	other := base
	other.Name, other.At = "b", at.Add(time.Microsecond)
	if d := recordDiff(base, other); d != "fields differ: Name, At" {
		t.Errorf("two fields changed: %q", d)
	}
	if d := recordDiff(&base, &other); d != "fields differ: Name, At" {
		t.Errorf("pointers to records: %q", d)
	}
	if d := recordDiff(&base, nil); d != "records differ" {
		t.Errorf("a record and nil: %q", d)
	}
	if d := recordDiff(map[string]any{"a": 1}, map[string]any{"a": 1}); d != "" {
		t.Errorf("equal maps: %q", d)
	}
	if d := recordDiff(map[string]any{"a": 1}, map[string]any{"a": 2}); d != "records differ" {
		t.Errorf("different maps: %q", d)
	}
	if d := recordDiff(at, at.In(time.Local)); d != "" {
		t.Errorf("a time.Time record in two locations: %q", d)
	}
	if d := recordDiff(at, at.Add(time.Second)); d != "records differ" {
		t.Errorf("time.Time records a second apart: %q", d)
	}
	type opaque struct{ n int }
	if d := recordDiff(opaque{1}, opaque{2}); d != "records differ" {
		t.Errorf("structs without exported fields that differ: %q", d)
	}
}
