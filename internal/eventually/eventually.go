// Package eventually waits in tests for a condition that other goroutines or
// processes make true: the one poll-until helper of cvat-sync's tests.
package eventually

import (
	"testing"
	"time"
)

// Interval is how often a condition is checked.
const Interval = 10 * time.Millisecond

// Within checks cond every Interval until it holds, and fails t (naming
// what) when it still does not hold after d. It returns as soon as cond
// holds, so d is a bound, never a sleep.
func Within(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	WithinEvery(t, d, Interval, what, cond)
}

// WithinEvery is Within checking every every instead of Interval, for a
// condition that is costly to check.
func WithinEvery(t testing.TB, d, every time.Duration, what string, cond func() bool) {
	t.Helper()
	if !PollEvery(d, every, cond) {
		t.Fatalf("not within %v: %s", d, what)
	}
}

// Poll checks cond every Interval until it holds (true) or d passed (false).
func Poll(d time.Duration, cond func() bool) bool { return PollEvery(d, Interval, cond) }

// PollEvery is Poll checking every every.
func PollEvery(d, every time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(every) // polling with a deadline
	}
	return true
}
