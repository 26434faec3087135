package promote

import (
	"encoding/binary"
	"io"
	"testing"
)

// binaryCopy builds a binary COPY stream of rows of (int8 key, text) fields.
func binaryCopy(rows map[int64]string) []byte {
	b := []byte(binaryCopySignature)
	b = binary.BigEndian.AppendUint32(b, 0) // flags
	b = binary.BigEndian.AppendUint32(b, 0) // no header extension
	for k, v := range rows {
		b = binary.BigEndian.AppendUint16(b, 2)
		b = binary.BigEndian.AppendUint32(b, 8)
		b = binary.BigEndian.AppendUint64(b, uint64(k))
		b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
		b = append(b, v...)
	}
	return binary.BigEndian.AppendUint16(b, 0xffff)
}

func TestParseBinaryCopy(t *testing.T) {
	data := binaryCopy(map[int64]string{7: "seven", 9: ""})
	rows, err := parseBinaryCopy(data, 0, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := map[int64]bool{}
	for _, k := range rows.keys() {
		got[k] = true
	}
	if len(got) != 2 || !got[7] || !got[9] {
		t.Fatalf("keys = %v, want 7 and 9", rows.keys())
	}
	kept, err := io.ReadAll(rows.without(func(k int64) bool { return k == 7 }))
	if err != nil {
		t.Fatal(err)
	}
	again, err := parseBinaryCopy(kept, 0, false, nil)
	if err != nil || len(again.tuples) != 1 || again.tuples[0].key != 9 {
		t.Fatalf("without(7): %+v, %v", again, err)
	}
	for name, bad := range map[string][]byte{
		"empty":     nil,
		"truncated": data[:len(data)-3],
		"no key":    binaryCopy(map[int64]string{1: "x"})[:19+2+4+8],
	} {
		if _, err := parseBinaryCopy(bad, 0, false, nil); err == nil {
			t.Errorf("%s: parsed without error", name)
		}
	}
	if _, err := parseBinaryCopy(data, 5, false, nil); err == nil {
		t.Error("a key field past the row's fields: parsed without error")
	}
	// Cut in the middle of its second row, a partial read keeps the first.
	cut := binaryCopy(map[int64]string{1: "one"})
	cut = append(cut[:len(cut)-2], binaryCopy(map[int64]string{2: "two"})[19:19+6]...)
	if part, err := parseBinaryCopy(cut, 0, true, nil); err != nil || len(part.tuples) != 1 || part.tuples[0].key != 1 {
		t.Fatalf("partial parse: %+v, %v; want the one whole row", part, err)
	}
}

// Whatever OLD sends, parsing returns an error or rows, never a panic, and
// the rows it finds survive without().
func FuzzParseBinaryCopy(f *testing.F) {
	f.Add(binaryCopy(map[int64]string{1: "a", 2: "bb"}), 0)
	f.Add(binaryCopy(nil), 1)
	f.Fuzz(func(t *testing.T, data []byte, keyField int) {
		rows, err := parseBinaryCopy(data, keyField%4, false, nil)
		if err != nil {
			return
		}
		kept, _ := io.ReadAll(rows.without(func(int64) bool { return false }))
		again, err := parseBinaryCopy(kept, keyField%4, false, nil)
		if err != nil || len(again.tuples) != len(rows.tuples) {
			t.Fatalf("rows did not survive without(): %v", err)
		}
	})
}
