// Package pgtext moves values between two Postgres databases in Postgres's
// own text form, exactly: the session settings that change how values are
// printed and parsed are pinned, and Go values are rendered the way the
// target column's type reads them.
package pgtext

import (
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5/pgtype"
)

// PinOutput fixes, for the current transaction only, every setting that
// changes how Postgres prints a value, so that text read from one server
// means the same to another whatever their defaults: ISO dates (a
// "SQL, DMY" server prints 01/02/2024 for February 1st), exact floats
// (servers before Postgres 12 round them by default), hex bytea, money in
// the C locale, and UTC.
const PinOutput = `SELECT set_config('DateStyle', 'ISO, YMD', true), set_config('IntervalStyle', 'postgres', true),
	set_config('extra_float_digits', '3', true), set_config('bytea_output', 'hex', true),
	set_config('lc_monetary', 'C', true), set_config('TimeZone', 'UTC', true)`

// PinInput fixes, for the current transaction only, the settings that
// change how Postgres parses text written under PinOutput (xmloption too:
// under "document" an XML fragment is refused). Use it as a statement, or
// as a prefix of a select list: `PinInput + ", (SELECT ...)"`.
const PinInput = `SELECT set_config('DateStyle', 'ISO, YMD', true), set_config('IntervalStyle', 'postgres', true),
	set_config('lc_monetary', 'C', true), set_config('xmloption', 'content', true)`

// IsJSON reports whether oid is json or jsonb, which travel as raw text so
// that numbers past 2^53 and key order survive.
func IsJSON(oid uint32) bool { return oid == pgtype.JSONOID || oid == pgtype.JSONBOID }

// Encode renders v in Postgres's text form for a column of type oid (whose
// SQL name is typeName, for errors): nil is NULL, strings and
// json.RawMessage pass through, anything else goes through pgx's encoder.
func Encode(m *pgtype.Map, oid uint32, typeName string, v any) (*string, error) {
	switch v := v.(type) {
	case nil:
		return nil, nil
	case string:
		return &v, nil
	case json.RawMessage:
		s := string(v)
		return &s, nil
	}
	if _, known := m.TypeForOID(oid); !known {
		return nil, fmt.Errorf("type %s is unknown to pgx: give its value as a string in Postgres's text form", typeName)
	}
	buf, err := m.Encode(oid, pgtype.TextFormatCode, v, nil)
	if err != nil || buf == nil {
		return nil, err
	}
	s := string(buf)
	return &s, nil
}
