package cloud

import (
	"context"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// TestTrimSettled: the embedded Pub/Sub drops its kept messages only when
// every one is settled: one unacked and recent keeps them all.
func TestTrimSettled(t *testing.T) {
	srv := pstest.NewServer()
	defer srv.Close()
	conn, err := grpc.NewClient(srv.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	c, err := pubsub.NewClient(ctx, "p", option.WithGRPCConn(conn))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: "projects/p/topics/t"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{Name: "projects/p/subscriptions/s", Topic: "projects/p/topics/t"}); err != nil {
		t.Fatal(err)
	}
	pub := c.Publisher("t")
	defer pub.Stop()
	for range 3 {
		if _, err := pub.Publish(ctx, &pubsub.Message{Data: []byte("x")}).Get(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := trimIfSettled(srv, 2, time.Now()); n != 0 {
		t.Fatalf("dropped %d unacked messages", n)
	}
	if n := trimIfSettled(srv, 2, time.Now().Add(2*pstestRetains)); n != 3 {
		t.Fatalf("dropped %d messages past pstest's retention, want 3", n)
	}
	if n := len(srv.Messages()); n != 0 {
		t.Errorf("%d messages kept", n)
	}
	if n := trimIfSettled(srv, 2, time.Now()); n != 0 {
		t.Errorf("dropped %d from an empty server", n)
	}
}
