package reliability

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cvat-sync/cvat-sync/internal/cloud/cloudtest"
	"github.com/cvat-sync/cvat-sync/internal/cvatfake"
	"github.com/cvat-sync/cvat-sync/internal/eventually"
)

const (
	pipeSecret  = "pipeline-webhook-secret-31a7c0"
	pipeToken   = "pipeline-cvat-token-c4e8d1"
	outboxTopic = "cvat-sync-exports"
	// deadLetterTopic is the inbox's dead-letter topic (the default).
	deadLetterTopic = "cvat-sync-inbox-dead"
	bucket          = "cvat-sync"
)

// stack is a CVAT fake, the emulators and a receiver exporting between them.
type stack struct {
	em *cloudtest.Emulators
	cv *cvatfake.Server
	r  *receiver
	p  cvatfake.Project
}

func pipelineEnv(em *cloudtest.Emulators, cv *cvatfake.Server, dataDir string) map[string]string {
	env := em.Env()
	for k, v := range map[string]string{
		"CVAT_SYNC_WEBHOOK_SECRET":     pipeSecret,
		"CVAT_SYNC_CVAT_URL":           cv.URL(),
		"CVAT_SYNC_CVAT_TOKEN":         pipeToken,
		"CVAT_SYNC_DEBOUNCE":           "200ms",
		"CVAT_SYNC_MAX_WAIT":           "5s",
		"CVAT_SYNC_RECONCILE_INTERVAL": "0",
		"CVAT_SYNC_SHUTDOWN_GRACE":     "5s",
	} {
		env[k] = v
	}
	if dataDir != "" {
		env["CVAT_SYNC_DATA_DIR"] = dataDir
	}
	return env
}

func newStack(t *testing.T) *stack {
	t.Helper()
	em := newEmulators(t)
	cv := cvatfake.New(t, cvatfake.Options{Token: pipeToken, ExportPolls: 1})
	s := &stack{em: em, cv: cv}
	s.r = startReceiver(t, pipelineEnv(em, cv, ""))
	s.p = cv.AddProject(cvatfake.Project{Name: "reliability"})
	return s
}

// task adds a task with one job.
func (s *stack) task() (cvatfake.Task, cvatfake.Job) {
	tk := s.cv.AddTask(cvatfake.Task{Name: "t", ProjectID: s.p.ID})
	return tk, s.cv.AddJob(cvatfake.Job{TaskID: tk.ID})
}

// save does an annotation save and returns its webhook bodies.
func (s *stack) save(t testing.TB, jobID int64) []cvatfake.Event {
	t.Helper()
	evs, err := s.cv.SaveAnnotations(jobID)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// deliver delivers events as CVAT does and returns the statuses.
func deliver(t testing.TB, cv *cvatfake.Server, url string, evs []cvatfake.Event) []int {
	t.Helper()
	var codes []int
	for _, ev := range evs {
		res, err := cv.Deliver(context.Background(), url, pipeSecret, ev.Body)
		if err != nil {
			codes = append(codes, 0)
			continue
		}
		codes = append(codes, res.StatusCode)
	}
	return codes
}

func allStored(codes []int) bool {
	for _, c := range codes {
		if c/100 != 2 {
			return false
		}
	}
	return len(codes) > 0
}

// notices returns the outbox notices about task id.
func notices(em *cloudtest.Emulators, taskID int64) []*pstest.Message {
	var out []*pstest.Message
	for _, m := range em.Messages(outboxTopic) {
		if m.Attributes["task_id"] == strconv.FormatInt(taskID, 10) {
			out = append(out, m)
		}
	}
	return out
}

// archives returns the names of the archive objects of task id (not the
// publish markers).
func archives(em *cloudtest.Emulators, taskID int64) []string {
	var out []string
	for _, o := range em.Objects(bucket, "") {
		if strings.Contains(o.Name, "tasks/"+strconv.FormatInt(taskID, 10)+"/") && !strings.Contains(o.Name, "_published/") {
			out = append(out, o.Name)
		}
	}
	return out
}

// exportedOnce waits until task id has a notice, then checks that its
// current state was exported exactly once: one archive, one notice, whose
// updated_date is the task's.
func (s *stack) exportedOnce(t *testing.T, taskID int64, within time.Duration) {
	t.Helper()
	eventually.Within(t, within, fmt.Sprintf("an outbox notice for task %d", taskID), func() bool { return len(notices(s.em, taskID)) > 0 })
	// Wait for the worker to settle: nothing pending.
	eventually.Within(t, within, "no pending task", func() bool { return s.r.metric(t, "cvat_sync_pending_tasks") == 0 })
	ns, objs := notices(s.em, taskID), archives(s.em, taskID)
	if len(ns) != 1 || len(objs) != 1 {
		t.Errorf("task %d: %d notices and %d archives %v, want one of each", taskID, len(ns), len(objs), objs)
	}
	tk, _ := s.cv.Task(taskID)
	want := tk.UpdatedDate.UTC().Format("20060102T150405.000000Z")
	for _, o := range objs {
		if !strings.Contains(o, want) {
			t.Errorf("task %d: archive %s is not of the task's current state %s", taskID, o, want)
		}
	}
}

// isArchiveUpload reports whether r starts the upload of an archive: the
// object's name is in the first part of the body (multipart) or is the
// body (a resumable upload's start), which is put back for the server.
func isArchiveUpload(r *http.Request) bool {
	if !strings.HasPrefix(r.URL.Path, "/upload/") || r.Body == nil {
		return false
	}
	head := make([]byte, 4096)
	n, _ := io.ReadFull(r.Body, head)
	r.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(head[:n]), r.Body), r.Body}
	return bytes.Contains(head[:n], []byte(`.zip"`))
}

// TestFaultMatrix injects one fault per row into CVAT, GCS or Pub/Sub while
// a task is saved, and checks that its state is still exported exactly once
// and that the metric an operator would watch moved.
func TestFaultMatrix(t *testing.T) {
	type row struct {
		name   string
		inject func(s *stack, taskID int64)
		metric []string // metric name, then label matchers: must move by at least 1
	}
	cvatFault := func(f cvatfake.Fault) func(*stack, int64) {
		return func(s *stack, _ int64) { s.cv.Inject(f) }
	}
	// gcsUploads fails the first times uploads of an archive with code.
	// Only archives: the record and the cursor are uploads too, and whether
	// the start-up pass's cursor write comes before or after the save's
	// archive is a matter of timing (a record conflict is no export retry).
	gcsUploads := func(code int, times int64) func(*stack, int64) {
		return func(s *stack, _ int64) {
			var n atomic.Int64
			s.em.SetGCSFault(func(r *http.Request) int {
				if isArchiveUpload(r) && n.Add(1) <= times {
					return code
				}
				return 0
			})
		}
	}
	rows := []row{
		{"CVAT 500 on export request", cvatFault(cvatfake.Fault{Method: "POST", Route: "/api/tasks/{id}/dataset/export", Status: 500, Times: 2}),
			[]string{"cvat_sync_cvat_requests_total", `code="500"`}},
		{"CVAT 503 on status poll", cvatFault(cvatfake.Fault{Method: "GET", Route: "/api/requests/{rq_id}", Status: 503, Times: 2}),
			[]string{"cvat_sync_cvat_requests_total", `code="503"`}},
		{"CVAT 429 with Retry-After", cvatFault(cvatfake.Fault{Method: "POST", Route: "/api/tasks/{id}/dataset/export", Status: 429, RetryAfter: "1", Times: 2}),
			[]string{"cvat_sync_cvat_requests_total", `code="429"`}},
		{"CVAT 409 on export request", cvatFault(cvatfake.Fault{Method: "POST", Route: "/api/tasks/{id}/dataset/export", Status: 409, Times: 1}),
			[]string{"cvat_sync_cvat_requests_total", `code="409"`}},
		{"CVAT 410 on download", cvatFault(cvatfake.Fault{Method: "GET", Route: "/api/tasks/{id}/dataset/download", Status: 410, Times: 1}),
			[]string{"cvat_sync_cvat_requests_total", `code="410"`}},
		{"CVAT drops the connection", cvatFault(cvatfake.Fault{Method: "POST", Route: "/api/tasks/{id}/dataset/export", Drop: true, Times: 2}),
			[]string{"cvat_sync_cvat_requests_total", `code="error"`}},
		{"CVAT stalls a download", cvatFault(cvatfake.Fault{Method: "GET", Route: "/api/tasks/{id}/dataset/download", StallAfter: 100, Times: 1}),
			[]string{"cvat_sync_export_retries_total"}},
		// The storage client retries a 503 itself: only the write's success
		// shows (and the proxy's count proves the fault was hit).
		{"GCS 503 on upload", gcsUploads(503, 3), []string{"cvat_sync_sink_writes_total", `outcome="created"`}},
		{"GCS 412 on upload", gcsUploads(412, 1), []string{"cvat_sync_export_retries_total"}},
	}
	if longTests() {
		// CVAT's answer never comes: the client's 30 s request timeout cuts it.
		rows = append(rows, row{"CVAT times out", cvatFault(cvatfake.Fault{Method: "GET", Route: "/api/requests/{rq_id}", Delay: time.Minute, Times: 1}),
			[]string{"cvat_sync_export_retries_total"}})
	}
	for _, rw := range rows {
		t.Run(rw.name, func(t *testing.T) {
			t.Parallel()
			s := newStack(t)
			tk, job := s.task()
			before := s.r.metric(t, rw.metric[0], rw.metric[1:]...)
			rw.inject(s, tk.ID)
			if codes := deliver(t, s.cv, s.r.webhookURL(), s.save(t, job.ID)); !allStored(codes) {
				t.Fatalf("deliveries answered %v", codes)
			}
			s.exportedOnce(t, tk.ID, 90*time.Second)
			if got := s.r.metric(t, rw.metric[0], rw.metric[1:]...) - before; got < 1 {
				t.Errorf("%v moved by %v, want at least 1", rw.metric, got)
			}
			if strings.HasPrefix(rw.name, "GCS") && s.em.GCSFaults() == 0 {
				t.Errorf("the GCS fault was never hit")
			}
		})
	}

	t.Run("Pub/Sub unavailable at ingest", func(t *testing.T) {
		t.Parallel()
		s := newStack(t)
		tk, job := s.task()
		before := s.r.metric(t, "cvat_sync_webhook_deliveries_total", `outcome="unavailable"`)
		s.em.SetPubSubFault(func(method string, _ any) error {
			if method == "Publish" {
				return status.Error(codes.Unavailable, "injected by the test")
			}
			return nil
		})
		evs := s.save(t, job.ID)
		got := deliver(t, s.cv, s.r.webhookURL(), evs[:1])
		s.em.SetPubSubFault(nil)
		if got[0] != http.StatusServiceUnavailable {
			t.Errorf("delivery while Pub/Sub is down: %v, want 503", got)
		}
		if n := len(s.em.Messages(inboxTopic)); n != 0 {
			t.Errorf("the inbox holds %d messages after a 503: something was claimed stored", n)
		}
		if d := s.r.metric(t, "cvat_sync_webhook_deliveries_total", `outcome="unavailable"`) - before; d != 1 {
			t.Errorf("unavailable deliveries moved by %v, want 1", d)
		}
		// CVAT (or an operator) redelivers once Pub/Sub is back. Known bug:
		// the publisher leaves the task's ordering key paused when the
		// handler gave up before the publish failed, so the first
		// redelivery per task is refused with a 503 (see
		// internal/inbox Enqueue). A CVAT after 2.64 retries it; CVAT 2.64
		// and older do not.
		codes := deliver(t, s.cv, s.r.webhookURL(), evs)
		// The first delivery of each task after the outage must be stored:
		// CVAT up to 2.64 never retries it.
		if !allStored(codes) {
			t.Fatalf("redelivery once Pub/Sub is back answered %v, want 2xx for each", codes)
		}
		s.exportedOnce(t, tk.ID, 60*time.Second)
	})

	t.Run("Pub/Sub unavailable at publish", func(t *testing.T) {
		t.Parallel()
		s := newStack(t)
		tk, job := s.task()
		before := s.r.metric(t, "cvat_sync_outbox_publishes_total", `outcome="error"`)
		s.em.SetPubSubFault(cloudtest.FailPublish(outboxTopic, status.Error(codes.Unavailable, "injected by the test")))
		if codes := deliver(t, s.cv, s.r.webhookURL(), s.save(t, job.ID)); !allStored(codes) {
			t.Fatalf("deliveries answered %v", codes)
		}
		eventually.Within(t, 60*time.Second, "a failed outbox publish", func() bool { return s.em.PubSubFaults() > 0 })
		eventually.Within(t, 60*time.Second, "the publish error counted", func() bool {
			return s.r.metric(t, "cvat_sync_outbox_publishes_total", `outcome="error"`) > before
		})
		s.em.SetPubSubFault(nil)
		s.exportedOnce(t, tk.ID, 90*time.Second)
	})
}
