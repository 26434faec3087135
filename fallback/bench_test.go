package fallback_test

import (
	"sync/atomic"
	"testing"

	"github.com/lazymigrate/lazymigrate/fallback"
)

// Mode is on every read's hot path. Each benchmark sits next to its raw
// baseline, a bare atomic load, so that one `go test -bench` run shows what
// the switch adds.

var sink fallback.Mode

func benchSwitch(b *testing.B) *fallback.Switch {
	b.Helper()
	sw, err := fallback.New(nil, "bench", nil) // Redis plays no part in Mode
	if err != nil {
		b.Fatal(err)
	}
	return sw
}

func BenchmarkMode(b *testing.B) {
	sw := benchSwitch(b)
	b.ReportAllocs()
	for b.Loop() {
		sink = sw.Mode()
	}
}

func BenchmarkModeRawAtomicLoad(b *testing.B) {
	var v atomic.Uint32
	modes := [...]fallback.Mode{fallback.ModeOld, fallback.ModeReadthrough, fallback.ModeNew}
	v.Store(1)
	b.ReportAllocs()
	for b.Loop() {
		sink = modes[v.Load()]
	}
}

func BenchmarkModeParallel(b *testing.B) {
	sw := benchSwitch(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		var m fallback.Mode
		for pb.Next() {
			m = sw.Mode()
		}
		_ = m
	})
}

func BenchmarkModeParallelRawAtomicLoad(b *testing.B) {
	var v atomic.Uint32
	v.Store(1)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		var n uint32
		for pb.Next() {
			n += v.Load()
		}
		_ = n
	})
}
