package lazy

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/lazymigrate/lazymigrate/fallback"
)

// shadow hands a sampled read to Config.Shadow, which compares it with the
// database that did not serve it. A read of NEW (readthrough or new) is
// compared with OLD; a read of OLD in mode old with NEW. A miss that OLD
// served in readthrough is not: NEW lacks the key until its promotion.
func (r *Repo[T]) shadow(ctx context.Context, key int64, mode fallback.Mode, v T, outcome string) {
	fromOld := mode == fallback.ModeOld
	switch {
	case outcome == "not_found":
	case outcome == "new" && !fromOld:
	case outcome == "old" && fromOld:
	default:
		return
	}
	served := fallback.ModeNew
	if fromOld {
		served = fallback.ModeOld
	}
	found := outcome != "not_found"
	r.cfg.Shadow.Compare(ctx, key, served, func(ctx context.Context, first bool) (string, error) {
		var side [2]sideRead[T] // NEW, OLD
		s, o := 0, 1
		if fromOld {
			s, o = 1, 0
		}
		side[s] = sideRead[T]{v: v, found: found}
		if !first {
			if side[s].v, side[s].found, side[s].err = r.readSide(ctx, fromOld, key); side[s].err != nil {
				return "", side[s].err
			}
		}
		if side[o].v, side[o].found, side[o].err = r.readSide(ctx, !fromOld, key); side[o].err != nil {
			return "", side[o].err
		}
		return r.compareSides(ctx, key, side[0], side[1])
	})
}

// sideRead is one database's answer for a key.
type sideRead[T any] struct {
	v     T
	found bool
	err   error
}

// readSide reads key from OLD or NEW alone.
func (r *Repo[T]) readSide(ctx context.Context, old bool, key int64) (T, bool, error) {
	db, sql, scan, name := r.new, r.newSQL, r.cfg.Scan, "NEW"
	if old {
		db, sql, scan, name = r.old, r.oldSQL, r.cfg.ScanOld, "OLD"
	}
	v, err := queryOne(ctx, db, sql, key, scan)
	switch {
	case err == nil:
		return v, true, nil
	case errors.Is(err, pgx.ErrNoRows):
		return v, false, nil
	}
	return v, false, fmt.Errorf("read %s: %w", name, err)
}

// compareSides describes how NEW's and OLD's answers for key differ, or
// returns "". A key NEW lacks and OLD holds is a difference only if NEW
// deleted it; otherwise it has not been migrated yet.
func (r *Repo[T]) compareSides(ctx context.Context, key int64, nw, old sideRead[T]) (string, error) {
	switch {
	case nw.found && old.found:
		return recordDiff(nw.v, old.v), nil
	case nw.found:
		return "in NEW, missing from OLD", nil
	case !old.found:
		return "", nil
	}
	var gone bool
	if err := r.new.QueryRow(ctx, r.tombSQL, r.tableID, key).Scan(&gone); err != nil {
		return "", fmt.Errorf("read NEW's tombstones: %w", err)
	}
	if gone {
		return "deleted in NEW, still in OLD", nil
	}
	return "", fallback.ErrNothingToCompare
}

// recordDiff names the fields in which a and b differ, or returns "" when
// they are equal. A field whose type has an Equal method (time.Time) is
// compared with it, any other with reflect.DeepEqual; a record that is not
// a struct is compared whole. Values stay out of the description: records
// may hold personal data, and it goes to the logs.
func recordDiff[T any](a, b T) string {
	va, vb := reflect.ValueOf(&a).Elem(), reflect.ValueOf(&b).Elem()
	for va.Kind() == reflect.Pointer && !va.IsNil() && !vb.IsNil() {
		va, vb = va.Elem(), vb.Elem()
	}
	if va.Kind() != reflect.Struct || equalMethod(va).IsValid() || !hasExportedField(va.Type()) {
		if equalValues(va, vb) {
			return ""
		}
		return "records differ"
	}
	var fields []string
	for i := range va.NumField() {
		f := va.Type().Field(i)
		if f.IsExported() && !equalValues(va.Field(i), vb.Field(i)) {
			fields = append(fields, f.Name)
		}
	}
	if len(fields) == 0 {
		return ""
	}
	return "fields differ: " + strings.Join(fields, ", ")
}

// equalValues compares a and b, of one type, with the type's Equal method
// when it has one, and with reflect.DeepEqual otherwise.
func equalValues(a, b reflect.Value) bool {
	if m := equalMethod(a); m.IsValid() {
		return m.Call([]reflect.Value{b})[0].Bool()
	}
	return reflect.DeepEqual(a.Interface(), b.Interface())
}

// equalMethod returns v's method Equal(T) bool, T being v's own type, or
// the zero Value.
func equalMethod(v reflect.Value) reflect.Value {
	m := v.MethodByName("Equal")
	if !m.IsValid() {
		return m
	}
	if t := m.Type(); t.NumIn() != 1 || t.In(0) != v.Type() || t.NumOut() != 1 || t.Out(0).Kind() != reflect.Bool {
		return reflect.Value{}
	}
	return m
}

func hasExportedField(t reflect.Type) bool {
	for i := range t.NumField() {
		if t.Field(i).IsExported() {
			return true
		}
	}
	return false
}
