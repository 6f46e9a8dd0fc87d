package inbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"cloud.google.com/go/pubsub/v2"

	"github.com/cvat-sync/cvat-sync/internal/task"
)

// Delivery is one decoded inbox message, held until its work is done.
type Delivery struct {
	Event task.Event
	msg   *pubsub.Message
}

// Ack settles the delivery: its work is done (or given up).
func (d *Delivery) Ack() {
	if d.msg != nil {
		d.msg.Ack()
	}
}

// Nack hands the delivery back to Pub/Sub for another worker.
func (d *Delivery) Nack() {
	if d.msg != nil {
		d.msg.Nack()
	}
}

// Attempt is Pub/Sub's delivery attempt of the message (1 for the first;
// 0 when the subscription has no dead-letter policy).
func (d *Delivery) Attempt() int {
	if d.msg == nil || d.msg.DeliveryAttempt == nil {
		return 0
	}
	return *d.msg.DeliveryAttempt
}

// NewDelivery wraps an event that did not come through Pub/Sub (tests,
// direct work): Ack and Nack do nothing.
func NewDelivery(e task.Event) *Delivery { return &Delivery{Event: e} }

// Unreadable kinds, reported to ReceiverConfig.Observe.
const (
	KindInvalid      = "invalid"       // not an inbox item: dead-lettered whole
	KindOtherVersion = "other_version" // an item of another wire version: left for a replica that reads it
)

// ReceiverConfig configures a Receiver.
type ReceiverConfig struct {
	Subscriber *pubsub.Subscriber
	// DeadLetters receives messages that are not inbox items, whole.
	DeadLetters *DeadLetters
	// Hold is the longest a message is held (leased) waiting for its work:
	// the lease is extended in steps of at most LeaseStep up to Hold.
	Hold time.Duration
	// Observe, if set, is told of each unreadable message's kind.
	Observe func(kind string)
	Logger  *slog.Logger
}

// Receiver receives and decodes the inbox.
type Receiver struct {
	cfg ReceiverConfig
}

// NewReceiver validates cfg and applies the inbox's lease settings to its
// subscriber.
func NewReceiver(cfg ReceiverConfig) (*Receiver, error) {
	if cfg.Subscriber == nil || cfg.DeadLetters == nil {
		return nil, errors.New("inbox: receiver needs Subscriber and DeadLetters")
	}
	if cfg.Hold < LeaseStep {
		return nil, fmt.Errorf("inbox: Hold %s is shorter than one lease step (%s)", cfg.Hold, LeaseStep)
	}
	if err := checkTiming(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Observe == nil {
		cfg.Observe = func(string) {}
	}
	leaseSettings(&cfg.Subscriber.ReceiveSettings, cfg.Hold)
	return &Receiver{cfg: cfg}, nil
}

// Receive calls handle with every readable delivery until ctx is done or
// receiving fails; handle must settle each delivery (Ack or Nack), now or
// later. It returns nil when ctx ends, after the client flushed its acks and
// nacks.
func (r *Receiver) Receive(ctx context.Context, handle func(context.Context, *Delivery)) error {
	err := r.cfg.Subscriber.Receive(ctx, func(ctx context.Context, m *pubsub.Message) {
		it, err := Decode(m)
		if err != nil {
			r.unreadable(ctx, m, err)
			return
		}
		handle(ctx, &Delivery{Event: it.TaskEvent(), msg: m})
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("receive inbox: %w", err)
	}
	return nil
}

// unreadable handles a message this version cannot decode. One of another
// wire version (a rolling upgrade) is nacked for a replica that reads it;
// anything else goes to the dead-letter topic whole, with the reason.
func (r *Receiver) unreadable(ctx context.Context, m *pubsub.Message, cause error) {
	if v := m.Attributes["v"]; v != "" && v != Version {
		r.cfg.Observe(KindOtherVersion)
		m.Nack()
		return
	}
	r.cfg.Observe(KindInvalid)
	r.cfg.Logger.Error("unreadable inbox message", "message_id", m.ID, "error", cause.Error())
	if err := r.cfg.DeadLetters.SendRaw(ctx, m.Data, m.Attributes, cause.Error()); err != nil {
		m.Nack()
		return
	}
	m.Ack()
}
