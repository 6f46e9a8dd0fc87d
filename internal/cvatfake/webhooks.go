package cvatfake

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

type webhook struct {
	id          int64
	targetURL   string
	description string
	typ         string
	contentType string
	secret      string
	isActive    bool
	enableSSL   bool
	projectID   int64
	org         string
	events      []string
	created     time.Time
	updated     time.Time
	lastStatus  int
	lastDate    time.Time
}

// Webhook is a webhook registered through the fake's API, as tests see it.
// The secret itself is not exposed; see WebhookSecretIs.
type Webhook struct {
	ID          int64
	TargetURL   string
	Description string
	Type        string // project | organization
	ProjectID   int64
	Org         string
	Events      []string
	IsActive    bool
	EnableSSL   bool
	HasSecret   bool
	UpdatedDate time.Time
}

// Webhooks lists the registered webhooks by id.
func (s *Server) Webhooks() []Webhook {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Webhook
	for _, id := range s.hookIDs() {
		h := s.hooks[id]
		out = append(out, Webhook{ID: h.id, TargetURL: h.targetURL, Description: h.description, Type: h.typ,
			ProjectID: h.projectID, Org: h.org, Events: slices.Clone(h.events), IsActive: h.isActive,
			EnableSSL: h.enableSSL, HasSecret: h.secret != "", UpdatedDate: h.updated})
	}
	return out
}

// WebhookSecretIs reports whether webhook id has this secret.
func (s *Server) WebhookSecretIs(id int64, secret string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.hooks[id]
	return ok && hmac.Equal([]byte(h.secret), []byte(secret))
}

func (s *Server) hookIDs() []int64 {
	ids := make([]int64, 0, len(s.hooks))
	for id := range s.hooks {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// receives reports whether h gets event ev.
func (h *webhook) receives(ev Event) bool {
	if !h.isActive || !slices.Contains(h.events, ev.Name) {
		return false
	}
	if h.typ == "project" {
		return ev.ProjectID != 0 && h.projectID == ev.ProjectID
	}
	return ev.Org != "" && h.org == ev.Org
}

// defaultHookID picks the webhook_id of Event.Body. The caller holds s.mu.
func (s *Server) defaultHookID(ev Event) int64 {
	for _, id := range s.hookIDs() {
		if s.hooks[id].receives(ev) {
			return id
		}
	}
	return 1
}

var projectEvents = []string{
	"create:comment", "create:issue", "create:job", "create:task",
	"delete:comment", "delete:issue", "delete:job", "delete:project", "delete:task",
	"update:comment", "update:issue", "update:job", "update:project", "update:task",
}

var orgEvents = append(slices.Clone(projectEvents),
	"create:invitation", "create:membership", "create:project", "delete:invitation",
	"delete:membership", "delete:organization", "update:membership", "update:organization")

type webhookJSON struct {
	ID               int64     `json:"id"`
	URL              string    `json:"url"`
	TargetURL        string    `json:"target_url"`
	Description      string    `json:"description"`
	Type             string    `json:"type"`
	ContentType      string    `json:"content_type"`
	IsActive         bool      `json:"is_active"`
	EnableSSL        bool      `json:"enable_ssl"`
	CreatedDate      string    `json:"created_date"`
	UpdatedDate      string    `json:"updated_date"`
	Owner            *userJSON `json:"owner"`
	ProjectID        *int64    `json:"project_id"`
	Organization     *int64    `json:"organization"`
	Events           []string  `json:"events"`
	LastStatus       *int      `json:"last_status,omitempty"`
	LastDeliveryDate *string   `json:"last_delivery_date,omitempty"`
}

func (s *Server) webhookJSON(h *webhook, base string) webhookJSON {
	ev := slices.Clone(h.events)
	slices.Sort(ev)
	w := webhookJSON{ID: h.id, URL: base + "/api/webhooks/" + itoa(h.id), TargetURL: h.targetURL,
		Description: h.description, Type: h.typ, ContentType: h.contentType, IsActive: h.isActive,
		EnableSSL: h.enableSSL, CreatedDate: cvatTime(h.created), UpdatedDate: cvatTime(h.updated),
		Owner: ptr(s.user(base)), ProjectID: optID(h.projectID), Organization: s.orgID(h.org), Events: ev}
	if !h.lastDate.IsZero() {
		w.LastStatus, w.LastDeliveryDate = ptr(h.lastStatus), ptr(cvatTime(h.lastDate))
	}
	return w
}

// webhookWrite is WebhookWriteRequest / PatchedWebhookWriteRequest.
type webhookWrite struct {
	TargetURL   *string   `json:"target_url"`
	Description *string   `json:"description"`
	Type        *string   `json:"type"`
	ContentType *string   `json:"content_type"`
	Secret      *string   `json:"secret"`
	IsActive    *bool     `json:"is_active"`
	EnableSSL   *bool     `json:"enable_ssl"`
	ProjectID   *int64    `json:"project_id"`
	Events      *[]string `json:"events"`
}

func badRequest(w http.ResponseWriter, field, msg string) {
	writeJSON(w, http.StatusBadRequest, map[string][]string{field: {msg}})
}

func (s *Server) applyWrite(w http.ResponseWriter, h *webhook, in webhookWrite) bool {
	if in.TargetURL != nil {
		u, err := url.Parse(*in.TargetURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			badRequest(w, "target_url", "Enter a valid URL.")
			return false
		}
		h.targetURL = *in.TargetURL
	}
	if in.Description != nil {
		if len(*in.Description) > 128 {
			badRequest(w, "description", "Ensure this field has no more than 128 characters.")
			return false
		}
		h.description = *in.Description
	}
	if in.ContentType != nil {
		if *in.ContentType != "application/json" {
			badRequest(w, "content_type", fmt.Sprintf("%q is not a valid choice.", *in.ContentType))
			return false
		}
	}
	if in.Secret != nil {
		if len(*in.Secret) > 64 {
			badRequest(w, "secret", "Ensure this field has no more than 64 characters.")
			return false
		}
		h.secret = *in.Secret
	}
	if in.IsActive != nil {
		h.isActive = *in.IsActive
	}
	if in.EnableSSL != nil {
		h.enableSSL = *in.EnableSSL
	}
	if in.Events != nil {
		allowed := projectEvents
		if h.typ == "organization" {
			allowed = orgEvents
		}
		for _, e := range *in.Events {
			if !slices.Contains(allowed, e) {
				badRequest(w, "events", fmt.Sprintf("Events must be in %v for %s webhooks", allowed, h.typ))
				return false
			}
		}
		ev := slices.Clone(*in.Events)
		slices.Sort(ev)
		h.events = slices.Compact(ev)
	}
	return true
}

func (s *Server) createWebhook(w http.ResponseWriter, r *http.Request) {
	var in webhookWrite
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&in); err != nil {
		badRequest(w, "non_field_errors", "Invalid data: "+err.Error())
		return
	}
	for field, missing := range map[string]bool{"target_url": in.TargetURL == nil, "type": in.Type == nil, "events": in.Events == nil} {
		if missing {
			badRequest(w, field, "This field is required.")
			return
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	h := &webhook{typ: *in.Type, contentType: "application/json", isActive: true, enableSSL: true}
	org := r.Header.Get("X-Organization")
	switch h.typ {
	case "project":
		if in.ProjectID == nil {
			badRequest(w, "project_id", "Project webhooks need a project_id")
			return
		}
		p, ok := s.projects[*in.ProjectID]
		if !ok {
			badRequest(w, "project_id", "Project does not exist")
			return
		}
		h.projectID, h.org = p.ID, p.Org
	case "organization":
		if org == "" {
			badRequest(w, "organization_id", "Organization webhooks need an organization context")
			return
		}
		h.org = org
	default:
		badRequest(w, "type", fmt.Sprintf("%q is not a valid choice.", *in.Type))
		return
	}
	if !s.applyWrite(w, h, in) {
		return
	}
	s.nextHook++
	h.id = s.nextHook
	h.created = s.now()
	h.updated = h.created
	s.hooks[h.id] = h
	writeJSON(w, http.StatusCreated, s.webhookJSON(h, s.base(r)))
}

// visibleHook finds webhook {id} in the request's organization context.
func (s *Server) visibleHook(w http.ResponseWriter, r *http.Request) *webhook {
	id, ok := pathID(r)
	h := s.hooks[id]
	if !ok || h == nil || h.org != r.Header.Get("X-Organization") {
		notFound(w, "Webhook")
		return nil
	}
	return h
}

func (s *Server) getWebhook(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h := s.visibleHook(w, r); h != nil {
		writeJSON(w, http.StatusOK, s.webhookJSON(h, s.base(r)))
	}
}

func (s *Server) patchWebhook(w http.ResponseWriter, r *http.Request) {
	var in webhookWrite
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&in); err != nil {
		badRequest(w, "non_field_errors", "Invalid data: "+err.Error())
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.visibleHook(w, r)
	if h == nil {
		return
	}
	cp := *h
	if in.Type != nil || in.ProjectID != nil {
		badRequest(w, "non_field_errors", "type and project_id cannot be changed")
		return
	}
	if !s.applyWrite(w, &cp, in) {
		return
	}
	cp.updated = s.now()
	*h = cp
	writeJSON(w, http.StatusOK, s.webhookJSON(h, s.base(r)))
}

func (s *Server) deleteWebhook(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h := s.visibleHook(w, r); h != nil {
		delete(s.hooks, h.id)
		w.WriteHeader(http.StatusNoContent)
	}
}

func (s *Server) listWebhooks(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	s.mu.Lock()
	var items []any
	for _, id := range s.hookIDs() {
		h := s.hooks[id]
		if h.org != r.Header.Get("X-Organization") ||
			(q.Has("target_url") && h.targetURL != q.Get("target_url")) ||
			(q.Has("type") && h.typ != q.Get("type")) ||
			(q.Has("project_id") && itoa(h.projectID) != q.Get("project_id")) {
			continue
		}
		items = append(items, s.webhookJSON(h, s.base(r)))
	}
	s.mu.Unlock()
	if strings.HasPrefix(q.Get("sort"), "-") {
		slices.Reverse(items)
	}
	s.paginate(w, r, items)
}

type deliveryJSON struct {
	ID            int64           `json:"id"`
	WebhookID     int64           `json:"webhook_id"`
	Event         string          `json:"event"`
	StatusCode    *int            `json:"status_code"`
	Redelivery    bool            `json:"redelivery"`
	CreatedDate   string          `json:"created_date"`
	UpdatedDate   string          `json:"updated_date"`
	ChangedFields string          `json:"changed_fields"`
	Request       json.RawMessage `json:"request"`
	Response      string          `json:"response"`
}

// pingWebhook delivers a signed ping synchronously, as CVAT's API process
// does, and answers the delivery record.
func (s *Server) pingWebhook(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	h := s.visibleHook(w, r)
	if h == nil {
		s.mu.Unlock()
		return
	}
	base := s.base(r)
	body, err := pyJSON(ordered{{"event", "ping"}, {"webhook", s.webhookJSON(h, base)}, {"sender", s.sender(base)}})
	target, secret, id := h.targetURL, h.secret, h.id
	s.mu.Unlock()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}

	res, derr := s.Deliver(r.Context(), target, secret, body)
	status := res.StatusCode
	if derr != nil {
		status = http.StatusBadGateway // CVAT records connection errors as 502 (timeouts 504)
		if errors.Is(derr, context.DeadlineExceeded) {
			status = http.StatusGatewayTimeout
		}
	}
	s.mu.Lock()
	s.nextDel++
	now := s.now()
	if h, ok := s.hooks[id]; ok {
		h.lastStatus, h.lastDate = status, now
	}
	d := deliveryJSON{ID: s.nextDel, WebhookID: id, Event: "ping", StatusCode: ptr(status),
		CreatedDate: cvatTime(now), UpdatedDate: cvatTime(now), Request: body, Response: res.Body}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, d)
}

// DeliveryResult is the receiver's answer to a delivery.
type DeliveryResult struct {
	StatusCode int
	Body       string // at most 1 MiB, as CVAT stores it
}

// Deliver POSTs body to targetURL as CVAT's webhook worker does:
// Content-Type application/json, User-Agent "CVAT/<version>
// python-requests/2.32.4", and X-Signature-256 "sha256=<hex HMAC-SHA256>"
// only when secret is set; 10 s timeout, no retry. An error means no answer
// (CVAT would record 502, or 504 on a timeout).
func (s *Server) Deliver(ctx context.Context, targetURL, secret string, body []byte) (DeliveryResult, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, targetURL, bytes.NewReader(body))
	if err != nil {
		return DeliveryResult{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "*/*")
	req.Header.Set("User-Agent", "CVAT/"+s.opts.Version+" python-requests/2.32.4")
	if secret != "" {
		m := hmac.New(sha256.New, []byte(secret))
		m.Write(body)
		req.Header.Set("X-Signature-256", "sha256="+hex.EncodeToString(m.Sum(nil)))
	}
	// No keep-alive: a delivery leaves no idle connection (or goroutine)
	// behind in the test process.
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	resp, err := hc.Do(req)
	if err != nil {
		return DeliveryResult{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return DeliveryResult{StatusCode: resp.StatusCode, Body: string(b)}, nil
}

// Sent is one delivery made by Dispatch.
type Sent struct {
	WebhookID int64
	Event     string
	Result    DeliveryResult
	Err       error
}

// Dispatch delivers each event to every registered active webhook that
// receives it (its scope and event list), signed with that webhook's secret,
// one after another like CVAT's single webhook worker.
func (s *Server) Dispatch(ctx context.Context, events ...Event) []Sent {
	type job struct {
		id             int64
		target, secret string
		ev             Event
	}
	var jobs []job
	s.mu.Lock()
	for _, ev := range events {
		for _, id := range s.hookIDs() {
			if h := s.hooks[id]; h.receives(ev) {
				jobs = append(jobs, job{id, h.targetURL, h.secret, ev})
			}
		}
	}
	s.mu.Unlock()
	var out []Sent
	for _, j := range jobs {
		res, err := s.Deliver(ctx, j.target, j.secret, j.ev.For(j.id))
		out = append(out, Sent{WebhookID: j.id, Event: j.ev.Name, Result: res, Err: err})
	}
	return out
}
