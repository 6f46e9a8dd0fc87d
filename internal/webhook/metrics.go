package webhook

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cvat-sync/cvat-sync/internal/event"
	"github.com/cvat-sync/cvat-sync/internal/metrics"
)

// metrics are the ingress's collectors with their children looked up ahead:
// WithLabelValues hashes the labels and takes a lock on every call.
type ingressMetrics struct {
	deliveries *prometheus.CounterVec
	sigFails   *prometheus.CounterVec
	duration   *prometheus.HistogramVec

	// Read-only once built.
	deliveryChildren map[deliveryKey]prometheus.Counter
	sigChildren      map[string]prometheus.Counter
	// durationKey -> prometheus.Observer, filled as routes are used.
	durations sync.Map
}

type deliveryKey struct{ event, outcome string }

type durationKey struct {
	route, method string
	code          int
}

func newMetrics(reg prometheus.Registerer) (*ingressMetrics, error) {
	m := &ingressMetrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cvat_sync_webhook_deliveries_total",
			Help: "Webhook deliveries by CVAT event (unverified ones as \"unverified\") and outcome.",
		}, []string{"event", "outcome"}),
		sigFails: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cvat_sync_webhook_signature_failures_total",
			Help: "Webhook deliveries refused for their signature, by reason (missing, malformed, mismatch).",
		}, []string{"reason"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cvat_sync_http_request_duration_seconds",
			Help:    "HTTP request duration by route, method and status code.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route", "method", "code"}),
	}
	r := &metrics.Registrar{Reg: reg}
	m.deliveries = metrics.Must(r, m.deliveries)
	m.sigFails = metrics.Must(r, m.sigFails)
	m.duration = metrics.Must(r, m.duration)
	if r.Err != nil {
		return nil, r.Err
	}
	m.sigChildren = map[string]prometheus.Counter{}
	for _, r := range []string{"missing", "malformed", "mismatch"} {
		m.sigChildren[r] = m.sigFails.WithLabelValues(r)
	}
	// Every delivery series the handler can produce starts at 0, so rates and
	// panels have data from the start.
	m.deliveryChildren = map[deliveryKey]prometheus.Counter{}
	add := func(ev string, outcomes ...string) {
		for _, o := range outcomes {
			m.deliveryChildren[deliveryKey{ev, o}] = m.deliveries.WithLabelValues(ev, o)
		}
	}
	add(labelUnverified, OutcomeUnauthorized, OutcomeTooLarge, OutcomeBadRequest)
	add(labelUnknown, OutcomeBadRequest, OutcomeIgnored)
	for _, name := range event.KnownEvents() {
		action, resource := event.Split(name)
		switch {
		case name == event.Ping:
			add(name, OutcomePing)
		case event.Envelope{Action: action, Resource: resource}.TaskRelevant():
			add(name, OutcomeStored, OutcomeBadRequest, OutcomeUnavailable)
		default:
			add(name, OutcomeIgnored)
		}
	}
	return m, nil
}

func (m *ingressMetrics) delivery(ev, outcome string) prometheus.Counter {
	if c, ok := m.deliveryChildren[deliveryKey{ev, outcome}]; ok {
		return c
	}
	return m.deliveries.WithLabelValues(ev, outcome)
}

func (m *ingressMetrics) sigFail(reason string) prometheus.Counter {
	if c, ok := m.sigChildren[reason]; ok {
		return c
	}
	return m.sigFails.WithLabelValues(reason)
}

func (m *ingressMetrics) observe(route, method string, code int, d time.Duration) {
	k := durationKey{route, methodLabel(method), code}
	o, ok := m.durations.Load(k)
	if !ok {
		o, _ = m.durations.LoadOrStore(k, m.duration.WithLabelValues(k.route, k.method, strconv.Itoa(code)))
	}
	o.(prometheus.Observer).Observe(d.Seconds())
}

// methodLabel keeps the method label to the standard methods: a client
// chooses it.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace:
		return m
	}
	return "other"
}
