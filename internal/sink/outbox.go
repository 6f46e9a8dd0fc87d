package sink

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"

	"cloud.google.com/go/pubsub/v2"
	"github.com/prometheus/client_golang/prometheus"
)

// Outbox publishes notices to the outbox topic, one message per notice, in
// order per task.
type Outbox struct {
	pub *pubsub.Publisher
	log *slog.Logger
	m   *outboxMetrics
}

// NewOutbox returns an Outbox publishing with p. It turns on p's message
// ordering (notices are ordered per task), so p must not have been used to
// publish yet and must not have hedging enabled. Metrics are registered on
// reg (none if nil); log may be nil.
func NewOutbox(p *pubsub.Publisher, reg prometheus.Registerer, log *slog.Logger) *Outbox {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p.EnableMessageOrdering = true
	return &Outbox{pub: p, log: log, m: newOutboxMetrics(reg)}
}

// Publish sends n and waits for the server's answer, returning the message
// id the server assigned. An error means the notice may or may not have
// been published (at-least-once: consumers de-duplicate on export_id), and
// the caller should retry it.
//
// A failed publish pauses the publisher's ordering key; Publish resumes it
// before returning, so the next notice of the task (the retry) is sent
// rather than refused.
func (o *Outbox) Publish(ctx context.Context, n Notice) (string, error) {
	kind := string(n.Kind)
	if n.Kind != KindExported && n.Kind != KindDeleted {
		kind = "unknown"
	}
	id, err := o.publish(ctx, n)
	if err != nil {
		if kind != "unknown" {
			o.m.publishes.WithLabelValues(kind, outcomeError).Inc()
		}
		return "", fmt.Errorf("publish %s of task %d (export %s) to %s: %w", kind, n.Task.ID, n.ExportID, o.pub, err)
	}
	o.m.publishes.WithLabelValues(kind, outcomeOK).Inc()
	o.log.DebugContext(ctx, "notice published", "kind", kind, "task_id", n.Task.ID, "export_id", n.ExportID, "message_id", id)
	return id, nil
}

func (o *Outbox) publish(ctx context.Context, n Notice) (string, error) {
	if err := n.Validate(); err != nil {
		return "", err
	}
	data, err := n.Marshal()
	if err != nil {
		return "", err
	}
	key := OrderingKey(n.Task.ID)
	res := o.pub.Publish(ctx, &pubsub.Message{
		Data:        data,
		Attributes:  n.Attributes(),
		OrderingKey: key,
	})
	id, err := res.Get(ctx)
	if err != nil {
		// After a failure the client refuses every later message with this
		// key (ErrPublishingPaused) until it is resumed. The caller retries
		// this notice, which restores the order.
		o.pub.ResumePublish(key)
		return "", err
	}
	return id, nil
}

func encodeBase64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
