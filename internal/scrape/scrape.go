// Package scrape reads a running service's Prometheus metrics in tests: the
// one metrics-scrape helper of cvat-sync's tests.
package scrape

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// Sum scrapes url (a /metrics endpoint) and returns the sum of metric
// name's samples whose label set contains every one of labels (each written
// as in the exposition format, e.g. `outcome="stored"`). It fails t when the
// scrape fails.
func Sum(t testing.TB, url, name string, labels ...string) float64 {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	if res.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s", url, res.Status)
	}
	return SumText(string(b), name, labels...)
}

// SumText is Sum over an exposition already read.
func SumText(text, name string, labels ...string) float64 {
	var sum float64
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		if !hasAll(line, labels) {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}

func hasAll(line string, labels []string) bool {
	for _, l := range labels {
		if !strings.Contains(line, l) {
			return false
		}
	}
	return true
}
