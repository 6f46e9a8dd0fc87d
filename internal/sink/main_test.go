package sink

import (
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/cvat-sync/cvat-sync/internal/cloud/cloudtest"
)

func TestMain(m *testing.M) {
	if root := os.Getenv(fakeGCSChildEnv); root != "" {
		// The benchmark runs the GCS fake in a child process (this binary),
		// so that the parent's heap is the client's alone.
		os.Exit(runFakeGCSChild(root))
	}
	goleak.VerifyTestMain(m, cloudtest.LeakOptions()...)
}
