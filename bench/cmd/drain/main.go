// Command drain consumes the inbox of a running `receiver serve` on its
// embedded default, for bench/run.sh's "drained" ingest row.
//
// Without CVAT the receiver runs no worker, so nothing pulls its inbox, and
// the embedded Pub/Sub server (pstest) rescans every unpulled message of the
// subscription every 10 ms while holding its server lock: past a few
// thousand messages that scan, not the ingress, bounds the durable path.
// A running worker keeps the backlog short. drain attaches to the receiver's
// embedded Pub/Sub (through <data dir>/embedded.json), replaces the inbox
// subscription by one without message ordering (pstest hands out one message
// per ordering key at a time, too slow to drain one task's flood) and acks
// what it pulls (unary pulls of up to 1000), so the figure is the publish
// path with a consumer that keeps up.
//
//	drain -data DIR [-topic cvat-sync-inbox] [-subscription cvat-sync-inbox]
//
// It prints {"message":"listening","addr":"<its subscription>"} once it
// pulls, and {"message":"drained","acked":N} when stopped (SIGTERM).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"

	"github.com/cvat-sync/cvat-sync/internal/cloud"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "drain:", err)
		os.Exit(1)
	}
}

func run() error {
	dataDir := flag.String("data", "", "the receiver's CVAT_SYNC_DATA_DIR")
	topic := flag.String("topic", "cvat-sync-inbox", "inbox topic")
	subID := flag.String("subscription", "cvat-sync-inbox", "inbox subscription to replace")
	flag.Parse()
	if *dataDir == "" {
		return fmt.Errorf("-data is required")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	// The receiver writes embedded.json once its servers listen.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(cloud.EndpointsFile(*dataDir)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %s after 30 s", cloud.EndpointsFile(*dataDir))
		}
		time.Sleep(50 * time.Millisecond)
	}
	env, err := cloud.New(ctx, cloud.Config{DataDir: *dataDir, Attach: true, Getenv: func(string) string { return "" }})
	if err != nil {
		return err
	}
	defer env.Close()

	admin := env.PubSub.SubscriptionAdminClient
	if err := admin.DeleteSubscription(ctx, &pubsubpb.DeleteSubscriptionRequest{Subscription: env.SubscriptionName(*subID)}); err != nil {
		return fmt.Errorf("delete %s: %w", *subID, err)
	}
	drainID := *subID + "-bench-drain"
	if _, err := admin.CreateSubscription(ctx, &pubsubpb.Subscription{
		Name: env.SubscriptionName(drainID), Topic: env.TopicName(*topic), AckDeadlineSeconds: 60,
	}); err != nil {
		return fmt.Errorf("create %s: %w", drainID, err)
	}
	// Unary pulls of up to 1000: pstest hands a streaming pull only what a
	// non-blocking send takes every 10 ms, about 50 messages a second.
	var acked int
	line, _ := json.Marshal(map[string]string{"message": "listening", "addr": env.SubscriptionName(drainID)})
	fmt.Println(string(line))
	for ctx.Err() == nil {
		//lint:ignore SA1019 without ReturnImmediately pstest holds an empty pull 500 ms
		res, err := admin.Pull(ctx, &pubsubpb.PullRequest{Subscription: env.SubscriptionName(drainID), MaxMessages: 1000, ReturnImmediately: true})
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			return fmt.Errorf("pull: %w", err)
		}
		if len(res.ReceivedMessages) == 0 {
			select {
			case <-ctx.Done():
			case <-time.After(5 * time.Millisecond):
			}
			continue
		}
		ids := make([]string, len(res.ReceivedMessages))
		for i, m := range res.ReceivedMessages {
			ids[i] = m.AckId
		}
		if err := admin.Acknowledge(ctx, &pubsubpb.AcknowledgeRequest{Subscription: env.SubscriptionName(drainID), AckIds: ids}); err != nil {
			if ctx.Err() != nil {
				break
			}
			return fmt.Errorf("acknowledge: %w", err)
		}
		acked += len(ids)
	}
	done, _ := json.Marshal(map[string]any{"message": "drained", "acked": acked})
	fmt.Println(string(done))
	return nil
}
