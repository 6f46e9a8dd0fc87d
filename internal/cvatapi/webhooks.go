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
	Events      []string // e.g. update:task, update:job, delete:task
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
	ProjectID        int64     `json:"project_id"`
	OrganizationID   int64     `json:"organization"`
	Events           []string  `json:"events"`
	LastStatus       int       `json:"last_status"`
	LastDeliveryDate time.Time `json:"last_delivery_date"`
}

// Delivery is CVAT's WebhookDeliveryRead.
type Delivery struct {
	ID          int64           `json:"id"`
	WebhookID   int64           `json:"webhook_id"`
	Event       string          `json:"event"`
	StatusCode  int             `json:"status_code"` // the receiver's status; CVAT records 502 for connection errors, 504 for timeouts
	Redelivery  bool            `json:"redelivery"`
	CreatedDate time.Time       `json:"created_date"`
	Request     json.RawMessage `json:"request"`
	Response    string          `json:"-"` // the receiver's answer (at most 1 MiB)
}

// UnmarshalJSON takes `response` as CVAT sends it: a string, despite the
// schema saying object.
func (d *Delivery) UnmarshalJSON(b []byte) error {
	type plain Delivery
	var w struct {
		plain
		Response json.RawMessage `json:"response"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*d = Delivery(w.plain)
	var s string
	if json.Unmarshal(w.Response, &s) == nil {
		d.Response = s
	} else if len(w.Response) > 0 && string(w.Response) != "null" {
		d.Response = string(w.Response)
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
	if len(spec.Events) == 0 {
		return Webhook{}, false, errors.New("no events")
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
	events := slices.Clone(spec.Events)
	slices.Sort(events)
	events = slices.Compact(events)
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

// PingWebhook asks CVAT to send a ping to webhook id now and returns CVAT's
// record of that delivery.
func (c *Client) PingWebhook(ctx context.Context, id int64) (Delivery, error) {
	var d Delivery
	if _, err := c.doJSON(ctx, call{method: "POST", route: "/api/webhooks/{id}/ping", path: "/api/webhooks/" + strconv.FormatInt(id, 10) + "/ping"}, &d); err != nil {
		return Delivery{}, fmt.Errorf("ping webhook %d: %w", id, err)
	}
	return d, nil
}
