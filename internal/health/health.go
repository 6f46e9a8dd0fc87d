// Package health keeps the state of cvat-sync's dependencies (CVAT, Cloud
// Storage, Pub/Sub) up to date in the background, so readiness probes and
// metrics report it without waiting on a dependency: /readyz answers from
// the last probe, and cvat_sync_dependency_up follows every probe, not only
// the probes Kubernetes happens to make.
package health

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cvat-sync/cvat-sync/internal/metrics"
)

// Probe is one dependency's check.
type Probe struct {
	Name string
	// Required probes make the service not ready while they fail; the
	// others are only reported (CVAT: the service stores webhooks without
	// it).
	Required bool
	Check    func(ctx context.Context) error
}

// Config configures a Monitor.
type Config struct {
	Probes     []Probe
	Interval   time.Duration // between probes; default 15s
	Timeout    time.Duration // of one probe; default 5s
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Monitor probes the dependencies in the background.
type Monitor struct {
	cfg  Config
	up   *prometheus.GaugeVec
	mu   sync.Mutex
	last map[string]Result
}

// Result is a probe's latest outcome.
type Result struct {
	Checked bool // false until the first probe ended
	Err     error
	At      time.Time
}

// ErrNotChecked is a probe's state before its first check.
var ErrNotChecked = errors.New("not checked yet")

// New validates cfg and registers cvat_sync_dependency_up, one series per
// probe starting at 0.
func New(cfg Config) (*Monitor, error) {
	names := map[string]bool{}
	for _, p := range cfg.Probes {
		if p.Name == "" || p.Check == nil || names[p.Name] {
			return nil, errors.New("health: every probe needs a unique Name and a Check")
		}
		names[p.Name] = true
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 15 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	up, err := metrics.Register(cfg.Registerer, prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "cvat_sync_dependency_up",
		Help: "1 if the dependency answered its last background probe, else 0.",
	}, []string{"dependency"}))
	if err != nil {
		return nil, err
	}
	m := &Monitor{cfg: cfg, up: up, last: map[string]Result{}}
	for _, p := range cfg.Probes {
		up.WithLabelValues(p.Name)
	}
	return m, nil
}

// Run probes every Interval until ctx ends, all probes at once.
func (m *Monitor) Run(ctx context.Context) {
	t := time.NewTicker(m.cfg.Interval)
	defer t.Stop()
	for {
		m.ProbeAll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ProbeAll runs every probe once and waits for them.
func (m *Monitor) ProbeAll(ctx context.Context) {
	var wg sync.WaitGroup
	for _, p := range m.cfg.Probes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
			err := p.Check(pctx)
			cancel()
			if ctx.Err() != nil {
				return
			}
			m.set(p.Name, err)
		}()
	}
	wg.Wait()
}

func (m *Monitor) set(name string, err error) {
	m.mu.Lock()
	prev, had := m.last[name]
	m.last[name] = Result{Checked: true, Err: err, At: time.Now()}
	m.mu.Unlock()
	if err != nil {
		m.up.WithLabelValues(name).Set(0)
		if !had || prev.Err == nil {
			m.cfg.Logger.Warn("dependency unavailable", "dependency", name, "error", err.Error())
		}
		return
	}
	m.up.WithLabelValues(name).Set(1)
	if had && prev.Err != nil {
		m.cfg.Logger.Info("dependency available again", "dependency", name)
	}
}

// Status is probe name's latest result.
func (m *Monitor) Status(name string) Result {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.last[name]
	if !ok {
		return Result{Err: ErrNotChecked}
	}
	return r
}

// Check returns a check for readiness that answers from probe name's latest
// result, without probing.
func (m *Monitor) Check(name string) func(context.Context) error {
	return func(context.Context) error { return m.Status(name).Err }
}
