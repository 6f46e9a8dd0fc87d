package cloud_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/storage"
	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cvat-sync/cvat-sync/internal/cloud"
	"github.com/cvat-sync/cvat-sync/internal/cloud/cloudtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, cloudtest.LeakOptions()...) }

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// TestPlan: the mode and endpoints New would use, from the settings and the
// environment, without a connection.
func TestPlan(t *testing.T) {
	for _, tt := range []struct {
		name    string
		cfg     cloud.Config
		env     map[string]string
		want    cloud.Plan
		wantErr string
		// what is created rather than checked: a local server's resources,
		// never GCP's (a real bucket beside a Pub/Sub emulator is checked)
		createsTopics, createsBuckets bool
	}{
		{name: "nothing set: embedded", cfg: cloud.Config{DataDir: "d"},
			want: cloud.Plan{Mode: cloud.Embedded, Project: cloud.LocalProject}, createsTopics: true, createsBuckets: true},
		{name: "embedded without a data dir", cfg: cloud.Config{}, wantErr: "CVAT_SYNC_DATA_DIR"},
		{name: "a project: GCP", cfg: cloud.Config{Project: "prod", DataDir: "d"},
			want: cloud.Plan{Mode: cloud.GCP, Project: "prod"}},
		{name: "a project, no data dir: GCP needs none", cfg: cloud.Config{Project: "prod"},
			want: cloud.Plan{Mode: cloud.GCP, Project: "prod"}},
		{name: "both emulators", cfg: cloud.Config{}, env: map[string]string{"PUBSUB_EMULATOR_HOST": "localhost:8085", "STORAGE_EMULATOR_HOST": "localhost:4443"},
			want:          cloud.Plan{Mode: cloud.Emulator, Project: cloud.LocalProject, PubSubEmulator: "localhost:8085", StorageEmulator: "http://localhost:4443"},
			createsTopics: true, createsBuckets: true},
		{name: "emulators with a project", cfg: cloud.Config{Project: "p"}, env: map[string]string{"PUBSUB_EMULATOR_HOST": "ps:1", "STORAGE_EMULATOR_HOST": "https://gcs:2/"},
			want:          cloud.Plan{Mode: cloud.Emulator, Project: "p", PubSubEmulator: "ps:1", StorageEmulator: "https://gcs:2"},
			createsTopics: true, createsBuckets: true},
		{name: "Pub/Sub emulator only: GCP's storage", cfg: cloud.Config{Project: "p"}, env: map[string]string{"PUBSUB_EMULATOR_HOST": "ps:1"},
			want: cloud.Plan{Mode: cloud.Emulator, Project: "p", PubSubEmulator: "ps:1"}, createsTopics: true},
		{name: "GCS emulator only: GCP's Pub/Sub", cfg: cloud.Config{Project: "p"}, env: map[string]string{"STORAGE_EMULATOR_HOST": "gcs:2"},
			want: cloud.Plan{Mode: cloud.Emulator, Project: "p", StorageEmulator: "http://gcs:2"}, createsBuckets: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Getenv = env(tt.env)
			got, err := tt.cfg.Plan()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one naming %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("plan (-want +got):\n%s", diff)
			}
			if topics, buckets := cloud.Creates(got); topics != tt.createsTopics || buckets != tt.createsBuckets {
				t.Errorf("creates topics %v, buckets %v; want %v, %v", topics, buckets, tt.createsTopics, tt.createsBuckets)
			}
		})
	}
}

// TestEnsureCreatesOnEmulators: on emulators missing resources are created
// as asked, and ensuring them again changes nothing.
func TestEnsureCreatesOnEmulators(t *testing.T) {
	em := cloudtest.Start(t, cloudtest.Options{Project: "p"})
	e := em.Open(t)
	ctx := context.Background()
	opts := cloud.SubscriptionOptions{AckDeadline: 20 * time.Second, Ordering: true, DeadLetterTopic: "dead",
		MaxAttempts: 7, MinBackoff: 10 * time.Second, MaxBackoff: time.Minute}
	for range 2 {
		for _, err := range []error{
			e.EnsureTopic(ctx, "inbox"), e.EnsureTopic(ctx, "dead"),
			e.EnsureSubscription(ctx, "inbox", "inbox", opts), e.EnsureBucket(ctx, "bucket-1"),
		} {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	sub, err := e.PubSub.SubscriptionAdminClient.GetSubscription(ctx, &pubsubpb.GetSubscriptionRequest{Subscription: e.SubscriptionName("inbox")})
	if err != nil {
		t.Fatal(err)
	}
	got := []any{sub.Topic, sub.AckDeadlineSeconds, sub.EnableMessageOrdering, sub.DeadLetterPolicy.GetDeadLetterTopic(),
		sub.DeadLetterPolicy.GetMaxDeliveryAttempts(), sub.RetryPolicy.GetMinimumBackoff().AsDuration(), sub.RetryPolicy.GetMaximumBackoff().AsDuration()}
	want := []any{"projects/p/topics/inbox", int32(20), true, "projects/p/topics/dead", int32(7), 10 * time.Second, time.Minute}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("subscription (-want +got):\n%s", diff)
	}
	if _, err := e.Storage.Bucket("bucket-1").Attrs(ctx); err != nil {
		t.Errorf("bucket: %v", err)
	}
}

// TestEnsureBucketCreatedMeanwhile: a bucket that appears between the
// check and the creation (409) is there, which is what was asked.
func TestEnsureBucketCreatedMeanwhile(t *testing.T) {
	em := cloudtest.Start(t, cloudtest.Options{})
	e := em.Open(t)
	em.Bucket(t, "bucket-2")
	em.SetGCSFault(func(r *http.Request) int {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/b/bucket-2") {
			return http.StatusNotFound
		}
		return 0
	})
	if err := e.EnsureBucket(context.Background(), "bucket-2"); err != nil {
		t.Fatalf("EnsureBucket: %v", err)
	}
	if em.GCSFaults() != 1 {
		t.Fatalf("%d bucket gets answered 404, want 1", em.GCSFaults())
	}
}

// TestEnsureChecksOnGCP: on GCP nothing is created; a missing resource is
// an error wrapping ErrNotFound that says how to create it, a refusal one
// wrapping ErrPermissionDenied that names the role.
func TestEnsureChecksOnGCP(t *testing.T) {
	em := cloudtest.Start(t, cloudtest.Options{})
	e := em.Open(t)
	cloud.CheckOnly(e)
	ctx := context.Background()
	for _, tt := range []struct {
		name, want string
		err        error
	}{
		{"topic", "gcloud pubsub topics create inbox", e.EnsureTopic(ctx, "inbox")},
		{"subscription", "gcloud pubsub subscriptions create inbox --topic inbox", e.EnsureSubscription(ctx, "inbox", "inbox", cloud.SubscriptionOptions{})},
		{"bucket", "gcloud storage buckets create gs://bucket-3", e.EnsureBucket(ctx, "bucket-3")},
	} {
		if !errors.Is(tt.err, cloud.ErrNotFound) || !strings.Contains(tt.err.Error(), tt.want) {
			t.Errorf("%s: %v; want ErrNotFound saying %q", tt.name, tt.err, tt.want)
		}
		var re *cloud.ResourceError
		if !errors.As(tt.err, &re) || re.Kind != tt.name {
			t.Errorf("%s: %v is not a ResourceError of kind %s", tt.name, tt.err, tt.name)
		}
	}
	if len(em.Objects("bucket-3", "")) != 0 {
		t.Error("something was created")
	}
	if _, err := e.PubSub.TopicAdminClient.GetTopic(ctx, &pubsubpb.GetTopicRequest{Topic: e.TopicName("inbox")}); status.Code(err) != codes.NotFound {
		t.Errorf("topic after a check: %v, want none", err)
	}

	em.SetPubSubFault(func(method string, _ any) error {
		if method == "GetTopic" {
			return status.Error(codes.PermissionDenied, "injected")
		}
		return nil
	})
	err := e.EnsureTopic(ctx, "inbox")
	if !errors.Is(err, cloud.ErrPermissionDenied) || !strings.Contains(err.Error(), "roles/pubsub.viewer") {
		t.Errorf("denied topic: %v", err)
	}
	em.SetGCSFault(func(*http.Request) int { return http.StatusForbidden })
	err = e.EnsureBucket(ctx, "bucket-3")
	if !errors.Is(err, cloud.ErrPermissionDenied) || !strings.Contains(err.Error(), "roles/storage.objectUser") {
		t.Errorf("denied bucket: %v", err)
	}
}

// TestTempSubscription: outbox tail's subscription sees what is published
// after its creation and is gone after Delete; a missing topic and a
// refusal say what is wrong, the refusal with both permissions GCP wants.
func TestTempSubscription(t *testing.T) {
	em := cloudtest.Start(t, cloudtest.Options{Project: "p"})
	e := em.Open(t)
	em.Topic(t, "exports")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sub, err := e.CreateTempSubscription(ctx, "exports", "tail-")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(sub.ID, "tail-") || sub.Name != "projects/p/subscriptions/"+sub.ID || sub.Topic != "projects/p/topics/exports" {
		t.Fatalf("subscription %+v", sub)
	}
	pb, err := e.PubSub.SubscriptionAdminClient.GetSubscription(ctx, &pubsubpb.GetSubscriptionRequest{Subscription: sub.Name})
	if err != nil || !pb.EnableMessageOrdering || pb.ExpirationPolicy.GetTtl().AsDuration() != cloud.TempSubscriptionExpiry {
		t.Fatalf("created %+v (%v): want ordered, expiring after %v", pb, err, cloud.TempSubscriptionExpiry)
	}
	pub := e.PubSub.Publisher("exports")
	_, err = pub.Publish(ctx, &pubsub.Message{Data: []byte("notice")}).Get(ctx)
	pub.Stop()
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithCancel(ctx)
	var got string
	err = sub.Subscriber().Receive(rctx, func(_ context.Context, m *pubsub.Message) {
		got = string(m.Data)
		m.Ack()
		rcancel()
	})
	rcancel()
	if err != nil || got != "notice" {
		t.Fatalf("received %q, %v", got, err)
	}
	if err := sub.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := e.PubSub.SubscriptionAdminClient.GetSubscription(ctx, &pubsubpb.GetSubscriptionRequest{Subscription: sub.Name}); status.Code(err) != codes.NotFound {
		t.Fatalf("after Delete: %v, want not found", err)
	}
	if err := sub.Delete(ctx); err != nil {
		t.Fatalf("second Delete: %v, want none", err)
	}

	if _, err := e.CreateTempSubscription(ctx, "nosuch", "tail-"); !errors.Is(err, cloud.ErrNotFound) || !strings.Contains(err.Error(), "projects/p/topics/nosuch") {
		t.Errorf("missing topic: %v", err)
	}
	em.SetPubSubFault(func(method string, _ any) error {
		if method == "CreateSubscription" {
			return status.Error(codes.PermissionDenied, "injected")
		}
		return nil
	})
	_, err = e.CreateTempSubscription(ctx, "exports", "tail-")
	for _, want := range []string{"pubsub.subscriptions.create on project p", "pubsub.topics.attachSubscription on topic projects/p/topics/exports"} {
		if !errors.Is(err, cloud.ErrPermissionDenied) || !strings.Contains(err.Error(), want) {
			t.Errorf("refused: %v; want ErrPermissionDenied naming %s", err, want)
		}
	}
}

// TestEmbedded: the embedded default runs both servers on the data
// directory, announces them in embedded.json, lets a second command attach,
// keeps objects across restarts, and an attach finding only a stale file
// starts servers of its own.
func TestEmbedded(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	owner, err := cloud.New(ctx, cloud.Config{DataDir: dir, Getenv: env(nil)})
	if err != nil {
		t.Fatal(err)
	}
	if owner.Mode != cloud.Embedded || owner.Project != cloud.LocalProject {
		t.Fatalf("mode %s project %s", owner.Mode, owner.Project)
	}
	b, err := os.ReadFile(cloud.EndpointsFile(dir))
	if err != nil {
		t.Fatal(err)
	}
	var file cloud.Endpoints
	if err := json.Unmarshal(b, &file); err != nil || file != owner.Endpoints() || file.PubSub == "" || !strings.HasPrefix(file.Storage, "http://127.0.0.1:") {
		t.Fatalf("endpoints file %s (%v), env has %+v", b, err, owner.Endpoints())
	}
	if ep, ok := cloud.RunningEndpoints(dir); !ok || ep != file {
		t.Fatalf("RunningEndpoints: %+v %v", ep, ok)
	}
	if err := owner.EnsureTopic(ctx, "exports"); err != nil {
		t.Fatal(err)
	}
	if err := owner.EnsureBucket(ctx, "cvat-sync"); err != nil {
		t.Fatal(err)
	}
	w := owner.Storage.Bucket("cvat-sync").Object("tasks/1/a.zip").If(storage.Conditions{DoesNotExist: true}).NewWriter(ctx)
	if _, err := io.WriteString(w, "PK\x03\x04 archive"); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "gcs", "cvat-sync", "tasks", "1", "a.zip")); err != nil {
		t.Fatalf("the object is not a file under the data directory: %v", err)
	}

	attached, err := cloud.New(ctx, cloud.Config{DataDir: dir, Getenv: env(nil), Attach: true})
	if err != nil {
		t.Fatal(err)
	}
	if attached.Endpoints() != file {
		t.Fatalf("attached to %+v, want %+v", attached.Endpoints(), file)
	}
	if err := attached.CheckPubSub(ctx, "exports"); err != nil {
		t.Fatalf("the attached env does not see the owner's topic: %v", err)
	}
	if err := attached.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cloud.EndpointsFile(dir)); err != nil {
		t.Fatalf("an attached env's Close removed the owner's endpoints file: %v", err)
	}
	if err := owner.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cloud.EndpointsFile(dir)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("endpoints file after the owner's Close: %v, want removed", err)
	}

	// A file left by a process that is gone: attach starts its own servers.
	if err := os.WriteFile(cloud.EndpointsFile(dir), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, ok := cloud.RunningEndpoints(dir); ok {
		t.Fatal("RunningEndpoints trusts a stale file")
	}
	again, err := cloud.New(ctx, cloud.Config{DataDir: dir, Getenv: env(nil), Attach: true})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if again.Endpoints() == file {
		t.Fatal("attached to servers that are gone")
	}
	a, err := again.Storage.Bucket("cvat-sync").Object("tasks/1/a.zip").Attrs(ctx)
	if err != nil || a.Size != int64(len("PK\x03\x04 archive")) {
		t.Fatalf("object after a restart: %+v %v", a, err)
	}
}
