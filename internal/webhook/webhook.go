// Package webhook is cvat-sync's HTTP ingress: the signed webhook endpoint
// CVAT delivers to, the health and readiness probes and the metrics endpoint.
// It is the only package that imports echo.
//
// The webhook handler does no export work. It reads the body (size-limited),
// verifies the signature on the raw bytes, parses the envelope, enqueues a
// work item and answers 2xx only once the item is stored. Statuses: 401 bad
// or missing signature, 413 body too large, 400 not a JSON object with an
// "event" or a task-relevant event whose ids cannot be read, 503 the item
// could not be stored (a CVAT newer than 2.64 retries).
//
// Every delivery costs little beyond reading and hashing the body: no
// per-request logger, no log line for deliveries that succeed (they are at
// debug level; the metrics count them), metric children looked up once,
// pooled buffers and answers written without reflection. bench/ holds the
// figures.
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
	"sync"
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

// DefaultMaxBodyBytes is the body limit when Config.MaxBodyBytes is 0.
const DefaultMaxBodyBytes = 1 << 20

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
	Verifier *signature.Verifier
	// MaxBodyBytes is the largest body accepted; 0 means DefaultMaxBodyBytes.
	MaxBodyBytes int64
	Queue        Enqueuer
	Checks       []Check
	// Logger receives refusals (warn), failures to store (error) and, at
	// debug level, every accepted delivery; nil discards.
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	Now        func() time.Time
	// EnqueueTimeout bounds how long a delivery waits for the inbox; CVAT
	// gives up after 10 s.
	EnqueueTimeout time.Duration
}

// Server is the HTTP ingress.
type Server struct {
	cfg      Config
	log      *slog.Logger
	e        *echo.Echo
	draining atomic.Bool
	m        *ingressMetrics

	// Request ids: a random prefix per process and a counter, unique enough
	// to tie log lines and an inbox item to one delivery.
	ridPrefix string
	ridSeq    atomic.Uint64

	bufs sync.Pool // *buffers
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

// Event labels of deliveries whose event is not known: before the signature
// is checked, and when the body has no readable event.
const (
	labelUnverified = "unverified"
	labelUnknown    = "unknown"
)

// New builds the server and registers its metrics.
func New(cfg Config) (*Server, error) {
	var missing []string
	for _, f := range []struct {
		name string
		nil  bool
	}{
		{"Verifier", cfg.Verifier == nil}, {"Queue", cfg.Queue == nil},
		{"Registerer", cfg.Registerer == nil}, {"Gatherer", cfg.Gatherer == nil},
	} {
		if f.nil {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		return nil, errors.New("webhook: Config lacks " + joinNames(missing))
	}
	if cfg.MaxBodyBytes < 0 {
		return nil, errors.New("webhook: MaxBodyBytes must not be negative")
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.EnqueueTimeout == 0 {
		cfg.EnqueueTimeout = 8 * time.Second
	}
	s := &Server{cfg: cfg, log: cfg.Logger}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	var p [4]byte
	_, _ = rand.Read(p[:])
	s.ridPrefix = hex.EncodeToString(p[:]) + "-"
	s.bufs.New = func() any { return &buffers{body: make([]byte, 0, 4096), out: make([]byte, 0, 256)} }

	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	s.m = m

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

func joinNames(names []string) string {
	out := ""
	for i, n := range names {
		switch {
		case i == 0:
		case i == len(names)-1:
			out += " and "
		default:
			out += ", "
		}
		out += n
	}
	return out
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
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
}

// Drain makes /readyz fail so load balancers stop sending; in-flight and new
// requests are still served until the HTTP server shuts down.
func (s *Server) Drain() { s.draining.Store(true) }

// observe gives every request an id (X-Request-Id, kept from the caller when
// it is short and plain) and records its duration.
func (s *Server) observe(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := s.cfg.Now()
		rid := c.Request().Header.Get(echo.HeaderXRequestID)
		if !safeRequestID(rid) {
			rid = s.newRequestID()
		}
		// Direct assignment: the key is already canonical.
		c.Response().Header()[echo.HeaderXRequestID] = []string{rid}
		if err := next(c); err != nil {
			c.Error(err)
		}
		s.m.observe(routeLabel(c.Path()), c.Request().Method, c.Response().Status, s.cfg.Now().Sub(start))
		return nil
	}
}

// routeLabel is the route of the duration metric; both spellings of the
// webhook path count as one.
func routeLabel(path string) string {
	switch path {
	case "":
		return "unmatched"
	case Path + "/":
		return Path
	}
	return path
}

// requestID is the id observe gave the request.
func requestID(c echo.Context) string {
	if v := c.Response().Header()[echo.HeaderXRequestID]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func safeRequestID(in string) bool {
	if len(in) == 0 || len(in) > 64 {
		return false
	}
	for i := 0; i < len(in); i++ {
		r := in[i]
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

func (s *Server) newRequestID() string {
	var b [32]byte
	out := append(b[:0], s.ridPrefix...)
	return string(strconv.AppendUint(out, s.ridSeq.Add(1), 16))
}

// buffers are a delivery's body and answer, pooled: a delivery allocates
// neither. Nothing may keep the body (event.Envelope.Raw) past the handler.
type buffers struct {
	body, out []byte
}

// maxPooled keeps an occasional large body from pinning memory in the pool.
const maxPooled = 64 << 10

func (s *Server) getBuffers() *buffers { return s.bufs.Get().(*buffers) }

func (s *Server) putBuffers(b *buffers) {
	if cap(b.body) > maxPooled {
		return
	}
	b.body, b.out = b.body[:0], b.out[:0]
	s.bufs.Put(b)
}

// errTooLarge means the body went past the limit while it was read.
var errTooLarge = errors.New("body over the limit")

// readBody reads all of r into buf, failing with errTooLarge past limit bytes.
func readBody(r io.Reader, buf []byte, limit int64) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > limit {
			return buf, errTooLarge
		}
		switch {
		case err == io.EOF:
			return buf, nil
		case err != nil:
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return buf, errTooLarge
			}
			return buf, err
		}
	}
}

// refusal is a delivery answered with an error status.
type refusal struct {
	code           int
	event, outcome string
	msg            string
	attrs          []slog.Attr
}

func (s *Server) refuse(c echo.Context, b *buffers, r refusal) error {
	s.m.delivery(r.event, r.outcome).Inc()
	level := slog.LevelWarn
	if r.code >= 500 {
		level = slog.LevelError
	}
	req := c.Request()
	if s.log.Enabled(req.Context(), level) {
		attrs := append([]slog.Attr{
			slog.String("request_id", requestID(c)),
			slog.Int("status", r.code),
			slog.String("outcome", r.outcome),
			slog.String("event", r.event),
			slog.String("reason", r.msg),
			// Who sent it: CVAT (User-Agent "CVAT/<version> python-requests/...",
			// since 2.4.0) or something else. remote_addr is the peer, a
			// proxy's address behind an ingress; forwarded_for is what the
			// proxy says, unverified.
			slog.String("remote_addr", req.RemoteAddr),
			slog.String("user_agent", clip(req.UserAgent())),
		}, r.attrs...)
		if f := req.Header.Get(echo.HeaderXForwardedFor); f != "" {
			attrs = append(attrs, slog.String("forwarded_for", clip(f)))
		}
		s.log.LogAttrs(req.Context(), level, "webhook refused", attrs...)
	}
	b.out = appendAnswer(b.out[:0], answer{err: r.msg, requestID: requestID(c)})
	return c.JSONBlob(r.code, b.out)
}

// clip bounds a header value in a log line.
func clip(s string) string {
	const max = 256
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}

func (s *Server) webhook(c echo.Context) error {
	req := c.Request()
	b := s.getBuffers()
	defer s.putBuffers(b)
	limit := s.cfg.MaxBodyBytes
	if req.ContentLength > limit {
		// Refused before reading a byte of it.
		return s.refuse(c, b, refusal{code: http.StatusRequestEntityTooLarge, event: labelUnverified, outcome: OutcomeTooLarge,
			msg: "body of " + strconv.FormatInt(req.ContentLength, 10) + " bytes is over the limit of " + strconv.FormatInt(limit, 10)})
	}
	if req.ContentLength > 0 && int64(cap(b.body)) < req.ContentLength {
		b.body = make([]byte, 0, req.ContentLength+1)
	}
	body, err := readBody(http.MaxBytesReader(c.Response(), req.Body, limit), b.body[:0], limit)
	b.body = body
	switch {
	case errors.Is(err, errTooLarge):
		return s.refuse(c, b, refusal{code: http.StatusRequestEntityTooLarge, event: labelUnverified, outcome: OutcomeTooLarge,
			msg: "body is over the limit of " + strconv.FormatInt(limit, 10) + " bytes"})
	case err != nil:
		return s.refuse(c, b, refusal{code: http.StatusBadRequest, event: labelUnverified, outcome: OutcomeBadRequest,
			msg: "could not read the body"})
	}

	if err := s.cfg.Verifier.Verify(req.Header.Get(signature.Header), body); err != nil {
		reason := "mismatch"
		switch {
		case errors.Is(err, signature.ErrMissing):
			reason = "missing"
		case errors.Is(err, signature.ErrMalformed):
			reason = "malformed"
		}
		s.m.sigFail(reason).Inc()
		return s.refuse(c, b, refusal{code: http.StatusUnauthorized, event: labelUnverified, outcome: OutcomeUnauthorized,
			msg: err.Error(), attrs: []slog.Attr{slog.String("signature", reason)}})
	}

	env, err := event.Parse(body)
	if err != nil {
		label := labelUnknown
		if errors.Is(err, event.ErrInvalidID) {
			label = event.MetricLabel(env.Event)
		}
		return s.refuse(c, b, refusal{code: http.StatusBadRequest, event: label, outcome: OutcomeBadRequest,
			msg: err.Error(), attrs: idAttrs(nil, env.WebhookID, 0, 0, 0)})
	}
	label := event.MetricLabel(env.Event)
	rid := requestID(c)
	ctx := req.Context()

	switch {
	case env.Event == event.Ping:
		s.m.delivery(label, OutcomePing).Inc()
		s.debug(ctx, "webhook ping", rid, label, env.WebhookID, 0, 0, 0)
		b.out = appendAnswer(b.out[:0], answer{status: "pong", event: env.Event, requestID: rid})
		return c.JSONBlob(http.StatusOK, b.out)
	case !env.TaskRelevant():
		s.m.delivery(label, OutcomeIgnored).Inc()
		s.debug(ctx, "webhook ignored", rid, label, env.WebhookID, 0, 0, 0, slog.Bool("known", env.Known))
		b.out = appendAnswer(b.out[:0], answer{status: "ignored", event: env.Event, requestID: rid})
		return c.JSONBlob(http.StatusOK, b.out)
	}

	it := inbox.FromEnvelope(env, s.cfg.Now(), rid)
	qctx, cancel := context.WithTimeout(ctx, s.cfg.EnqueueTimeout)
	defer cancel()
	if err := s.cfg.Queue.Enqueue(qctx, it); err != nil {
		return s.refuse(c, b, refusal{code: http.StatusServiceUnavailable, event: label, outcome: OutcomeUnavailable,
			msg:   "the event could not be stored; retry later",
			attrs: append(idAttrs(nil, it.WebhookID, it.TaskID, it.JobID, it.ProjectID), slog.String("error", err.Error()))})
	}
	s.m.delivery(label, OutcomeStored).Inc()
	s.debug(ctx, "webhook stored", rid, label, it.WebhookID, it.TaskID, it.JobID, it.ProjectID)
	b.out = appendAnswer(b.out[:0], answer{status: "stored", event: env.Event, taskID: it.TaskID, requestID: rid})
	return c.JSONBlob(http.StatusAccepted, b.out)
}

// idAttrs appends the ids that are set: a zero id is "not in this payload"
// and is left out of the log line.
func idAttrs(attrs []slog.Attr, webhookID, taskID, jobID, projectID int64) []slog.Attr {
	for _, a := range []struct {
		key string
		id  int64
	}{{"webhook_id", webhookID}, {"task_id", taskID}, {"job_id", jobID}, {"project_id", projectID}} {
		if a.id != 0 {
			attrs = append(attrs, slog.Int64(a.key, a.id))
		}
	}
	return attrs
}

// debug logs an accepted delivery, only when debug logging is on (nothing
// is built otherwise).
func (s *Server) debug(ctx context.Context, msg, rid, label string, webhookID, taskID, jobID, projectID int64, extra ...slog.Attr) {
	if !s.log.Enabled(ctx, slog.LevelDebug) {
		return
	}
	attrs := idAttrs([]slog.Attr{slog.String("request_id", rid), slog.String("event", label)}, webhookID, taskID, jobID, projectID)
	s.log.LogAttrs(ctx, slog.LevelDebug, msg, append(attrs, extra...)...)
}

var healthy = []byte(`{"status":"ok"}`)

func (s *Server) healthz(c echo.Context) error {
	return c.JSONBlob(http.StatusOK, healthy)
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
		s.log.LogAttrs(c.Request().Context(), slog.LevelError, "request failed",
			slog.String("request_id", requestID(c)), slog.String("error", err.Error()))
	}
	if c.Request().Method == http.MethodHead {
		_ = c.NoContent(code)
		return
	}
	_ = c.JSONBlob(code, appendAnswer(nil, answer{err: msg}))
}
