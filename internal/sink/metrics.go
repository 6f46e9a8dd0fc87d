package sink

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cvat-sync/cvat-sync/internal/metrics"
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

func newArchiveMetrics(reg prometheus.Registerer) (*archiveMetrics, error) {
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
	r := &metrics.Registrar{Reg: reg}
	m.writes = metrics.Must(r, m.writes)
	m.bytes = metrics.Must(r, m.bytes)
	for _, o := range []string{outcomeCreated, outcomeExists, outcomeError} {
		m.writes.WithLabelValues(o)
	}
	return m, r.Err
}

type outboxMetrics struct {
	publishes *prometheus.CounterVec
}

func newOutboxMetrics(reg prometheus.Registerer) (*outboxMetrics, error) {
	m := &outboxMetrics{
		publishes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cvat_sync_outbox_publishes_total",
			Help: "Outbox notices published by kind (task.exported, task.deleted) and outcome (ok, error).",
		}, []string{"kind", "outcome"}),
	}
	var err error
	if m.publishes, err = metrics.Register(reg, m.publishes); err != nil {
		return nil, err
	}
	for _, k := range []Kind{KindExported, KindDeleted} {
		for _, o := range []string{outcomeOK, outcomeError} {
			m.publishes.WithLabelValues(string(k), o)
		}
	}
	return m, nil
}
