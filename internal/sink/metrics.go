package sink

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Outcome label values: small fixed sets, never ids or URLs.
const (
	outcomeCreated = "created"
	outcomeExists  = "exists"
	outcomeError   = "error"
	outcomeOK      = "ok"
)

type archiveMetrics struct {
	writes *prometheus.CounterVec
	bytes  prometheus.Counter
}

func newArchiveMetrics(reg prometheus.Registerer) *archiveMetrics {
	m := &archiveMetrics{
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cvat_sync_sink_writes_total",
			Help: "Archive writes to GCS by outcome: created (new object), exists (same state already stored), error.",
		}, []string{"outcome"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cvat_sync_sink_write_bytes_total",
			Help: "Archive bytes streamed to GCS, whatever the outcome of the write.",
		}),
	}
	m.writes = register(reg, m.writes)
	m.bytes = register(reg, m.bytes)
	for _, o := range []string{outcomeCreated, outcomeExists, outcomeError} {
		m.writes.WithLabelValues(o)
	}
	return m
}

type outboxMetrics struct {
	publishes *prometheus.CounterVec
}

func newOutboxMetrics(reg prometheus.Registerer) *outboxMetrics {
	m := &outboxMetrics{
		publishes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cvat_sync_outbox_publishes_total",
			Help: "Outbox notices published by kind (task.exported, task.deleted) and outcome (ok, error).",
		}, []string{"kind", "outcome"}),
	}
	m.publishes = register(reg, m.publishes)
	for _, k := range []Kind{KindExported, KindDeleted} {
		for _, o := range []string{outcomeOK, outcomeError} {
			m.publishes.WithLabelValues(string(k), o)
		}
	}
	return m
}

// register registers c on reg, or returns the collector already registered
// under the same description, so that several Archives or Outboxes can share
// one registry. A nil reg leaves c unregistered.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic(err) // a programming error: a clashing metric name
	}
	return c
}
