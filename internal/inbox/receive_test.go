package inbox

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/pstest"
	"github.com/google/go-cmp/cmp"

	"github.com/cvat-sync/cvat-sync/internal/cloud"
	"github.com/cvat-sync/cvat-sync/internal/cloud/cloudtest"
	"github.com/cvat-sync/cvat-sync/internal/eventually"
	"github.com/cvat-sync/cvat-sync/internal/task"
)

// pubsubClient starts the emulators with the subscriptions inbox and dead
// (each on its own topic) and returns them with a client on them.
func pubsubClient(t *testing.T) (*cloudtest.Emulators, *pubsub.Client) {
	t.Helper()
	em := cloudtest.Start(t, cloudtest.Options{Project: "p"})
	for _, id := range []string{"inbox", "dead"} {
		em.Subscription(t, id, id, cloud.SubscriptionOptions{AckDeadline: 20 * time.Second, Ordering: true})
	}
	return em, em.Open(t).PubSub
}

// TestReceive: an event round-trips through the queue as its domain value;
// garbage goes to the dead-letter topic as it came, with the reason; an item
// of another wire version is left for a replica that reads it.
func TestReceive(t *testing.T) {
	em, c := pubsubClient(t)
	dead, err := NewDeadLetters(DeadLettersConfig{Publisher: c.Publisher("dead")})
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Stop()
	q, err := NewQueue(QueueConfig{Publisher: c.Publisher("inbox")})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Stop()
	var mu sync.Mutex
	var kinds []string
	var got []task.Event
	r, err := NewReceiver(ReceiverConfig{Subscriber: c.Subscriber("inbox"), DeadLetters: dead, Hold: time.Hour,
		Observe: func(k string) { mu.Lock(); kinds = append(kinds, k); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- r.Receive(ctx, func(_ context.Context, d *Delivery) {
			mu.Lock()
			got = append(got, d.Event)
			mu.Unlock()
			d.Ack()
		})
	}()
	want := task.Event{Name: "update:job", Resource: task.ResourceJob, Action: task.ActionUpdate, TaskID: 9, JobID: 14, ProjectID: 1,
		OrganizationID: 2, WebhookID: 3, Sender: "user7", Status: "in progress", UpdatedDate: time.Date(2026, 5, 4, 9, 41, 27, 118604000, time.UTC),
		ReceivedAt: time.Date(2026, 5, 4, 9, 41, 28, 0, time.UTC), Source: task.SourceWebhook, RequestID: "r1"}
	if err := q.EnqueueEvent(ctx, want); err != nil {
		t.Fatal(err)
	}
	pub := c.Publisher("inbox")
	defer pub.Stop()
	for _, m := range []*pubsub.Message{
		{Data: []byte("not json"), Attributes: map[string]string{"v": "1"}},
		{Data: []byte(`{}`), Attributes: map[string]string{"v": "2"}},
	} {
		if _, err := pub.Publish(ctx, m).Get(ctx); err != nil {
			t.Fatal(err)
		}
	}
	eventually.Within(t, 30*time.Second, "the event and both unreadable kinds", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 1 && len(kinds) >= 2
	})
	if diff := cmp.Diff(want, got[0]); diff != "" {
		t.Errorf("received event (-want +got):\n%s", diff)
	}
	if got[0].Key() != "task-9" {
		t.Errorf("key %q", got[0].Key())
	}
	var deadMsgs []*pstest.Message
	eventually.Within(t, 30*time.Second, "the dead letter", func() bool {
		deadMsgs = nil
		for _, m := range em.PubSub().Messages() {
			if m.Attributes["reason"] != "" {
				deadMsgs = append(deadMsgs, m)
			}
		}
		return len(deadMsgs) == 1
	})
	if m := deadMsgs[0]; string(m.Data) != "not json" || m.Attributes["v"] != "1" || !strings.Contains(m.Attributes["reason"], "unsupported") {
		t.Errorf("dead letter %q %v", m.Data, m.Attributes)
	}
	mu.Lock()
	if !strings.Contains(strings.Join(kinds, ","), KindOtherVersion) || !strings.Contains(strings.Join(kinds, ","), KindInvalid) {
		t.Errorf("observed %v", kinds)
	}
	mu.Unlock()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Receive = %v after cancel, want nil", err)
	}
}

func TestReceiverNeedsALongEnoughHold(t *testing.T) {
	_, c := pubsubClient(t)
	if _, err := NewReceiver(ReceiverConfig{Subscriber: c.Subscriber("inbox"), DeadLetters: &DeadLetters{}, Hold: time.Second}); err == nil {
		t.Error("a hold shorter than one lease step was accepted")
	}
}
