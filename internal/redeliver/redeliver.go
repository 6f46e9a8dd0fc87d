// Package redeliver reads CVAT's delivery log of the webhook cvat-sync
// registered, reports the deliveries CVAT could not make (a metric), and
// asks CVAT to redeliver those CVAT will not retry by itself: what failed
// while the service was down, or unreachable through CVAT's egress proxy,
// comes back without waiting for the reconciler.
//
// Every CVAT release with webhooks (2.3.0 and later) has the delivery log
// and the redelivery API; what counts as "failed for good" differs
// (cvatapi.DeliveryRegime):
//   - 2.3–2.4.1: a row exists from the moment CVAT queued the event; one
//     still without a status after QueuedGrace was never sent, and one with
//     a status other than 2xx failed. Neither is retried.
//   - 2.4.2–2.64: one row per attempt, one attempt: a non-2xx row failed for
//     good.
//   - 2.65+: CVAT retries a status >= 500, 408 or 429 for about four days;
//     only a payload whose latest attempt is final (another 4xx, or the
//     retries exhausted) is redelivered, else the redelivery would duplicate
//     CVAT's own retry.
//
// Rows are grouped by payload (event, resource id, updated_date:
// cvatapi.Delivery.PayloadKey), since CVAT's requests carry no delivery id
// and a redelivered body has its keys in another order. Each payload is
// redelivered at most once: not again by this process, and not at all when
// the log already holds a redelivery of it (by anyone). The log is read
// newest first and no further back than LookBack (or MaxDeliveries rows).
package redeliver

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
	"github.com/cvat-sync/cvat-sync/internal/metrics"
)

// CVAT is what the redeliverer needs of CVAT; *cvatapi.Client has it. The
// client must be configured with the webhook's organization context (CVAT
// only shows an organization's webhooks and their deliveries inside it).
type CVAT interface {
	DeliveryRegime(ctx context.Context) (cvatapi.DeliveryRegime, error)
	FindWebhook(ctx context.Context, spec cvatapi.WebhookSpec) (cvatapi.Webhook, bool, error)
	ListDeliveries(ctx context.Context, webhookID int64, fn func(cvatapi.Delivery) error) error
	Redeliver(ctx context.Context, webhookID, deliveryID int64) error
}

// Defaults for Config.
const (
	DefaultInterval      = time.Minute
	DefaultLookBack      = 24 * time.Hour
	DefaultMaxDeliveries = 5000
	DefaultQueuedGrace   = 5 * time.Minute
)

// staleRetry: a retryable failure whose latest attempt is older than this
// will not be retried by CVAT any more (its longest delay is a day; failed
// RQ jobs are dropped after a week), whatever its attempt count says.
const staleRetry = 25 * time.Hour

// Config configures a Redeliverer. Zero durations take the defaults.
type Config struct {
	CVAT CVAT // required
	// Webhook identifies the webhook `webhook register` manages: TargetURL
	// and Secret (found by the secret's fingerprint), and its scope
	// (ProjectID, or Org). Required: TargetURL, Secret.
	Webhook       cvatapi.WebhookSpec
	Interval      time.Duration // between scans; default DefaultInterval
	LookBack      time.Duration // how far back (by updated_date) a scan reads; default DefaultLookBack; must exceed QueuedGrace
	MaxDeliveries int           // most rows a scan reads; default DefaultMaxDeliveries
	QueuedGrace   time.Duration // 2.3–2.4.1: a delivery not sent after this long failed; default DefaultQueuedGrace

	Registerer prometheus.Registerer // cvat_sync_cvat_failed_deliveries, cvat_sync_cvat_redeliveries_total; nil registers nowhere
	Logger     *slog.Logger          // nil discards
	Now        func() time.Time      // clock of the look-back and the grace; default time.Now
}

// Status classes of cvat_sync_cvat_failed_deliveries.
const (
	Class4xx     = "4xx"     // the receiver refused it (other statuses outside 2xx count here too)
	Class5xx     = "5xx"     // the receiver failed (503: it could not store the event)
	ClassProxy   = "proxy"   // 407, 502: CVAT's Smokescreen proxy refused the address, or no connection (CVAT records a connection error as 502)
	ClassTimeout = "timeout" // 504: no answer in time; also a 2.3–2.4.1 delivery never sent
)

var classes = []string{Class4xx, Class5xx, ClassProxy, ClassTimeout}

// Redeliverer scans CVAT's delivery log periodically. Run owns its loop.
type Redeliverer struct {
	cfg         Config
	log         *slog.Logger
	failed      *prometheus.GaugeVec
	redelivered *prometheus.CounterVec

	mu   sync.Mutex           // one scan at a time; guards done
	done map[string]time.Time // payload keys redelivered by this process, by when
}

// New validates cfg and builds a Redeliverer. It makes no request.
func New(cfg Config) (*Redeliverer, error) {
	var missing []string
	if cfg.CVAT == nil {
		missing = append(missing, "CVAT")
	}
	if cfg.Webhook.TargetURL == "" {
		missing = append(missing, "Webhook.TargetURL")
	}
	if cfg.Webhook.Secret == "" {
		missing = append(missing, "Webhook.Secret")
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("redeliver: missing %v", missing)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.Interval, DefaultInterval)
	def(&cfg.LookBack, DefaultLookBack)
	def(&cfg.QueuedGrace, DefaultQueuedGrace)
	if cfg.MaxDeliveries <= 0 {
		cfg.MaxDeliveries = DefaultMaxDeliveries
	}
	if cfg.LookBack <= cfg.QueuedGrace {
		return nil, fmt.Errorf("redeliver: LookBack %s must exceed QueuedGrace %s, or unsent deliveries are never seen as failed", cfg.LookBack, cfg.QueuedGrace)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := RegisterMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Redeliverer{cfg: cfg, log: log, failed: m.failed, redelivered: m.redelivered, done: map[string]time.Time{}}, nil
}

// Metrics are the redeliverer's metrics.
type Metrics struct {
	failed      *prometheus.GaugeVec
	redelivered *prometheus.CounterVec
}

// RegisterMetrics registers the redeliverer's metrics on reg (nil:
// nowhere), every series at 0. New calls it; a service that runs no
// redeliverer (no webhook to read) calls it too, so the series exist
// whatever the configuration and dashboards show 0, not "No data".
func RegisterMetrics(reg prometheus.Registerer) (*Metrics, error) {
	r := &metrics.Registrar{Reg: reg}
	m := &Metrics{
		failed: metrics.Must(r, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cvat_sync_cvat_failed_deliveries",
			Help: "Payloads whose latest delivery to our webhook CVAT's log shows as failed (and not yet recovered), by status class.",
		}, []string{"status"})),
		redelivered: metrics.Must(r, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cvat_sync_cvat_redeliveries_total",
			Help: "Redeliveries asked of CVAT, by outcome of the request (requested, failed).",
		}, []string{"outcome"})),
	}
	if r.Err != nil {
		return nil, fmt.Errorf("redeliver: %w", r.Err)
	}
	for _, c := range classes {
		m.failed.WithLabelValues(c)
	}
	m.redelivered.WithLabelValues("requested")
	m.redelivered.WithLabelValues("failed")
	return m, nil
}

// Run scans at once and then every Interval until ctx ends; a failed scan is
// logged and the next one tried. It returns nil when ctx ends.
func (r *Redeliverer) Run(ctx context.Context) error {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if _, err := r.Scan(ctx); err != nil && ctx.Err() == nil {
			r.log.LogAttrs(ctx, slog.LevelWarn, "reading CVAT's webhook delivery log failed", slog.String("error", err.Error()))
		}
		t.Reset(r.cfg.Interval)
	}
}

// Report is what one scan found and did.
type Report struct {
	WebhookID   int64          // 0: no such webhook in CVAT
	Read        int            // rows read
	Failed      map[string]int // payloads whose latest delivery failed, by status class
	Waiting     int            // of those, payloads CVAT will retry by itself (2.65+)
	Redelivered int            // redeliveries requested
}

// group is every row of one payload seen in a scan.
type group struct {
	key         string
	latest      cvatapi.Delivery
	rows        int  // non-redelivery rows: attempts (2.65–2.67 show no attempt number)
	redelivered bool // a redelivery of it is in the log
}

// Scan reads the log once, updates the metrics and asks for the
// redeliveries due.
func (r *Redeliverer) Scan(ctx context.Context) (Report, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rep := Report{Failed: map[string]int{}}
	regime, err := r.cfg.CVAT.DeliveryRegime(ctx)
	if err != nil {
		return rep, err
	}
	w, found, err := r.cfg.CVAT.FindWebhook(ctx, r.cfg.Webhook)
	if err != nil {
		return rep, err
	}
	if !found {
		r.log.LogAttrs(ctx, slog.LevelWarn, "no CVAT webhook with this target URL and secret: nothing to redeliver (run `receiver webhook register`)",
			slog.String("target_url", r.cfg.Webhook.TargetURL))
		r.publish(rep)
		return rep, nil
	}
	rep.WebhookID = w.ID
	now := r.cfg.Now()
	horizon := now.Add(-r.cfg.LookBack)
	for k, at := range r.done {
		if at.Before(horizon) {
			delete(r.done, k)
		}
	}

	var groups []*group
	byKey := map[string]*group{}
	err = r.cfg.CVAT.ListDeliveries(ctx, w.ID, func(d cvatapi.Delivery) error {
		if d.UpdatedDate.Before(horizon) || rep.Read >= r.cfg.MaxDeliveries {
			return cvatapi.ErrStop
		}
		rep.Read++
		if d.Event == "ping" {
			return nil // a ping carries no change
		}
		k := d.PayloadKey()
		g := byKey[k]
		if g == nil {
			g = &group{key: k, latest: d} // newest first: the first row seen is the latest
			byKey[k] = g
			groups = append(groups, g)
		}
		if d.Redelivery {
			g.redelivered = true
		} else {
			g.rows++
		}
		return nil
	})
	if err != nil {
		return rep, err
	}

	for _, g := range groups {
		class, failed := r.classify(regime, g.latest, now)
		if !failed {
			continue
		}
		rep.Failed[class]++
		if !final(regime, g, now) {
			rep.Waiting++
			continue
		}
		if _, ok := r.done[g.key]; ok || g.redelivered {
			continue
		}
		r.done[g.key] = now
		attrs := []slog.Attr{slog.Int64("webhook_id", w.ID), slog.Int64("delivery_id", g.latest.ID),
			slog.String("event", g.latest.Event), slog.Int("status_code", g.latest.StatusCode)}
		if err := r.cfg.CVAT.Redeliver(ctx, w.ID, g.latest.ID); err != nil {
			r.redelivered.WithLabelValues("failed").Inc()
			r.log.LogAttrs(ctx, slog.LevelWarn, "asking CVAT to redeliver failed", append(attrs, slog.String("error", err.Error()))...)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		rep.Redelivered++
		r.redelivered.WithLabelValues("requested").Inc()
		r.log.LogAttrs(ctx, slog.LevelInfo, "asked CVAT to redeliver a failed webhook delivery", attrs...)
	}
	r.publish(rep)
	return rep, ctx.Err()
}

func (r *Redeliverer) publish(rep Report) {
	for _, c := range classes {
		r.failed.WithLabelValues(c).Set(float64(rep.Failed[c]))
	}
}

// classify reports whether d failed and its status class.
func (r *Redeliverer) classify(regime cvatapi.DeliveryRegime, d cvatapi.Delivery, now time.Time) (string, bool) {
	switch code := d.StatusCode; {
	case code == 0:
		// Queued, not sent (2.3–2.4.1): failed once it is clearly
		// not just waiting for the worker.
		return ClassTimeout, regime == cvatapi.DeliveryQueued && now.Sub(d.CreatedDate) > r.cfg.QueuedGrace
	case d.OK():
		return "", false
	case code == http.StatusProxyAuthRequired || code == http.StatusBadGateway:
		return ClassProxy, true
	case code == http.StatusGatewayTimeout:
		return ClassTimeout, true
	case code >= 500:
		return Class5xx, true
	}
	return Class4xx, true
}

// final reports whether CVAT is done with g's payload: redelivering it then
// duplicates nothing.
func final(regime cvatapi.DeliveryRegime, g *group, now time.Time) bool {
	if regime != cvatapi.DeliveryRetried || !cvatapi.RetriedStatus(g.latest.StatusCode) {
		return true
	}
	attempts := g.latest.Attempt // 2.68+
	if attempts == 0 {
		attempts = g.rows
	}
	return attempts >= cvatapi.MaxDeliveryAttempts || now.Sub(g.latest.UpdatedDate) > staleRetry
}
