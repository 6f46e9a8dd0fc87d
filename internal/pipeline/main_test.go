package pipeline

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/cvat-sync/cvat-sync/internal/cloud/cloudtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, cloudtest.LeakOptions()...) }
