package sink

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if root := os.Getenv(fakeGCSChildEnv); root != "" {
		// The benchmark runs the GCS fake in a child process (this binary),
		// so that the parent's heap is the client's alone.
		os.Exit(runFakeGCSChild(root))
	}
	goleak.VerifyTestMain(m,
		// Started by go.opencensus.io's init (imported by the Pub/Sub
		// client); it lives as long as the process.
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		// The Pub/Sub client's stream keep-alive checks for the end of a
		// Receive only between ticks of its ping timers, so it outlives
		// Receive (by up to a ping interval) in pubsub/v2 v2.8.1.
		goleak.IgnoreTopFunction("cloud.google.com/go/pubsub/v2.(*messageIterator).streamKeepAliveHandler"),
	)
}
