package eventually

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestPollReturnsOnceTheConditionHolds(t *testing.T) {
	var n atomic.Int32
	if !Poll(time.Minute, func() bool { return n.Add(1) == 3 }) {
		t.Fatal("Poll gave up on a condition that held")
	}
	if got := n.Load(); got != 3 {
		t.Errorf("condition checked %d times, want 3 (Poll goes on after it held)", got)
	}
}

func TestPollGivesUp(t *testing.T) {
	if Poll(3*Interval, func() bool { return false }) {
		t.Fatal("Poll reported a condition that never held")
	}
}

// fakeTB records Fatalf instead of stopping the test.
type fakeTB struct {
	testing.TB
	failed string
}

func (f *fakeTB) Helper()                           {}
func (f *fakeTB) Fatalf(format string, args ...any) { f.failed = format }

func TestWithinFailsNamingWhat(t *testing.T) {
	f := &fakeTB{TB: t}
	Within(f, 2*Interval, "the thing", func() bool { return false })
	if f.failed == "" {
		t.Fatal("Within did not fail on a condition that never held")
	}
	f = &fakeTB{TB: t}
	Within(f, time.Minute, "the thing", func() bool { return true })
	if f.failed != "" {
		t.Fatal("Within failed on a condition that held")
	}
}
