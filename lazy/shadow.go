package lazy

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/lazymigrate/lazymigrate/fallback"
	"github.com/lazymigrate/lazymigrate/internal/schema"
)

// shadowStateSQL tells, for key $2 of table $1, whether NEW holds its
// tombstone, whether a change of it is still to be mirrored to OLD (its
// outbox entry), and whether the table's migration is closed.
const shadowStateSQL = `SELECT
	EXISTS (SELECT 1 FROM lazymigrate.tombstones WHERE table_name = $1 AND key = $2),
	EXISTS (SELECT 1 FROM ` + schema.Outbox + ` WHERE table_name = $1 AND key = $2),
	` + schema.ClosedSQL

// shadow hands a sampled read to Config.Shadow, which compares the two
// databases' answers for key. A read of NEW (readthrough or new) is
// checked against OLD, a read of OLD in mode old against NEW. A miss that
// OLD served in readthrough is not: NEW lacks the key until its promotion.
// The check reads both sides itself rather than keep the record Get
// returned, which is the caller's to change.
func (r *Repo[T]) shadow(ctx context.Context, key int64, mode fallback.Mode, outcome string) {
	served := fallback.ModeNew
	switch {
	case mode == fallback.ModeOld && (outcome == "old" || outcome == "not_found"):
		served = fallback.ModeOld
	case mode != fallback.ModeOld && (outcome == "new" || outcome == "not_found"):
	default:
		return
	}
	r.compare(ctx, key, served)
}

// shadowKeys hands a sample of ks, the keys of a GetMany that served
// sorted and unique, to Config.Shadow, but for those in skip (sorted):
// keys OLD served in readthrough, which NEW lacks, as Get skips them.
func (r *Repo[T]) shadowKeys(ctx context.Context, ks []int64, served fallback.Mode, skip []int64) {
	if r.cfg.Shadow == nil {
		return
	}
	for _, k := range ks {
		if !r.cfg.Shadow.Sample() {
			continue
		}
		if _, skipped := slices.BinarySearch(skip, k); !skipped {
			r.compare(ctx, k, served)
		}
	}
}

func (r *Repo[T]) compare(ctx context.Context, key int64, served fallback.Mode) {
	r.cfg.Shadow.Compare(ctx, key, served, func(ctx context.Context) (string, error) {
		return r.compareSides(ctx, key)
	})
}

// compareSides reads key from NEW and from OLD and describes how they
// differ, or returns "". A difference with a change still in the outbox
// is fallback.ErrPending; a key NEW lacks, has no tombstone for, and OLD
// holds has not been migrated yet (fallback.ErrNothingToCompare).
func (r *Repo[T]) compareSides(ctx context.Context, key int64) (string, error) {
	nv, inNew, err := r.readSide(ctx, false, key)
	if err != nil {
		return "", err
	}
	ov, inOld, err := r.readSide(ctx, true, key)
	if err != nil {
		return "", err
	}
	var diff string
	switch {
	case inNew && inOld:
		diff = recordDiff(nv, ov)
	case inNew:
		diff = "in NEW, missing from OLD"
	case inOld:
		diff = "missing from NEW, in OLD"
	}
	if diff == "" {
		return "", nil
	}
	var tombstoned, pending, closed bool
	if err := r.new.QueryRow(ctx, shadowStateSQL, r.tableID, key).Scan(&tombstoned, &pending, &closed); err != nil {
		return "", fmt.Errorf("read NEW's tombstones and outbox: %w", err)
	}
	switch {
	case pending:
		return "", fallback.ErrPending
	case inNew || !inOld:
	case tombstoned:
		diff = "deleted in NEW, still in OLD"
	case closed:
		diff = "missing from NEW, in OLD, and the table's migration is closed"
	default:
		return "", fallback.ErrNothingToCompare
	}
	return diff, nil
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

// recordDiff names the exported fields (those of embedded structs
// included) in which a and b differ, or returns "" when they are equal, as
// equalValues compares them; a record that is not a struct, or has no
// exported field, is compared whole. Values stay out of the description: records may hold personal
// data, and it goes to the logs.
func recordDiff[T any](a, b T) string {
	va, vb := reflect.ValueOf(&a).Elem(), reflect.ValueOf(&b).Elem()
	for va.Kind() == reflect.Pointer && !va.IsNil() && !vb.IsNil() {
		va, vb = va.Elem(), vb.Elem()
	}
	if va.Kind() != reflect.Struct || equalMethod(va).IsValid() || len(diffFields(va, va, nil, true)) == 0 {
		if equalValues(va, vb, 0) {
			return ""
		}
		return "records differ"
	}
	fields := diffFields(va, vb, nil, false)
	if len(fields) == 0 {
		return ""
	}
	return "fields differ: " + strings.Join(fields, ", ")
}

// diffFields appends to names the exported fields of the structs a and b
// that differ (every one, with all), looking into embedded structs, whose
// fields pgx fills as its own. Unexported fields are not a record's data:
// pgx never fills them.
func diffFields(a, b reflect.Value, names []string, all bool) []string {
	for i := range a.NumField() {
		f := a.Type().Field(i)
		fa, fb := a.Field(i), b.Field(i)
		switch {
		case f.Anonymous && fa.Kind() == reflect.Struct && !equalMethod(fa).IsValid():
			names = diffFields(fa, fb, names, all)
		case !f.IsExported():
		case all || !equalValues(fa, fb, 0):
			names = append(names, f.Name)
		}
	}
	return names
}

// maxDepth bounds equalValues' descent: records have no cycles, but a
// type that does must not hang a comparison.
const maxDepth = 32

// equalValues compares a and b, of one type, as reflect.DeepEqual does,
// except that at every level a type with a method Equal(T) bool (time.Time,
// which pgx returns in other locations for the same instant) is compared
// with it, and a nil pointer is never its receiver.
func equalValues(a, b reflect.Value, depth int) bool {
	if depth > maxDepth {
		return false
	}
	switch a.Kind() {
	case reflect.Pointer, reflect.Interface, reflect.Map, reflect.Slice, reflect.Func, reflect.Chan:
		if a.IsNil() || b.IsNil() {
			return a.IsNil() && b.IsNil()
		}
	}
	if m := equalMethod(a); m.IsValid() {
		return m.Call([]reflect.Value{b})[0].Bool()
	}
	switch a.Kind() {
	case reflect.Pointer:
		return equalValues(a.Elem(), b.Elem(), depth+1)
	case reflect.Interface:
		ea, eb := a.Elem(), b.Elem()
		return ea.Type() == eb.Type() && equalValues(ea, eb, depth+1)
	case reflect.Struct:
		for i := range a.NumField() {
			if !equalValues(a.Field(i), b.Field(i), depth+1) {
				return false
			}
		}
		return true
	case reflect.Slice, reflect.Array:
		if a.Len() != b.Len() {
			return false
		}
		for i := range a.Len() {
			if !equalValues(a.Index(i), b.Index(i), depth+1) {
				return false
			}
		}
		return true
	case reflect.Map:
		if a.Len() != b.Len() {
			return false
		}
		for it := a.MapRange(); it.Next(); {
			bv := b.MapIndex(it.Key())
			if !bv.IsValid() || !equalValues(it.Value(), bv, depth+1) {
				return false
			}
		}
		return true
	case reflect.Func, reflect.Chan, reflect.UnsafePointer:
		return a.Pointer() == b.Pointer()
	case reflect.Bool:
		return a.Bool() == b.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return a.Int() == b.Int()
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return a.Uint() == b.Uint()
	case reflect.Float32, reflect.Float64:
		return a.Float() == b.Float()
	case reflect.Complex64, reflect.Complex128:
		return a.Complex() == b.Complex()
	case reflect.String:
		return a.String() == b.String()
	}
	return false
}

// equalMethod returns v's method Equal(T) bool, T being v's own type, or
// the zero Value; none for a value reached through an unexported field,
// whose methods reflection may not call.
func equalMethod(v reflect.Value) reflect.Value {
	if !v.CanInterface() {
		return reflect.Value{}
	}
	m := v.MethodByName("Equal")
	if !m.IsValid() {
		return m
	}
	if t := m.Type(); t.NumIn() != 1 || t.In(0) != v.Type() || t.NumOut() != 1 || t.Out(0).Kind() != reflect.Bool {
		return reflect.Value{}
	}
	return m
}
