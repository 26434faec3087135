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

// rawModes and rawCur are the baselines' switch: an index into an array of
// modes, loaded atomically.
var (
	rawModes = [...]fallback.Mode{fallback.ModeOld, fallback.ModeReadthrough, fallback.ModeNew}
	rawCur   atomic.Uint32
)

func BenchmarkModeRawAtomicLoad(b *testing.B) {
	rawCur.Store(1)
	b.ReportAllocs()
	for b.Loop() {
		sink = rawModes[rawCur.Load()]
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
	rawCur.Store(1)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		var m fallback.Mode
		for pb.Next() {
			m = rawModes[rawCur.Load()]
		}
		_ = m
	})
}
