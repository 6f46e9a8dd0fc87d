package pipeline

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"github.com/fsouza/fake-gcs-server/fakestorage"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
	"github.com/cvat-sync/cvat-sync/internal/cvatfake"
	"github.com/cvat-sync/cvat-sync/internal/inbox"
	"github.com/cvat-sync/cvat-sync/internal/sink"
)

const proj = "p"

// rig is a worker on real protocol servers: pstest, fake-gcs-server and the
// CVAT fake.
type rig struct {
	ps     *pstest.Server
	fake   *cvatfake.Server
	queue  *inbox.Queue
	worker *Worker
	reg    *prometheus.Registry
	client *pubsub.Client
	cancel context.CancelFunc
	done   chan error
}

func newRig(t *testing.T, trigger string, maxAttempts int) *rig {
	t.Helper()
	return newRigDebounce(t, trigger, maxAttempts, 0)
}

func newRigDebounce(t *testing.T, trigger string, maxAttempts int, debounce time.Duration) *rig {
	t.Helper()
	ctx := context.Background()
	ps := pstest.NewServer()
	conn, err := grpc.NewClient(ps.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	client, err := pubsub.NewClient(ctx, proj, option.WithGRPCConn(conn))
	if err != nil {
		t.Fatal(err)
	}
	for _, topic := range []string{"inbox", "dead", "outbox"} {
		if _, err := client.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: "projects/p/topics/" + topic}); err != nil {
			t.Fatal(err)
		}
	}
	for sub, topic := range map[string]string{"inbox": "inbox", "dead": "dead", "outbox": "outbox"} {
		if _, err := client.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{
			Name: "projects/p/subscriptions/" + sub, Topic: "projects/p/topics/" + topic,
			AckDeadlineSeconds: 20, EnableMessageOrdering: true,
		}); err != nil {
			t.Fatal(err)
		}
	}
	gcs, err := fakestorage.NewServerWithOptions(fakestorage.Options{NoListener: true, Writer: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	gcs.CreateBucketWithOpts(fakestorage.CreateBucketOpts{Name: "b"})
	f := cvatfake.New(t, cvatfake.Options{ExportPolls: -1})
	cv, err := cvatapi.New(cvatapi.Config{BaseURL: f.URL(), Token: f.Token(), MaxRetries: -1, PollInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	outPub := client.Publisher("outbox")
	deadPub := client.Publisher("dead")
	exp := &Exporter{CVAT: cv, Archives: sink.NewArchives(gcs.Client(), "b", "", nil, log),
		Outbox: sink.NewOutbox(outPub, nil, log), Formats: []string{"COCO 1.0"}, Metrics: NopMetrics(), Log: log}
	r := &rig{ps: ps, fake: f, queue: inbox.NewQueue(client.Publisher("inbox"), 5*time.Second), reg: prometheus.NewRegistry(), client: client}
	r.worker, err = NewWorker(WorkerConfig{
		Subscriber: client.Subscriber("inbox"), Exporter: exp, Queue: r.queue, DeadLetters: inbox.NewDeadLetters(deadPub),
		Trigger: trigger, Debounce: debounce, MaxWait: max(time.Second, 2*debounce), MaxAttempts: maxAttempts,
		RetryMin: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond, Tick: 5 * time.Millisecond, Log: log,
	}, func(p, o func() float64) (*Metrics, error) { return NewMetrics(r.reg, p, o) })
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	r.cancel, r.done = cancel, make(chan error, 1)
	go func() {
		r.done <- r.worker.Run(runCtx, func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 5*time.Second)
		})
	}()
	t.Cleanup(func() {
		r.cancel()
		if err := <-r.done; err != nil {
			t.Errorf("worker: %v", err)
		}
		r.queue.Stop()
		outPub.Stop()
		deadPub.Stop()
		cv.Close()
		client.Close()
		conn.Close()
		ps.Close()
		gcs.Stop()
	})
	return r
}

// receiveAll collects what a subscription gets until the test ends.
func (r *rig) receiveAll(t *testing.T, sub string) func() []*pubsub.Message {
	t.Helper()
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

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond) // polling with a deadline
	}
}

func taskItem(event string, task, project int64, status string) inbox.Item {
	res := strings.TrimPrefix(event[strings.Index(event, ":"):], ":")
	return inbox.Item{Event: event, Resource: res, Action: event[:strings.Index(event, ":")], TaskID: task,
		ProjectID: project, Status: status, Source: "webhook", ReceivedAt: time.Now()}
}

// TestDeadLetter: an export that keeps failing is retried, then handed to the
// dead-letter topic with the reason, and its inbox message is acked.
func TestDeadLetter(t *testing.T) {
	r := newRig(t, TriggerUpdate, 3)
	dead := r.receiveAll(t, "dead")
	out := r.receiveAll(t, "outbox")
	p := r.fake.AddProject(cvatfake.Project{Name: "p"})
	task := r.fake.AddTask(cvatfake.Task{ProjectID: p.ID})
	for i := 0; i < 3; i++ {
		r.fake.FailNextExport(task.ID, "worker crashed: out of memory")
	}
	if err := r.queue.Enqueue(context.Background(), taskItem("update:task", task.ID, p.ID, "annotation")); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "a dead letter", func() bool { return len(dead()) == 1 })
	m := dead()[0]
	if !strings.Contains(m.Attributes["reason"], "out of memory") || m.Attributes["attempts"] != "3" || m.Attributes["task_id"] == "" {
		t.Errorf("dead letter attributes %v", m.Attributes)
	}
	if got := testutil.ToFloat64(r.worker.m.deadLettered.WithLabelValues("cvat_export_failed")); got != 1 {
		t.Errorf("dead_lettered{cvat_export_failed} = %v", got)
	}
	if got := testutil.ToFloat64(r.worker.m.retries); got != 2 {
		t.Errorf("retries = %v, want 2", got)
	}
	if n := len(r.fake.CallsTo(http.MethodPost, "/api/tasks/{id}/dataset/export")); n != 3 {
		t.Errorf("%d export attempts, want 3", n)
	}
	waitUntil(t, "nothing pending", func() bool { return r.worker.pendingCount() == 0 })
	if len(out()) != 0 {
		t.Error("a failed export published a notice")
	}

	// The work was settled: a later change exports normally.
	if err := r.queue.Enqueue(context.Background(), taskItem("update:task", task.ID, p.ID, "annotation")); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the next export", func() bool { return len(out()) == 1 })
}

// TestTriggerCompleted: with the "completed" policy only a job or task
// reaching completed exports; other changes are acked and skipped.
func TestTriggerCompleted(t *testing.T) {
	r := newRig(t, TriggerCompleted, 5)
	out := r.receiveAll(t, "outbox")
	p := r.fake.AddProject(cvatfake.Project{Name: "p"})
	task := r.fake.AddTask(cvatfake.Task{ProjectID: p.ID})
	ctx := context.Background()
	again := taskItem("update:job", task.ID, p.ID, "completed") // a save in a job completed earlier
	for _, it := range []inbox.Item{
		taskItem("update:job", task.ID, p.ID, "in progress"),
		taskItem("update:task", task.ID, p.ID, "annotation"),
		taskItem("update:project", 0, p.ID, ""),
		again,
	} {
		if err := r.queue.Enqueue(ctx, it); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, "four skipped items", func() bool {
		return testutil.ToFloat64(r.worker.m.items.WithLabelValues("skipped")) == 4
	})
	if len(out()) != 0 || len(r.fake.CallsTo(http.MethodPost, "/api/tasks/{id}/dataset/export")) != 0 {
		t.Fatal("exported without a completion")
	}
	reached := taskItem("update:job", task.ID, p.ID, "completed")
	reached.PreviousStatus = "in progress"
	if err := r.queue.Enqueue(ctx, reached); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the export on completion", func() bool { return len(out()) == 1 })
	if got := out()[0].Attributes["kind"]; got != "task.exported" {
		t.Errorf("kind %q", got)
	}
}

// TestUnreadableInboxMessage: garbage goes to the dead-letter topic as it
// came, with the reason; an item of another wire version is left for a
// replica that reads it.
func TestUnreadableInboxMessage(t *testing.T) {
	r := newRig(t, TriggerUpdate, 3)
	dead := r.receiveAll(t, "dead")
	pub := r.client.Publisher("inbox")
	defer pub.Stop()
	ctx := context.Background()
	if _, err := pub.Publish(ctx, &pubsub.Message{Data: []byte("not json"), Attributes: map[string]string{"v": "1"}}).Get(ctx); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the dead letter", func() bool { return len(dead()) == 1 })
	if m := dead()[0]; string(m.Data) != "not json" || m.Attributes["v"] != "1" || !strings.Contains(m.Attributes["reason"], "unsupported") {
		t.Errorf("dead letter %q %v", m.Data, m.Attributes)
	}
	if _, err := pub.Publish(ctx, &pubsub.Message{Data: []byte(`{}`), Attributes: map[string]string{"v": "2"}}).Get(ctx); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the v2 item nacked", func() bool {
		return testutil.ToFloat64(r.worker.m.items.WithLabelValues("other_version")) >= 1
	})
	if len(dead()) != 1 {
		t.Error("a newer item was dead-lettered")
	}
}

// TestHeldUntilExported: a held event stays unacked on the Pub/Sub server
// until its export is done, so a replica that dies holding it loses nothing.
func TestHeldUntilExported(t *testing.T) {
	r := newRigDebounce(t, TriggerUpdate, 3, 2*time.Second)
	out := r.receiveAll(t, "outbox")
	p := r.fake.AddProject(cvatfake.Project{Name: "p"})
	task := r.fake.AddTask(cvatfake.Task{ProjectID: p.ID})
	if err := r.queue.Enqueue(context.Background(), taskItem("update:task", task.ID, p.ID, "annotation")); err != nil {
		t.Fatal(err)
	}
	inboxAcks := func() int {
		n := 0
		for _, m := range r.ps.Messages() {
			if m.Attributes["v"] == inbox.Version { // inbox items, not outbox notices
				n += m.Acks
			}
		}
		return n
	}
	waitUntil(t, "the event held", func() bool { return r.worker.pendingCount() == 1 })
	// Past the client's 100 ms ack flush: an early ack would have reached the server.
	deadline := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if inboxAcks() != 0 {
			t.Fatal("the held event was acked before its export")
		}
		time.Sleep(20 * time.Millisecond) // sampling the server's ack count
	}
	waitUntil(t, "the export", func() bool { return len(out()) == 1 })
	waitUntil(t, "the ack after the export", func() bool { return inboxAcks() == 1 })
}
