package cloudtest

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"cloud.google.com/go/pubsub/v2"
)

// Collector receives the messages of a topic through a subscription of its
// own, acknowledging each: what a consumer of the outbox sees.
type Collector struct {
	mu     sync.Mutex
	msgs   []*pubsub.Message
	notify chan struct{} // closed and replaced at each message
	err    error         // why receiving stopped early
}

// Collect creates topic (an id) unless it exists and a subscription on it,
// and collects its messages from now until t's test ends. Create it
// before the service publishes: a subscription sees only later messages.
func (e *Emulators) Collect(t testing.TB, topic string) *Collector {
	t.Helper()
	e.Topic(t, topic)
	sub, err := e.env.CreateTempSubscription(context.Background(), topic, "cloudtest-collect-")
	if err != nil {
		t.Fatalf("cloudtest: %v", err)
	}
	c := &Collector{notify: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := sub.Subscriber().Receive(ctx, func(_ context.Context, m *pubsub.Message) {
			m.Ack()
			c.mu.Lock()
			c.msgs = append(c.msgs, m)
			close(c.notify)
			c.notify = make(chan struct{})
			c.mu.Unlock()
		})
		if err != nil {
			c.mu.Lock()
			c.err = err
			close(c.notify)
			c.notify = make(chan struct{})
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		// A subscriber stops only once its acks are sent: the outage, if
		// any, ends with the test.
		e.PubSubUp()
		cancel()
		<-done
		_ = sub.Delete(context.Background())
	})
	return c
}

// Messages returns the messages collected so far, in arrival order.
func (c *Collector) Messages() []*pubsub.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*pubsub.Message(nil), c.msgs...)
}

// Wait returns the messages once there are at least n, or an error when
// ctx ends first (or receiving failed).
func (c *Collector) Wait(ctx context.Context, n int) ([]*pubsub.Message, error) {
	for {
		c.mu.Lock()
		msgs, err, notify := append([]*pubsub.Message(nil), c.msgs...), c.err, c.notify
		c.mu.Unlock()
		switch {
		case len(msgs) >= n:
			return msgs, nil
		case err != nil:
			return msgs, fmt.Errorf("cloudtest: %d of %d messages, then receiving failed: %w", len(msgs), n, err)
		}
		select {
		case <-notify:
		case <-ctx.Done():
			return msgs, fmt.Errorf("cloudtest: %d of %d messages: %w", len(msgs), n, ctx.Err())
		}
	}
}
