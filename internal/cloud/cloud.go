// Package cloud connects cvat-sync to Google Cloud: Pub/Sub for the inbox and
// the outbox, Cloud Storage for the archives. It runs in one of three modes:
//
//   - Embedded: no GCP project and no emulator variables. An in-process
//     Pub/Sub server (pstest) and an in-process GCS server (fake-gcs-server,
//     on disk under the data directory) stand in, so the service runs on a
//     laptop with nothing else. Their addresses are written to
//     <data dir>/embedded.json so other commands can reach them.
//   - Emulator: PUBSUB_EMULATOR_HOST and/or STORAGE_EMULATOR_HOST point the
//     official clients at external emulators, as every GCP tool does.
//   - GCP: Application Default Credentials (Workload Identity on GKE).
//
// On the embedded default and on emulators missing topics, subscriptions and
// the bucket are created; on GCP they are checked and any missing one named.
package cloud

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"cloud.google.com/go/storage"
	"github.com/fsouza/fake-gcs-server/fakestorage"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Mode says what the service talks to.
type Mode string

// The modes.
const (
	Embedded Mode = "embedded"
	Emulator Mode = "emulator"
	GCP      Mode = "gcp"
)

// embeddedProject is the project id used on the embedded default and on
// emulators when none is configured.
const embeddedProject = "cvat-sync-local"

// Settings select and configure the mode.
type Settings struct {
	Project string // GCP project; empty means embedded unless emulator variables are set
	DataDir string // embedded default storage
	Getenv  func(string) string
	// Attach makes an embedded Open reuse the servers of a running "serve"
	// (found through <data dir>/embedded.json) instead of starting its own.
	Attach bool
}

// Env is an open connection to Pub/Sub and Cloud Storage.
type Env struct {
	Mode    Mode
	Project string
	PubSub  *pubsub.Client
	Storage *storage.Client

	log     *slog.Logger
	closers []func() error
}

// Endpoints is what <data dir>/embedded.json holds: where a running embedded
// default serves Pub/Sub and GCS.
type Endpoints struct {
	PubSub  string `json:"pubsub"`  // host:port of the gRPC Pub/Sub server
	Storage string `json:"storage"` // base URL of the GCS server
}

// EndpointsFile is the path of the embedded default's endpoints file.
func EndpointsFile(dataDir string) string { return filepath.Join(dataDir, "embedded.json") }

// Open connects according to s.
func Open(ctx context.Context, s Settings, log *slog.Logger) (*Env, error) {
	getenv := s.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	psHost, gcsHost := getenv("PUBSUB_EMULATOR_HOST"), getenv("STORAGE_EMULATOR_HOST")
	e := &Env{Project: s.Project, log: log}
	switch {
	case s.Project == "" && psHost == "" && gcsHost == "":
		e.Mode, e.Project = Embedded, embeddedProject
		if err := e.openEmbedded(ctx, s); err != nil {
			e.Close()
			return nil, err
		}
		return e, nil
	case psHost != "" || gcsHost != "":
		e.Mode = Emulator
		if e.Project == "" {
			e.Project = embeddedProject
		}
	default:
		e.Mode = GCP
	}
	// Emulator addresses come from getenv (the process environment in
	// production), so they are passed to the clients explicitly.
	if psHost != "" {
		if err := e.connectPubSub(ctx, psHost); err != nil {
			e.Close()
			return nil, err
		}
	} else {
		ps, err := pubsub.NewClient(ctx, e.Project)
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("pubsub client for project %q: %w", e.Project, err)
		}
		e.PubSub = ps
		e.closers = append(e.closers, ps.Close)
	}
	if gcsHost != "" {
		if !strings.Contains(gcsHost, "://") {
			gcsHost = "http://" + gcsHost
		}
		if err := e.connectStorage(ctx, strings.TrimRight(gcsHost, "/")); err != nil {
			e.Close()
			return nil, err
		}
	} else {
		st, err := storage.NewClient(ctx)
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("storage client: %w", err)
		}
		e.Storage = st
		e.closers = append(e.closers, st.Close)
	}
	return e, nil
}

func (e *Env) openEmbedded(ctx context.Context, s Settings) error {
	if err := os.MkdirAll(s.DataDir, 0o750); err != nil {
		return fmt.Errorf("CVAT_SYNC_DATA_DIR %s: %w", s.DataDir, err)
	}
	if s.Attach {
		if ep, ok := runningEndpoints(s.DataDir); ok {
			return e.attach(ctx, ep)
		}
	}
	psrv := pstest.NewServerWithAddress("127.0.0.1:0")
	e.closers = append(e.closers, psrv.Close)
	gcsRoot := filepath.Join(s.DataDir, "gcs")
	if err := os.MkdirAll(gcsRoot, 0o750); err != nil {
		return fmt.Errorf("CVAT_SYNC_DATA_DIR %s: %w", s.DataDir, err)
	}
	gsrv, err := fakestorage.NewServerWithOptions(fakestorage.Options{
		StorageRoot: gcsRoot, Scheme: "http", Host: "127.0.0.1", Port: 0, Writer: io.Discard,
	})
	if err != nil {
		return fmt.Errorf("embedded GCS server on %s: %w", gcsRoot, err)
	}
	e.closers = append(e.closers, func() error { gsrv.Stop(); return nil })
	ep := Endpoints{PubSub: psrv.Addr, Storage: gsrv.URL()}
	if err := e.attach(ctx, ep); err != nil {
		return err
	}
	b, _ := json.Marshal(ep)
	file := EndpointsFile(s.DataDir)
	if err := os.WriteFile(file, b, 0o640); err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	e.closers = append(e.closers, func() error {
		// Only remove the file if it still describes our servers.
		if cur, err := os.ReadFile(file); err == nil && string(cur) == string(b) {
			return os.Remove(file)
		}
		return nil
	})
	e.log.Info("embedded default started", "data_dir", s.DataDir, "pubsub", ep.PubSub, "gcs", ep.Storage)
	return nil
}

// attach connects the official clients to embedded servers at ep.
func (e *Env) attach(ctx context.Context, ep Endpoints) error {
	if err := e.connectPubSub(ctx, ep.PubSub); err != nil {
		return err
	}
	return e.connectStorage(ctx, ep.Storage)
}

// connectPubSub connects to a Pub/Sub emulator (or pstest) at host:port.
func (e *Env) connectPubSub(ctx context.Context, addr string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("pubsub emulator at %s: %w", addr, err)
	}
	ps, err := pubsub.NewClient(ctx, e.Project, option.WithGRPCConn(conn))
	if err != nil {
		conn.Close()
		return fmt.Errorf("pubsub emulator at %s: %w", addr, err)
	}
	e.closers = append(e.closers, conn.Close, ps.Close)
	e.PubSub = ps
	return nil
}

// connectStorage connects to a GCS emulator at base (scheme://host:port).
func (e *Env) connectStorage(ctx context.Context, base string) error {
	st, err := storage.NewClient(ctx, option.WithEndpoint(base+"/storage/v1/"), option.WithoutAuthentication(), storage.WithJSONReads())
	if err != nil {
		return fmt.Errorf("GCS emulator at %s: %w", base, err)
	}
	e.closers = append(e.closers, st.Close)
	e.Storage = st
	return nil
}

// runningEndpoints reads the endpoints file of a running embedded default and
// checks that its Pub/Sub server answers.
func runningEndpoints(dataDir string) (Endpoints, bool) {
	var ep Endpoints
	b, err := os.ReadFile(EndpointsFile(dataDir))
	if err != nil || json.Unmarshal(b, &ep) != nil || ep.PubSub == "" || ep.Storage == "" {
		return ep, false
	}
	c, err := net.DialTimeout("tcp", ep.PubSub, time.Second)
	if err != nil {
		return ep, false
	}
	c.Close()
	return ep, true
}

// creates reports whether missing resources are created (embedded default and
// emulators) rather than reported.
func (e *Env) creates() bool { return e.Mode != GCP }

// TopicName is the full resource name of topic id.
func (e *Env) TopicName(id string) string { return "projects/" + e.Project + "/topics/" + id }

// SubscriptionName is the full resource name of subscription id.
func (e *Env) SubscriptionName(id string) string {
	return "projects/" + e.Project + "/subscriptions/" + id
}

// EnsureTopic creates topic id if missing (embedded, emulator) or checks that
// it exists (GCP).
func (e *Env) EnsureTopic(ctx context.Context, id string) error {
	name := e.TopicName(id)
	_, err := e.PubSub.TopicAdminClient.GetTopic(ctx, &pubsubpb.GetTopicRequest{Topic: name})
	if status.Code(err) == codes.NotFound && e.creates() {
		_, err = e.PubSub.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: name})
		if status.Code(err) == codes.AlreadyExists {
			err = nil
		}
	}
	return e.resourceErr("topic", name, "roles/pubsub.viewer or create it: gcloud pubsub topics create "+id, err)
}

// SubscriptionOptions shape a subscription created by EnsureSubscription.
type SubscriptionOptions struct {
	AckDeadline     time.Duration
	Ordering        bool
	DeadLetterTopic string // topic id; empty for none
	MaxAttempts     int
	MinBackoff      time.Duration
	MaxBackoff      time.Duration
}

// EnsureSubscription creates subscription id on topic if missing (embedded,
// emulator) or checks that it exists (GCP).
func (e *Env) EnsureSubscription(ctx context.Context, id, topic string, o SubscriptionOptions) error {
	name := e.SubscriptionName(id)
	_, err := e.PubSub.SubscriptionAdminClient.GetSubscription(ctx, &pubsubpb.GetSubscriptionRequest{Subscription: name})
	if status.Code(err) == codes.NotFound && e.creates() {
		sub := &pubsubpb.Subscription{
			Name:                  name,
			Topic:                 e.TopicName(topic),
			AckDeadlineSeconds:    int32(max(o.AckDeadline, 10*time.Second) / time.Second),
			EnableMessageOrdering: o.Ordering,
		}
		if o.MinBackoff > 0 {
			sub.RetryPolicy = &pubsubpb.RetryPolicy{
				MinimumBackoff: durationpb.New(o.MinBackoff),
				MaximumBackoff: durationpb.New(max(o.MaxBackoff, o.MinBackoff)),
			}
		}
		if o.DeadLetterTopic != "" {
			sub.DeadLetterPolicy = &pubsubpb.DeadLetterPolicy{
				DeadLetterTopic:     e.TopicName(o.DeadLetterTopic),
				MaxDeliveryAttempts: int32(o.MaxAttempts),
			}
		}
		_, err = e.PubSub.SubscriptionAdminClient.CreateSubscription(ctx, sub)
		if status.Code(err) == codes.AlreadyExists {
			err = nil
		}
	}
	return e.resourceErr("subscription", name, "roles/pubsub.viewer or create it: gcloud pubsub subscriptions create "+id+" --topic "+topic+" --enable-message-ordering", err)
}

// EnsureBucket creates bucket name if missing (embedded, emulator) or checks
// that it exists (GCP).
func (e *Env) EnsureBucket(ctx context.Context, name string) error {
	_, err := e.Storage.Bucket(name).Attrs(ctx)
	if errors.Is(err, storage.ErrBucketNotExist) && e.creates() {
		err = e.Storage.Bucket(name).Create(ctx, e.Project, nil)
		var gerr interface{ HTTPCode() int }
		if err != nil && (strings.Contains(err.Error(), "409") || errors.As(err, &gerr) && gerr.HTTPCode() == 409) {
			err = nil
		}
	}
	if errors.Is(err, storage.ErrBucketNotExist) {
		return fmt.Errorf("bucket gs://%s does not exist: create it (gcloud storage buckets create gs://%s) and grant the service account roles/storage.legacyBucketReader and roles/storage.objectUser on it (docs/deploy.md)", name, name)
	}
	if err != nil {
		return fmt.Errorf("bucket gs://%s: %w (the service account needs roles/storage.legacyBucketReader, for storage.buckets.get, and roles/storage.objectUser on it; docs/deploy.md)", name, err)
	}
	return nil
}

func (e *Env) resourceErr(kind, name, hint string, err error) error {
	switch {
	case err == nil:
		return nil
	case status.Code(err) == codes.NotFound:
		return fmt.Errorf("pubsub %s %s does not exist: %s", kind, name, hint)
	case status.Code(err) == codes.PermissionDenied:
		return fmt.Errorf("pubsub %s %s: permission denied: the service account needs %s", kind, name, hint)
	default:
		return fmt.Errorf("pubsub %s %s: %w", kind, name, err)
	}
}

// CheckPubSub reports whether Pub/Sub answers for topic, for /readyz.
func (e *Env) CheckPubSub(ctx context.Context, topic string) error {
	_, err := e.PubSub.TopicAdminClient.GetTopic(ctx, &pubsubpb.GetTopicRequest{Topic: e.TopicName(topic)})
	return err
}

// CheckStorage reports whether GCS answers for bucket, for /readyz.
func (e *Env) CheckStorage(ctx context.Context, bucket string) error {
	_, err := e.Storage.Bucket(bucket).Attrs(ctx)
	return err
}

// Close releases the clients and stops embedded servers, in reverse order.
func (e *Env) Close() error {
	var errs []error
	for i := len(e.closers) - 1; i >= 0; i-- {
		if err := e.closers[i](); err != nil && status.Code(err) != codes.Canceled {
			errs = append(errs, err)
		}
	}
	e.closers = nil
	return errors.Join(errs...)
}
