package pipeline

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/cvat-sync/cvat-sync/internal/cloud"
	"github.com/cvat-sync/cvat-sync/internal/cloud/cloudtest"
	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
	"github.com/cvat-sync/cvat-sync/internal/cvatfake"
	"github.com/cvat-sync/cvat-sync/internal/inbox"
	"github.com/cvat-sync/cvat-sync/internal/sink"
	"github.com/cvat-sync/cvat-sync/internal/task"
)

// rigWithin bounds every wait for the rig's pipeline to do something.
const rigWithin = 60 * time.Second

const (
	rigProject = "p"
	rigBucket  = "rig-archives" // a valid GCS name: the emulator creates it through the API
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

// rig is a pipeline on real protocol servers over sockets: the emulators
// of cloudtest (pstest, fake-gcs-server) and the CVAT fake.
type rig struct {
	t        *testing.T
	em       *cloudtest.Emulators
	client   *pubsub.Client
	fake     *cvatfake.Server
	cv       *cvatapi.Client
	queue    *inbox.Queue
	archives *sink.Archives
	records  *sink.Records
	reg      *prometheus.Registry
	p        *Pipeline
	offset   atomic.Int64             // added to the pipeline's clock
	notices  func() []*pubsub.Message // those whose record is written
	dead     func() []*pubsub.Message
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
	r.em = cloudtest.Start(t, cloudtest.Options{Project: rigProject})
	r.em.Subscription(t, "inbox", "inbox", cloud.SubscriptionOptions{AckDeadline: 20 * time.Second, Ordering: true})
	r.em.Bucket(t, rigBucket)
	// Collected from the start, before the pipeline publishes.
	r.notices = r.recorded(r.em.Collect(t, "outbox").Messages)
	r.dead = r.em.Collect(t, "dead").Messages
	env := r.em.Open(t)
	r.client = env.PubSub
	st := env.Storage
	r.fake = cvatfake.New(t, o.fake)
	var err error
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
	})
	return r
}

// recorded passes on the notices whose record is written. The pipeline
// writes a task's record after the notice is out, so a test that saw a
// notice and then read the record or ran a pass would race the pipeline.
func (r *rig) recorded(all func() []*pubsub.Message) func() []*pubsub.Message {
	var mu sync.Mutex
	seen := map[string]bool{} // message ids whose record was seen
	return func() []*pubsub.Message {
		mu.Lock()
		defer mu.Unlock()
		var out []*pubsub.Message
		for _, m := range all() {
			if !seen[m.ID] {
				seen[m.ID] = r.noticeRecorded(notice(r.t, m))
			}
			if seen[m.ID] {
				out = append(out, m)
			}
		}
		return out
	}
}

// noticeRecorded reports whether the record of n's task shows n.
func (r *rig) noticeRecorded(n sink.Notice) bool {
	rec, err := r.records.Get(context.Background(), n.Task.ID)
	if err != nil {
		return false // GCS refusing (an outage the test injects): not yet
	}
	if n.Kind == sink.KindDeleted {
		return rec.Deleted != nil
	}
	a, ok := rec.Formats[n.Format]
	return ok && !a.UpdatedDate.Before(n.Task.UpdatedDate)
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

func counter(c interface{ Write(*dto.Metric) error }) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil || m.Counter == nil {
		return 0
	}
	return m.Counter.GetValue()
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }
