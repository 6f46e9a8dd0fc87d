package cloud

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
)

// TempSubscription is a subscription of a reader's own on a topic (outbox
// tail's): it sees the messages published from its creation on, and should
// be deleted when the reader is done. Should the reader die first, Pub/Sub
// deletes it after TempSubscriptionExpiry without a subscriber.
type TempSubscription struct {
	ID    string // subscription id
	Name  string // full resource name
	Topic string // full resource name of its topic
	env   *Env
}

// TempSubscriptionExpiry is how long a temporary subscription outlives its
// last subscriber: Pub/Sub's minimum.
const TempSubscriptionExpiry = 24 * time.Hour

// tempAckDeadline leaves a reader time to print a message before Pub/Sub
// sends it again.
const tempAckDeadline = 30 * time.Second

// CreateTempSubscription creates a subscription named prefix plus a random
// suffix on topic (an id), with ordered delivery. On GCP the credentials
// need pubsub.subscriptions.create on the project and
// pubsub.topics.attachSubscription on the topic (both in roles/pubsub.editor);
// a refusal says so, and a missing topic is an error wrapping ErrNotFound.
func (e *Env) CreateTempSubscription(ctx context.Context, topic, prefix string) (*TempSubscription, error) {
	var b [4]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	id := prefix + hex.EncodeToString(b[:])
	s := &TempSubscription{ID: id, Name: e.SubscriptionName(id), Topic: e.TopicName(topic), env: e}
	_, err := e.PubSub.SubscriptionAdminClient.CreateSubscription(ctx, e.subscription(id, topic, SubscriptionOptions{
		AckDeadline: tempAckDeadline, Ordering: true, Expiration: TempSubscriptionExpiry,
	}))
	err = pubsubErr("subscription", s.Name, err,
		"its topic "+s.Topic+" does not exist",
		"pubsub.subscriptions.create on project "+e.Project+" and pubsub.topics.attachSubscription on topic "+s.Topic+" (both in roles/pubsub.editor)")
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Subscriber receives the subscription's messages.
func (s *TempSubscription) Subscriber() *pubsub.Subscriber { return s.env.PubSub.Subscriber(s.ID) }

// Delete removes the subscription; one already gone is no error. On GCP
// the credentials need pubsub.subscriptions.delete on it.
func (s *TempSubscription) Delete(ctx context.Context) error {
	err := s.env.PubSub.SubscriptionAdminClient.DeleteSubscription(ctx, &pubsubpb.DeleteSubscriptionRequest{Subscription: s.Name})
	err = pubsubErr("subscription", s.Name, err, "", "pubsub.subscriptions.delete on it (roles/pubsub.editor); it expires by itself after a day without a subscriber")
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}
