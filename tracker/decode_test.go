package tracker

import (
	"slices"
	"testing"
)

// unsetNaive is appendUnset written the obvious way, one bit at a time.
func unsetNaive(data string, base int64, sp span) []int64 {
	var out []int64
	first := sp.from / 8
	for off := sp.from; off < sp.to; off++ {
		i := off/8 - first
		if i >= int64(len(data)) || data[i]&(0x80>>(off%8)) == 0 {
			out = append(out, base+off)
		}
	}
	return out
}

// FuzzAppendUnset checks the byte-at-a-time decoder of GETRANGE replies
// against the bit-at-a-time one, for any reply (short ones included) and any
// span.
func FuzzAppendUnset(f *testing.F) {
	f.Add("\xff\x00\xa5", uint16(3), uint16(21))
	f.Add("", uint16(0), uint16(9))
	f.Add("\xff\xff", uint16(8), uint16(12))
	f.Add("\x7f", uint16(0), uint16(1))
	f.Fuzz(func(t *testing.T, data string, from, n uint16) {
		sp := span{from: int64(from), to: int64(from) + int64(n%2048)}
		if len(data) > int(sp.to-sp.from)/8+1 {
			data = data[:int(sp.to-sp.from)/8+1] // Redis never returns more than asked
		}
		const base = 1 << 40
		got := appendUnset(nil, data, base, sp)
		want := unsetNaive(data, base, sp)
		if !slices.Equal(got, want) {
			t.Fatalf("appendUnset(%x, %+v) = %v, want %v", data, sp, got, want)
		}
		if h := unsetHint(data, sp); h < len(want) || h > len(want)+14 {
			t.Fatalf("unsetHint = %d for %d unset keys, want an upper bound within 14", h, len(want))
		}
	})
}
