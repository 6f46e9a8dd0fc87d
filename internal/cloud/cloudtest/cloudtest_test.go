package cloudtest_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/storage"
	"github.com/googleapis/gax-go/v2"
	"go.uber.org/goleak"
	"google.golang.org/api/googleapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cvat-sync/cvat-sync/internal/cloud"
	"github.com/cvat-sync/cvat-sync/internal/cloud/cloudtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, cloudtest.LeakOptions()...) }

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func publish(ctx context.Context, env *cloud.Env, topic, data string) error {
	p := env.PubSub.Publisher(topic)
	defer p.Stop()
	_, err := p.Publish(ctx, &pubsub.Message{Data: []byte(data)}).Get(ctx)
	return err
}

// TestEnvReachesEmulators: the environment Env gives (emulator mode, as the
// service runs in tests) reaches both emulators, the collector sees what is
// published, and what is uploaded is in the bucket.
func TestEnvReachesEmulators(t *testing.T) {
	em := cloudtest.Start(t, cloudtest.Options{Project: "p1"})
	env := em.Open(t)
	if env.Mode != cloud.Emulator || env.Project != "p1" {
		t.Fatalf("mode %s project %s", env.Mode, env.Project)
	}
	if got := em.Env(); got["PUBSUB_EMULATOR_HOST"] != em.PubSubHost() || got["STORAGE_EMULATOR_HOST"] != em.StorageURL() || got["CVAT_SYNC_GCP_PROJECT"] != "p1" {
		t.Fatalf("Env: %v", got)
	}
	ctx := ctxFor(t, time.Minute)
	notices := em.Collect(t, "exports")
	for _, d := range []string{"one", "two"} {
		if err := publish(ctx, env, "exports", d); err != nil {
			t.Fatalf("publish: %v", err)
		}
	}
	msgs, err := notices.Wait(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if string(msgs[0].Data)+string(msgs[1].Data) != "onetwo" && string(msgs[0].Data)+string(msgs[1].Data) != "twoone" {
		t.Fatalf("collected %q %q", msgs[0].Data, msgs[1].Data)
	}
	if n := len(em.Messages("exports")); n != 2 {
		t.Fatalf("emulator recorded %d messages, want 2", n)
	}

	em.Bucket(t, "b-1")
	w := env.Storage.Bucket("b-1").Object("tasks/1/x.zip").NewWriter(ctx)
	if _, err := io.Copy(w, strings.NewReader("PK\x03\x04")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	objs := em.Objects("b-1", "tasks/")
	if len(objs) != 1 || objs[0].Name != "tasks/1/x.zip" || objs[0].Size != 4 {
		t.Fatalf("objects: %+v", objs)
	}
	obj, err := em.GCS().GetObject("b-1", "tasks/1/x.zip")
	if err != nil || !bytes.Equal(obj.Content, []byte("PK\x03\x04")) {
		t.Fatalf("GetObject: %v %q", err, obj.Content)
	}
}

// TestGCSFault: requests the hook picks are answered with its status, the
// others served; the hook is counted and can be removed.
func TestGCSFault(t *testing.T) {
	em := cloudtest.Start(t, cloudtest.Options{})
	env := em.Open(t)
	em.Bucket(t, "b-2")
	ctx := ctxFor(t, time.Minute)
	env.Storage.SetRetry(storage.WithPolicy(storage.RetryNever))
	em.SetGCSFault(func(r *http.Request) int {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/o/secret") {
			return http.StatusServiceUnavailable
		}
		return 0
	})
	_, err := env.Storage.Bucket("b-2").Object("secret").Attrs(ctx)
	var gerr *googleapi.Error
	if !errors.As(err, &gerr) || gerr.Code != http.StatusServiceUnavailable {
		t.Fatalf("faulted get: %v, want 503", err)
	}
	if _, err := env.Storage.Bucket("b-2").Object("other").Attrs(ctx); !errors.Is(err, storage.ErrObjectNotExist) {
		t.Fatalf("other get: %v, want not found", err)
	}
	if em.GCSFaults() != 1 {
		t.Fatalf("%d faults counted, want 1", em.GCSFaults())
	}
	em.SetGCSFault(nil)
	if _, err := env.Storage.Bucket("b-2").Object("secret").Attrs(ctx); !errors.Is(err, storage.ErrObjectNotExist) {
		t.Fatalf("get after the hook is gone: %v", err)
	}
}

// TestPubSubFault: a publish the hook fails fails with its code; other
// calls go through.
func TestPubSubFault(t *testing.T) {
	em := cloudtest.Start(t, cloudtest.Options{})
	env := em.Open(t)
	em.Topic(t, "inbox")
	em.Topic(t, "other")
	ctx := ctxFor(t, time.Minute)
	em.SetPubSubFault(cloudtest.FailPublish("inbox", status.Error(codes.PermissionDenied, "injected")))
	if err := publish(ctx, env, "inbox", "x"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("publish to the faulted topic: %v, want PermissionDenied", err)
	}
	if err := publish(ctx, env, "other", "x"); err != nil {
		t.Fatalf("publish to another topic: %v", err)
	}
	em.SetPubSubFault(nil)
	if err := publish(ctx, env, "inbox", "x"); err != nil {
		t.Fatalf("publish after the hook is gone: %v", err)
	}
	if em.PubSubFaults() < 1 {
		t.Fatal("no fault counted")
	}
}

// TestPubSubOutage: while Pub/Sub is down calls fail as Unavailable and
// the emulator keeps its state; once it is up again they succeed, and a
// collector started before the outage receives what is published after.
func TestPubSubOutage(t *testing.T) {
	em := cloudtest.Start(t, cloudtest.Options{})
	env := em.Open(t)
	notices := em.Collect(t, "exports")
	ctx := ctxFor(t, 2*time.Minute)
	if err := publish(ctx, env, "exports", "before"); err != nil {
		t.Fatal(err)
	}
	if _, err := notices.Wait(ctx, 1); err != nil {
		t.Fatal(err)
	}
	em.PubSubDown()
	short, cancel := context.WithTimeout(ctx, 5*time.Second)
	err := env.CheckPubSub(short, "exports")
	cancel()
	// The admin client retries Unavailable until its deadline.
	if code := status.Code(err); code != codes.Unavailable && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("call while down: %v, want Unavailable or the deadline", err)
	}
	em.PubSubUp()
	// gRPC reconnects with backoff: wait for the connection.
	if _, err := env.PubSub.TopicAdminClient.GetTopic(ctx, &pubsubpb.GetTopicRequest{Topic: env.TopicName("exports")},
		gax.WithGRPCOptions(grpc.WaitForReady(true))); err != nil {
		t.Fatalf("Pub/Sub did not come back: %v", err)
	}
	if err := publish(ctx, env, "exports", "after"); err != nil {
		t.Fatalf("publish after the outage: %v", err)
	}
	msgs, err := notices.Wait(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if string(msgs[1].Data) != "after" {
		t.Fatalf("second message %q, want after", msgs[1].Data)
	}
}
