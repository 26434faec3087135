package testenv

import (
	"bytes"
	"sync"
	"testing"
	"time"
)

// Interleave times a raw baseline and the call measured against it in one
// loop of b.N iterations, alternating which runs first, and returns each
// side's total: noise between runs then hits both sides alike.
func Interleave(b *testing.B, raw, measured func(i int) error) (rawT, measuredT time.Duration) {
	b.Helper()
	b.ResetTimer()
	for i := range b.N {
		first, second := raw, measured
		firstT, secondT := &rawT, &measuredT
		if i%2 == 1 {
			first, second, firstT, secondT = measured, raw, &measuredT, &rawT
		}
		t0 := time.Now()
		if err := first(i); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := second(i); err != nil {
			b.Fatal(err)
		}
		*firstT += t1.Sub(t0)
		*secondT += time.Since(t1)
	}
	b.StopTimer()
	return rawT, measuredT
}

// SyncBuffer is a bytes.Buffer that a command or logger may write while the
// test reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
