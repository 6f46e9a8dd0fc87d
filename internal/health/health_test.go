package health

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/cvat-sync/cvat-sync/internal/eventually"
	"github.com/cvat-sync/cvat-sync/internal/logbuf"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// switchable is a dependency a test turns off and on.
type switchable struct {
	down  atomic.Bool
	calls atomic.Int32
}

var errDown = errors.New("connection refused")

func (s *switchable) check(context.Context) error {
	s.calls.Add(1)
	if s.down.Load() {
		return errDown
	}
	return nil
}

func up(t *testing.T, reg *prometheus.Registry, dep string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "cvat_sync_dependency_up" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "dependency" && l.GetValue() == dep {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("no cvat_sync_dependency_up series for %q", dep)
	return 0
}

func TestProbesFollowTheDependency(t *testing.T) {
	gcs, cvat := &switchable{}, &switchable{}
	cvat.down.Store(true)
	reg := prometheus.NewRegistry()
	logs := logbuf.New()
	m, err := New(Config{Probes: []Probe{
		{Name: "gcs", Required: true, Check: gcs.check},
		{Name: "cvat", Check: cvat.check},
	}, Registerer: reg, Logger: logs.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	// Before the first probe: every series exists at 0, and a readiness
	// check answers "not checked", never ready.
	if got := testutil.CollectAndCount(reg, "cvat_sync_dependency_up"); got != 2 {
		t.Fatalf("%d series before the first probe, want 2", got)
	}
	if err := m.Check("gcs")(context.Background()); !errors.Is(err, ErrNotChecked) {
		t.Fatalf("gcs before a probe: %v, want ErrNotChecked", err)
	}

	m.ProbeAll(context.Background())
	if up(t, reg, "gcs") != 1 || up(t, reg, "cvat") != 0 {
		t.Fatalf("after a probe: gcs %v cvat %v, want 1 and 0", up(t, reg, "gcs"), up(t, reg, "cvat"))
	}
	if err := m.Check("gcs")(context.Background()); err != nil {
		t.Fatalf("gcs up: %v", err)
	}
	if st := m.Status("cvat"); !st.Checked || !errors.Is(st.Err, errDown) {
		t.Fatalf("cvat down: %+v", st)
	}

	// A probe that keeps failing logs once; its recovery is logged too.
	m.ProbeAll(context.Background())
	if n := len(logs.Find("dependency unavailable")); n != 1 {
		t.Fatalf("%d 'unavailable' lines for one outage, want 1:\n%s", n, logs)
	}
	cvat.down.Store(false)
	gcs.down.Store(true)
	m.ProbeAll(context.Background())
	if up(t, reg, "gcs") != 0 || up(t, reg, "cvat") != 1 {
		t.Fatalf("after the switch: gcs %v cvat %v, want 0 and 1", up(t, reg, "gcs"), up(t, reg, "cvat"))
	}
	if n := len(logs.Find("dependency available again")); n != 1 {
		t.Fatalf("%d 'available again' lines, want 1:\n%s", n, logs)
	}
	if err := m.Check("gcs")(context.Background()); !errors.Is(err, errDown) {
		t.Fatalf("gcs down: readiness answers %v", err)
	}
}

func TestRunProbesInTheBackgroundUntilCancelled(t *testing.T) {
	dep := &switchable{}
	m, err := New(Config{Probes: []Probe{{Name: "pubsub", Check: dep.check}},
		Interval: 5 * time.Millisecond, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	eventually.Within(t, 10*time.Second, "three background probes", func() bool { return dep.calls.Load() >= 3 })
	cancel()
	<-done
}

func TestProbeTimeout(t *testing.T) {
	hang := func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
	m, err := New(Config{Probes: []Probe{{Name: "cvat", Check: hang}},
		Timeout: 10 * time.Millisecond, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	m.ProbeAll(context.Background())
	if err := m.Status("cvat").Err; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a hanging probe: %v, want its timeout", err)
	}
}

func TestNewRejectsBadProbes(t *testing.T) {
	ok := func(context.Context) error { return nil }
	for name, probes := range map[string][]Probe{
		"no name":   {{Check: ok}},
		"no check":  {{Name: "gcs"}},
		"duplicate": {{Name: "gcs", Check: ok}, {Name: "gcs", Check: ok}},
	} {
		if _, err := New(Config{Probes: probes, Registerer: prometheus.NewRegistry()}); err == nil {
			t.Errorf("%s: New accepted %+v", name, probes)
		}
	}
}
