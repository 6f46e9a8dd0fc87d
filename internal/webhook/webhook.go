// Package webhook is cvat-sync's HTTP ingress: the signed webhook endpoint
// CVAT delivers to, the health and readiness probes and the metrics endpoint.
// It is the only package that imports echo.
//
// The webhook handler does no export work. It reads the body (size-limited),
// verifies the signature on the raw bytes, parses the envelope, enqueues a
// work item and answers 2xx only once the item is stored. Statuses: 401 bad
// or missing signature, 413 body too large, 400 not a JSON object with an
// "event", 503 the item could not be stored (a CVAT newer than 2.64 retries).
package webhook

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cvat-sync/cvat-sync/internal/event"
	"github.com/cvat-sync/cvat-sync/internal/inbox"
	"github.com/cvat-sync/cvat-sync/internal/signature"
)

// Path is the URL path CVAT's webhook points at.
const Path = "/webhooks/cvat"

// Enqueuer stores a work item durably; it returns only once it is stored.
type Enqueuer interface {
	Enqueue(ctx context.Context, it inbox.Item) error
}

// Check is one readiness check. Required checks fail /readyz; the others are
// only reported.
type Check struct {
	Name     string
	Required bool
	Run      func(ctx context.Context) error
}

// Config holds the server's dependencies.
type Config struct {
	Verifier     *signature.Verifier
	MaxBodyBytes int64
	Queue        Enqueuer
	Checks       []Check
	Logger       *slog.Logger
	Registerer   prometheus.Registerer
	Gatherer     prometheus.Gatherer
	Now          func() time.Time
	// EnqueueTimeout bounds how long a delivery waits for the inbox; CVAT
	// gives up after 10 s.
	EnqueueTimeout time.Duration
}

// Server is the HTTP ingress.
type Server struct {
	cfg      Config
	e        *echo.Echo
	draining atomic.Bool
	m        metrics
}

type metrics struct {
	deliveries *prometheus.CounterVec
	sigFails   *prometheus.CounterVec
	duration   *prometheus.HistogramVec
}

// Outcomes of a delivery, the values of the "outcome" label.
const (
	OutcomeStored       = "stored"
	OutcomeIgnored      = "ignored"
	OutcomePing         = "ping"
	OutcomeUnauthorized = "unauthorized"
	OutcomeTooLarge     = "too_large"
	OutcomeBadRequest   = "bad_request"
	OutcomeUnavailable  = "unavailable"
)

// New builds the server and registers its metrics.
func New(cfg Config) (*Server, error) {
	if cfg.Verifier == nil || cfg.Queue == nil || cfg.Logger == nil || cfg.Registerer == nil || cfg.Gatherer == nil {
		return nil, errors.New("webhook: Verifier, Queue, Logger, Registerer and Gatherer are required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.EnqueueTimeout == 0 {
		cfg.EnqueueTimeout = 8 * time.Second
	}
	s := &Server{cfg: cfg}
	s.m = metrics{
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
	for _, c := range []prometheus.Collector{s.m.deliveries, s.m.sigFails, s.m.duration} {
		if err := cfg.Registerer.Register(c); err != nil {
			return nil, err
		}
	}
	for _, r := range []string{"missing", "malformed", "mismatch"} {
		s.m.sigFails.WithLabelValues(r)
	}

	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = s.errorHandler
	e.Use(s.observe)
	// Both spellings are routes of their own: a redirect would turn CVAT's
	// POST into a bodiless GET.
	e.POST(Path, s.webhook)
	e.POST(Path+"/", s.webhook)
	e.GET("/healthz", s.healthz)
	e.GET("/readyz", s.readyz)
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{})))
	s.e = e
	return s, nil
}

// Handler returns the HTTP handler.
func (s *Server) Handler() http.Handler { return s.e }

// HTTPServer returns an http.Server with timeouts that keep slow clients
// from pinning connections.
func (s *Server) HTTPServer() *http.Server {
	return &http.Server{
		Handler:           s.e,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      20 * time.Second,
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.cfg.Logger.Handler(), slog.LevelWarn),
	}
}

// Drain makes /readyz fail so load balancers stop sending; in-flight and new
// requests are still served until the HTTP server shuts down.
func (s *Server) Drain() { s.draining.Store(true) }

// logger returns the request's logger (with its request id).
func logger(c echo.Context) *slog.Logger {
	if l, ok := c.Get("logger").(*slog.Logger); ok {
		return l
	}
	return slog.Default()
}

// observe gives every request an id and a logger carrying it, and records
// its duration.
func (s *Server) observe(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := s.cfg.Now()
		rid := requestID(c.Request().Header.Get(echo.HeaderXRequestID))
		c.Response().Header().Set(echo.HeaderXRequestID, rid)
		c.Set("request_id", rid)
		c.Set("logger", s.cfg.Logger.With("request_id", rid))
		err := next(c)
		if err != nil {
			c.Error(err)
		}
		route := c.Path()
		if route == "" {
			route = "unmatched"
		}
		s.m.duration.WithLabelValues(route, c.Request().Method, strconv.Itoa(c.Response().Status)).
			Observe(s.cfg.Now().Sub(start).Seconds())
		return nil
	}
}

// requestID keeps a caller's id if it is short and plain, else makes one.
func requestID(in string) string {
	if n := len(in); n > 0 && n <= 64 {
		ok := true
		for _, r := range in {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
				ok = false
				break
			}
		}
		if ok {
			return in
		}
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

type answer struct {
	Status    string `json:"status,omitempty"`
	Event     string `json:"event,omitempty"`
	TaskID    int64  `json:"task_id,omitempty"`
	RequestID string `json:"request_id,omitempty"`
	Error     string `json:"error,omitempty"`
}

func (s *Server) fail(c echo.Context, code int, eventLabel, outcome, msg string, attrs ...any) error {
	s.m.deliveries.WithLabelValues(eventLabel, outcome).Inc()
	level := slog.LevelWarn
	if code >= 500 {
		level = slog.LevelError
	}
	logger(c).Log(c.Request().Context(), level, "webhook refused",
		append([]any{"status", code, "outcome", outcome, "reason", msg}, attrs...)...)
	return c.JSON(code, answer{Error: msg, RequestID: c.Get("request_id").(string)})
}

func (s *Server) webhook(c echo.Context) error {
	req := c.Request()
	limit := s.cfg.MaxBodyBytes
	if req.ContentLength > limit {
		return s.fail(c, http.StatusRequestEntityTooLarge, "unverified", OutcomeTooLarge,
			"body of "+strconv.FormatInt(req.ContentLength, 10)+" bytes is over the limit of "+strconv.FormatInt(limit, 10))
	}
	body, err := io.ReadAll(http.MaxBytesReader(c.Response(), req.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return s.fail(c, http.StatusRequestEntityTooLarge, "unverified", OutcomeTooLarge,
				"body is over the limit of "+strconv.FormatInt(limit, 10)+" bytes")
		}
		return s.fail(c, http.StatusBadRequest, "unverified", OutcomeBadRequest, "could not read the body")
	}

	if err := s.cfg.Verifier.Verify(req.Header.Get(signature.Header), body); err != nil {
		reason := "mismatch"
		switch {
		case errors.Is(err, signature.ErrMissing):
			reason = "missing"
		case errors.Is(err, signature.ErrMalformed):
			reason = "malformed"
		}
		s.m.sigFails.WithLabelValues(reason).Inc()
		return s.fail(c, http.StatusUnauthorized, "unverified", OutcomeUnauthorized, err.Error(), "signature", reason)
	}

	env, err := event.Parse(body)
	if err != nil {
		return s.fail(c, http.StatusBadRequest, "unknown", OutcomeBadRequest, err.Error())
	}
	label := event.MetricLabel(env.Event)
	log := logger(c).With("event", label, "webhook_id", env.WebhookID)
	rid := c.Get("request_id").(string)

	switch {
	case env.Event == event.Ping:
		s.m.deliveries.WithLabelValues(label, OutcomePing).Inc()
		log.Info("webhook ping")
		return c.JSON(http.StatusOK, answer{Status: "pong", Event: env.Event, RequestID: rid})
	case !env.TaskRelevant():
		s.m.deliveries.WithLabelValues(label, OutcomeIgnored).Inc()
		log.Info("webhook ignored", "known", env.Known)
		return c.JSON(http.StatusOK, answer{Status: "ignored", Event: env.Event, RequestID: rid})
	}

	it := inbox.FromEnvelope(env, s.cfg.Now(), rid)
	ctx, cancel := context.WithTimeout(req.Context(), s.cfg.EnqueueTimeout)
	defer cancel()
	if err := s.cfg.Queue.Enqueue(ctx, it); err != nil {
		return s.fail(c, http.StatusServiceUnavailable, label, OutcomeUnavailable,
			"the event could not be stored; retry later", "task_id", it.TaskID, "error", err.Error())
	}
	s.m.deliveries.WithLabelValues(label, OutcomeStored).Inc()
	log.Info("webhook stored", "task_id", it.TaskID, "job_id", it.JobID, "project_id", it.ProjectID)
	return c.JSON(http.StatusAccepted, answer{Status: "stored", Event: env.Event, TaskID: it.TaskID, RequestID: rid})
}

func (s *Server) healthz(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) readyz(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), 3*time.Second)
	defer cancel()
	checks := map[string]string{}
	ready := !s.draining.Load()
	type result struct {
		i   int
		err error
	}
	results := make(chan result, len(s.cfg.Checks))
	for i, ch := range s.cfg.Checks {
		go func() { results <- result{i, ch.Run(ctx)} }()
	}
	for range s.cfg.Checks {
		r := <-results
		ch := s.cfg.Checks[r.i]
		if r.err != nil {
			checks[ch.Name] = "unavailable: " + r.err.Error()
			if ch.Required {
				ready = false
			}
			continue
		}
		checks[ch.Name] = "ok"
	}
	status, code := "ready", http.StatusOK
	if s.draining.Load() {
		status, code = "draining", http.StatusServiceUnavailable
	} else if !ready {
		status, code = "not ready", http.StatusServiceUnavailable
	}
	return c.JSON(code, map[string]any{"status": status, "checks": checks})
}

// errorHandler answers echo's own errors (404, 405, ...) as {"error": "..."}.
func (s *Server) errorHandler(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	code, msg := http.StatusInternalServerError, "internal error"
	var he *echo.HTTPError
	if errors.As(err, &he) {
		code = he.Code
		msg = http.StatusText(code)
		if m, ok := he.Message.(string); ok {
			msg = m
		}
	}
	if code == http.StatusMethodNotAllowed && (c.Request().URL.Path == Path || c.Request().URL.Path == Path+"/") {
		msg = "webhooks are delivered with POST"
	}
	if code >= 500 {
		logger(c).Error("request failed", "error", err.Error())
	}
	if c.Request().Method == http.MethodHead {
		_ = c.NoContent(code)
		return
	}
	_ = c.JSON(code, answer{Error: msg})
}
