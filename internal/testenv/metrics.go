package testenv

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// CounterValue returns the value of counter name in reg whose label has
// value, or 0 when there is no such series.
func CounterValue(t testing.TB, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	if m := find(t, reg, name, label, value); m != nil {
		return m.GetCounter().GetValue()
	}
	return 0
}

// GaugeValue returns the value of the gauge name whose label is value, or 0
// when there is none.
func GaugeValue(t testing.TB, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	if m := find(t, reg, name, label, value); m != nil {
		return m.GetGauge().GetValue()
	}
	return 0
}

func find(t testing.TB, reg *prometheus.Registry, name, label, value string) *dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m
				}
			}
		}
	}
	return nil
}
