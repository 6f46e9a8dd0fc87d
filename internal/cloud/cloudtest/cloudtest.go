// Package cloudtest is the emulator harness of the tests: a Pub/Sub
// emulator (pstest) and a GCS emulator (fake-gcs-server on a temporary
// directory, with uploads streamed by localgcs, as on the embedded
// default), both over real sockets, reached the way the service reaches
// emulators (PUBSUB_EMULATOR_HOST, STORAGE_EMULATOR_HOST), with hooks to
// break them.
//
//	em := cloudtest.Start(t, cloudtest.Options{})
//	notices := em.Collect(t, "cvat-sync-exports") // before the service publishes
//	svc := start(t, em.Env())                     // or em.Open(t) for a *cloud.Env
//	msgs, err := notices.Wait(ctx, 1)
//
// Everything stops when the test ends.
package cloudtest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"github.com/fsouza/fake-gcs-server/fakestorage"
	"go.uber.org/goleak"

	"github.com/cvat-sync/cvat-sync/internal/cloud"
	"github.com/cvat-sync/cvat-sync/internal/cloud/localgcs"
)

// DefaultProject is the project of the emulators' resources unless
// Options.Project says otherwise.
const DefaultProject = "cloudtest"

// Options configure Start and New.
type Options struct {
	// Project is the GCP project id the service is given
	// (CVAT_SYNC_GCP_PROJECT); default DefaultProject.
	Project string
	// Dir is where the GCS emulator keeps its buckets (in Dir/gcs); New's
	// default is a temporary directory removed by Close, Start's the test's.
	Dir string
}

// Emulators are a running Pub/Sub and GCS emulator.
type Emulators struct {
	project string
	ps      *pstest.Server
	psProxy *proxy // what PUBSUB_EMULATOR_HOST names: it can be cut
	gcs     *localgcs.Server
	tmpDir  string // removed by Close

	gcsFault  atomic.Pointer[func(*http.Request) int]
	gcsFaults atomic.Int64
	psFault   atomic.Pointer[func(method string, req any) error]
	psFaults  atomic.Int64

	env *cloud.Env // the harness's own clients, for its helpers
}

// Start starts the emulators; they stop when t's test ends.
func Start(t testing.TB, opts Options) *Emulators {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	e, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("%v", err)
		}
	})
	return e
}

// New starts the emulators for a program (a benchmark's); Close stops
// them. Tests use Start.
func New(opts Options) (_ *Emulators, err error) {
	e := &Emulators{project: opts.Project}
	if e.project == "" {
		e.project = DefaultProject
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, e.Close())
		}
	}()
	if opts.Dir == "" {
		if e.tmpDir, err = os.MkdirTemp("", "cloudtest-"); err != nil {
			return nil, fmt.Errorf("cloudtest: %w", err)
		}
		opts.Dir = e.tmpDir
	}
	var reactors []pstest.ServerReactorOption
	for _, m := range unaryRPCs {
		reactors = append(reactors, pstest.ServerReactorOption{FuncName: m, Reactor: faultReactor{e: e, method: m}})
	}
	e.ps = pstest.NewServerWithAddress("127.0.0.1:0", reactors...)
	if e.psProxy, err = newProxy(e.ps.Addr); err != nil {
		return nil, fmt.Errorf("cloudtest: Pub/Sub proxy: %w", err)
	}
	e.gcs, err = localgcs.New(localgcs.Config{Root: filepath.Join(opts.Dir, "gcs"), Middleware: e.faultMiddleware})
	if err != nil {
		return nil, fmt.Errorf("cloudtest: GCS emulator: %w", err)
	}
	if e.env, err = e.open(); err != nil {
		return nil, err
	}
	return e, nil
}

// Close stops the emulators.
func (e *Emulators) Close() error {
	var errs []error
	if e.env != nil {
		e.PubSubUp() // publishers flush before they stop
		errs = append(errs, e.env.Close())
	}
	if e.gcs != nil {
		errs = append(errs, e.gcs.Close())
	}
	if e.psProxy != nil {
		e.psProxy.close()
	}
	if e.ps != nil {
		errs = append(errs, e.ps.Close())
	}
	if e.tmpDir != "" {
		errs = append(errs, os.RemoveAll(e.tmpDir))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cloudtest: stop the emulators: %w", err)
	}
	return nil
}

// Project is the project id of the emulators' resources.
func (e *Emulators) Project() string { return e.project }

// PubSubHost is the value of PUBSUB_EMULATOR_HOST (host:port).
func (e *Emulators) PubSubHost() string { return e.psProxy.addr() }

// StorageURL is the value of STORAGE_EMULATOR_HOST (http://host:port).
func (e *Emulators) StorageURL() string { return e.gcs.URL() }

// Env is the environment that points the service at the emulators:
// PUBSUB_EMULATOR_HOST, STORAGE_EMULATOR_HOST and CVAT_SYNC_GCP_PROJECT.
func (e *Emulators) Env() map[string]string {
	return map[string]string{
		"PUBSUB_EMULATOR_HOST":  e.PubSubHost(),
		"STORAGE_EMULATOR_HOST": e.StorageURL(),
		"CVAT_SYNC_GCP_PROJECT": e.project,
	}
}

// Getenv looks names up in Env, for cloud.Config.Getenv.
func (e *Emulators) Getenv(name string) string { return e.Env()[name] }

// Open returns a *cloud.Env on the emulators (emulator mode), closed when
// t's test ends.
func (e *Emulators) Open(t testing.TB) *cloud.Env {
	t.Helper()
	env, err := e.open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.PubSubUp() // publishers flush before they stop
		if err := env.Close(); err != nil {
			t.Errorf("cloudtest: close: %v", err)
		}
	})
	return env
}

func (e *Emulators) open() (*cloud.Env, error) {
	env, err := cloud.New(context.Background(), cloud.Config{Project: e.project, Getenv: e.Getenv})
	if err != nil {
		return nil, fmt.Errorf("cloudtest: open: %w", err)
	}
	return env, nil
}

// PubSub is the Pub/Sub emulator, for what it records (Messages: every
// message published, with its acks and deliveries).
func (e *Emulators) PubSub() *pstest.Server { return e.ps }

// GCS is the fake-gcs-server behind the GCS emulator, for reading what the
// buckets hold (GetObject, ListObjectsWithOptionsPaginated).
func (e *Emulators) GCS() *fakestorage.Server { return e.gcs.Fake() }

// Messages returns the messages published so far to topic (an id).
func (e *Emulators) Messages(topic string) []*pstest.Message {
	var out []*pstest.Message
	for _, m := range e.ps.Messages() {
		if strings.HasSuffix(m.Topic, "/topics/"+topic) {
			out = append(out, m)
		}
	}
	return out
}

// Objects lists the objects of bucket under prefix (none when the bucket
// does not exist yet).
func (e *Emulators) Objects(bucket, prefix string) []fakestorage.ObjectAttrs {
	resp, err := e.GCS().ListObjectsWithOptionsPaginated(bucket, fakestorage.ListOptions{Prefix: prefix})
	if err != nil {
		return nil
	}
	return resp.Objects
}

// Topic creates topic id, unless it exists.
func (e *Emulators) Topic(t testing.TB, id string) {
	t.Helper()
	if err := e.env.EnsureTopic(context.Background(), id); err != nil {
		t.Fatalf("cloudtest: %v", err)
	}
}

// Subscription creates subscription id on topic (creating the topic too),
// unless it exists.
func (e *Emulators) Subscription(t testing.TB, id, topic string, o cloud.SubscriptionOptions) {
	t.Helper()
	e.Topic(t, topic)
	if err := e.env.EnsureSubscription(context.Background(), id, topic, o); err != nil {
		t.Fatalf("cloudtest: %v", err)
	}
}

// Bucket creates bucket name, unless it exists.
func (e *Emulators) Bucket(t testing.TB, name string) {
	t.Helper()
	if err := e.env.EnsureBucket(context.Background(), name); err != nil {
		t.Fatalf("cloudtest: %v", err)
	}
}

// SetGCSFault makes the GCS emulator answer f's status (with a JSON error
// body, as GCS does) instead of serving a request; 0 serves it. nil
// removes the hook.
func (e *Emulators) SetGCSFault(f func(*http.Request) int) {
	if f == nil {
		e.gcsFault.Store(nil)
		return
	}
	e.gcsFault.Store(&f)
}

// GCSFaults counts the requests answered by the fault hook.
func (e *Emulators) GCSFaults() int64 { return e.gcsFaults.Load() }

func (e *Emulators) faultMiddleware(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f := e.gcsFault.Load(); f != nil {
			if code := (*f)(r); code != 0 {
				e.gcsFaults.Add(1)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(code)
				fmt.Fprintf(w, `{"error":{"code":%d,"message":"injected by the test","errors":[{"domain":"global","reason":"backendError","message":"injected by the test"}]}}`, code)
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

// unaryRPCs are the Pub/Sub calls SetPubSubFault can fail (StreamingPull,
// a stream, can be stopped only by PubSubDown).
var unaryRPCs = []string{
	"CreateTopic", "GetTopic", "UpdateTopic", "ListTopics", "ListTopicSubscriptions", "DeleteTopic",
	"CreateSubscription", "GetSubscription", "UpdateSubscription", "ListSubscriptions", "DeleteSubscription",
	"DetachSubscription", "Publish", "Acknowledge", "ModifyAckDeadline", "Pull", "Seek",
}

// SetPubSubFault makes every unary Pub/Sub call for which f returns an
// error fail with it (a status error, e.g. status.Error(codes.Unavailable,
// "...")); method is the RPC's name ("Publish", "Acknowledge", ...) and req
// its request (*pubsubpb.PublishRequest, ...). nil removes the hook.
func (e *Emulators) SetPubSubFault(f func(method string, req any) error) {
	if f == nil {
		e.psFault.Store(nil)
		return
	}
	e.psFault.Store(&f)
}

// PubSubFaults counts the calls failed by the fault hook.
func (e *Emulators) PubSubFaults() int64 { return e.psFaults.Load() }

// FailPublish is a SetPubSubFault hook failing publishes to topic (an id)
// with err.
func FailPublish(topic string, err error) func(method string, req any) error {
	return func(method string, req any) error {
		if pr, ok := req.(*pubsubpb.PublishRequest); ok && method == "Publish" && strings.HasSuffix(pr.GetTopic(), "/topics/"+topic) {
			return err
		}
		return nil
	}
}

type faultReactor struct {
	e      *Emulators
	method string
}

func (r faultReactor) React(req any) (bool, any, error) {
	f := r.e.psFault.Load()
	if f == nil {
		return false, nil, nil
	}
	if err := (*f)(r.method, req); err != nil {
		r.e.psFaults.Add(1)
		return true, nil, err
	}
	return false, nil, nil
}

// PubSubDown cuts Pub/Sub off, as an outage does: open connections are
// closed and new ones refused, while the emulator keeps its topics,
// subscriptions and messages. Clients see Unavailable, and reconnect with
// gRPC's backoff (growing from 1 s to at most 2 min) once PubSubUp is
// called.
func (e *Emulators) PubSubDown() { e.psProxy.setDown(true) }

// PubSubUp ends PubSubDown.
func (e *Emulators) PubSubUp() { e.psProxy.setDown(false) }

// LeakOptions are the goroutines of the cloud clients that outlive a test
// without being leaks, for goleak.VerifyTestMain(m, cloudtest.LeakOptions()...).
func LeakOptions() []goleak.Option {
	return []goleak.Option{
		// Started by go.opencensus.io's init (imported by the Pub/Sub and
		// Storage clients); it lives as long as the process.
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		// pubsub/v2 v2.8.1's stream keep-alive checks for the end of a
		// Receive only between ticks of its ping timers, so it outlives
		// Receive by up to a ping interval.
		goleak.IgnoreTopFunction("cloud.google.com/go/pubsub/v2.(*messageIterator).streamKeepAliveHandler"),
	}
}
