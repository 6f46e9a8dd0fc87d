package pipeline

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the pipeline's Prometheus metrics. Labels come from small fixed
// sets (format names are configuration, outcomes are constants).
type Metrics struct {
	exports      *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	bytes        *prometheus.CounterVec
	lastSuccess  prometheus.Gauge
	coalesced    prometheus.Counter
	items        *prometheus.CounterVec
	deadLettered *prometheus.CounterVec
	retries      prometheus.Counter
	reconciles   *prometheus.CounterVec
	enqueued     *prometheus.CounterVec
	latency      prometheus.Histogram
}

// NewMetrics registers the pipeline's metrics on reg. pending and oldest are
// read at scrape time: the number of tasks with pending work and the age in
// seconds of the oldest pending event.
func NewMetrics(reg prometheus.Registerer, pending func() float64, oldest func() float64) (*Metrics, error) {
	m := &Metrics{
		exports: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cvat_sync_exports_total",
			Help: "Exports of one task state in one format, by format and outcome (exported, announced, unchanged, gone, failed).",
		}, []string{"format", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cvat_sync_export_duration_seconds",
			Help:    "Duration of one format's export (CVAT preparing it, download, upload, notice), by format and outcome.",
			Buckets: prometheus.ExponentialBuckets(0.05, 2.5, 12),
		}, []string{"format", "outcome"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cvat_sync_export_bytes_total",
			Help: "Archive bytes streamed from CVAT to Cloud Storage, by format.",
		}, []string{"format"}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cvat_sync_last_export_success_timestamp_seconds",
			Help: "Unix time of the last export that ended with the state in the bucket and announced.",
		}),
		coalesced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cvat_sync_coalesced_events_total",
			Help: "Inbox events folded into an export of the same task (all but the first of a batch).",
		}),
		items: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cvat_sync_inbox_items_total",
			Help: "Inbox items received by the worker, by kind (task, project, delete, skipped, invalid).",
		}, []string{"kind"}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cvat_sync_dead_lettered_total",
			Help: "Work given up after the maximum attempts and sent to the dead-letter topic, by reason class.",
		}, []string{"reason"}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cvat_sync_export_retries_total",
			Help: "Failed export attempts that will be retried.",
		}),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cvat_sync_reconcile_runs_total",
			Help: "Reconciler passes by outcome.",
		}, []string{"outcome"}),
		enqueued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cvat_sync_reconcile_enqueued_total",
			Help: "Tasks the reconciler found not exported in their current state and enqueued, by source.",
		}, []string{"source"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "cvat_sync_event_to_export_seconds",
			Help:    "Time from the first event of a batch reaching cvat-sync to its export being announced.",
			Buckets: prometheus.ExponentialBuckets(0.1, 2, 14),
		}),
	}
	cs := []prometheus.Collector{m.exports, m.duration, m.bytes, m.lastSuccess, m.coalesced, m.items,
		m.deadLettered, m.retries, m.reconciles, m.enqueued, m.latency,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "cvat_sync_pending_tasks",
			Help: "Tasks with inbox events waiting for their export.",
		}, pending),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "cvat_sync_pending_oldest_age_seconds",
			Help: "Age of the oldest event still waiting for its export (0 when none).",
		}, oldest),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// NopMetrics returns metrics registered nowhere, for commands and tests that
// do not serve them.
func NopMetrics() *Metrics {
	m, _ := NewMetrics(prometheus.NewRegistry(), func() float64 { return 0 }, func() float64 { return 0 })
	return m
}

func (m *Metrics) observeExport(format string, r Result, d time.Duration) {
	m.exports.WithLabelValues(format, string(r.Outcome)).Inc()
	m.duration.WithLabelValues(format, string(r.Outcome)).Observe(d.Seconds())
	if r.Err == nil && r.Outcome != OutcomeGone {
		m.lastSuccess.SetToCurrentTime()
	}
}
