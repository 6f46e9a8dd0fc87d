package pipeline

import (
	"math"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/cvat-sync/cvat-sync/internal/metrics"
)

// Metrics are the pipeline's Prometheus metrics. Labels come from small fixed
// sets (format names are configuration, outcomes and reasons are constants);
// every series with a known label set starts at 0, so panels and alerts see
// data from the start.
type Metrics struct {
	exports      *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	bytes        *prometheus.CounterVec
	lastSuccess  prometheus.Gauge
	syncs        *prometheus.CounterVec
	coalesced    prometheus.Counter
	items        *prometheus.CounterVec
	deadLettered *prometheus.CounterVec
	retries      prometheus.Counter
	postponed    *prometheus.CounterVec
	latency      prometheus.Histogram

	passes       *prometheus.CounterVec
	passSuccess  *prometheus.GaugeVec
	enqueued     *prometheus.CounterVec
	failing      prometheus.Gauge
	blocked      prometheus.Gauge
	recorded     prometheus.Gauge
	behindCount  atomic.Pointer[func() (int, float64)]
	pendingCount atomic.Pointer[func() (int, float64)]
}

// Label values.
const (
	reasonBehind  = "behind"
	reasonRetry   = "retry"
	reasonDeleted = "deleted"

	postponeBusy        = "busy"
	postponeUnavailable = "unavailable"
)

// NewMetrics registers the pipeline's metrics on reg (nil: nowhere).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{}
	r := &metrics.Registrar{Reg: reg}
	m.exports = metrics.Must(r, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cvat_sync_exports_total",
		Help: "Exports of one task state in one format, by format and outcome (exported, announced, unchanged, failed); format \"deleted\" counts deletion notices.",
	}, []string{"format", "outcome"}))
	m.duration = metrics.Must(r, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "cvat_sync_export_duration_seconds",
		Help:    "Duration of one format's export (CVAT preparing it, download, upload, notice), by format and outcome.",
		Buckets: prometheus.ExponentialBuckets(0.05, 2.5, 12),
	}, []string{"format", "outcome"}))
	m.bytes = metrics.Must(r, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cvat_sync_export_bytes_total",
		Help: "Archive bytes streamed from CVAT to Cloud Storage, by format.",
	}, []string{"format"}))
	m.lastSuccess = metrics.Must(r, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "cvat_sync_last_export_success_timestamp_seconds",
		Help: "Unix time of the newest announcement (export or deletion); read from the bucket's record at start, so it survives restarts.",
	}))
	m.syncs = metrics.Must(r, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cvat_sync_task_syncs_total",
		Help: "Task syncs (a task's export brought in line with CVAT) by outcome: exported, announced, unchanged, deleted, gone, hidden, skipped, failed.",
	}, []string{"outcome"}))
	m.coalesced = metrics.Must(r, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "cvat_sync_coalesced_events_total",
		Help: "Inbox events folded into another sync of the same task.",
	}))
	m.items = metrics.Must(r, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cvat_sync_inbox_items_total",
		Help: "Inbox items received by the worker, by kind (task, project, delete, invalid, other_version).",
	}, []string{"kind"}))
	m.deadLettered = metrics.Must(r, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cvat_sync_dead_lettered_total",
		Help: "Work the worker gave up on after its attempts, copied to the dead-letter topic for visibility (convergence retries it), by reason class.",
	}, []string{"reason"}))
	m.retries = metrics.Must(r, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "cvat_sync_export_retries_total",
		Help: "Failed sync attempts that the worker retries (attempts spent).",
	}))
	m.postponed = metrics.Must(r, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cvat_sync_work_postponed_total",
		Help: "Syncs put off without spending an attempt, by reason: busy (the task is still changing), unavailable (CVAT, GCS or Pub/Sub did not answer).",
	}, []string{"reason"}))
	m.latency = metrics.Must(r, prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "cvat_sync_event_to_export_seconds",
		Help:    "Time from the first event of a batch reaching cvat-sync to its task's state being announced.",
		Buckets: prometheus.ExponentialBuckets(0.1, 2, 14),
	}))
	m.passes = metrics.Must(r, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cvat_sync_reconcile_passes_total",
		Help: "Convergence passes by kind (full, incremental) and outcome (ok, partial: some task-list pages failed, failed).",
	}, []string{"kind", "outcome"}))
	m.passSuccess = metrics.Must(r, prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "cvat_sync_reconcile_last_success_timestamp_seconds",
		Help: "Unix time of the last convergence pass that completed, by kind.",
	}, []string{"kind"}))
	m.enqueued = metrics.Must(r, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cvat_sync_reconcile_enqueued_total",
		Help: "Tasks convergence enqueued, by reason: behind (CVAT's state not announced), retry (a failed state whose backoff ended), deleted (gone from CVAT's list).",
	}, []string{"reason"}))
	m.failing = metrics.Must(r, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "cvat_sync_tasks_failing",
		Help: "Tasks whose current state kept failing and waits for its retry backoff (at the last pass).",
	}))
	m.blocked = metrics.Must(r, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "cvat_sync_deletions_blocked",
		Help: "1 when the last full pass refused to announce deletions because more of the record looked deleted than CVAT_SYNC_MAX_DELETE_FRACTION allows.",
	}))
	m.recorded = metrics.Must(r, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "cvat_sync_recorded_tasks",
		Help: "Tasks in the bucket's record that are not deleted (at the last pass).",
	}))
	gauge := func(p *atomic.Pointer[func() (int, float64)], count bool) func() float64 {
		return func() float64 {
			f := p.Load()
			if f == nil {
				return 0
			}
			n, age := (*f)()
			if count {
				return float64(n)
			}
			return age
		}
	}
	metrics.Must(r, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "cvat_sync_tasks_behind",
		Help: "Tasks in scope whose current CVAT state is not yet exported and announced in every format.",
	}, gauge(&m.behindCount, true)))
	metrics.Must(r, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "cvat_sync_tasks_behind_oldest_age_seconds",
		Help: "Age of the oldest state behind (now minus its CVAT updated_date, on CVAT's clock); 0 when none.",
	}, gauge(&m.behindCount, false)))
	metrics.Must(r, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "cvat_sync_pending_tasks",
		Help: "Tasks with inbox events waiting for their sync in this replica.",
	}, gauge(&m.pendingCount, true)))
	metrics.Must(r, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "cvat_sync_pending_oldest_age_seconds",
		Help: "Age of the oldest event still waiting for its sync in this replica (0 when none).",
	}, gauge(&m.pendingCount, false)))
	if r.Err != nil {
		return nil, r.Err
	}
	for _, o := range []Outcome{OutcomeExported, OutcomeAnnounced, OutcomeUnchanged, OutcomeDeleted, OutcomeGone, OutcomeHidden, OutcomeSkipped, OutcomeFailed} {
		m.syncs.WithLabelValues(string(o))
	}
	for _, k := range []string{"task", "project", "delete", "invalid", "other_version"} {
		m.items.WithLabelValues(k)
	}
	for _, reason := range reasonClasses {
		m.deadLettered.WithLabelValues(reason)
	}
	for _, reason := range []string{postponeBusy, postponeUnavailable} {
		m.postponed.WithLabelValues(reason)
	}
	for _, k := range []string{passFull, passIncremental} {
		for _, o := range []string{"ok", "partial", "failed"} {
			m.passes.WithLabelValues(k, o)
		}
		// 0 until a pass succeeds in this process: alerts read it as "none
		// since the process started" (process_start_time_seconds).
		m.passSuccess.WithLabelValues(k)
	}
	for _, reason := range []string{reasonBehind, reasonRetry, reasonDeleted} {
		m.enqueued.WithLabelValues(reason)
	}
	for _, o := range []Outcome{OutcomeExported, OutcomeFailed} {
		m.exports.WithLabelValues("deleted", string(o))
	}
	return m, nil
}

// ObserveInbox counts an inbox message the receiver could not read, by kind
// (inbox.KindInvalid, inbox.KindOtherVersion): inbox.ReceiverConfig.Observe.
func (m *Metrics) ObserveInbox(kind string) { m.items.WithLabelValues(kind).Inc() }

// InitFormats starts the per-format series at 0.
func (m *Metrics) InitFormats(formats []string) {
	for _, f := range formats {
		m.bytes.WithLabelValues(f)
		for _, o := range []Outcome{OutcomeExported, OutcomeAnnounced, OutcomeUnchanged, OutcomeFailed} {
			m.exports.WithLabelValues(f, string(o))
		}
	}
}

func (m *Metrics) observeExport(format string, o Outcome, d time.Duration) {
	m.exports.WithLabelValues(format, string(o)).Inc()
	m.duration.WithLabelValues(format, string(o)).Observe(d.Seconds())
}

// seeLastSuccess raises the last-success gauge to t (never lowers it).
func (m *Metrics) seeLastSuccess(t time.Time) {
	if t.IsZero() {
		return
	}
	v := float64(t.UnixNano()) / 1e9
	// A gauge has no compare-and-set; the converger is its only writer at
	// start, and a concurrent SetToCurrentTime is newer anyway.
	if cur := readGauge(m.lastSuccess); cur < v {
		m.lastSuccess.Set(v)
	}
}

func readGauge(g prometheus.Gauge) float64 {
	var pb dto.Metric
	if err := g.Write(&pb); err != nil || pb.Gauge == nil {
		return math.Inf(-1)
	}
	return pb.Gauge.GetValue()
}
