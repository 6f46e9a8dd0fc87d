package cvatapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Delivery is CVAT's WebhookDeliveryRead: one attempt to deliver one event
// to one webhook, as CVAT's delivery log records it.
type Delivery struct {
	ID              int64           `json:"id"`
	WebhookID       int64           `json:"webhook_id"`
	Event           string          `json:"event"`
	StatusCode      int             `json:"status_code"` // the receiver's status; 502 for a connection error (or the proxy's), 504 for a timeout; 0 while queued and not sent (2.3–2.4.1)
	Redelivery      bool            `json:"redelivery"`
	Attempt         int             `json:"attempt"`          // 1-based, 2.68+; 0 before
	RequestDuration int64           `json:"request_duration"` // ms, 2.68+
	CreatedDate     time.Time       `json:"created_date"`
	UpdatedDate     time.Time       `json:"updated_date"`
	ChangedFields   string          `json:"changed_fields"`
	Request         json.RawMessage `json:"request"` // the payload sent (keys in CVAT's jsonb order when read back)
	Response        string          `json:"-"`       // the receiver's answer (at most 1 MiB)
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

// OK reports whether the receiver accepted the delivery (2xx).
func (d Delivery) OK() bool { return d.StatusCode >= 200 && d.StatusCode < 300 }

// PayloadKey names the change a delivery carries, so that the attempts,
// retries and redeliveries of one payload group together: CVAT puts no
// delivery id in its requests, and a redelivered body has its keys in
// another order. It is the event, the resource's id and its updated_date
// ("update:task/9/2026-05-04T09:41:27.124377Z"); for a body without such a
// resource, the event and a digest of the body's content.
func (d Delivery) PayloadKey() string {
	var body map[string]json.RawMessage
	if json.Unmarshal(d.Request, &body) != nil {
		return d.Event + "/" + digest(d.Request)
	}
	_, res, _ := strings.Cut(d.Event, ":")
	if res == "" || d.Event == "ping" {
		res = "webhook"
	}
	var obj struct {
		ID          *int64 `json:"id"`
		UpdatedDate string `json:"updated_date"`
	}
	if json.Unmarshal(body[res], &obj) == nil && obj.ID != nil {
		return d.Event + "/" + strconv.FormatInt(*obj.ID, 10) + "/" + obj.UpdatedDate
	}
	delete(body, "webhook_id")
	canon, _ := json.Marshal(body) // map keys sorted: independent of CVAT's key order
	return d.Event + "/" + digest(canon)
}

func digest(b []byte) string {
	sum := sha256.Sum256(bytes.TrimSpace(b))
	return hex.EncodeToString(sum[:8])
}

// DeliveryRegime is how a CVAT release delivers webhooks and logs it
// (VERSIONS.md §1.10–§1.12). Every release with webhooks (2.3.0+) has the
// delivery log and redelivery API.
type DeliveryRegime int

const (
	// DeliveryQueued (2.3–2.4.1): a log row is written when the event is
	// queued, with no status until CVAT's worker sends it; one attempt.
	DeliveryQueued DeliveryRegime = iota + 1
	// DeliveryOnce (2.4.2–2.64): a row per attempt, written after it; one
	// attempt, never retried.
	DeliveryOnce
	// DeliveryRetried (2.65+): a status >= 500, 408 or 429 (connection
	// errors and timeouts included) is retried automatically, up to
	// MaxDeliveryAttempts attempts over about four days; every attempt is
	// a row.
	DeliveryRetried
)

// MaxDeliveryAttempts is how many attempts CVAT 2.65+ makes by default: one
// and 8 retries (CVAT_SEND_WEBHOOK_TASK_RETRIES).
const MaxDeliveryAttempts = 9

// RetriedStatus reports whether CVAT 2.65+ retries a delivery that got this
// status (webhooks/tasks.py): every other status is final.
func RetriedStatus(code int) bool {
	return code >= 500 || code == http.StatusRequestTimeout || code == http.StatusTooManyRequests
}

// DeliveryRegime returns the server's delivery regime, from its version.
func (c *Client) DeliveryRegime(ctx context.Context) (DeliveryRegime, error) {
	rel, err := c.hookRelease(ctx)
	switch {
	case err != nil:
		return 0, err
	case !rel.atLeast(2, 3, 0):
		return 0, fmt.Errorf("CVAT before 2.3.0 has no webhooks")
	case !rel.atLeast(2, 4, 2):
		return DeliveryQueued, nil
	case !rel.atLeast(2, 65, 0):
		return DeliveryOnce, nil
	}
	return DeliveryRetried, nil
}

// ListDeliveries calls fn for webhook webhookID's deliveries, newest first
// (CVAT orders them by updated_date and offers no filter), in the Client's
// organization context. Pages are requested by number on the configured
// base URL; a delivery recorded while listing shifts the pages, so one may
// be seen twice. fn returning ErrStop ends the listing early without error.
func (c *Client) ListDeliveries(ctx context.Context, webhookID int64, fn func(Delivery) error) error {
	q := url.Values{}
	q.Set("page_size", "100")
	path := "/api/webhooks/" + strconv.FormatInt(webhookID, 10) + "/deliveries"
	for n := 1; ; n++ {
		q.Set("page", strconv.Itoa(n))
		var p page[Delivery]
		if _, err := c.doJSON(ctx, call{method: "GET", route: "/api/webhooks/{id}/deliveries", path: path, query: q}, &p); err != nil {
			return fmt.Errorf("list deliveries of webhook %d (page %d): %w", webhookID, n, err)
		}
		for _, d := range p.Results {
			if err := fn(d); err != nil {
				if errors.Is(err, ErrStop) {
					return nil
				}
				return err
			}
		}
		if p.Next == nil || len(p.Results) == 0 {
			return nil
		}
	}
}

// Delivery returns one delivery of webhook webhookID. CVAT answers an
// unknown delivery id with a 500.
func (c *Client) Delivery(ctx context.Context, webhookID, deliveryID int64) (Delivery, error) {
	var d Delivery
	path := "/api/webhooks/" + strconv.FormatInt(webhookID, 10) + "/deliveries/" + strconv.FormatInt(deliveryID, 10)
	if _, err := c.doJSON(ctx, call{method: "GET", route: "/api/webhooks/{id}/deliveries/{delivery_id}", path: path,
		noRetry: []int{http.StatusInternalServerError}}, &d); err != nil {
		return Delivery{}, fmt.Errorf("get delivery %d of webhook %d: %w", deliveryID, webhookID, err)
	}
	return d, nil
}

// Redeliver asks CVAT to send delivery deliveryID of webhook webhookID
// again. CVAT queues the stored payload as a new delivery (redelivery true)
// and answers at once; the body it sends has the same content as the first
// one but its keys in another order, so another signature. An answer CVAT
// gave is never retried (a second POST would send the payload twice); only
// a request that got no answer is.
func (c *Client) Redeliver(ctx context.Context, webhookID, deliveryID int64) error {
	path := "/api/webhooks/" + strconv.FormatInt(webhookID, 10) + "/deliveries/" + strconv.FormatInt(deliveryID, 10) + "/redelivery"
	if _, err := c.doJSON(ctx, call{method: "POST", route: "/api/webhooks/{id}/deliveries/{delivery_id}/redelivery", path: path,
		noRetry: []int{http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout, http.StatusTooManyRequests, http.StatusRequestTimeout}}, nil); err != nil {
		return fmt.Errorf("redeliver delivery %d of webhook %d: %w", deliveryID, webhookID, err)
	}
	return nil
}
