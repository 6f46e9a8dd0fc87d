package sink

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cvat-sync/cvat-sync/internal/task"
)

// Outbox publishes notices to the outbox topic, one message per notice, in
// order per task.
type Outbox struct {
	pub *pubsub.Publisher
	log *slog.Logger
	m   *outboxMetrics
}

// OutboxConfig configures an Outbox.
type OutboxConfig struct {
	// Publisher of the outbox topic. NewOutbox turns on its message ordering
	// (notices are ordered per task), so it must not have been used to
	// publish yet.
	Publisher *pubsub.Publisher
	// Timeout bounds one publish (default 30s): a publish stuck on an outage
	// gives up well inside the shutdown grace, and the export is retried.
	Timeout    time.Duration
	Registerer prometheus.Registerer // nil: no metrics
	Logger     *slog.Logger          // nil: discard
}

// NewOutbox validates cfg and returns an Outbox.
func NewOutbox(cfg OutboxConfig) (*Outbox, error) {
	if cfg.Publisher == nil {
		return nil, errors.New("sink: outbox needs a Publisher")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	m, err := newOutboxMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	cfg.Publisher.EnableMessageOrdering = true
	cfg.Publisher.PublishSettings.Timeout = cfg.Timeout
	return &Outbox{pub: cfg.Publisher, log: cfg.Logger, m: m}, nil
}

// Stop flushes pending notices and stops the publisher.
func (o *Outbox) Stop() { o.pub.Stop() }

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
		return "", fmt.Errorf("publish %s of task %d (export %s) to %s: %w", kind, n.Task.ID, n.ExportID, o.pub, classify(err))
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
	key := task.OrderingKey(n.Task.ID)
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
