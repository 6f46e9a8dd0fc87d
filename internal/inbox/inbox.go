// Package inbox is cvat-sync's work queue on Pub/Sub. It owns the queue's
// wire format (Item, version 1), publishing (Queue), receiving and decoding
// (Receiver), the dead-letter topic (DeadLetters), and the settings of the
// subscription and of its leases, with the timing invariants between them
// checked here rather than held by comments.
//
// The ingress enqueues a small item per task-relevant webhook delivery
// (never the whole body); convergence passes enqueue the tasks they find
// behind. Items of one task share the ordering key task.OrderingKey, so one
// task's work goes to one worker at a time, in order.
package inbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"cloud.google.com/go/pubsub/v2"

	"github.com/cvat-sync/cvat-sync/internal/event"
	"github.com/cvat-sync/cvat-sync/internal/task"
)

// Version is the wire version of Item, carried in the "v" attribute. The
// wire format is a frozen contract between replicas of different releases
// during a rolling upgrade: add optional fields, never change or remove one.
const Version = "1"

// Item is the wire form (version 1) of one unit of work: "something happened
// to this task (or project)".
type Item struct {
	Event          string `json:"event"`
	Resource       string `json:"resource"`
	Action         string `json:"action"`
	TaskID         int64  `json:"task_id,omitempty"`
	JobID          int64  `json:"job_id,omitempty"`
	ProjectID      int64  `json:"project_id,omitempty"`
	OrganizationID int64  `json:"organization_id,omitempty"`
	WebhookID      int64  `json:"webhook_id,omitempty"`
	Sender         string `json:"sender,omitempty"`
	Status         string `json:"status,omitempty"`
	// PreviousStatus was read by releases that decided the completed policy
	// from before_update; it is no longer written.
	PreviousStatus string    `json:"previous_status,omitempty"`
	UpdatedDate    time.Time `json:"updated_date,omitzero"`
	// TaskName is set for deletions, whose task can no longer be read from CVAT.
	TaskName   string    `json:"task_name,omitempty"`
	ReceivedAt time.Time `json:"received_at"`
	// Source is "webhook", "reconcile" or "backfill".
	Source    string `json:"source"`
	RequestID string `json:"request_id,omitempty"`
}

// FromEnvelope builds the work item of a parsed delivery.
func FromEnvelope(e event.Envelope, receivedAt time.Time, requestID string) Item {
	it := Item{
		Event: e.Event, Resource: e.Resource, Action: e.Action,
		TaskID: e.TaskID, JobID: e.JobID, ProjectID: e.ProjectID, OrganizationID: e.OrganizationID,
		WebhookID: e.WebhookID, Sender: e.Sender, Status: e.Status,
		UpdatedDate: e.UpdatedDate, ReceivedAt: receivedAt.UTC(), Source: string(task.SourceWebhook), RequestID: requestID,
	}
	if e.Resource == event.ResourceTask && e.Action == string(task.ActionDelete) {
		it.TaskName = taskName(e.Raw)
	}
	return it
}

func taskName(raw []byte) string {
	var b struct {
		Task struct {
			Name string `json:"name"`
		} `json:"task"`
	}
	_ = json.Unmarshal(raw, &b)
	return b.Task.Name
}

// ItemOf is the wire form of a domain event.
func ItemOf(e task.Event) Item {
	return Item{
		Event: e.Name, Resource: string(e.Resource), Action: string(e.Action),
		TaskID: e.TaskID, JobID: e.JobID, ProjectID: e.ProjectID, OrganizationID: e.OrganizationID,
		WebhookID: e.WebhookID, Sender: e.Sender, Status: e.Status, UpdatedDate: e.UpdatedDate,
		TaskName: e.TaskName, ReceivedAt: e.ReceivedAt.UTC(), Source: string(e.Source), RequestID: e.RequestID,
	}
}

// TaskEvent is the domain event an item carries.
func (it Item) TaskEvent() task.Event {
	return task.Event{
		Name: it.Event, Resource: task.Resource(it.Resource), Action: task.Action(it.Action),
		TaskID: it.TaskID, JobID: it.JobID, ProjectID: it.ProjectID, OrganizationID: it.OrganizationID,
		WebhookID: it.WebhookID, Sender: it.Sender, Status: it.Status, UpdatedDate: it.UpdatedDate,
		TaskName: it.TaskName, ReceivedAt: it.ReceivedAt, Source: task.Source(it.Source), RequestID: it.RequestID,
	}
}

// OrderingKey is the item's ordering key (see task.Event.Key).
func (it Item) OrderingKey() string { return it.TaskEvent().Key() }

// Message encodes it as a Pub/Sub message.
func (it Item) Message() (*pubsub.Message, error) {
	data, err := json.Marshal(it)
	if err != nil {
		return nil, fmt.Errorf("encode inbox item: %w", err)
	}
	return &pubsub.Message{
		Data:        data,
		OrderingKey: it.OrderingKey(),
		Attributes: map[string]string{
			"v":          Version,
			"event":      it.Event,
			"task_id":    id(it.TaskID),
			"project_id": id(it.ProjectID),
		},
	}, nil
}

func id(n int64) string {
	if n == 0 {
		return ""
	}
	return strconv.FormatInt(n, 10)
}

// ErrUnsupported means a message is not an inbox item this version can read.
var ErrUnsupported = errors.New("inbox: unsupported message")

// Decode reads an inbox message.
func Decode(m *pubsub.Message) (Item, error) {
	if v := m.Attributes["v"]; v != Version {
		return Item{}, fmt.Errorf("%w: version %q", ErrUnsupported, v)
	}
	var it Item
	if err := json.Unmarshal(m.Data, &it); err != nil {
		return Item{}, fmt.Errorf("%w: %v", ErrUnsupported, err)
	}
	return it, nil
}

// Queue enqueues items on the inbox topic.
type Queue struct {
	pub *pubsub.Publisher
}

// QueueConfig configures a Queue.
type QueueConfig struct {
	// Publisher publishes to the inbox topic (required). NewQueue adjusts
	// its settings; it is stopped by Queue.Stop.
	Publisher *pubsub.Publisher
	// Timeout bounds one publish: PublishTimeout when 0 or less, and a
	// longer one is cut to it (see PublishTimeout).
	Timeout time.Duration
}

// NewQueue returns a Queue publishing with cfg.Publisher. It turns on message
// ordering and a short batching delay, since every enqueue is waited for by
// a webhook request, and gives up on a publish after cfg.Timeout.
func NewQueue(cfg QueueConfig) (*Queue, error) {
	if cfg.Publisher == nil {
		return nil, errors.New("inbox: QueueConfig.Publisher is required")
	}
	timeout := cfg.Timeout
	if timeout <= 0 || timeout > PublishTimeout {
		timeout = PublishTimeout
	}
	p := cfg.Publisher
	p.EnableMessageOrdering = true
	p.PublishSettings.DelayThreshold = time.Millisecond
	p.PublishSettings.Timeout = timeout
	return &Queue{pub: p}, nil
}

// Enqueue publishes it and waits until Pub/Sub has stored it.
func (q *Queue) Enqueue(ctx context.Context, it Item) error {
	m, err := it.Message()
	if err != nil {
		return err
	}
	if _, err := q.pub.Publish(ctx, m).Get(ctx); err != nil {
		// A failed publish pauses its ordering key; resume it so the next
		// delivery (or CVAT's retry) can be stored.
		if m.OrderingKey != "" {
			q.pub.ResumePublish(m.OrderingKey)
		}
		return fmt.Errorf("enqueue %s for %s: %w", it.Event, orDefault(m.OrderingKey, "no key"), err)
	}
	return nil
}

// EnqueueEvent enqueues a domain event.
func (q *Queue) EnqueueEvent(ctx context.Context, e task.Event) error {
	return q.Enqueue(ctx, ItemOf(e))
}

// Stop flushes pending publishes and stops the publisher.
func (q *Queue) Stop() { q.pub.Stop() }

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// DeadLetters publishes work that was given up on to the dead-letter topic,
// with the reason, so an operator can see why. Since convergence retries
// every state that is behind, a dead letter is a record of trouble, not a
// loss.
type DeadLetters struct {
	pub *pubsub.Publisher
}

// DeadLettersConfig configures DeadLetters.
type DeadLettersConfig struct {
	// Publisher publishes to the dead-letter topic (required).
	Publisher *pubsub.Publisher
}

// NewDeadLetters returns DeadLetters publishing with cfg.Publisher.
func NewDeadLetters(cfg DeadLettersConfig) (*DeadLetters, error) {
	if cfg.Publisher == nil {
		return nil, errors.New("inbox: DeadLettersConfig.Publisher is required")
	}
	return &DeadLetters{pub: cfg.Publisher}, nil
}

// Send publishes it with attributes "reason" (at most 1024 bytes) and
// "attempts", and waits for the server.
func (d *DeadLetters) Send(ctx context.Context, it Item, reason string, attempts int) error {
	m, err := it.Message()
	if err != nil {
		return err
	}
	m.OrderingKey = ""
	m.Attributes["reason"] = reasonAttr(reason)
	m.Attributes["attempts"] = strconv.Itoa(attempts)
	if _, err := d.pub.Publish(ctx, m).Get(ctx); err != nil {
		return fmt.Errorf("dead-letter %s: %w", orDefault(it.OrderingKey(), it.Event), err)
	}
	return nil
}

// SendRaw publishes a message that could not be read, as it came, with the
// reason.
func (d *DeadLetters) SendRaw(ctx context.Context, data []byte, attrs map[string]string, reason string) error {
	m := &pubsub.Message{Data: data, Attributes: map[string]string{}}
	for k, v := range attrs {
		m.Attributes[k] = v
	}
	m.Attributes["reason"] = reasonAttr(reason)
	if _, err := d.pub.Publish(ctx, m).Get(ctx); err != nil {
		return fmt.Errorf("dead-letter an unreadable message: %w", err)
	}
	return nil
}

// Stop flushes and stops the publisher.
func (d *DeadLetters) Stop() { d.pub.Stop() }

// reasonAttr bounds a reason to 1024 bytes and keeps it valid UTF-8, which
// Pub/Sub requires of attribute values (a cut can split a rune).
func reasonAttr(reason string) string {
	if len(reason) > 1024 {
		reason = reason[:1024]
	}
	return strings.ToValidUTF8(reason, "")
}
