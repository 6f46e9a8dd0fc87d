package cvatapi

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// WebhookSpec is the webhook EnsureWebhook makes CVAT have.
type WebhookSpec struct {
	TargetURL   string
	Secret      string   // HMAC key for X-Signature-256; required
	Events      []string // e.g. update:task, update:job, delete:task; empty: DefaultWebhookEvents for the server and scope
	ProjectID   int64    // non-zero: a project webhook; zero: an organization webhook
	Org         string   // organization slug of an organization webhook; default Config.Org
	Description string   // human text; EnsureWebhook appends the secret's fingerprint
	EnableSSL   bool     // CVAT verifies the target's TLS certificate
}

// Webhook is CVAT's WebhookRead.
type Webhook struct {
	ID               int64     `json:"id"`
	URL              string    `json:"url"`
	TargetURL        string    `json:"target_url"`
	Description      string    `json:"description"`
	Type             string    `json:"type"` // project | organization
	ContentType      string    `json:"content_type"`
	IsActive         bool      `json:"is_active"`
	EnableSSL        bool      `json:"enable_ssl"`
	ProjectID        int64     `json:"project_id"` // 2.3.0 calls it project
	OrganizationID   int64     `json:"organization"`
	Events           []string  `json:"events"`
	LastStatus       int       `json:"last_status"` // 0: no delivery, or the last one not sent yet
	LastDeliveryDate time.Time `json:"last_delivery_date"`
}

// UnmarshalJSON also reads 2.3.0's webhook, whose project field is named
// `project` (webhooks/serializers.py @2.3.0); without it a project webhook
// would never match its spec and every register would create another one.
func (w *Webhook) UnmarshalJSON(b []byte) error {
	type plain Webhook
	var x struct {
		plain
		Project *int64 `json:"project"`
	}
	if err := json.Unmarshal(b, &x); err != nil {
		return err
	}
	*w = Webhook(x.plain)
	if w.ProjectID == 0 && x.Project != nil {
		w.ProjectID = *x.Project
	}
	return nil
}

// SecretFingerprint is what EnsureWebhook stores in the webhook's
// description to tell, later, whether CVAT holds the configured secret: CVAT
// never returns a webhook's secret. It is a keyed hash (HMAC-SHA256 with the
// secret as key, truncated to 48 bits), which reveals no more about the
// secret than any signed delivery already does.
func SecretFingerprint(secret string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("cvat-sync webhook secret fingerprint v1"))
	return hex.EncodeToString(m.Sum(nil))[:12]
}

const fingerprintTag = "[cvat-sync secret "

// describe builds the description EnsureWebhook writes (CVAT allows 128
// characters).
func describe(desc, secret string) string {
	tag := fingerprintTag + SecretFingerprint(secret) + "]"
	desc = strings.TrimSpace(desc)
	if room := 128 - len(tag) - 1; len(desc) > room {
		desc = strings.TrimSpace(desc[:room])
	}
	if desc == "" {
		return tag
	}
	return desc + " " + tag
}

// EnsureWebhook makes CVAT have the webhook spec describes: it creates it,
// or updates (PATCH) the existing webhook with the same target URL in the
// same scope. changed is false when CVAT already matched, so running it
// twice changes nothing.
//
// Secret idempotency: CVAT never returns a webhook's secret, so the secret's
// fingerprint (SecretFingerprint) is kept at the end of the description. The
// secret is sent when the webhook is created and whenever the fingerprint
// differs (a rotated secret, or a webhook someone else created); a secret
// changed in CVAT's UI without touching the description goes unnoticed.
func (c *Client) EnsureWebhook(ctx context.Context, spec WebhookSpec) (Webhook, bool, error) {
	w, changed, err := c.ensureWebhook(ctx, spec)
	if err != nil {
		return Webhook{}, false, fmt.Errorf("ensure webhook for %s: %w", spec.TargetURL, err)
	}
	return w, changed, nil
}

func (c *Client) ensureWebhook(ctx context.Context, spec WebhookSpec) (Webhook, bool, error) {
	if _, err := url.ParseRequestURI(spec.TargetURL); err != nil || !strings.HasPrefix(spec.TargetURL, "http") {
		return Webhook{}, false, errors.New("TargetURL must be an absolute http(s) URL")
	}
	if spec.Secret == "" {
		return Webhook{}, false, errors.New("a secret is required: without one CVAT sends unsigned deliveries")
	}
	if len(spec.Secret) > 64 {
		return Webhook{}, false, errors.New("CVAT accepts secrets of at most 64 characters")
	}
	typ := "project"
	org := spec.Org
	if org == "" {
		org = c.cfg.Org
	}
	if spec.ProjectID == 0 {
		typ = "organization"
		if org == "" {
			return Webhook{}, false, errors.New("an organization webhook needs an organization (or set ProjectID for a project webhook)")
		}
	}
	hdr := map[string]string{}
	if org != "" {
		hdr["X-Organization"] = org
	}
	rel, err := c.hookRelease(ctx)
	if err != nil {
		return Webhook{}, false, err
	}
	events, err := c.webhookEvents(ctx, rel, spec, typ)
	if err != nil {
		return Webhook{}, false, err
	}
	if typ == "project" {
		if err := c.checkProjectWebhookOrg(ctx, rel, spec.ProjectID, org, hdr); err != nil {
			return Webhook{}, false, err
		}
	}
	desc := describe(spec.Description, spec.Secret)

	existing, err := c.findWebhook(ctx, spec.TargetURL, typ, spec.ProjectID, hdr)
	if err != nil {
		return Webhook{}, false, err
	}
	if existing == nil {
		body := map[string]any{
			"target_url":   spec.TargetURL,
			"description":  desc,
			"type":         typ,
			"content_type": "application/json",
			"secret":       spec.Secret,
			"is_active":    true,
			"enable_ssl":   spec.EnableSSL,
			"events":       events,
		}
		if typ == "project" {
			body["project_id"] = spec.ProjectID
		}
		var w Webhook
		if _, err := c.doJSON(ctx, call{method: "POST", route: "/api/webhooks", path: "/api/webhooks", body: body, header: hdr}, &w); err != nil {
			return Webhook{}, false, err
		}
		c.log.LogAttrs(ctx, slog.LevelInfo, "created CVAT webhook", slog.Int64("webhook_id", w.ID), slog.String("type", typ))
		return w, true, nil
	}

	patch := map[string]any{}
	have := slices.Clone(existing.Events)
	slices.Sort(have)
	if !slices.Equal(have, events) {
		patch["events"] = events
	}
	if existing.Description != desc {
		patch["description"] = desc
	}
	if !strings.HasSuffix(existing.Description, fingerprintTag+SecretFingerprint(spec.Secret)+"]") {
		patch["secret"] = spec.Secret
	}
	if !existing.IsActive {
		patch["is_active"] = true
	}
	if existing.EnableSSL != spec.EnableSSL {
		patch["enable_ssl"] = spec.EnableSSL
	}
	if existing.ContentType != "application/json" {
		patch["content_type"] = "application/json"
	}
	if len(patch) == 0 {
		return *existing, false, nil
	}
	id := strconv.FormatInt(existing.ID, 10)
	var w Webhook
	if _, err := c.doJSON(ctx, call{method: "PATCH", route: "/api/webhooks/{id}", path: "/api/webhooks/" + id, body: patch, header: hdr}, &w); err != nil {
		return Webhook{}, false, err
	}
	fields := make([]string, 0, len(patch))
	for k := range patch {
		fields = append(fields, k)
	}
	slices.Sort(fields)
	c.log.LogAttrs(ctx, slog.LevelInfo, "updated CVAT webhook", slog.Int64("webhook_id", w.ID), slog.String("fields", strings.Join(fields, ",")))
	return w, true, nil
}

// findWebhook returns the webhook with this target URL in the scope, the
// oldest if there are several.
func (c *Client) findWebhook(ctx context.Context, target, typ string, projectID int64, hdr map[string]string) (*Webhook, error) {
	q := url.Values{}
	q.Set("target_url", target)
	q.Set("type", typ)
	if projectID != 0 {
		q.Set("project_id", strconv.FormatInt(projectID, 10))
	}
	q.Set("sort", "id")
	q.Set("page_size", "100")
	var found []Webhook
	for n := 1; ; n++ {
		q.Set("page", strconv.Itoa(n))
		var p page[Webhook]
		if _, err := c.doJSON(ctx, call{method: "GET", route: "/api/webhooks", path: "/api/webhooks", query: q, header: hdr}, &p); err != nil {
			return nil, err
		}
		for _, w := range p.Results {
			// Filter again: an old server may ignore a filter parameter.
			if w.TargetURL == target && w.Type == typ && (projectID == 0 || w.ProjectID == projectID) {
				found = append(found, w)
			}
		}
		if p.Next == nil || len(p.Results) == 0 {
			break
		}
	}
	if len(found) == 0 {
		return nil, nil
	}
	if len(found) > 1 {
		c.log.LogAttrs(ctx, slog.LevelWarn, "several CVAT webhooks point at the same target; managing the oldest",
			slog.Int("count", len(found)), slog.Int64("webhook_id", found[0].ID))
	}
	return &found[0], nil
}

// pingWait bounds how long PingWebhook waits for CVAT 2.3–2.4.1's worker to
// send a queued ping (it has a 10 s timeout of its own).
const pingWait = 45 * time.Second

// PingWebhook asks CVAT to send a ping to webhook id and returns CVAT's
// record of that delivery. From 2.4.2 CVAT sends it while answering; 2.3–2.4.1
// only queue it (the record comes back with no status), so PingWebhook polls
// the record until CVAT's worker has filled in the receiver's status, for at
// most 45 s.
func (c *Client) PingWebhook(ctx context.Context, id int64) (Delivery, error) {
	var d Delivery
	if _, err := c.doJSON(ctx, call{method: "POST", route: "/api/webhooks/{id}/ping", path: "/api/webhooks/" + strconv.FormatInt(id, 10) + "/ping"}, &d); err != nil {
		return Delivery{}, fmt.Errorf("ping webhook %d: %w", id, err)
	}
	if d.StatusCode != 0 {
		return d, nil
	}
	ctx, cancel := context.WithTimeout(ctx, pingWait)
	defer cancel()
	wait := c.cfg.PollInterval
	for {
		if err := sleep(ctx, wait); err != nil {
			return d, fmt.Errorf("ping webhook %d: CVAT queued delivery %d but recorded no answer within %s: %w", id, d.ID, pingWait, err)
		}
		wait = min(wait*2, c.cfg.PollMaxInterval)
		got, err := c.Delivery(ctx, id, d.ID)
		if err != nil {
			return d, fmt.Errorf("ping webhook %d: %w", id, err)
		}
		if got.StatusCode != 0 {
			return got, nil
		}
	}
}

// FindWebhook returns the webhook EnsureWebhook manages for spec: the one
// with spec's target URL in spec's scope whose description carries the
// fingerprint of spec's secret. found is false when there is none.
func (c *Client) FindWebhook(ctx context.Context, spec WebhookSpec) (w Webhook, found bool, err error) {
	typ, org := "project", spec.Org
	if org == "" {
		org = c.cfg.Org
	}
	if spec.ProjectID == 0 {
		typ = "organization"
	}
	hdr := map[string]string{}
	if org != "" {
		hdr["X-Organization"] = org
	}
	got, err := c.findWebhook(ctx, spec.TargetURL, typ, spec.ProjectID, hdr)
	if err != nil {
		return Webhook{}, false, fmt.Errorf("find webhook for %s: %w", spec.TargetURL, err)
	}
	if got == nil || !strings.HasSuffix(got.Description, fingerprintTag+SecretFingerprint(spec.Secret)+"]") {
		return Webhook{}, false, nil
	}
	return *got, true, nil
}

// Which events webhooks may have, by release (webhooks/event_type.py).
var (
	// Events cvat-sync wants: task changes, job updates, and what deletes
	// or adds tasks wholesale.
	wantedEvents = []string{"create:task", "delete:task", "update:job", "update:project", "update:task"}
	// From 2.4.2 (#5916): job creation and deletion for both types, and
	// delete:project for project webhooks (2.3–2.4.1 refuse a project
	// webhook with it: 400 "Invalid events list for project webhook").
	jobEvents = []string{"create:job", "delete:job"}
)

// DefaultWebhookEvents is what EnsureWebhook subscribes when the spec names
// no events: task create/update/delete, job and project updates, and, as
// far as the release (CVAT's version string) allows for the scope,
// delete:project (organization webhooks always, project webhooks from
// 2.4.2), create:job and delete:job (2.4.2), and create:project
// (organization webhooks). An unparsable version is taken as current.
func DefaultWebhookEvents(version string, projectWebhook bool) []string {
	rel, _ := parseRelease(version)
	return defaultEvents(rel, projectWebhook)
}

func defaultEvents(rel hookRelease, projectWebhook bool) []string {
	ev := slices.Clone(wantedEvents)
	if rel.atLeast(2, 4, 2) {
		ev = append(ev, jobEvents...)
	}
	if !projectWebhook {
		ev = append(ev, "create:project", "delete:project")
	} else if rel.atLeast(2, 4, 2) {
		ev = append(ev, "delete:project")
	}
	slices.Sort(ev)
	return ev
}

// webhookEvents is the event list to subscribe: spec's, without the events
// this release does not offer for the scope (CVAT would refuse the whole
// webhook), or DefaultWebhookEvents.
func (c *Client) webhookEvents(ctx context.Context, rel hookRelease, spec WebhookSpec, typ string) ([]string, error) {
	if len(spec.Events) == 0 {
		return defaultEvents(rel, typ == "project"), nil
	}
	var events, dropped []string
	for _, e := range spec.Events {
		if offered(rel, typ, e) {
			events = append(events, e)
		} else {
			dropped = append(dropped, e)
		}
	}
	slices.Sort(events)
	events = slices.Compact(events)
	if len(dropped) > 0 {
		c.log.LogAttrs(ctx, slog.LevelWarn, "CVAT does not offer these events for this webhook type; not subscribing them",
			slog.String("type", typ), slog.String("events", strings.Join(dropped, ",")))
	}
	if len(events) == 0 {
		return nil, fmt.Errorf("none of the events %v is offered for %s webhooks by this CVAT release", spec.Events, typ)
	}
	return events, nil
}

// offered reports whether release rel lets a webhook of type typ subscribe
// to event. Only what differs between releases is refused; anything else is
// left for CVAT to judge.
func offered(rel hookRelease, typ, event string) bool {
	switch event {
	case "create:job", "delete:job", "create:membership", "delete:organization":
		if !rel.atLeast(2, 4, 2) {
			return false
		}
	}
	switch event {
	case "delete:project":
		return typ != "project" || rel.atLeast(2, 4, 2)
	case "create:project", "update:organization", "delete:organization", "create:invitation", "delete:invitation",
		"create:membership", "update:membership", "delete:membership":
		return typ != "project"
	}
	return true
}

// checkProjectWebhookOrg refuses a project webhook for a project in an
// organization when no organization context is given. From 2.4.0 CVAT gives
// the webhook the project's organization and then shows it only in that
// organization's context: registered from outside, it could never be found
// again (every register would create another). 2.3.0 is worse: the webhook
// takes the organization of the request that creates it and fires only for
// resources of that organization (webhooks/views.py perform_create,
// signals.py select_webhooks @2.3.0), so it would never fire.
func (c *Client) checkProjectWebhookOrg(ctx context.Context, rel hookRelease, projectID int64, org string, hdr map[string]string) error {
	if org != "" {
		return nil // the project is looked up in that context when the webhook is created
	}
	var p Project
	if _, err := c.doJSON(ctx, call{method: "GET", route: "/api/projects/{id}", path: "/api/projects/" + strconv.FormatInt(projectID, 10), header: hdr}, &p); err != nil {
		return fmt.Errorf("get project %d: %w", projectID, err)
	}
	if p.OrganizationID == 0 {
		return nil
	}
	why := "CVAT shows its webhooks only in that organization's context"
	if !rel.atLeast(2, 4, 0) {
		why = "CVAT 2.3.0 fires a project webhook only when it is created in the project's organization"
	}
	return fmt.Errorf("project %d belongs to organization %d: %s, so give that organization's slug", projectID, p.OrganizationID, why)
}

// hookRelease is the server's release as the webhook rules need it.
//
// TODO(lead): switch to cvatapi.Version / (*Client).Version once the
// export work lands them; this private copy exists until then.
type hookRelease [3]int

// parseRelease reads "X.Y.Z" (also "X.Y", "X.Y.Z.devN"); an unparsable
// version is taken as current, like the rest of the client does.
func parseRelease(s string) (hookRelease, bool) {
	var r hookRelease
	n, _ := fmt.Sscanf(strings.TrimPrefix(strings.TrimSpace(s), "v"), "%d.%d.%d", &r[0], &r[1], &r[2])
	if n < 2 {
		return hookRelease{999}, false
	}
	return r, true
}

func (r hookRelease) atLeast(major, minor, patch int) bool {
	return slices.Compare(r[:], []int{major, minor, patch}) >= 0
}

func (c *Client) hookRelease(ctx context.Context) (hookRelease, error) {
	a, err := c.About(ctx)
	if err != nil {
		return hookRelease{}, fmt.Errorf("read CVAT's version: %w", err)
	}
	rel, ok := parseRelease(a.Version)
	if !ok {
		c.log.LogAttrs(ctx, slog.LevelWarn, "unparsable CVAT version; applying the newest webhook rules", slog.String("cvat_version", a.Version))
	}
	return rel, nil
}
