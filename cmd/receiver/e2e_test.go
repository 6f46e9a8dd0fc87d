package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fsouza/fake-gcs-server/fakestorage"

	"github.com/cvat-sync/cvat-sync/internal/cloud/cloudtest"
	"github.com/cvat-sync/cvat-sync/internal/cvatfake"
	"github.com/cvat-sync/cvat-sync/internal/eventually"
	"github.com/cvat-sync/cvat-sync/internal/scrape"
)

const (
	e2eSecret  = "e2e-webhook-secret"
	e2eProject = "e2e-project"
	formatCVAT = "CVAT for images 1.1"
)

// emulators are the external Pub/Sub and GCS servers a test's services share,
// as PUBSUB_EMULATOR_HOST and STORAGE_EMULATOR_HOST, with the outbox's
// notices collected from before any service starts, so the test sees every
// one.
type emulators struct {
	*cloudtest.Emulators
	outbox *cloudtest.Collector
}

func newEmulators(t *testing.T) *emulators {
	t.Helper()
	em := cloudtest.Start(t, cloudtest.Options{Project: e2eProject})
	return &emulators{Emulators: em, outbox: em.Collect(t, "cvat-sync-exports")}
}

// env is the emulators' environment, the webhook secret and extra.
func (e *emulators) env(extra map[string]string) map[string]string {
	m := e.Env()
	m["CVAT_SYNC_WEBHOOK_SECRET"] = e2eSecret
	for k, v := range extra {
		m[k] = v
	}
	return m
}

// notice is the part of an outbox message the tests check.
type notice struct {
	Attrs map[string]string
	Key   string
	Data  struct {
		ExportID string `json:"export_id"`
		Kind     string `json:"kind"`
		Format   string `json:"format"`
		Task     struct {
			ID          int64     `json:"id"`
			UpdatedDate time.Time `json:"updated_date"`
		} `json:"task"`
		Trigger struct {
			Event     string `json:"event"`
			Coalesced int    `json:"coalesced_events"`
		} `json:"trigger"`
		Object *struct {
			URI        string `json:"uri"`
			Bucket     string `json:"bucket"`
			Name       string `json:"name"`
			Generation int64  `json:"generation"`
			Size       int64  `json:"size"`
			CRC32C     string `json:"crc32c"`
		} `json:"object"`
	}
}

func (e *emulators) notices(t *testing.T) []notice {
	t.Helper()
	var out []notice
	for _, m := range e.outbox.Messages() {
		n := notice{Attrs: m.Attributes, Key: m.OrderingKey}
		if err := json.Unmarshal(m.Data, &n.Data); err != nil {
			t.Fatalf("outbox data: %v", err)
		}
		out = append(out, n)
	}
	return out
}

// metric returns the sum of a metric's samples whose labels contain all of
// labels, from the service's /metrics.
func (s *service) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	return scrape.Sum(t, "http://"+s.addr+"/metrics", name, labels...)
}

// deliver posts CVAT's events to the service, signed as CVAT signs them.
func deliver(t *testing.T, f *cvatfake.Server, s *service, evs ...cvatfake.Event) {
	t.Helper()
	for _, ev := range evs {
		res, err := f.Deliver(context.Background(), "http://"+s.addr+"/webhooks/cvat", e2eSecret, ev.Body)
		if err != nil {
			t.Fatal(err)
		}
		if res.StatusCode/100 != 2 {
			t.Fatalf("delivery of %s: %d %s", ev.Name, res.StatusCode, res.Body)
		}
	}
}

func pipelineEnv(f *cvatfake.Server, extra map[string]string) map[string]string {
	m := map[string]string{
		"CVAT_SYNC_CVAT_URL":           f.URL(),
		"CVAT_SYNC_CVAT_TOKEN":         f.Token(),
		"CVAT_SYNC_DEBOUNCE":           "300ms",
		"CVAT_SYNC_MAX_WAIT":           "5s",
		"CVAT_SYNC_RECONCILE_INTERVAL": "0",
		"CVAT_SYNC_SHUTDOWN_GRACE":     "5s",
	}
	for k, v := range extra {
		m[k] = v
	}
	return m
}

// TestExportEndToEnd: one annotation save's signed webhooks (three from
// 2.12.1, the task's alone on 2.4.2-2.10, none before 2.4.2, where
// convergence finds the change) end as one archive in GCS, byte for byte
// what CVAT served, and one outbox notice, on each CVAT API generation.
func TestExportEndToEnd(t *testing.T) {
	tests := []struct {
		version, auth, api string
		events             int
	}{
		{"2.64.0", "bearer", "/api/tasks/{id}/dataset/export", 3},
		{"2.20.0", "token", "/api/tasks/{id}/dataset/export", 3},
		{"2.10.0", "token", "/api/tasks/{id}/annotations", 1},
		{"2.4.0", "token", "/api/tasks/{id}/annotations", 0},
	}
	for _, tt := range tests {
		t.Run(tt.version, func(t *testing.T) {
			t.Parallel()
			em := newEmulators(t)
			f := cvatfake.New(t, cvatfake.Options{Version: tt.version, ArchiveSize: 3<<20 + 17})
			p := f.AddProject(cvatfake.Project{Name: "litter"})
			task := f.AddTask(cvatfake.Task{ProjectID: p.ID, Name: "beach-1"})
			job := f.AddJob(cvatfake.Job{TaskID: task.ID})
			env := map[string]string{"CVAT_SYNC_CVAT_AUTH": tt.auth}
			if tt.events == 0 {
				env["CVAT_SYNC_RECONCILE_INTERVAL"] = "500ms"
			}
			s := startService(t, em.env(pipelineEnv(f, env)))
			if tt.events == 0 {
				eventually.Within(t, 20*time.Second, "the first pass", func() bool { return s.metric(t, "cvat_sync_reconcile_passes_total", `outcome="ok"`) >= 1 })
			}

			evs, err := f.SaveAnnotations(job.ID)
			if err != nil || len(evs) != tt.events {
				t.Fatalf("save: %v: %d events, want %d", err, len(evs), tt.events)
			}
			deliver(t, f, s, evs...)
			eventually.Within(t, 20*time.Second, "the export notice", func() bool { return len(em.notices(t)) >= 1 })
			eventually.Within(t, 10*time.Second, "no pending work", func() bool { return s.metric(t, "cvat_sync_pending_tasks") == 0 })

			ns := em.notices(t)
			if len(ns) != 1 {
				t.Fatalf("%d notices, want 1: %+v", len(ns), ns)
			}
			n := ns[0]
			stored, _ := f.Task(task.ID)
			want := map[string]string{"schema": "cvat-sync.export/v1", "kind": "task.exported",
				"task_id": strconv.FormatInt(task.ID, 10), "project_id": strconv.FormatInt(p.ID, 10), "format": formatCVAT}
			for k, v := range want {
				if n.Attrs[k] != v {
					t.Errorf("attribute %s = %q, want %q", k, n.Attrs[k], v)
				}
			}
			if n.Key != "task-"+strconv.FormatInt(task.ID, 10) || n.Data.ExportID == "" || n.Data.Object == nil {
				t.Fatalf("notice: key %q data %+v", n.Key, n.Data)
			}
			eventually.Within(t, 10*time.Second, "every event consumed", func() bool { return s.metric(t, "cvat_sync_inbox_items_total") >= float64(max(tt.events, 1)) })
			if got := s.metric(t, "cvat_sync_coalesced_events_total"); tt.events > 1 && got < 1 {
				t.Errorf("cvat_sync_coalesced_events_total = %v, want the task event folded into the job's export", got)
			}
			if !n.Data.Task.UpdatedDate.Equal(stored.UpdatedDate) || n.Data.Trigger.Coalesced < 1 || n.Data.Trigger.Event == "" {
				t.Errorf("task/trigger: %+v %+v (task updated %v)", n.Data.Task, n.Data.Trigger, stored.UpdatedDate)
			}
			obj, err := em.GCS().GetObject(n.Data.Object.Bucket, n.Data.Object.Name)
			if err != nil {
				t.Fatalf("object of the notice: %v", err)
			}
			wantR, size, err := f.ExpectedArchive(task.ID, formatCVAT)
			if err != nil {
				t.Fatal(err)
			}
			wantBytes, _ := io.ReadAll(wantR)
			if !bytes.Equal(obj.Content, wantBytes) || int64(len(obj.Content)) != size || n.Data.Object.Size != size {
				t.Errorf("archive: %d bytes stored, %d expected, notice says %d; equal=%v",
					len(obj.Content), size, n.Data.Object.Size, bytes.Equal(obj.Content, wantBytes))
			}
			if n.Data.Object.Generation != obj.Generation || n.Data.Object.URI != "gs://"+obj.BucketName+"/"+obj.Name {
				t.Errorf("notice object %+v vs stored generation %d", n.Data.Object, obj.Generation)
			}
			if calls := len(f.CallsTo(http.MethodPost, "/api/tasks/{id}/dataset/export")) + len(f.CallsTo(http.MethodGet, "/api/tasks/{id}/annotations")); calls == 0 {
				t.Error("no export call recorded")
			}
			if tt.api == "/api/tasks/{id}/dataset/export" {
				if got := len(f.CallsTo(http.MethodPost, tt.api)); got != 1 {
					t.Errorf("%d export requests, want 1", got)
				}
			}
			if got := s.metric(t, "cvat_sync_exports_total", `outcome="exported"`); got != 1 {
				t.Errorf("cvat_sync_exports_total{outcome=exported} = %v, want 1", got)
			}
		})
	}
}

// TestBurstCoalesces: a thousand events of one task end in one export.
func TestBurstCoalesces(t *testing.T) {
	t.Parallel()
	em := newEmulators(t)
	f := cvatfake.New(t, cvatfake.Options{ExportPolls: -1})
	p := f.AddProject(cvatfake.Project{Name: "burst"})
	task := f.AddTask(cvatfake.Task{ProjectID: p.ID})
	job := f.AddJob(cvatfake.Job{TaskID: task.ID})
	s := startService(t, em.env(pipelineEnv(f, map[string]string{"CVAT_SYNC_DEBOUNCE": "1s", "CVAT_SYNC_MAX_WAIT": "1m"})))

	var evs []cvatfake.Event
	for len(evs) < 1000 {
		e, err := f.SaveAnnotations(job.ID)
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, e...)
	}
	deliver(t, f, s, evs...)
	eventually.Within(t, 30*time.Second, "the export notice", func() bool { return len(em.notices(t)) >= 1 })
	eventually.Within(t, 4*time.Minute, "every event consumed", func() bool {
		return s.metric(t, "cvat_sync_inbox_items_total") >= float64(len(evs)) && s.metric(t, "cvat_sync_pending_tasks") == 0
	})
	ns := em.notices(t)
	if len(ns) != 1 {
		t.Fatalf("%d notices for a burst of %d events, want 1", len(ns), len(evs))
	}
	if got := len(f.CallsTo(http.MethodPost, "/api/tasks/{id}/dataset/export")); got != 1 {
		t.Errorf("%d exports from CVAT, want 1", got)
	}
	// Every event but the one that started the export was folded in.
	if got := s.metric(t, "cvat_sync_coalesced_events_total"); got < float64(len(evs)*2/3-1) {
		t.Errorf("cvat_sync_coalesced_events_total = %v, want at least the task's %d events but one", got, len(evs)*2/3)
	}
	stored, _ := f.Task(task.ID)
	if !ns[0].Data.Task.UpdatedDate.Equal(stored.UpdatedDate) {
		t.Errorf("exported state %v is not the last one %v", ns[0].Data.Task.UpdatedDate, stored.UpdatedDate)
	}
}

// TestRestartMidDebounce: the service stops inside the debounce window with
// the inbox on an external emulator; the next one exports exactly once.
func TestRestartMidDebounce(t *testing.T) {
	t.Parallel()
	em := newEmulators(t)
	f := cvatfake.New(t, cvatfake.Options{})
	p := f.AddProject(cvatfake.Project{Name: "restart"})
	task := f.AddTask(cvatfake.Task{ProjectID: p.ID})
	job := f.AddJob(cvatfake.Job{TaskID: task.ID})
	env := em.env(pipelineEnv(f, map[string]string{"CVAT_SYNC_DEBOUNCE": "1h", "CVAT_SYNC_MAX_WAIT": "1h"}))

	first := startService(t, env)
	evs, _ := f.SaveAnnotations(job.ID)
	deliver(t, f, first, evs...)
	eventually.Within(t, 10*time.Second, "the events to be pending", func() bool { return first.metric(t, "cvat_sync_pending_tasks") >= 1 })
	first.stop(t)
	if !strings.Contains(first.logs.String(), `"message":"worker drained"`) {
		t.Error("first service did not drain its worker")
	}

	env2 := map[string]string{}
	for k, v := range env {
		env2[k] = v
	}
	env2["CVAT_SYNC_DEBOUNCE"], env2["CVAT_SYNC_MAX_WAIT"] = "300ms", "5s"
	second := startService(t, env2)
	defer func() {
		if t.Failed() {
			for _, m := range em.PubSub().Messages() {
				t.Logf("pstest message %s key %q deliveries %d acks %d modacks %v", m.ID, m.OrderingKey, m.Deliveries, m.Acks, m.Modacks)
			}
		}
	}()
	// A nacked message can reach the first service's closing stream and be
	// lost there until the inbox's 20 s ack deadline passes: allow for that.
	eventually.Within(t, 90*time.Second, "the export after restart", func() bool { return len(em.notices(t)) >= 1 })
	eventually.Within(t, 10*time.Second, "no pending work", func() bool { return second.metric(t, "cvat_sync_pending_tasks") == 0 })
	if n := len(em.notices(t)); n != 1 {
		t.Errorf("%d notices, want 1", n)
	}
	if got := len(f.CallsTo(http.MethodPost, "/api/tasks/{id}/dataset/export")); got != 1 {
		t.Errorf("%d exports, want 1", got)
	}
}

// TestReconcilerFindsSilentChange: a task in a personal workspace changes and
// no webhook is sent; the reconciler exports it.
func TestReconcilerFindsSilentChange(t *testing.T) {
	t.Parallel()
	em := newEmulators(t)
	f := cvatfake.New(t, cvatfake.Options{})
	task := f.AddTask(cvatfake.Task{Name: "sandbox task"})
	s := startService(t, em.env(pipelineEnv(f, map[string]string{"CVAT_SYNC_RECONCILE_INTERVAL": "500ms"})))
	eventually.Within(t, 20*time.Second, "the first reconciled export", func() bool { return len(em.notices(t)) >= 1 })
	if _, err := f.TouchTask(task.ID); err != nil { // a change no webhook reports
		t.Fatal(err)
	}
	eventually.Within(t, 20*time.Second, "the export of the silent change", func() bool { return len(em.notices(t)) >= 2 })
	ns := em.notices(t)
	stored, _ := f.Task(task.ID)
	if !ns[1].Data.Task.UpdatedDate.Equal(stored.UpdatedDate) || ns[1].Data.Trigger.Event != "reconcile" || ns[1].Attrs["project_id"] != "" {
		t.Errorf("second notice %+v (attrs %v), want the new state, trigger reconcile, no project", ns[1].Data, ns[1].Attrs)
	}
	if s.metric(t, "cvat_sync_reconcile_enqueued_total") < 2 {
		t.Error("reconcile metric did not move")
	}
}

// TestOutagesRecover: CVAT failing, then GCS failing, then both recover; the
// export ends once, and the outages spent no attempt (they were held).
func TestOutagesRecover(t *testing.T) {
	t.Parallel()
	em := newEmulators(t)
	f := cvatfake.New(t, cvatfake.Options{ExportPolls: -1})
	p := f.AddProject(cvatfake.Project{Name: "outage"})
	task := f.AddTask(cvatfake.Task{ProjectID: p.ID})
	job := f.AddJob(cvatfake.Job{TaskID: task.ID})
	s := startService(t, em.env(pipelineEnv(f, nil)))

	f.Inject(cvatfake.Fault{Route: "/api/tasks/{id}", Status: 502, Times: 6})
	var gcsFailures int
	var mu sync.Mutex
	em.SetGCSFault(func(r *http.Request) int {
		mu.Lock()
		defer mu.Unlock()
		if r.Method == http.MethodPost && strings.Contains(r.URL.Path, "/upload/") && gcsFailures < 50 {
			gcsFailures++
			return http.StatusServiceUnavailable
		}
		return 0
	})
	evs, _ := f.SaveAnnotations(job.ID)
	deliver(t, f, s, evs...)
	eventually.Within(t, 60*time.Second, "the outage held", func() bool {
		return s.metric(t, "cvat_sync_work_postponed_total", `reason="unavailable"`) >= 1
	})
	em.SetGCSFault(nil)
	eventually.Within(t, 60*time.Second, "the export after recovery", func() bool { return len(em.notices(t)) >= 1 })
	eventually.Within(t, 10*time.Second, "no pending work", func() bool { return s.metric(t, "cvat_sync_pending_tasks") == 0 })
	if n := len(em.notices(t)); n != 1 {
		t.Errorf("%d notices, want 1", n)
	}
	if n := s.metric(t, "cvat_sync_export_retries_total"); n != 0 {
		t.Errorf("the outages spent %v attempts", n)
	}
	list, err := em.GCS().ListObjectsWithOptionsPaginated("cvat-sync", fakestorage.ListOptions{Prefix: "tasks/"})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Objects) != 1 {
		t.Errorf("%d archives in the bucket, want 1", len(list.Objects))
	}
}

// TestDeletionNotice: delete:task of an exported task, once CVAT confirms
// the task is gone, publishes one task.deleted; delivered again, nothing
// more; the archives stay.
func TestDeletionNotice(t *testing.T) {
	t.Parallel()
	em := newEmulators(t)
	f := cvatfake.New(t, cvatfake.Options{})
	p := f.AddProject(cvatfake.Project{Name: "deletions"})
	task := f.AddTask(cvatfake.Task{ProjectID: p.ID})
	s := startService(t, em.env(pipelineEnv(f, nil)))
	up, err := f.TouchTask(task.ID)
	if err != nil {
		t.Fatal(err)
	}
	deliver(t, f, s, up...)
	eventually.Within(t, 20*time.Second, "the export", func() bool { return len(em.notices(t)) >= 1 })
	ev, err := f.DeleteTask(task.ID)
	if err != nil {
		t.Fatal(err)
	}
	deliver(t, f, s, ev)
	eventually.Within(t, 20*time.Second, "the deletion notice", func() bool { return len(em.notices(t)) >= 2 })
	n := em.notices(t)[1]
	if n.Attrs["kind"] != "task.deleted" || n.Data.Kind != "task.deleted" || n.Data.ExportID == "" || n.Data.Object != nil {
		t.Errorf("deletion notice: attrs %v data %+v", n.Attrs, n.Data)
	}
	deliver(t, f, s, ev)
	eventually.Within(t, 20*time.Second, "the second delivery settled", func() bool {
		return s.metric(t, "cvat_sync_inbox_items_total", `kind="delete"`) >= 2 && s.metric(t, "cvat_sync_pending_tasks") == 0
	})
	if got := len(em.notices(t)); got != 2 {
		t.Errorf("%d notices after the deletion was delivered twice, want 2", got)
	}
}
