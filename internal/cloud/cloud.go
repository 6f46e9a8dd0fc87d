// Package cloud connects cvat-sync to Google Cloud: Pub/Sub for the inbox and
// the outbox, Cloud Storage for the archives. It runs in one of three modes:
//
//   - Embedded: no GCP project and no emulator variables. An in-process
//     Pub/Sub server (pstest) and an in-process GCS server (fake-gcs-server
//     on disk under the data directory, with uploads streamed to disk by
//     package localgcs) stand in, so the service runs on a laptop with
//     nothing else. Their addresses are written to <data dir>/embedded.json
//     so other commands can reach them.
//   - Emulator: PUBSUB_EMULATOR_HOST and/or STORAGE_EMULATOR_HOST point the
//     official clients at external emulators, as every GCP tool does; a
//     service without its variable is GCP's.
//   - GCP: Application Default Credentials (Workload Identity on GKE).
//
// Missing topics, subscriptions and the bucket are created on the embedded
// default and on emulators; on GCP they are checked and any missing one
// named, with what to grant or run.
package cloud

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"cloud.google.com/go/storage"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/cvat-sync/cvat-sync/internal/cloud/localgcs"
)

// Mode says what the service talks to.
type Mode string

// The modes.
const (
	Embedded Mode = "embedded"
	Emulator Mode = "emulator"
	GCP      Mode = "gcp"
)

// LocalProject is the project id used on the embedded default, and on
// emulators when none is configured.
const LocalProject = "cvat-sync-local"

// Config selects and configures the mode.
type Config struct {
	Project string // GCP project; empty means embedded unless emulator variables are set
	DataDir string // the embedded default's storage; required on the embedded default
	// Getenv reads PUBSUB_EMULATOR_HOST and STORAGE_EMULATOR_HOST; nil
	// means os.Getenv.
	Getenv func(string) string
	// Attach makes an embedded Open reuse the servers of a running "serve"
	// (found through <data dir>/embedded.json) instead of starting its own.
	Attach bool
	// Logger receives the embedded servers' events; nil discards them.
	Logger *slog.Logger
}

// Plan is what a Config connects to, decided from the settings and the
// environment alone (no network).
type Plan struct {
	Mode    Mode
	Project string
	// PubSubEmulator is the host:port of a Pub/Sub emulator; empty: GCP's
	// Pub/Sub (or, on the embedded default, the in-process server).
	PubSubEmulator string
	// StorageEmulator is the base URL (scheme://host:port) of a GCS
	// emulator; empty: GCP's Cloud Storage (or the in-process server).
	StorageEmulator string
}

// Plan decides the mode: the embedded default without a project and
// emulator variables, emulators as far as their variables go, GCP for the
// rest.
func (c Config) Plan() (Plan, error) {
	getenv := c.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	p := Plan{Project: c.Project, PubSubEmulator: getenv("PUBSUB_EMULATOR_HOST")}
	if h := getenv("STORAGE_EMULATOR_HOST"); h != "" {
		if !strings.Contains(h, "://") {
			h = "http://" + h
		}
		p.StorageEmulator = strings.TrimRight(h, "/")
	}
	switch {
	case c.Project == "" && p.PubSubEmulator == "" && p.StorageEmulator == "":
		p.Mode, p.Project = Embedded, LocalProject
		if c.DataDir == "" {
			return p, errors.New("cloud: the embedded default needs a data directory (CVAT_SYNC_DATA_DIR)")
		}
	case p.PubSubEmulator != "" || p.StorageEmulator != "":
		p.Mode = Emulator
		if p.Project == "" {
			p.Project = LocalProject
		}
	default:
		p.Mode = GCP
	}
	return p, nil
}

// createsTopics reports whether missing topics and subscriptions are
// created rather than reported: on a local Pub/Sub, never on GCP's.
func (p Plan) createsTopics() bool { return p.Mode == Embedded || p.PubSubEmulator != "" }

// createsBuckets is createsTopics for the bucket.
func (p Plan) createsBuckets() bool { return p.Mode == Embedded || p.StorageEmulator != "" }

// Env is an open connection to Pub/Sub and Cloud Storage.
type Env struct {
	Mode    Mode
	Project string
	PubSub  *pubsub.Client
	Storage *storage.Client

	plan      Plan
	endpoints Endpoints // embedded default: where its servers are
	log       *slog.Logger
	closers   []func() error
}

// Endpoints is what <data dir>/embedded.json holds: where a running embedded
// default serves Pub/Sub and GCS.
type Endpoints struct {
	PubSub  string `json:"pubsub"`  // host:port of the gRPC Pub/Sub server
	Storage string `json:"storage"` // base URL of the GCS server
}

// EndpointsFile is the path of the embedded default's endpoints file.
func EndpointsFile(dataDir string) string { return filepath.Join(dataDir, "embedded.json") }

// New connects according to cfg (see Config.Plan).
func New(ctx context.Context, cfg Config) (*Env, error) {
	plan, err := cfg.Plan()
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Env{Mode: plan.Mode, Project: plan.Project, plan: plan, log: log}
	if plan.Mode == Embedded {
		if err := e.openEmbedded(ctx, cfg); err != nil {
			e.Close()
			return nil, err
		}
		return e, nil
	}
	// Emulator addresses come from getenv (the process environment in
	// production), so they are passed to the clients explicitly.
	if plan.PubSubEmulator != "" {
		err = e.connectPubSub(ctx, plan.PubSubEmulator)
	} else {
		var ps *pubsub.Client
		if ps, err = pubsub.NewClient(ctx, e.Project); err == nil {
			e.PubSub = ps
			e.closers = append(e.closers, ps.Close)
		} else {
			err = fmt.Errorf("pubsub client for project %q: %w", e.Project, err)
		}
	}
	if err == nil && plan.StorageEmulator != "" {
		err = e.connectStorage(ctx, plan.StorageEmulator)
	} else if err == nil {
		var st *storage.Client
		if st, err = storage.NewClient(ctx); err == nil {
			e.Storage = st
			e.closers = append(e.closers, st.Close)
		} else {
			err = fmt.Errorf("storage client: %w", err)
		}
	}
	if err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

func (e *Env) openEmbedded(ctx context.Context, cfg Config) error {
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return fmt.Errorf("CVAT_SYNC_DATA_DIR %s: %w", cfg.DataDir, err)
	}
	if cfg.Attach {
		if ep, ok := RunningEndpoints(cfg.DataDir); ok {
			e.endpoints = ep
			return e.attach(ctx, ep)
		}
	}
	psrv := pstest.NewServerWithAddress("127.0.0.1:0")
	e.closers = append(e.closers, psrv.Close)
	stopTrim := trimSettled(psrv, e.log)
	e.closers = append(e.closers, func() error { stopTrim(); return nil })
	gcsRoot := filepath.Join(cfg.DataDir, "gcs")
	gsrv, err := localgcs.New(localgcs.Config{Root: gcsRoot, Logger: e.log.With("component", "embedded-gcs")})
	if err != nil {
		return fmt.Errorf("embedded GCS server on %s: %w", gcsRoot, err)
	}
	e.closers = append(e.closers, gsrv.Close)
	ep := Endpoints{PubSub: psrv.Addr, Storage: gsrv.URL()}
	e.endpoints = ep
	if err := e.connectPubSub(ctx, ep.PubSub); err != nil {
		return err
	}
	// This process's own storage client reaches the server without the
	// loopback interface; other processes attach through its listener.
	if err := e.connectStorage(ctx, ep.Storage, option.WithHTTPClient(&http.Client{Transport: gsrv.Transport()})); err != nil {
		return err
	}
	b, _ := json.Marshal(ep) // two strings always encode
	file := EndpointsFile(cfg.DataDir)
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
	e.log.Info("embedded default started", "data_dir", cfg.DataDir, "pubsub", ep.PubSub, "gcs", ep.Storage)
	return nil
}

// Endpoints is where the embedded default's servers are (started by this
// Env or attached to); empty in the other modes.
func (e *Env) Endpoints() Endpoints { return e.endpoints }

// attach connects the official clients to embedded servers at ep.
func (e *Env) attach(ctx context.Context, ep Endpoints) error {
	if err := e.connectPubSub(ctx, ep.PubSub); err != nil {
		return err
	}
	return e.connectStorage(ctx, ep.Storage)
}

// pstest keeps every message ever published (for its Messages API), so a
// long-running embedded default would grow without bound. Every
// trimInterval, when at least trimAbove messages are kept and every one is
// settled (acked, or older than pstest's retention, after which it no
// longer delivers it), they are dropped.
const (
	trimInterval  = 5 * time.Minute
	trimAbove     = 5000
	pstestRetains = 10 * time.Minute
)

// trimSettled runs the trimming of psrv until the returned stop is called.
func trimSettled(psrv *pstest.Server, log *slog.Logger) (stop func()) {
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(trimInterval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			if n := trimIfSettled(psrv, trimAbove, time.Now()); n > 0 {
				log.Debug("embedded Pub/Sub: settled messages dropped", "messages", n)
			}
		}
	}()
	return func() { close(done); <-stopped }
}

// trimIfSettled drops psrv's messages when there are at least above of them
// and all are settled, and says how many it dropped. A message published
// between its check and the drop is lost from the embedded inbox; the next
// convergence pass finds its state (CVAT and the record are the truth).
func trimIfSettled(psrv *pstest.Server, above int, now time.Time) int {
	msgs := psrv.Messages()
	if len(msgs) < above {
		return 0
	}
	for _, m := range msgs {
		if m.Acks == 0 && now.Sub(m.PublishTime) < pstestRetains {
			return 0
		}
	}
	psrv.ClearMessages()
	return len(msgs)
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
func (e *Env) connectStorage(ctx context.Context, base string, opts ...option.ClientOption) error {
	opts = append([]option.ClientOption{option.WithEndpoint(base + "/storage/v1/"), option.WithoutAuthentication(), storage.WithJSONReads()}, opts...)
	st, err := storage.NewClient(ctx, opts...)
	if err != nil {
		return fmt.Errorf("GCS emulator at %s: %w", base, err)
	}
	e.closers = append(e.closers, st.Close)
	e.Storage = st
	return nil
}

// RunningEndpoints reads the endpoints file of the embedded default in
// dataDir and reports whether its servers answer (a file left by a process
// that died does not count).
func RunningEndpoints(dataDir string) (Endpoints, bool) {
	var ep Endpoints
	b, err := os.ReadFile(EndpointsFile(dataDir))
	if err != nil || json.Unmarshal(b, &ep) != nil || ep.PubSub == "" || ep.Storage == "" {
		return ep, false
	}
	for _, addr := range []string{ep.PubSub, strings.TrimPrefix(ep.Storage, "http://")} {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return ep, false
		}
		c.Close()
	}
	return ep, true
}

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
	if status.Code(err) == codes.NotFound && e.plan.createsTopics() {
		_, err = e.PubSub.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: name})
		if status.Code(err) == codes.AlreadyExists {
			err = nil
		}
	}
	return pubsubErr("topic", name, err,
		"create it: gcloud pubsub topics create "+id,
		"pubsub.topics.get on it (roles/pubsub.viewer)")
}

// SubscriptionOptions shape a subscription created by EnsureSubscription.
type SubscriptionOptions struct {
	AckDeadline     time.Duration
	Ordering        bool
	DeadLetterTopic string // topic id; empty for none
	MaxAttempts     int
	MinBackoff      time.Duration
	MaxBackoff      time.Duration
	// Expiration deletes the subscription after this long without a
	// subscriber (Pub/Sub's minimum is a day); zero: never.
	Expiration time.Duration
}

func (e *Env) subscription(id, topic string, o SubscriptionOptions) *pubsubpb.Subscription {
	sub := &pubsubpb.Subscription{
		Name:                  e.SubscriptionName(id),
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
	if o.Expiration > 0 {
		sub.ExpirationPolicy = &pubsubpb.ExpirationPolicy{Ttl: durationpb.New(o.Expiration)}
	}
	return sub
}

// EnsureSubscription creates subscription id on topic if missing (embedded,
// emulator) or checks that it exists (GCP).
func (e *Env) EnsureSubscription(ctx context.Context, id, topic string, o SubscriptionOptions) error {
	name := e.SubscriptionName(id)
	_, err := e.PubSub.SubscriptionAdminClient.GetSubscription(ctx, &pubsubpb.GetSubscriptionRequest{Subscription: name})
	if status.Code(err) == codes.NotFound && e.plan.createsTopics() {
		_, err = e.PubSub.SubscriptionAdminClient.CreateSubscription(ctx, e.subscription(id, topic, o))
		if status.Code(err) == codes.AlreadyExists {
			err = nil
		}
	}
	return pubsubErr("subscription", name, err,
		"create it: gcloud pubsub subscriptions create "+id+" --topic "+topic+" --enable-message-ordering",
		"pubsub.subscriptions.get on it (roles/pubsub.viewer)")
}

// EnsureBucket creates bucket name if missing (embedded, emulator) or checks
// that it exists (GCP).
func (e *Env) EnsureBucket(ctx context.Context, name string) error {
	_, err := e.Storage.Bucket(name).Attrs(ctx)
	if errors.Is(err, storage.ErrBucketNotExist) && e.plan.createsBuckets() {
		err = e.Storage.Bucket(name).Create(ctx, e.Project, nil)
		if httpCode(err) == 409 { // created by someone else meanwhile
			err = nil
		}
	}
	const roles = "roles/storage.legacyBucketReader (for storage.buckets.get) and roles/storage.objectUser on it (docs/deploy.md)"
	switch {
	case err == nil:
		return nil
	case errors.Is(err, storage.ErrBucketNotExist):
		return &ResourceError{Kind: "bucket", Name: "gs://" + name, Err: ErrNotFound,
			Fix: fmt.Sprintf("create it (gcloud storage buckets create gs://%s) and grant the service account %s", name, roles)}
	case httpCode(err) == 403:
		return &ResourceError{Kind: "bucket", Name: "gs://" + name, Err: fmt.Errorf("%w: %w", ErrPermissionDenied, err),
			Fix: "the service account needs " + roles}
	default:
		return &ResourceError{Kind: "bucket", Name: "gs://" + name, Err: err, Fix: "the service account needs " + roles}
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
