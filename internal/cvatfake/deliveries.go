package cvatfake

import (
	"bytes"
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// This file is CVAT's side of delivery: the worker that sends webhooks, the
// delivery log it writes (WebhookDelivery) and the API over that log
// (webhooks/views.py deliveries, retrieve_delivery, redelivery). What each
// release records is in VERSIONS.md §1.10–§1.12:
//   - 2.3–2.4.1: a row is written when the event is queued (status_code
//     null) and filled in after the POST;
//   - 2.4.2–2.64: a row is written after each attempt, if the webhook still
//     exists then; a reply that is not UTF-8 makes the job fail with no row;
//   - 2.65+: the worker reads the webhook again (gone or inactive: nothing is
//     sent), replies are decoded leniently, and a status >= 500, 408 or 429
//     is retried (up to MaxAttempts). Retries are test-driven: RetryPending
//     makes the due ones at once, whatever CVAT's delays would be;
//   - 2.68+: rows show attempt and request_duration.

// hookState is the webhook side's part of Server, guarded by Server.mu.
type hookState struct {
	deliveries []*delivery // by id
	retries    []attempt   // 2.65+: automatic retries not made yet
}

// MaxAttempts is how many attempts 2.65+ make by default: a first one and 8
// retries (CVAT_SEND_WEBHOOK_TASK_RETRIES, webhooks/default_settings.py
// @2.65.0).
const MaxAttempts = 9

// responseLimit: CVAT keeps up to 1 MiB of the reply, "" beyond.
const responseLimit = 1 << 20

type delivery struct {
	id            int64
	webhookID     int64
	event         string
	status        int // 0: not sent yet (2.3–2.4.1 queue)
	redelivery    bool
	attempt       int
	durationMS    int64
	created       time.Time
	updated       time.Time
	changedFields string
	request       ordered // the payload as sent
	response      string
}

func (d *delivery) statusJSON() any {
	if d.status == 0 {
		return nil
	}
	return d.status
}

// attempt is one delivery the worker makes.
type attempt struct {
	hook       hookSnap // the webhook as selected; from 2.65 only its id counts
	event      string
	payload    ordered
	redelivery bool
	n          int       // 1-based
	queued     *delivery // 2.3–2.4.1: the row written when it was queued
	noRetry    bool      // Deliver: one attempt whatever the answer
}

func newAttempt(h hookSnap, payload ordered) attempt {
	ev, _ := payload.get("event").(string)
	return attempt{hook: h, event: ev, payload: payload, n: 1}
}

// Sent is one delivery made by Dispatch, RetryPending or a ping.
type Sent struct {
	WebhookID  int64
	Event      string
	Result     DeliveryResult
	Err        error
	DeliveryID int64 // the row CVAT recorded; 0 when it recorded none
	Skipped    bool  // 2.65+: the webhook was gone or inactive when the worker read it: nothing was sent

	row *delivery
}

// DeliveryResult is the receiver's answer to a delivery.
type DeliveryResult struct {
	StatusCode int
	Body       string // at most 1 MiB, as CVAT stores it ("" when longer)
}

// Delivery is a row of CVAT's delivery log, as tests see it.
type Delivery struct {
	ID          int64
	WebhookID   int64
	Event       string
	StatusCode  int // 0 while queued and not sent (2.3–2.4.1)
	Redelivery  bool
	Attempt     int
	Request     []byte // the payload as it was sent, in its key order
	Response    string
	CreatedDate time.Time
	UpdatedDate time.Time
}

// Deliveries lists webhook webhookID's delivery log, newest first, as the
// deliveries API does.
func (s *Server) Deliveries(webhookID int64) []Delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Delivery
	for _, d := range s.deliveriesOf(webhookID) {
		b, _ := pyJSON(d.request)
		out = append(out, Delivery{ID: d.id, WebhookID: d.webhookID, Event: d.event, StatusCode: d.status,
			Redelivery: d.redelivery, Attempt: d.attempt, Request: b, Response: d.response,
			CreatedDate: d.created, UpdatedDate: d.updated})
	}
	return out
}

// AwaitDeliveries waits until cond holds for webhook webhookID's delivery
// log (newest first, as Deliveries returns it) or ctx ends. Queued pings
// (2.3–2.4.1) and redeliveries are sent after the API has answered, so a
// test that made one waits here for its row.
func (s *Server) AwaitDeliveries(ctx context.Context, webhookID int64, cond func([]Delivery) bool) error {
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond(s.Deliveries(webhookID)) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("deliveries of webhook %d: %w", webhookID, ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}

// deliveriesOf returns a webhook's rows newest first (order_by
// -updated_date). The caller holds s.mu.
func (s *Server) deliveriesOf(webhookID int64) []*delivery {
	var out []*delivery
	for _, d := range s.hk.deliveries {
		if d.webhookID == webhookID {
			out = append(out, d)
		}
	}
	slices.SortStableFunc(out, func(a, b *delivery) int {
		if c := b.updated.Compare(a.updated); c != 0 {
			return c
		}
		return cmp.Compare(b.id, a.id)
	})
	return out
}

// lastDelivery is deliveries.last (by id), the source of last_status. The
// caller holds s.mu.
func (s *Server) lastDelivery(webhookID int64) *delivery {
	var last *delivery
	for _, d := range s.hk.deliveries {
		if d.webhookID == webhookID {
			last = d
		}
	}
	return last
}

// addRow writes a delivery row. The caller holds s.mu.
func (s *Server) addRow(a attempt, status int, response string, dur time.Duration) *delivery {
	s.nextDel++
	var changed []string
	if b, ok := a.payload.get("before_update").(ordered); ok {
		for _, p := range b {
			changed = append(changed, p.k)
		}
	}
	d := &delivery{id: s.nextDel, webhookID: a.hook.id, event: a.event, status: status, redelivery: a.redelivery,
		attempt: a.n, durationMS: dur.Milliseconds(), changedFields: strings.Join(changed, ","),
		request: a.payload, response: response}
	d.created = s.now()
	d.updated = s.now() // saved a moment after it was created
	s.hk.deliveries = append(s.hk.deliveries, d)
	return d
}

// queue writes the row 2.3–2.4.1 create when an event is queued. The
// caller holds s.mu.
func (s *Server) queue(a attempt) *delivery { return s.addRow(a, 0, "", 0) }

// deliveryJSON is WebhookDeliveryReadSerializer. stored: the row as read
// back from the database, whose request (a jsonb column) has its keys in
// jsonb order; a row just created (the ping answer) keeps the payload's
// order. The caller holds s.mu.
func (s *Server) deliveryJSON(d *delivery, stored bool) ordered {
	var req any = d.request
	if stored {
		req = jsonbOrder(d.request)
	}
	o := ordered{{"id", d.id}, {"webhook_id", d.webhookID}, {"event", d.event}, {"status_code", d.statusJSON()},
		{"redelivery", d.redelivery}}
	if s.at(2, 68, 0) {
		o = append(o, pair{"attempt", d.attempt}, pair{"request_duration", d.durationMS})
	}
	changed := d.changedFields
	if s.post11104() {
		changed = "" // kept, always empty (#11104)
	}
	return append(o, pair{"created_date", cvatTime(d.created)}, pair{"updated_date", cvatTime(d.updated)},
		pair{"changed_fields", changed}, pair{"request", req}, pair{"response", d.response})
}

// retryable: the statuses 2.65+ retry (webhooks/tasks.py).
func retryable(status int) bool {
	return status >= 500 || status == http.StatusRequestTimeout || status == http.StatusTooManyRequests
}

// send makes attempt a and records it as the release does.
func (s *Server) send(ctx context.Context, a attempt) Sent {
	out := Sent{WebhookID: a.hook.id, Event: a.event}
	s.mu.Lock()
	target, secret := a.hook.target, a.hook.secret
	if s.at(2, 65, 0) {
		h, ok := s.hooks[a.hook.id]
		if !ok || !h.isActive {
			s.mu.Unlock()
			out.Skipped = true
			return out
		}
		target, secret = h.targetURL, h.secret
	}
	s.mu.Unlock()
	body, err := pyJSON(a.payload)
	if err != nil {
		panic(err) // only our own or parsed JSON is encoded
	}
	start := time.Now()
	out.Result, out.Err = s.post(ctx, target, secret, body)
	dur := time.Since(start)

	s.mu.Lock()
	defer s.mu.Unlock()
	if out.row = s.record(a, out.Result, out.Err, dur); out.row != nil {
		out.DeliveryID = out.row.id
	}
	return out
}

// record writes what the worker records for an attempt, and schedules the
// retry of 2.65+. The caller holds s.mu.
func (s *Server) record(a attempt, res DeliveryResult, err error, dur time.Duration) *delivery {
	status, response := res.StatusCode, res.Body
	if err != nil {
		status, response = http.StatusBadGateway, ""
		if isTimeout(err) {
			status = http.StatusGatewayTimeout
		}
		if s.at(2, 65, 0) {
			response = err.Error() // 2.65+: the exception's text
		}
	}
	_, exists := s.hooks[a.hook.id]
	switch {
	case s.restOnly():
		d := a.queued
		if d == nil { // Deliver: nothing was queued; the row is written now
			d = s.addRow(a, 0, "", dur)
		}
		if !exists || !slices.Contains(s.hk.deliveries, d) {
			return nil // deleted with its webhook
		}
		if !utf8.ValidString(response) {
			return d // the job failed decoding the reply: the row stays queued
		}
		d.status, d.response, d.updated = status, response, s.now()
		return d
	case !s.at(2, 65, 0):
		if !exists || !utf8.ValidString(response) {
			return nil
		}
		return s.addRow(a, status, response, dur)
	}
	if !exists {
		return nil
	}
	d := s.addRow(a, status, strings.ToValidUTF8(response, "\uFFFD"), dur)
	if retryable(status) && a.n < MaxAttempts && !a.noRetry {
		next := a
		next.n++
		next.queued = nil
		s.hk.retries = append(s.hk.retries, next)
	}
	return d
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// post sends one webhook request as CVAT's worker does: Content-Type
// application/json, User-Agent "CVAT/<version> python-requests/2.32.4"
// (2.4.0+; 2.3.0 sends the plain requests one) and, only with a secret,
// X-Signature-256 "sha256=<hex HMAC-SHA256>" over the body — over the body
// plus "\n" in 2.3.0. Timeouts: 10 s; from 2.71 3 s to connect. An error
// means no answer.
func (s *Server) post(ctx context.Context, targetURL, secret string, body []byte) (DeliveryResult, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, targetURL, bytes.NewReader(body))
	if err != nil {
		return DeliveryResult{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "*/*")
	ua := "python-requests/2.32.4"
	if s.at(2, 4, 0) {
		ua = "CVAT/" + s.opts.Version + " " + ua
	}
	req.Header.Set("User-Agent", ua)
	if secret != "" {
		m := hmac.New(sha256.New, []byte(secret))
		m.Write(body)
		if !s.at(2, 4, 0) {
			m.Write([]byte("\n")) // signals.py send_webhook @2.3.0, fixed by #5622
		}
		req.Header.Set("X-Signature-256", "sha256="+hex.EncodeToString(m.Sum(nil)))
	}
	dial := &net.Dialer{Timeout: 10 * time.Second}
	if s.at(2, 71, 0) {
		dial.Timeout = 3 * time.Second
	}
	// No keep-alive: a delivery leaves no idle connection (or goroutine)
	// behind in the test process.
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil, DialContext: dial.DialContext}}
	resp, err := hc.Do(req)
	if err != nil {
		return DeliveryResult{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, responseLimit+1))
	if err != nil {
		return DeliveryResult{}, err
	}
	if len(b) > responseLimit {
		b = nil
	}
	return DeliveryResult{StatusCode: resp.StatusCode, Body: string(b)}, nil
}

// Deliver POSTs body to targetURL as CVAT's webhook worker does (see post):
// one attempt, no retry. An error means no answer (CVAT would record 502,
// or 504 on a timeout). When the body names a registered webhook (its
// webhook_id, or the webhook of a ping) the attempt is recorded in that
// webhook's delivery log like any other.
func (s *Server) Deliver(ctx context.Context, targetURL, secret string, body []byte) (DeliveryResult, error) {
	start := time.Now()
	res, err := s.post(ctx, targetURL, secret, body)
	dur := time.Since(start)
	v, perr := parseOrdered(body)
	o, ok := v.(ordered)
	if perr != nil || !ok {
		return res, err
	}
	id, _ := o.get("webhook_id").(json.Number)
	if w, ok := o.get("webhook").(ordered); ok && id == "" {
		id, _ = w.get("id").(json.Number)
	}
	n, _ := strconv.ParseInt(string(id), 10, 64)
	s.mu.Lock()
	defer s.mu.Unlock()
	if h, found := s.hooks[n]; found {
		a := newAttempt(h.snap(), o)
		a.noRetry = true
		s.record(a, res, err, dur)
	}
	return res, err
}

// Dispatch delivers each event to the webhooks CVAT selected for it when it
// happened (Event.Recipients), signed with each one's secret, one after
// another like CVAT's single webhook worker, and records each attempt. On
// 2.3–2.4.1 every row is written (queued) before the first is sent.
func (s *Server) Dispatch(ctx context.Context, events ...Event) []Sent {
	var as []attempt
	s.mu.Lock()
	for _, ev := range events {
		for _, h := range ev.to {
			a := newAttempt(h, ev.build(h.id))
			if s.restOnly() {
				a.queued = s.queue(a)
			}
			as = append(as, a)
		}
	}
	s.mu.Unlock()
	out := make([]Sent, 0, len(as))
	for _, a := range as {
		out = append(out, s.send(ctx, a))
	}
	return out
}

// PendingRetries is how many automatic retries (2.65+) are due.
func (s *Server) PendingRetries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.hk.retries)
}

// RetryPending makes every automatic retry due (2.65+) now, as CVAT's
// worker does after its delays (5 s, 5 min, 30 min, 3 h, then daily): the
// test decides when that is. A retry that fails again is scheduled again,
// not made by this call.
func (s *Server) RetryPending(ctx context.Context) []Sent {
	s.mu.Lock()
	due := s.hk.retries
	s.hk.retries = nil
	s.mu.Unlock()
	out := make([]Sent, 0, len(due))
	for _, a := range due {
		out = append(out, s.send(ctx, a))
	}
	return out
}

// afterAnswer sends a queued attempt once the API's answer is on its way,
// as CVAT's worker does after the API process queued it: the handler
// (owned and waited for by the HTTP server) makes the delivery after
// flushing its answer.
func (s *Server) afterAnswer(w http.ResponseWriter, r *http.Request, a attempt) {
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	s.send(context.WithoutCancel(r.Context()), a)
}

func (s *Server) findDelivery(webhookID int64, r *http.Request) *delivery {
	id, err := strconv.ParseInt(r.PathValue("delivery_id"), 10, 64)
	if err != nil {
		return nil
	}
	for _, d := range s.hk.deliveries {
		if d.id == id && d.webhookID == webhookID {
			return d
		}
	}
	return nil
}

// serverError is Django's answer to an unhandled exception (DEBUG off):
// CVAT looks a delivery up with objects.get, so an unknown one is a 500.
func serverError(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/html")
	w.WriteHeader(http.StatusInternalServerError)
	_, _ = io.WriteString(w, "\n<!doctype html>\n<html lang=\"en\">\n<head>\n  <title>Server Error (500)</title>\n</head>\n<body>\n  <h1>Server Error (500)</h1><p></p>\n</body>\n</html>\n")
}

// listDeliveries is GET /api/webhooks/{id}/deliveries: paginated, newest
// first by updated_date; no filter or ordering parameter applies.
func (s *Server) listDeliveries(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	h := s.visibleHook(w, r)
	if h == nil {
		s.mu.Unlock()
		return
	}
	var items []any
	for _, d := range s.deliveriesOf(h.id) {
		items = append(items, s.deliveryJSON(d, true))
	}
	s.mu.Unlock()
	s.paginate(w, r, items)
}

// getDelivery is GET /api/webhooks/{id}/deliveries/{delivery_id}.
func (s *Server) getDelivery(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.visibleHook(w, r)
	if h == nil {
		return
	}
	d := s.findDelivery(h.id, r)
	if d == nil {
		serverError(w)
		return
	}
	writeJSON(w, http.StatusOK, s.deliveryJSON(d, true))
}

// redeliver is POST /api/webhooks/{id}/deliveries/{delivery_id}/redelivery:
// 200 {} and the stored request is queued again as a new delivery with
// redelivery true. The stored request comes back from jsonb: the same
// content with its keys reordered, so the body (and its signature) differ
// from the first attempt's.
func (s *Server) redeliver(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	h := s.visibleHook(w, r)
	if h == nil {
		s.mu.Unlock()
		return
	}
	d := s.findDelivery(h.id, r)
	if d == nil {
		s.mu.Unlock()
		serverError(w)
		return
	}
	a := newAttempt(h.snap(), jsonbOrder(d.request).(ordered))
	a.redelivery = true
	if s.restOnly() {
		a.queued = s.queue(a)
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, struct{}{})
	s.afterAnswer(w, r, a)
}
