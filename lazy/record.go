package lazy

import (
	"fmt"
	"reflect"
	"strings"
)

// encoder turns a record into the values of the columns a Repo writes.
type encoder[T any] func(rec T) ([]any, error)

// newEncoder returns Config.Encode adapted to the column order, or, for a
// struct type, one that reads the fields pgx would scan each column into:
// the field whose db tag names the column, or else the field whose name
// matches it ignoring case and underscores.
func newEncoder[T any](cols []string, custom func(T) (map[string]any, error)) (encoder[T], error) {
	if custom != nil {
		return func(rec T) ([]any, error) {
			m, err := custom(rec)
			if err != nil {
				return nil, err
			}
			vals := make([]any, len(cols))
			for i, c := range cols {
				v, ok := m[c]
				if !ok {
					return nil, fmt.Errorf("Config.Encode returned no value for column %q", c)
				}
				vals[i] = v
			}
			return vals, nil
		}, nil
	}
	var zero T
	t := reflect.TypeOf(zero)
	if t == nil || t.Kind() != reflect.Struct {
		return nil, fmt.Errorf("writes of %T need Config.Encode: only structs are mapped to columns by default", zero)
	}
	paths := make([][]int, len(cols))
	for i, c := range cols {
		p := fieldFor(t, c)
		if p == nil {
			return nil, fmt.Errorf("record type %s has no field for column %q (name it in a db tag, or set Config.Columns or Config.Encode)", t, c)
		}
		paths[i] = p
	}
	return func(rec T) ([]any, error) {
		v := reflect.ValueOf(rec)
		vals := make([]any, len(paths))
		for i, p := range paths {
			vals[i] = v.FieldByIndex(p).Interface()
		}
		return vals, nil
	}, nil
}

// fieldFor finds the field of struct type t, or of the structs it embeds,
// that pgx's RowToStructByName would scan column col into.
func fieldFor(t reflect.Type, col string) []int {
	var tagged, named []int
	var walk func(t reflect.Type, prefix []int)
	walk = func(t reflect.Type, prefix []int) {
		for i := range t.NumField() {
			sf := t.Field(i)
			path := append(append([]int(nil), prefix...), i)
			if sf.Anonymous && sf.Type.Kind() == reflect.Struct {
				walk(sf.Type, path)
				continue
			}
			if !sf.IsExported() {
				continue
			}
			tag, hasTag := sf.Tag.Lookup("db")
			tag, _, _ = strings.Cut(tag, ",")
			switch {
			case tag == "-":
			case hasTag && tag == col && tagged == nil:
				tagged = path
			case hasTag && strings.EqualFold(tag, col) && named == nil:
				named = path
			case !hasTag && named == nil &&
				strings.EqualFold(strings.ReplaceAll(sf.Name, "_", ""), strings.ReplaceAll(col, "_", "")):
				named = path
			}
		}
	}
	walk(t, nil)
	if tagged != nil {
		return tagged
	}
	return named
}
