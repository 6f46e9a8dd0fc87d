package cvatfake

import (
	"crypto/hmac"
	"encoding/json"
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
}

// Webhook is a webhook registered through the fake's API, as tests see it.
// The secret itself is not exposed; see WebhookSecretIs.
type Webhook struct {
	ID          int64
	TargetURL   string
	Description string
	Type        string // project | organization
	ProjectID   int64
	Org         string // 2.3.0: for a project webhook, the organization of the request that created it
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

// dropHook deletes webhook id and, by cascade, its deliveries. The caller
// holds s.mu.
func (s *Server) dropHook(id int64) {
	delete(s.hooks, id)
	s.hk.deliveries = slices.DeleteFunc(s.hk.deliveries, func(d *delivery) bool { return d.webhookID == id })
}

// webhookRoutes registers the webhook API. fake.go's routes calls it.
func (s *Server) webhookRoutes(m *http.ServeMux) {
	m.HandleFunc("GET /api/webhooks", s.listWebhooks)
	m.HandleFunc("POST /api/webhooks", s.createWebhook)
	m.HandleFunc("GET /api/webhooks/events", s.webhookEvents)
	m.HandleFunc("GET /api/webhooks/{id}", s.getWebhook)
	m.HandleFunc("PATCH /api/webhooks/{id}", s.patchWebhook)
	m.HandleFunc("DELETE /api/webhooks/{id}", s.deleteWebhook)
	m.HandleFunc("POST /api/webhooks/{id}/ping", s.pingWebhook)
	m.HandleFunc("GET /api/webhooks/{id}/deliveries", s.listDeliveries)
	m.HandleFunc("GET /api/webhooks/{id}/deliveries/{delivery_id}", s.getDelivery)
	m.HandleFunc("POST /api/webhooks/{id}/deliveries/{delivery_id}/redelivery", s.redeliver)
}

// The event catalogue (webhooks/event_type.py): which events a webhook of
// each type may subscribe to, by release.
var (
	// 2.3–2.4.1: 18 events; project webhooks get task, job (update
	// only), issue and comment events and update:project.
	projectEvents23 = []string{
		"create:comment", "create:issue", "create:task",
		"delete:comment", "delete:issue", "delete:task",
		"update:comment", "update:issue", "update:job", "update:project", "update:task",
	}
	orgOnlyEvents23 = []string{
		"create:invitation", "create:project", "delete:invitation", "delete:membership",
		"delete:project", "update:membership", "update:organization",
	}
	// 2.4.2 (#5916) adds create/delete job (both types), delete:project
	// for project webhooks, create:membership and delete:organization.
	projectEvents242 = []string{"create:job", "delete:job", "delete:project"}
	orgEvents242     = []string{"create:job", "delete:job", "create:membership", "delete:organization"}
	// 2.65 adds export and backup completion events; 2.73 renames them
	// (only the three export keys are modelled) and drops
	// delete:organization.
	events265 = []string{"create:backup", "create:export"}
	events273 = []string{
		"completed:request[export:annotations]", "completed:request[export:backup]", "completed:request[export:dataset]",
	}
)

// catalogue lists the events webhooks of type typ may have on this release.
func (s *Server) catalogue(typ string) []string {
	ev := slices.Clone(projectEvents23)
	if typ != "project" {
		ev = append(ev, orgOnlyEvents23...)
	}
	if s.at(2, 4, 2) {
		if typ == "project" {
			ev = append(ev, projectEvents242...)
		} else {
			ev = append(ev, orgEvents242...)
		}
	}
	switch {
	case s.at(2, 73, 0):
		ev = append(ev, events273...)
		ev = slices.DeleteFunc(ev, func(e string) bool { return e == "delete:organization" })
	case s.at(2, 65, 0):
		ev = append(ev, events265...)
	}
	slices.Sort(ev)
	return slices.Compact(ev)
}

// webhookEvents is GET /api/webhooks/events?type=project|organization
// (views.py events): {"webhook_type", "events"}. 2.73 answers event
// objects instead; that shape was not read, so the fake keeps the older one.
func (s *Server) webhookEvents(w http.ResponseWriter, r *http.Request) {
	typ := r.URL.Query().Get("type")
	if typ == "" {
		typ = "all"
	}
	var events []string
	switch typ {
	case "project", "organization":
		events = s.catalogue(typ)
	case "all":
		events = s.catalogue("organization")
	default:
		writeJSON(w, http.StatusBadRequest, "Incorrect value of type parameter")
		return
	}
	writeJSON(w, http.StatusOK, ordered{{"webhook_type", typ}, {"events", events}})
}

// webhookJSON is WebhookReadSerializer. 2.3.0 names the project field
// `project` (a plain model field); 2.4.0 adds `project_id`. last_status and
// last_delivery_date come from the webhook's last delivery and are absent
// without one. The caller holds s.mu.
func (s *Server) webhookJSON(h *webhook, base string) ordered {
	ev := slices.Clone(h.events)
	slices.Sort(ev)
	projectKey := "project_id"
	if !s.at(2, 4, 0) {
		projectKey = "project"
	}
	o := ordered{{"id", h.id}, {"url", base + "/api/webhooks/" + itoa(h.id)}, {"target_url", h.targetURL},
		{"description", h.description}, {"type", h.typ}, {"content_type", h.contentType}, {"is_active", h.isActive},
		{"enable_ssl", h.enableSSL}, {"created_date", cvatTime(h.created)}, {"updated_date", cvatTime(h.updated)},
		{"owner", s.user(base)}, {projectKey, optID(h.projectID)}, {"organization", s.orgID(h.org)}, {"events", ev}}
	if d := s.lastDelivery(h.id); d != nil {
		o = append(o, pair{"last_status", d.statusJSON()}, pair{"last_delivery_date", cvatTime(d.updated)})
	}
	return o
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
		// The field (a MultipleChoiceField over the release's events)
		// fails first, on an event it does not know; then
		// EventTypeValidator, on one the webhook's type may not have
		// (webhooks/serializers.py @2.3.0–@2.73.0).
		known := s.catalogue("organization") // every project event is one too
		allowed := s.catalogue(h.typ)
		for _, e := range *in.Events {
			if !slices.Contains(known, e) {
				badRequest(w, "events", fmt.Sprintf("%q is not a valid choice.", e))
				return false
			}
		}
		for _, e := range *in.Events {
			if !slices.Contains(allowed, e) {
				badRequest(w, "non_field_errors", "Invalid events list for "+h.typ+" webhook")
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
	for _, field := range []string{"target_url", "type", "events"} {
		if (field == "target_url" && in.TargetURL == nil) || (field == "type" && in.Type == nil) || (field == "events" && in.Events == nil) {
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
		if !s.at(2, 4, 0) {
			// 2.3.0 views.py perform_create: the organization of the
			// request, not the project's (2.4.0 takes the project's).
			h.org = org
		}
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
// The caller holds s.mu.
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
		s.dropHook(h.id)
		w.WriteHeader(http.StatusNoContent)
	}
}

// listWebhooks answers GET /api/webhooks in the request's organization
// context. The simple filters (target_url, type, project_id) exist from
// 2.4.0; 2.3.0 ignores them and lists everything.
func (s *Server) listWebhooks(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	filters := s.at(2, 4, 0)
	s.mu.Lock()
	var items []any
	for _, id := range s.hookIDs() {
		h := s.hooks[id]
		if h.org != r.Header.Get("X-Organization") {
			continue
		}
		if filters && ((q.Has("target_url") && h.targetURL != q.Get("target_url")) ||
			(q.Has("type") && h.typ != q.Get("type")) ||
			(q.Has("project_id") && itoa(h.projectID) != q.Get("project_id"))) {
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

// pingWebhook is POST /api/webhooks/{id}/ping. From 2.4.2 the API process
// sends the ping itself and answers that attempt's delivery; 2.3–2.4.1
// queue it like any event: the answer is the queued delivery (status_code
// null, response ""), and the worker sends it afterwards.
func (s *Server) pingWebhook(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	h := s.visibleHook(w, r)
	if h == nil {
		s.mu.Unlock()
		return
	}
	base := s.base(r)
	a := newAttempt(h.snap(), s.pingBody(h, base))
	if s.restOnly() {
		a.queued = s.queue(a)
		d := s.deliveryJSON(a.queued, false)
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, d)
		s.afterAnswer(w, r, a)
		return
	}
	s.mu.Unlock()
	sent := s.send(r.Context(), a)
	s.mu.Lock()
	var d ordered
	if sent.row != nil {
		d = s.deliveryJSON(sent.row, false)
	}
	s.mu.Unlock()
	if d == nil {
		// The receiver's answer was not UTF-8: the API process fails.
		http.Error(w, "<h1>Server Error (500)</h1>", http.StatusInternalServerError)
		return
	}
	writeJSON(w, http.StatusOK, d)
}
