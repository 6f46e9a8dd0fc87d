package pipeline

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"cloud.google.com/go/storage"
	"github.com/fsouza/fake-gcs-server/fakestorage"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
	"github.com/cvat-sync/cvat-sync/internal/cvatfake"
	"github.com/cvat-sync/cvat-sync/internal/inbox"
	"github.com/cvat-sync/cvat-sync/internal/sink"
	"github.com/cvat-sync/cvat-sync/internal/task"
)

const (
	rigProject = "p"
	rigBucket  = "b"
	rigFormat  = "COCO 1.0"
)

type rigOptions struct {
	policy      task.Policy
	maxAttempts int
	debounce    time.Duration
	maxWait     time.Duration
	since       string
	maxDelete   float64
	fake        cvatfake.Options
	noStart     bool
}

// rig is a pipeline on real protocol servers over sockets: pstest,
// fake-gcs-server and the CVAT fake.
type rig struct {
	t        *testing.T
	ps       *pstest.Server
	client   *pubsub.Client
	fake     *cvatfake.Server
	cv       *cvatapi.Client
	queue    *inbox.Queue
	archives *sink.Archives
	records  *sink.Records
	reg      *prometheus.Registry
	p        *Pipeline
	offset   atomic.Int64 // added to the pipeline's clock
	notices  func() []*pubsub.Message
	dead     func() []*pubsub.Message
	gcsFail  atomic.Bool
	gcs503   atomic.Int64 // answers refused while gcsFail
}

func (r *rig) now() time.Time { return time.Now().Add(time.Duration(r.offset.Load())) }

func newRig(t *testing.T, o rigOptions) *rig {
	t.Helper()
	ctx := context.Background()
	if o.maxAttempts == 0 {
		o.maxAttempts = 3
	}
	if o.since == "" {
		o.since = SinceAll
	}
	if o.maxDelete == 0 {
		o.maxDelete = 0.5
	}
	if o.fake.ExportPolls == 0 {
		o.fake.ExportPolls = -1
	}
	r := &rig{t: t, reg: prometheus.NewRegistry()}
	r.ps = pstest.NewServer()
	conn, err := grpc.NewClient(r.ps.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	r.client, err = pubsub.NewClient(ctx, rigProject, option.WithGRPCConn(conn))
	if err != nil {
		t.Fatal(err)
	}
	for _, topic := range []string{"inbox", "dead", "outbox"} {
		if _, err := r.client.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: "projects/p/topics/" + topic}); err != nil {
			t.Fatal(err)
		}
		if _, err := r.client.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{
			Name: "projects/p/subscriptions/" + topic, Topic: "projects/p/topics/" + topic,
			AckDeadlineSeconds: 20, EnableMessageOrdering: true,
		}); err != nil {
			t.Fatal(err)
		}
	}
	gcs, err := fakestorage.NewServerWithOptions(fakestorage.Options{Scheme: "http", Host: "127.0.0.1", Port: 0, Writer: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	gcs.CreateBucketWithOpts(fakestorage.CreateBucketOpts{Name: rigBucket})
	// GCS answers 503 while gcsFail is set: an outage.
	tr := roundTripFunc(func(req *http.Request) (*http.Response, error) {
		if r.gcsFail.Load() {
			r.gcs503.Add(1)
			return &http.Response{StatusCode: http.StatusServiceUnavailable, Header: http.Header{"Content-Type": {"application/json"}},
				Body: io.NopCloser(strings.NewReader(`{"error":{"code":503,"message":"injected outage"}}`)), Request: req}, nil
		}
		return http.DefaultTransport.RoundTrip(req)
	})
	st, err := storage.NewClient(ctx, option.WithEndpoint(gcs.URL()+"/storage/v1/"), option.WithoutAuthentication(),
		option.WithHTTPClient(&http.Client{Transport: tr}), storage.WithJSONReads())
	if err != nil {
		t.Fatal(err)
	}
	r.fake = cvatfake.New(t, o.fake)
	r.cv, err = cvatapi.New(cvatapi.Config{BaseURL: r.fake.URL(), Token: r.fake.Token(), AuthScheme: "token", MaxRetries: -1, PollInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if r.archives, err = sink.NewArchives(sink.ArchivesConfig{Client: st, Bucket: rigBucket, Logger: log}); err != nil {
		t.Fatal(err)
	}
	if r.records, err = sink.NewRecords(sink.RecordsConfig{Client: st, Bucket: rigBucket, Prefix: "_cvat-sync", Logger: log}); err != nil {
		t.Fatal(err)
	}
	outbox, err := sink.NewOutbox(sink.OutboxConfig{Publisher: r.client.Publisher("outbox"), Timeout: 5 * time.Second, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if r.queue, err = inbox.NewQueue(inbox.QueueConfig{Publisher: r.client.Publisher("inbox")}); err != nil {
		t.Fatal(err)
	}
	dead, err := inbox.NewDeadLetters(inbox.DeadLettersConfig{Publisher: r.client.Publisher("dead")})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{CVAT: r.cv, Archives: r.archives, Records: r.records, Outbox: outbox, Queue: r.queue, DeadLetters: dead,
		Formats: []string{rigFormat}, Policy: o.policy, Debounce: o.debounce, MaxWait: max(time.Second, 2*o.debounce, o.maxWait),
		MaxAttempts: o.maxAttempts, Since: o.since, MaxDeleteFraction: o.maxDelete,
		Tick: 5 * time.Millisecond, RetryMin: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond, ConfirmDelay: 10 * time.Millisecond,
		ListPageSize: 2,
		Registerer:   r.reg, Logger: log, Now: r.now}
	recv, err := inbox.NewReceiver(inbox.ReceiverConfig{Subscriber: r.client.Subscriber("inbox"), DeadLetters: dead, Hold: LeaseHold(cfg), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Inbox = recv
	if r.p, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	r.notices = r.collect(t, "outbox")
	r.dead = r.collect(t, "dead")
	if !o.noStart {
		r.p.Start(ctx)
	}
	t.Cleanup(func() {
		if !o.noStart {
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := r.p.Stop(sctx); err != nil {
				t.Errorf("pipeline stop: %v", err)
			}
		}
		r.queue.Stop()
		outbox.Stop()
		dead.Stop()
		r.cv.Close()
		st.Close()
		r.client.Close()
		conn.Close()
		r.ps.Close()
		gcs.Stop()
	})
	return r
}

// collect gathers what a subscription gets until the test ends.
func (r *rig) collect(t *testing.T, sub string) func() []*pubsub.Message {
	var mu sync.Mutex
	var got []*pubsub.Message
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = r.client.Subscriber(sub).Receive(ctx, func(_ context.Context, m *pubsub.Message) {
			mu.Lock()
			got = append(got, m)
			mu.Unlock()
			m.Ack()
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	return func() []*pubsub.Message {
		mu.Lock()
		defer mu.Unlock()
		return append([]*pubsub.Message(nil), got...)
	}
}

// notice decodes an outbox message.
func notice(t *testing.T, m *pubsub.Message) sink.Notice {
	t.Helper()
	var n sink.Notice
	if err := json.Unmarshal(m.Data, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// noticesOf returns the notices of a kind about task id.
func (r *rig) noticesOf(kind sink.Kind, id int64) []sink.Notice {
	var out []sink.Notice
	for _, m := range r.notices() {
		n := notice(r.t, m)
		if n.Kind == kind && n.Task.ID == id {
			out = append(out, n)
		}
	}
	return out
}

func (r *rig) enqueue(e task.Event) {
	r.t.Helper()
	if e.ReceivedAt.IsZero() {
		e.ReceivedAt = time.Now()
	}
	if e.Source == "" {
		e.Source = task.SourceWebhook
	}
	if err := r.queue.EnqueueEvent(context.Background(), e); err != nil {
		r.t.Fatal(err)
	}
}

func update(name string, t cvatfake.Task) task.Event {
	res := task.ResourceTask
	if name == "update:job" {
		res = task.ResourceJob
	}
	return task.Event{Name: name, Resource: res, Action: task.ActionUpdate, TaskID: t.ID, ProjectID: t.ProjectID}
}

func deletion(t cvatfake.Task) task.Event {
	return task.Event{Name: "delete:task", Resource: task.ResourceTask, Action: task.ActionDelete, TaskID: t.ID, ProjectID: t.ProjectID, TaskName: t.Name, UpdatedDate: t.UpdatedDate}
}

func (r *rig) record(id int64) sink.Record {
	r.t.Helper()
	rec, err := r.records.Get(context.Background(), id)
	if err != nil {
		r.t.Fatal(err)
	}
	return rec
}

func (r *rig) exportCalls() int {
	return len(r.fake.CallsTo(http.MethodPost, "/api/tasks/{id}/dataset/export"))
}

func (r *rig) pass(full bool) PassResult {
	r.t.Helper()
	res, err := r.p.Converger().Pass(context.Background(), full)
	if err != nil {
		r.t.Fatal(err)
	}
	return res
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond) // polling with a deadline
	}
}

func counter(c interface{ Write(*dto.Metric) error }) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil || m.Counter == nil {
		return 0
	}
	return m.Counter.GetValue()
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }
