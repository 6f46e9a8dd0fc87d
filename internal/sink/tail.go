package sink

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	"cloud.google.com/go/pubsub/v2"
)

// TailLine is one line Tail prints: a received message as JSON. Data is
// embedded as JSON when it is JSON (every outbox notice is), and as a JSON
// string otherwise.
type TailLine struct {
	ID          string            `json:"id"`
	Attributes  map[string]string `json:"attributes"`
	OrderingKey string            `json:"ordering_key"`
	PublishTime time.Time         `json:"publish_time"`
	Data        json.RawMessage   `json:"data"`
}

// Tail receives messages from sub and writes each to w as one line of JSON
// (a TailLine), acknowledging it once written: give it a subscription of its
// own, not one a consumer depends on. It returns after limit messages (0: no
// limit) or when ctx is done (returning nil), or on the first error.
func Tail(ctx context.Context, sub *pubsub.Subscriber, w io.Writer, limit int) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex // Receive calls back concurrently
		enc      = json.NewEncoder(w)
		n        int
		writeErr error
	)
	err := sub.Receive(ctx, func(_ context.Context, m *pubsub.Message) {
		mu.Lock()
		defer mu.Unlock()
		if writeErr != nil || (limit > 0 && n >= limit) {
			m.Nack()
			return
		}
		if err := enc.Encode(tailLine(m)); err != nil {
			writeErr = fmt.Errorf("tail %s: write message %s: %w", sub, m.ID, err)
			m.Nack()
			cancel()
			return
		}
		m.Ack()
		n++
		if limit > 0 && n >= limit {
			cancel()
		}
	})
	mu.Lock()
	defer mu.Unlock()
	if writeErr != nil {
		return writeErr
	}
	if err != nil {
		return fmt.Errorf("tail %s: %w", sub, err)
	}
	return nil
}

func tailLine(m *pubsub.Message) TailLine {
	l := TailLine{
		ID:          m.ID,
		Attributes:  m.Attributes,
		OrderingKey: m.OrderingKey,
		PublishTime: m.PublishTime.UTC(),
	}
	if l.Attributes == nil {
		l.Attributes = map[string]string{}
	}
	if json.Valid(m.Data) {
		l.Data = m.Data
	} else {
		l.Data, _ = json.Marshal(string(m.Data)) // a string always encodes
	}
	return l
}
