package logbuf

import (
	"fmt"
	"sync"
	"testing"
)

func TestConcurrentWritersAndRecords(t *testing.T) {
	b := New()
	log := b.Logger()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			log.Info("hello", "n", i)
		}()
	}
	wg.Wait()
	fmt.Fprintln(b, "not json")
	fmt.Fprintln(b, `{"severity":"INFO","message":"hello"}`) // the service's own shape
	if got := len(b.Find("hello")); got != 9 {
		t.Fatalf("Find(hello) = %d lines, want 9:\n%s", got, b)
	}
	if got := len(b.Records()); got != 9 {
		t.Errorf("Records = %d, want 9 (the plain line is skipped)", got)
	}
	if !b.Contains("not json") || b.Contains("absent") {
		t.Error("Contains does not report what was written")
	}
	if r := b.Find("hello")[0]; r["level"] != "INFO" {
		t.Errorf("record = %v, want level INFO", r)
	}
}
