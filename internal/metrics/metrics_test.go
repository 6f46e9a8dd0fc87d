package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestRegisterShares(t *testing.T) {
	reg := prometheus.NewRegistry()
	opts := prometheus.CounterOpts{Name: "cvat_sync_test_total", Help: "h"}
	a, err := Register(reg, prometheus.NewCounter(opts))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Register(reg, prometheus.NewCounter(opts))
	if err != nil {
		t.Fatal(err)
	}
	a.Inc()
	b.Inc()
	if got := testutil.ToFloat64(a); got != 2 {
		t.Errorf("shared counter = %v, want 2 (the second registration kept a copy of its own)", got)
	}
}

func TestRegisterClash(t *testing.T) {
	reg := prometheus.NewRegistry()
	r := &Registrar{Reg: reg}
	Must(r, prometheus.NewCounter(prometheus.CounterOpts{Name: "cvat_sync_x", Help: "h"}))
	Must(r, prometheus.NewGauge(prometheus.GaugeOpts{Name: "cvat_sync_x", Help: "other"}))
	if r.Err == nil {
		t.Error("a clashing name was accepted")
	}
}

func TestRegisterNil(t *testing.T) {
	c, err := Register(nil, prometheus.NewCounter(prometheus.CounterOpts{Name: "cvat_sync_y", Help: "h"}))
	if err != nil || c == nil {
		t.Fatal(c, err)
	}
}
