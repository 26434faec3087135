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

	// Times one level down, in other locations, are the same instant.
	type nested struct {
		Closed *time.Time
		Seen   struct{ At time.Time }
		Money  *money
	}
	local := at.In(time.FixedZone("X", -7200))
	n1 := nested{Closed: &at}
	n2 := nested{Closed: &local}
	n1.Seen.At, n2.Seen.At = at, local
	if d := recordDiff(n1, n2); d != "" {
		t.Errorf("nested times in two locations: %q", d)
	}
	// A nil field whose type's Equal has a pointer receiver is not called.
	n2.Money = &money{cents: 1}
	if d := recordDiff(n1, n2); d != "fields differ: Money" {
		t.Errorf("a nil and a set *money: %q", d)
	}
	n1.Money = &money{cents: 1}
	if d := recordDiff(n1, n2); d != "" {
		t.Errorf("equal *money by its Equal: %q", d)
	}
	// The fields of an unexported embedded struct are the record's own.
	type contact struct{ Email string }
	type withBase struct {
		contact
		ID int64
	}
	if d := recordDiff(withBase{contact{"a"}, 1}, withBase{contact{"b"}, 1}); d != "fields differ: Email" {
		t.Errorf("an embedded field differs: %q", d)
	}
}

// money has an Equal with a pointer receiver, which a nil *money must
// never receive.
type money struct{ cents int64 }

func (m *money) Equal(o *money) bool { return m.cents == o.cents }
