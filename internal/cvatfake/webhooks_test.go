package cvatfake_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cvat-sync/cvat-sync/internal/cvatfake"
	"github.com/cvat-sync/cvat-sync/internal/payloads"
)

// call makes a raw API call as user7 (Token auth works on every release).
func call(t testing.TB, f *cvatfake.Server, method, path, org string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, f.URL()+path, rd)
	req.Header.Set("Authorization", "Token "+f.Token())
	req.Header.Set("Content-Type", "application/json")
	if org != "" {
		req.Header.Set("X-Organization", org)
	}
	resp, err := f.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// hook creates a webhook and returns its id.
func hook(t testing.TB, f *cvatfake.Server, org string, spec map[string]any) int64 {
	t.Helper()
	if _, ok := spec["secret"]; !ok {
		spec["secret"] = "s3cret"
	}
	status, b := call(t, f, "POST", "/api/webhooks", org, spec)
	var w struct {
		ID int64 `json:"id"`
	}
	if status != http.StatusCreated || json.Unmarshal(b, &w) != nil {
		t.Fatalf("create webhook %v: %d %s", spec, status, b)
	}
	return w.ID
}

// receiver records what CVAT sends it and answers status() (a connection
// refused when down()).
type receiver struct {
	url    string
	srv    *httptest.Server
	status atomic.Int32
	mu     sync.Mutex
	got    []delivery
}

func newLoggingReceiver(t testing.TB) *receiver {
	t.Helper()
	r := &receiver{}
	r.status.Store(http.StatusOK)
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.got = append(r.got, delivery{req.Header.Clone(), b})
		r.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(int(r.status.Load()))
		_, _ = io.WriteString(w, `{"status": "accepted"}`)
	}))
	t.Cleanup(r.srv.Close)
	r.url = r.srv.URL + "/webhooks/cvat"
	return r
}

func (r *receiver) events() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, d := range r.got {
		var env struct {
			Event string `json:"event"`
		}
		_ = json.Unmarshal(d.body, &env)
		out = append(out, env.Event)
	}
	return out
}

func (r *receiver) deliveries() []delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

// await waits (generously) for webhook id's delivery log to satisfy cond.
func await(t testing.TB, f *cvatfake.Server, id int64, cond func([]cvatfake.Delivery) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := f.AwaitDeliveries(ctx, id, cond); err != nil {
		t.Fatal(err)
	}
}

func names(evs []cvatfake.Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Name)
	}
	return out
}

func topKeys(t testing.TB, b []byte) []string {
	t.Helper()
	var keys []string
	for _, k := range shape(t, b) {
		if strings.Count(k, ".") == 1 {
			keys = append(keys, k[1:])
		}
	}
	return keys
}

// TestSaveAnnotationsByRelease: which events an annotation save fires, and
// what it touches, by release (issue 14 finding 7: 2.3–2.4.1 fire nothing).
func TestSaveAnnotationsByRelease(t *testing.T) {
	tests := []struct {
		version      string
		want         []string
		jobTouched   bool
		projTouched  bool
		taskTouched  bool
		wantNoEvents bool
	}{
		{version: "2.3.0", taskTouched: true},
		{version: "2.4.0", taskTouched: true},
		{version: "2.4.1", taskTouched: true},
		{version: "2.4.2", want: []string{"update:task"}, taskTouched: true},
		{version: "2.10.3", want: []string{"update:task"}, taskTouched: true},
		{version: "2.11.0", want: []string{"update:job", "update:task"}, jobTouched: true, taskTouched: true},
		{version: "2.12.1", want: []string{"update:job", "update:task", "update:project"}, jobTouched: true, taskTouched: true, projTouched: true},
		{version: "2.64.0", want: []string{"update:job", "update:task", "update:project"}, jobTouched: true, taskTouched: true, projTouched: true},
		{version: "2.74.0", want: []string{"update:job", "update:task", "update:project"}, jobTouched: true, taskTouched: true, projTouched: true},
	}
	for _, tt := range tests {
		t.Run(tt.version, func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: tt.version})
			p := f.AddProject(cvatfake.Project{Name: "p"})
			task := f.AddTask(cvatfake.Task{ProjectID: p.ID})
			job := f.AddJob(cvatfake.Job{TaskID: task.ID})
			evs, err := f.SaveAnnotations(job.ID)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, names(evs)); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
			j, _ := f.Job(job.ID)
			tk, _ := f.Task(task.ID)
			pr, _ := f.Project(p.ID)
			got := []bool{j.UpdatedDate.After(job.UpdatedDate), tk.UpdatedDate.After(task.UpdatedDate), pr.UpdatedDate.After(p.UpdatedDate)}
			if diff := cmp.Diff([]bool{tt.jobTouched, tt.taskTouched, tt.projTouched}, got); diff != "" {
				t.Errorf("updated_date moved for job, task, project (-want +got):\n%s", diff)
			}
			touched, err := f.TouchTask(task.ID)
			if err != nil || (len(touched) == 0) != (tt.want == nil) {
				t.Errorf("TouchTask = %v, %v", names(touched), err)
			}
		})
	}
}

// TestEnvelopesByRelease: key order of the bodies by release range
// (VERSIONS.md §1.3), for a REST PATCH of a job (fires on every release), a
// model save of a task, and a deletion.
func TestEnvelopesByRelease(t *testing.T) {
	tests := []struct {
		version           string
		patch, save, del_ []string
	}{
		{"2.3.0", []string{"event", "job", "before_update", "webhook_id", "sender"}, nil, []string{"event", "task", "webhook_id", "sender"}},
		{"2.4.1", []string{"event", "job", "before_update", "webhook_id", "sender"}, nil, []string{"event", "task", "webhook_id", "sender"}},
		{"2.4.2", []string{"event", "job", "sender", "before_update", "webhook_id"}, []string{"event", "task", "sender", "before_update", "webhook_id"}, []string{"event", "task", "sender", "webhook_id"}},
		{"2.43.0", []string{"event", "job", "sender", "before_update", "webhook_id"}, []string{"event", "task", "sender", "before_update", "webhook_id"}, []string{"event", "task", "sender", "webhook_id"}},
		{"2.44.0", []string{"job", "sender", "event", "before_update", "webhook_id"}, []string{"task", "sender", "event", "before_update", "webhook_id"}, []string{"event", "task", "sender", "webhook_id"}},
		{"2.72.0", []string{"job", "sender", "event", "before_update", "webhook_id"}, []string{"task", "sender", "event", "before_update", "webhook_id"}, []string{"event", "task", "sender", "webhook_id"}},
		{"2.73.0", []string{"event", "webhook_id", "job", "sender", "before_update", "changes"}, []string{"event", "webhook_id", "task", "sender", "before_update", "changes"}, []string{"event", "task", "sender", "webhook_id"}},
		{"2.74.0", []string{"event", "webhook_id", "job", "sender"}, []string{"event", "webhook_id", "task", "sender"}, []string{"event", "task", "sender", "webhook_id"}},
	}
	for _, tt := range tests {
		t.Run(tt.version, func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: tt.version})
			p := f.AddProject(cvatfake.Project{Name: "p"})
			task := f.AddTask(cvatfake.Task{ProjectID: p.ID})
			job := f.AddJob(cvatfake.Job{TaskID: task.ID})
			patched, err := f.CompleteJob(job.ID)
			if err != nil || len(patched) == 0 || patched[0].Name != "update:job" {
				t.Fatalf("CompleteJob = %v, %v", names(patched), err)
			}
			if diff := cmp.Diff(tt.patch, topKeys(t, patched[0].Body)); diff != "" {
				t.Errorf("PATCH update:job keys (-want +got):\n%s", diff)
			}
			saved, _ := f.TouchTask(task.ID)
			var got []string
			if len(saved) > 0 {
				got = topKeys(t, saved[0].Body)
			}
			if diff := cmp.Diff(tt.save, got); diff != "" {
				t.Errorf("save update:task keys (-want +got):\n%s", diff)
			}
			del, _ := f.DeleteTask(task.ID)
			if diff := cmp.Diff(tt.del_, topKeys(t, del.Body)); diff != "" {
				t.Errorf("delete:task keys (-want +got):\n%s", diff)
			}
		})
	}
}

// TestBeforeUpdateByRelease: what before_update holds (VERSIONS.md §1.4).
func TestBeforeUpdateByRelease(t *testing.T) {
	type body struct {
		BeforeUpdate map[string]any `json:"before_update"`
		Changes      map[string]map[string]any
	}
	for _, tt := range []struct {
		version string
		want    []string // keys of before_update of the PATCH's update:job
	}{
		{"2.4.0", []string{"stage", "state"}}, // the PATCH body's keys
		{"2.64.0", []string{"stage", "state", "status", "updated_date"}},
		{"2.73.0", []string{"stage", "state", "status", "updated_date"}},
		{"2.74.0", nil},
	} {
		t.Run(tt.version, func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: tt.version})
			p := f.AddProject(cvatfake.Project{Name: "p"})
			job := f.AddJob(cvatfake.Job{TaskID: f.AddTask(cvatfake.Task{ProjectID: p.ID}).ID})
			evs, _ := f.CompleteJob(job.ID)
			var b body
			if err := json.Unmarshal(evs[0].Body, &b); err != nil {
				t.Fatal(err)
			}
			var keys []string
			for k := range b.BeforeUpdate {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			if diff := cmp.Diff(tt.want, keys); diff != "" {
				t.Errorf("before_update keys (-want +got):\n%s", diff)
			}
			if tt.version == "2.73.0" {
				if c := b.Changes["state"]; c["from"] != "new" || c["to"] != "completed" {
					t.Errorf("changes.state = %v", c)
				}
			} else if b.Changes != nil {
				t.Errorf("changes present: %v", b.Changes)
			}
		})
	}
}

// TestUpdateShapes273AndAfter: the update:task of a save has CVAT's shape
// in 2.73.0 and after #11104, nested objects included (issue 14 finding 4).
func TestUpdateShapes273AndAfter(t *testing.T) {
	for _, tt := range []struct{ version, file string }{
		{"2.73.0", "testdata/payloads/v2.73.0/update_task.json"},
		{"2.74.0", "testdata/payloads/post-11104/update_task.json"},
	} {
		t.Run(tt.version, func(t *testing.T) {
			want, err := os.ReadFile(tt.file)
			if err != nil {
				t.Fatal(err)
			}
			f := cvatfake.New(t, cvatfake.Options{Version: tt.version})
			p := f.AddProject(cvatfake.Project{Name: "project1"})
			task := f.AddTask(cvatfake.Task{Name: "task1_in_project1", ProjectID: p.ID})
			f.AddJob(cvatfake.Job{TaskID: task.ID})
			evs, err := f.TouchTask(task.ID)
			if err != nil || len(evs) != 1 {
				t.Fatalf("TouchTask = %v, %v", names(evs), err)
			}
			w, g := comparable(shape(t, want), shape(t, evs[0].Body))
			if diff := cmp.Diff(w, g); diff != "" {
				t.Errorf("keys (-CVAT +fake):\n%s", diff)
			}
			var b struct {
				Task struct {
					Jobs struct {
						Count int `json:"count"`
					} `json:"jobs"`
				} `json:"task"`
				Changes map[string]struct{ From, To string }
			}
			if err := json.Unmarshal(evs[0].Body, &b); err != nil {
				t.Fatal(err)
			}
			if b.Task.Jobs.Count != 1 {
				t.Errorf("jobs.count = %d: 2.73 re-reads the task, counters are real", b.Task.Jobs.Count)
			}
			if tt.version == "2.73.0" && b.Changes["updated_date"].To <= b.Changes["updated_date"].From {
				t.Errorf("changes = %+v", b.Changes)
			}
		})
	}
}

// TestSigning230: 2.3.0 signs the body plus a newline; no header without a
// secret; 2.3.0 sends requests' own User-Agent.
func TestSigning230(t *testing.T) {
	body := payloads.Read(t, "update_task.json")
	for _, tt := range []struct {
		version, secret, wantSig, wantUA string
	}{
		{"2.3.0", "k", sign("k", append(slices.Clone(body), '\n')), "python-requests/2.32.4"},
		{"2.3.0", "", "", "python-requests/2.32.4"},
		{"2.4.0", "k", sign("k", body), "CVAT/2.4.0 python-requests/2.32.4"},
	} {
		t.Run(tt.version+" "+tt.secret, func(t *testing.T) {
			r := newLoggingReceiver(t)
			f := cvatfake.New(t, cvatfake.Options{Version: tt.version})
			if _, err := f.Deliver(context.Background(), r.url, tt.secret, body); err != nil {
				t.Fatal(err)
			}
			d := r.deliveries()[0]
			_, has := d.header["X-Signature-256"]
			if d.header.Get("X-Signature-256") != tt.wantSig || has != (tt.secret != "") || d.header.Get("User-Agent") != tt.wantUA {
				t.Errorf("headers %v", d.header)
			}
			if !bytes.Equal(d.body, body) {
				t.Error("body changed")
			}
		})
	}
}

// TestWebhookObjectByRelease: 2.3.0 names the field project; last_status
// and last_delivery_date are absent until a delivery exists.
func TestWebhookObjectByRelease(t *testing.T) {
	for _, tt := range []struct{ version, projectKey, other string }{
		{"2.3.0", "project", "project_id"},
		{"2.4.0", "project_id", "project"},
		{"2.64.0", "project_id", "project"},
	} {
		t.Run(tt.version, func(t *testing.T) {
			r := newLoggingReceiver(t)
			f := cvatfake.New(t, cvatfake.Options{Version: tt.version})
			p := f.AddProject(cvatfake.Project{Name: "p"})
			id := hook(t, f, "", map[string]any{"target_url": r.url, "type": "project", "project_id": p.ID, "events": []string{"update:task"}})
			get := func() map[string]any {
				_, b := call(t, f, "GET", "/api/webhooks/"+itoa(id), "", nil)
				var m map[string]any
				_ = json.Unmarshal(b, &m)
				return m
			}
			w := get()
			if w[tt.projectKey] != float64(p.ID) {
				t.Errorf("%s = %v", tt.projectKey, w[tt.projectKey])
			}
			for _, absent := range []string{tt.other, "last_status", "last_delivery_date"} {
				if _, ok := w[absent]; ok {
					t.Errorf("%s present: %v", absent, w)
				}
			}
			if status, b := call(t, f, "POST", "/api/webhooks/"+itoa(id)+"/ping", "", nil); status != 200 {
				t.Fatalf("ping: %d %s", status, b)
			}
			await(t, f, id, func(ds []cvatfake.Delivery) bool { return len(ds) == 1 && ds[0].StatusCode == 200 })
			if get()["last_status"] != 200.0 {
				t.Errorf("last_status %v after the ping", get()["last_status"])
			}
			if _, ok := get()["last_delivery_date"]; !ok {
				t.Error("no last_delivery_date after a delivery")
			}
		})
	}
}

// TestCreateWebhookValidation: the event catalogue and its checks by
// release (issue 14 finding 6: delete:project refused on 2.3–2.4.1).
func TestCreateWebhookValidation(t *testing.T) {
	want400, err := os.ReadFile("testdata/api/webhook_create_project_400_v2.3-2.4.1.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		version, typ string
		events       []string
		wantStatus   int
		wantBody     string // JSON, compared by value; "" = not compared
	}{
		{"2.4.1", "project", []string{"update:task", "delete:project"}, 400, string(want400)},
		{"2.3.0", "project", []string{"update:task", "delete:project"}, 400, string(want400)},
		{"2.4.1", "project", []string{"create:job"}, 400, `{"events": ["\"create:job\" is not a valid choice."]}`},
		{"2.4.1", "project", []string{"update:organization"}, 400, string(want400)},
		{"2.4.1", "project", []string{"update:task", "update:job", "delete:task", "create:task", "update:project"}, 201, ""},
		{"2.4.2", "project", []string{"update:task", "delete:project", "create:job", "delete:job"}, 201, ""},
		{"2.4.1", "organization", []string{"delete:project", "create:project"}, 201, ""},
		{"2.64.0", "organization", []string{"create:export"}, 400, `{"events": ["\"create:export\" is not a valid choice."]}`},
		{"2.65.0", "organization", []string{"create:export"}, 201, ""},
		{"2.73.0", "organization", []string{"delete:organization"}, 400, `{"events": ["\"delete:organization\" is not a valid choice."]}`},
	} {
		t.Run(tt.version+" "+tt.typ+" "+strings.Join(tt.events, ","), func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: tt.version})
			p := f.AddProject(cvatfake.Project{Name: "p", Org: "org1"})
			spec := map[string]any{"target_url": "http://r/webhooks/cvat", "type": tt.typ, "events": tt.events}
			if tt.typ == "project" {
				spec["project_id"] = p.ID
			}
			status, b := call(t, f, "POST", "/api/webhooks", "org1", spec)
			if status != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", status, tt.wantStatus, b)
			}
			if tt.wantBody != "" {
				var want, got any
				_ = json.Unmarshal([]byte(tt.wantBody), &want)
				_ = json.Unmarshal(b, &got)
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("body (-want +got):\n%s", diff)
				}
			}
		})
	}
}

func TestEventsCatalogue(t *testing.T) {
	for _, tt := range []struct {
		version               string
		project, organization int
	}{
		{"2.3.0", 11, 18}, {"2.4.1", 11, 18}, {"2.4.2", 14, 22}, {"2.64.0", 14, 22}, {"2.65.0", 16, 24}, {"2.73.0", 17, 24},
	} {
		t.Run(tt.version, func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: tt.version})
			for typ, want := range map[string]int{"project": tt.project, "organization": tt.organization} {
				status, b := call(t, f, "GET", "/api/webhooks/events?type="+typ, "", nil)
				var got struct {
					WebhookType string   `json:"webhook_type"`
					Events      []string `json:"events"`
				}
				if status != 200 || json.Unmarshal(b, &got) != nil || got.WebhookType != typ || len(got.Events) != want {
					t.Errorf("%s: %d %s; want %d events", typ, status, b, want)
				}
			}
			if status, _ := call(t, f, "GET", "/api/webhooks/events?type=nope", "", nil); status != 400 {
				t.Errorf("unknown type: %d", status)
			}
		})
	}
}

// TestPingQueuedBefore242: 2.3–2.4.1 answer the queued delivery (no status,
// no response) and send the ping afterwards; 2.4.2+ answer the attempt.
func TestPingQueuedBefore242(t *testing.T) {
	sample, err := os.ReadFile("testdata/api/webhook_ping_response_v2.4.0-2.4.1.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		version string
		queued  bool
	}{{"2.3.0", true}, {"2.4.0", true}, {"2.4.1", true}, {"2.4.2", false}, {"2.64.0", false}} {
		t.Run(tt.version, func(t *testing.T) {
			r := newLoggingReceiver(t)
			f := cvatfake.New(t, cvatfake.Options{Version: tt.version})
			p := f.AddProject(cvatfake.Project{Name: "p"})
			id := hook(t, f, "", map[string]any{"target_url": r.url, "type": "project", "project_id": p.ID, "events": []string{"update:task"}})
			status, b := call(t, f, "POST", "/api/webhooks/"+itoa(id)+"/ping", "", nil)
			var d map[string]any
			if status != 200 || json.Unmarshal(b, &d) != nil {
				t.Fatalf("ping: %d %s", status, b)
			}
			if tt.queued {
				if d["status_code"] != nil || d["response"] != "" {
					t.Errorf("queued ping answered %v", d)
				}
				if diff := cmp.Diff(shape(t, sample)[:9], shape(t, b)[:9]); diff != "" {
					t.Errorf("delivery keys (-CVAT +fake):\n%s", diff)
				}
			} else if d["status_code"] != 200.0 || d["response"] != `{"status": "accepted"}` {
				t.Errorf("ping answered %v", d)
			}
			await(t, f, id, func(ds []cvatfake.Delivery) bool { return len(ds) == 1 && ds[0].StatusCode == 200 })
			if got := r.events(); !slices.Equal(got, []string{"ping"}) {
				t.Fatalf("receiver got %v", got)
			}
			if tt.version == "2.64.0" {
				// A second ping: the webhook now has a last delivery, as in
				// CVAT's sample.
				call(t, f, "POST", "/api/webhooks/"+itoa(id)+"/ping", "", nil)
				w, g := comparable(shape(t, payloads.Read(t, "ping.json")), shape(t, r.deliveries()[1].body))
				if diff := cmp.Diff(w, g); diff != "" {
					t.Errorf("ping keys (-CVAT +fake):\n%s", diff)
				}
			}
		})
	}
}

// TestProjectDeletionCascade: what each webhook gets when a project is
// deleted (VERSIONS.md §1.9; issue 14 finding 8).
func TestProjectDeletionCascade(t *testing.T) {
	tests := []struct {
		version          string
		projectHook      []string // events the project webhook receives
		orgHook          []string
		projectRecorded  int // rows recorded for the project webhook (it is deleted: never)
		unsubscribedGets bool
	}{
		{version: "2.3.0", orgHook: []string{"delete:project"}},
		{version: "2.4.1", orgHook: []string{"delete:project"}},
		{version: "2.4.2", projectHook: []string{"delete:project"}, orgHook: []string{"delete:project", "delete:task", "delete:job"}, unsubscribedGets: true},
		{version: "2.10.0", projectHook: []string{"delete:project"}, orgHook: []string{"delete:project", "delete:task", "delete:job"}, unsubscribedGets: true},
		{version: "2.64.0", projectHook: []string{"delete:project"}, orgHook: []string{"delete:project", "delete:task", "delete:job"}},
		{version: "2.65.0", orgHook: []string{"delete:project", "delete:task", "delete:job"}},
		{version: "2.74.0", orgHook: []string{"delete:project", "delete:task", "delete:job"}},
	}
	for _, tt := range tests {
		t.Run(tt.version, func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: tt.version})
			p := f.AddProject(cvatfake.Project{Name: "p", Org: "org1"})
			task := f.AddTask(cvatfake.Task{ProjectID: p.ID})
			f.AddJob(cvatfake.Job{TaskID: task.ID})
			projRecv, orgRecv, otherRecv := newLoggingReceiver(t), newLoggingReceiver(t), newLoggingReceiver(t)
			events := func(all ...string) []string {
				ev := []string{"update:task", "delete:task", "update:project"}
				if tt.version != "2.3.0" && tt.version != "2.4.1" {
					ev = append(ev, "delete:project", "delete:job")
				}
				return append(ev, all...)
			}
			projHook := hook(t, f, "org1", map[string]any{"target_url": projRecv.url, "type": "project", "project_id": p.ID, "events": events()})
			// A project webhook not subscribed to deletions at all.
			hook(t, f, "org1", map[string]any{"target_url": otherRecv.url, "type": "project", "project_id": p.ID, "events": []string{"update:task"}})
			orgEvents := []string{"delete:project", "delete:task", "update:task"}
			if len(tt.orgHook) > 1 {
				orgEvents = append(orgEvents, "delete:job")
			}
			hook(t, f, "org1", map[string]any{"target_url": orgRecv.url, "type": "organization", "events": orgEvents})

			evs, err := f.DeleteProject(p.ID)
			if err != nil {
				t.Fatal(err)
			}
			f.Dispatch(context.Background(), evs...)
			if diff := cmp.Diff(tt.projectHook, projRecv.events()); diff != "" {
				t.Errorf("project webhook got (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.orgHook, orgRecv.events()); diff != "" {
				t.Errorf("organization webhook got (-want +got):\n%s", diff)
			}
			if got := len(otherRecv.events()) > 0; got != tt.unsubscribedGets {
				t.Errorf("unsubscribed project webhook got %v", otherRecv.events())
			}
			if n := len(f.Deliveries(projHook)); n != 0 {
				t.Errorf("%d deliveries recorded for the deleted project webhook", n)
			}
			if len(f.Webhooks()) != 1 {
				t.Errorf("webhooks left: %+v (the project's go with it)", f.Webhooks())
			}
			if _, ok := f.Task(task.ID); ok {
				t.Error("task survived its project")
			}
		})
	}
}

type orgBody struct {
	Event string `json:"event"`
	Task  *struct {
		ID             int64  `json:"id"`
		OrganizationID *int64 `json:"organization_id"`
	} `json:"task"`
	Project *struct {
		ID             int64  `json:"id"`
		OrganizationID *int64 `json:"organization_id"`
	} `json:"project"`
}

// TestMoveTask: a top-level task moved to another organization (2.44+)
// sends delete:task to the old organization's webhooks and create:task to
// the new one's; the delete carries the old organization up to 2.72, the new
// one from 2.73 (issue 14 finding 9).
func TestMoveTask(t *testing.T) {
	for _, tt := range []struct {
		version   string
		deleteOrg string // organization of the task in the delete body
		keys      []string
	}{
		{"2.44.0", "org1", []string{"task", "sender", "webhook_id", "event"}},
		{"2.72.0", "org1", []string{"task", "sender", "webhook_id", "event"}},
		{"2.73.0", "org2", []string{"event", "webhook_id", "task", "sender"}},
		{"2.74.0", "org2", []string{"event", "webhook_id", "task", "sender"}},
	} {
		t.Run(tt.version, func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: tt.version})
			f.AddProject(cvatfake.Project{Name: "org2's", Org: "org2"}) // registers org2
			task := f.AddTask(cvatfake.Task{Org: "org1"})
			r1, r2 := newLoggingReceiver(t), newLoggingReceiver(t)
			spec := func(url string) map[string]any {
				return map[string]any{"target_url": url, "type": "organization", "events": []string{"create:task", "delete:task", "update:task"}}
			}
			h1, h2 := hook(t, f, "org1", spec(r1.url)), hook(t, f, "org2", spec(r2.url))
			orgID := map[string]int64{}
			for _, org := range []string{"org1", "org2"} {
				_, b := call(t, f, "GET", "/api/webhooks/"+itoa(map[string]int64{"org1": h1, "org2": h2}[org]), org, nil)
				var w struct {
					Organization int64 `json:"organization"`
				}
				_ = json.Unmarshal(b, &w)
				orgID[org] = w.Organization
			}
			evs, err := f.MoveTask(task.ID, "org2")
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]string{"delete:task", "create:task"}, names(evs)); diff != "" {
				t.Fatalf("events (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([][]int64{{h1}, {h2}}, [][]int64{evs[0].Recipients(), evs[1].Recipients()}); diff != "" {
				t.Errorf("recipients (-want +got):\n%s", diff)
			}
			f.Dispatch(context.Background(), evs...)
			if !slices.Equal(r1.events(), []string{"delete:task"}) || !slices.Equal(r2.events(), []string{"create:task"}) {
				t.Fatalf("old org got %v, new org got %v", r1.events(), r2.events())
			}
			var del orgBody
			if err := json.Unmarshal(r1.deliveries()[0].body, &del); err != nil || del.Task == nil {
				t.Fatal(err)
			}
			if *del.Task.OrganizationID != orgID[tt.deleteOrg] {
				t.Errorf("delete:task carries organization %d, want %s's %d", *del.Task.OrganizationID, tt.deleteOrg, orgID[tt.deleteOrg])
			}
			if diff := cmp.Diff(tt.keys, topKeys(t, r1.deliveries()[0].body)); diff != "" {
				t.Errorf("delete keys (-want +got):\n%s", diff)
			}
			if moved, _ := f.Task(task.ID); moved.Org != "org2" {
				t.Errorf("task is in %q", moved.Org)
			}
		})
	}
	t.Run("refused", func(t *testing.T) {
		old := cvatfake.New(t, cvatfake.Options{Version: "2.43.0"})
		if _, err := old.MoveTask(old.AddTask(cvatfake.Task{}).ID, "org1"); err == nil {
			t.Error("2.43 moved a task")
		}
		f := cvatfake.New(t, cvatfake.Options{})
		p := f.AddProject(cvatfake.Project{Name: "p"})
		if _, err := f.MoveTask(f.AddTask(cvatfake.Task{ProjectID: p.ID}).ID, "org1"); err == nil {
			t.Error("moved a task out of its project's organization")
		}
	})
}

// TestMoveProject: a moved project sends update:project to its webhooks,
// delete:project to the old organization's and create:project to the new
// one's; its tasks move by a bulk update: no task event, updated_date kept;
// its webhooks keep firing.
func TestMoveProject(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{Version: "2.64.0"})
	f.AddProject(cvatfake.Project{Name: "registers org2", Org: "org2"})
	p := f.AddProject(cvatfake.Project{Name: "p", Org: "org1"})
	task := f.AddTask(cvatfake.Task{ProjectID: p.ID})
	job := f.AddJob(cvatfake.Job{TaskID: task.ID})
	rp, r1, r2 := newLoggingReceiver(t), newLoggingReceiver(t), newLoggingReceiver(t)
	all := []string{"create:project", "delete:project", "update:project", "create:task", "delete:task", "update:task", "update:job"}
	hook(t, f, "org1", map[string]any{"target_url": rp.url, "type": "project", "project_id": p.ID, "events": all[1:]})
	hook(t, f, "org1", map[string]any{"target_url": r1.url, "type": "organization", "events": all})
	hook(t, f, "org2", map[string]any{"target_url": r2.url, "type": "organization", "events": all})

	evs, err := f.MoveProject(p.ID, "org2")
	if err != nil {
		t.Fatal(err)
	}
	f.Dispatch(context.Background(), evs...)
	got := [][]string{rp.events(), r1.events(), r2.events()}
	if diff := cmp.Diff([][]string{{"update:project"}, {"delete:project"}, {"create:project"}}, got); diff != "" {
		t.Errorf("project, old org, new org webhooks got (-want +got):\n%s", diff)
	}
	var upd map[string]any
	_ = json.Unmarshal(rp.deliveries()[0].body, &upd)
	if diff := cmp.Diff([]string{"project", "sender", "before_update", "webhook_id", "event"}, topKeys(t, rp.deliveries()[0].body)); diff != "" {
		t.Errorf("transfer update keys (-want +got):\n%s", diff)
	}
	moved, _ := f.Task(task.ID)
	if moved.Org != "org2" || !moved.UpdatedDate.Equal(task.UpdatedDate) {
		t.Errorf("task after the move: %+v (was %+v)", moved, task)
	}
	// The project's webhook moved with it and keeps firing.
	saved, _ := f.SaveAnnotations(job.ID)
	f.Dispatch(context.Background(), saved...)
	if diff := cmp.Diff([]string{"update:project", "update:job", "update:task", "update:project"}, rp.events()); diff != "" {
		t.Errorf("project webhook after the move (-want +got):\n%s", diff)
	}
}

// TestDeliveriesLog: every delivery is recorded like CVAT; the API lists
// them newest first, and a redelivery sends the jsonb copy.
func TestDeliveriesLog(t *testing.T) {
	sample, err := os.ReadFile("testdata/api/webhook_deliveries_page_v2.73.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		version  string
		attempts bool // 2.68+: attempt and request_duration
	}{{"2.4.0", false}, {"2.64.0", false}, {"2.70.0", true}, {"2.73.0", true}} {
		t.Run(tt.version, func(t *testing.T) {
			r := newLoggingReceiver(t)
			f := cvatfake.New(t, cvatfake.Options{Version: tt.version})
			p := f.AddProject(cvatfake.Project{Name: "p"})
			task := f.AddTask(cvatfake.Task{ProjectID: p.ID})
			job := f.AddJob(cvatfake.Job{TaskID: task.ID})
			id := hook(t, f, "", map[string]any{"target_url": r.url, "type": "project", "project_id": p.ID, "secret": "k",
				"events": []string{"update:job", "update:task"}})
			r.status.Store(http.StatusServiceUnavailable)
			evs, _ := f.CompleteJob(job.ID)
			sent := f.Dispatch(context.Background(), evs...)
			if len(sent) == 0 || sent[0].Result.StatusCode != 503 || sent[0].DeliveryID == 0 {
				t.Fatalf("sent %+v", sent)
			}
			r.status.Store(http.StatusOK)

			status, b := call(t, f, "GET", "/api/webhooks/"+itoa(id)+"/deliveries", "", nil)
			var page struct {
				Count   int               `json:"count"`
				Results []json.RawMessage `json:"results"`
			}
			if status != 200 || json.Unmarshal(b, &page) != nil || page.Count != len(sent) {
				t.Fatalf("deliveries: %d %s", status, b)
			}
			var first map[string]any
			_ = json.Unmarshal(page.Results[0], &first)
			if first["status_code"] != 503.0 || first["redelivery"] != false || first["event"] != sent[len(sent)-1].Event {
				t.Errorf("newest delivery %v", first)
			}
			wantKeys := []string{"id", "webhook_id", "event", "status_code", "redelivery", "created_date", "updated_date", "changed_fields", "request", "response"}
			if tt.attempts {
				wantKeys = sampleDeliveryKeys(t, sample)
			}
			if diff := cmp.Diff(wantKeys, topKeys(t, page.Results[0])); diff != "" {
				t.Errorf("delivery keys (-want +got):\n%s", diff)
			}
			// The request comes back in jsonb order: shorter keys first.
			if diff := cmp.Diff(jsonbSorted(topKeys(t, []byte(mustField(t, page.Results[0], "request")))), topKeys(t, []byte(mustField(t, page.Results[0], "request")))); diff != "" {
				t.Errorf("request keys not in jsonb order:\n%s", diff)
			}

			before := len(r.deliveries())
			did := sent[0].DeliveryID
			status, b = call(t, f, "POST", "/api/webhooks/"+itoa(id)+"/deliveries/"+itoa(did)+"/redelivery", "", nil)
			if status != 200 || string(b) != "{}" {
				t.Fatalf("redelivery: %d %s", status, b)
			}
			await(t, f, id, func(ds []cvatfake.Delivery) bool { return ds[0].Redelivery && ds[0].StatusCode == 200 })
			first0, again := r.deliveries()[0], r.deliveries()[before]
			var a, c any
			_ = json.Unmarshal(first0.body, &a)
			_ = json.Unmarshal(again.body, &c)
			if diff := cmp.Diff(a, c); diff != "" {
				t.Errorf("redelivered content differs (-first +again):\n%s", diff)
			}
			if bytes.Equal(first0.body, again.body) || again.header.Get("X-Signature-256") != sign("k", again.body) {
				t.Errorf("redelivered body not the re-signed jsonb copy: %s", again.body)
			}
			if s, _ := call(t, f, "GET", "/api/webhooks/"+itoa(id)+"/deliveries/999999", "", nil); s != 500 {
				t.Errorf("unknown delivery: %d, CVAT answers 500", s)
			}
		})
	}
}

// sampleDeliveryKeys lists the keys of the first delivery of CVAT's sample
// page.
func sampleDeliveryKeys(t testing.TB, sample []byte) []string {
	t.Helper()
	var page struct {
		Results []json.RawMessage `json:"results"`
	}
	if err := json.Unmarshal(sample, &page); err != nil || len(page.Results) == 0 {
		t.Fatalf("sample page: %v", err)
	}
	return topKeys(t, page.Results[0])
}

func mustField(t testing.TB, obj json.RawMessage, k string) string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(obj, &m); err != nil {
		t.Fatal(err)
	}
	return string(m[k])
}

func jsonbSorted(keys []string) []string {
	out := slices.Clone(keys)
	slices.SortStableFunc(out, func(a, b string) int {
		if len(a) != len(b) {
			return len(a) - len(b)
		}
		return strings.Compare(a, b)
	})
	return out
}

// TestRetries265: from 2.65 a 5xx (or a connection error, recorded as 502)
// is retried, each attempt a row, until it succeeds or 9 attempts were
// made; a 4xx other than 408/429 is final. Before 2.65 nothing is retried.
func TestRetries265(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		version string
		status  int32
		retried bool
	}{
		{"2.64.0", 503, false}, {"2.65.0", 503, true}, {"2.70.0", 429, true}, {"2.70.0", 400, false},
	} {
		t.Run(tt.version+" "+itoa(int64(tt.status)), func(t *testing.T) {
			r := newLoggingReceiver(t)
			f := cvatfake.New(t, cvatfake.Options{Version: tt.version})
			p := f.AddProject(cvatfake.Project{Name: "p"})
			task := f.AddTask(cvatfake.Task{ProjectID: p.ID})
			id := hook(t, f, "", map[string]any{"target_url": r.url, "type": "project", "project_id": p.ID, "events": []string{"update:task"}})
			r.status.Store(tt.status)
			evs, _ := f.TouchTask(task.ID)
			f.Dispatch(ctx, evs...)
			if got := f.PendingRetries(); got != map[bool]int{true: 1, false: 0}[tt.retried] {
				t.Fatalf("%d retries pending", got)
			}
			if !tt.retried {
				return
			}
			for range cvatfake.MaxAttempts - 2 {
				f.RetryPending(ctx)
			}
			r.status.Store(200)
			f.RetryPending(ctx)
			ds := f.Deliveries(id)
			if len(ds) != cvatfake.MaxAttempts || ds[0].StatusCode != 200 || f.PendingRetries() != 0 {
				t.Fatalf("%d rows, newest %+v, %d pending", len(ds), ds[0], f.PendingRetries())
			}
			// Nine failures in a row: no tenth attempt.
			r.status.Store(tt.status)
			evs, _ = f.TouchTask(task.ID)
			f.Dispatch(ctx, evs...)
			for f.PendingRetries() > 0 {
				f.RetryPending(ctx)
			}
			if n := len(f.Deliveries(id)); n != 2*cvatfake.MaxAttempts {
				t.Errorf("%d rows, want %d", n, 2*cvatfake.MaxAttempts)
			}
		})
	}
	t.Run("connection refused is 502, a deleted webhook gets no retry", func(t *testing.T) {
		f := cvatfake.New(t, cvatfake.Options{Version: "2.70.0"})
		p := f.AddProject(cvatfake.Project{Name: "p"})
		task := f.AddTask(cvatfake.Task{ProjectID: p.ID})
		dead := httptest.NewServer(http.NotFoundHandler())
		url := dead.URL + "/webhooks/cvat"
		dead.Close()
		id := hook(t, f, "", map[string]any{"target_url": url, "type": "project", "project_id": p.ID, "events": []string{"update:task"}})
		evs, _ := f.TouchTask(task.ID)
		f.Dispatch(ctx, evs...)
		if ds := f.Deliveries(id); len(ds) != 1 || ds[0].StatusCode != 502 || ds[0].Response == "" {
			t.Fatalf("deliveries %+v", ds)
		}
		call(t, f, "DELETE", "/api/webhooks/"+itoa(id), "", nil)
		if sent := f.RetryPending(ctx); len(sent) != 1 || !sent[0].Skipped {
			t.Errorf("retry of a deleted webhook: %+v", sent)
		}
	})
}

// TestSchemaWebhookSide: the delivery and events answers match CVAT
// 2.64.0's schema. (The list and the redelivery are not validated:
// schema_test.go's deviations takes every /deliveries answer for a single
// delivery.)
func TestSchemaWebhookSide(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{Version: "2.64.0"})
	v := newSchemaValidator(t, "testdata/schema/cvat-v2.64.0-schema.yml", f.URL())
	r := newLoggingReceiver(t)
	p := f.AddProject(cvatfake.Project{Name: "p"})
	task := f.AddTask(cvatfake.Task{ProjectID: p.ID})
	id := hook(t, f, "", map[string]any{"target_url": r.url, "type": "project", "project_id": p.ID, "events": []string{"update:task"}})
	evs, _ := f.TouchTask(task.ID)
	sent := f.Dispatch(context.Background(), evs...)
	base := "/api/webhooks/" + itoa(id)
	rawDo(t, v, f, "GET", base+"/deliveries/"+itoa(sent[0].DeliveryID))
	call(t, f, "POST", base+"/deliveries/"+itoa(sent[0].DeliveryID)+"/redelivery", "", nil)
	rawDo(t, v, f, "GET", "/api/webhooks/events?type=project")
	await(t, f, id, func(ds []cvatfake.Delivery) bool { return len(ds) == 2 && ds[0].StatusCode == 200 })
	v.requireSeen(t,
		"GET /api/webhooks/{id}/deliveries/{delivery_id} 200",
		"GET /api/webhooks/events 200",
	)
}
