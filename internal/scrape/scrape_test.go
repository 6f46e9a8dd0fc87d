package scrape

import (
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func TestSum(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x_total", Help: "x"}, []string{"event", "outcome"})
	reg.MustRegister(c, prometheus.NewGauge(prometheus.GaugeOpts{Name: "x_total_other", Help: "a name with x_total as prefix"}))
	c.WithLabelValues("ping", "stored").Add(2)
	c.WithLabelValues("update:job", "stored").Add(3)
	c.WithLabelValues("update:job", "refused").Add(5)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	for _, tt := range []struct {
		labels []string
		want   float64
	}{
		{nil, 10},
		{[]string{`outcome="stored"`}, 5},
		{[]string{`event="update:job"`, `outcome="refused"`}, 5},
		{[]string{`outcome="absent"`}, 0},
	} {
		if got := Sum(t, srv.URL, "x_total", tt.labels...); got != tt.want {
			t.Errorf("Sum(x_total, %v) = %v, want %v", tt.labels, got, tt.want)
		}
	}
	if got := SumText("# HELP x_total x\nx_total 1.5\n", "x_total"); got != 1.5 {
		t.Errorf("SumText of an unlabelled sample = %v", got)
	}
}
