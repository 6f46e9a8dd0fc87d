package cvatfake_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/cvat-sync/cvat-sync/internal/cvatfake"
	"github.com/cvat-sync/cvat-sync/internal/payloads"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// shape lists an object's keys in order, recursing where both sides have
// objects, as "path.key" lines: the key order of every nested object.
func shape(t testing.TB, b []byte) []string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	var out []string
	var walk func(prefix string) error
	walk = func(prefix string) error {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		d, ok := tok.(json.Delim)
		if !ok {
			return nil
		}
		if d == '[' {
			for dec.More() {
				if err := walk(prefix + "[]"); err != nil {
					return err
				}
			}
			_, err := dec.Token()
			return err
		}
		for dec.More() {
			k, _ := dec.Token()
			key := prefix + "." + k.(string)
			out = append(out, key)
			if err := walk(key); err != nil {
				return err
			}
		}
		_, err = dec.Token()
		return err
	}
	if err := walk(""); err != nil {
		t.Fatal(err)
	}
	return out
}

// objectKeys keeps only keys whose value is an object in both a and b
// (null in one of them: e.g. assignee) and their own keys.
func comparable(a, b []string) ([]string, []string) {
	in := func(s []string) map[string]bool {
		m := map[string]bool{}
		for _, k := range s {
			m[k] = true
		}
		return m
	}
	ma, mb := in(a), in(b)
	keep := func(s []string, other map[string]bool) []string {
		var out []string
		for _, k := range s {
			// A nested key whose parent is absent from the other side
			// belongs to a value that is null there.
			parent := k[:strings.LastIndexByte(k, '.')]
			if parent != "" && !hasChild(other, parent) {
				continue
			}
			out = append(out, k)
		}
		return out
	}
	return keep(a, mb), keep(b, ma)
}

func hasChild(m map[string]bool, parent string) bool {
	for k := range m {
		if strings.HasPrefix(k, parent+".") {
			return true
		}
	}
	return false
}

func TestEventsHaveCVATShapes(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{})
	p := f.AddProject(cvatfake.Project{Name: "project1"})
	task := f.AddTask(cvatfake.Task{Name: "task1_in_project1", ProjectID: p.ID})
	job := f.AddJob(cvatfake.Job{TaskID: task.ID, State: "in progress"})

	saved, err := f.SaveAnnotations(job.ID)
	if err != nil {
		t.Fatal(err)
	}
	completed, err := f.CompleteJob(job.ID)
	if err != nil {
		t.Fatal(err)
	}
	deleted, err := f.DeleteTask(task.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(saved) != 3 || len(completed) != 2 {
		t.Fatalf("%d events for a save, %d for the completion; want 3 and 2", len(saved), len(completed))
	}
	tests := []struct {
		name string
		ev   cvatfake.Event
		file string
	}{
		{"save: update:job", saved[0], "update_job.json"},
		{"save: update:task", saved[1], "update_task.json"},
		{"save: update:project", saved[2], "update_project.json"},
		{"completed: update:job", completed[0], "update_job__state_completed.json"},
		{"completed: update:task", completed[1], "update_task.json"},
		{"delete:task", deleted, "delete_task.json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want, got := comparable(shape(t, payloads.Read(t, tt.file)), shape(t, tt.ev.Body))
			// before_update lists what changed; compare it separately.
			drop := func(s []string) []string {
				var out []string
				for _, k := range s {
					if !strings.HasPrefix(k, ".before_update.") {
						out = append(out, k)
					}
				}
				return out
			}
			if diff := cmp.Diff(drop(want), drop(got)); diff != "" {
				t.Errorf("keys (-CVAT +fake):\n%s", diff)
			}
			if !bytes.Contains(tt.ev.Body, []byte(`"event": "`+tt.ev.Name+`"`)) {
				t.Errorf("body lacks Python-style %q: %s", tt.ev.Name, tt.ev.Body)
			}
		})
	}

	var before struct {
		BeforeUpdate map[string]any `json:"before_update"`
		Task         struct {
			Status string `json:"status"`
		} `json:"task"`
	}
	if err := json.Unmarshal(completed[1].Body, &before); err != nil {
		t.Fatal(err)
	}
	if before.BeforeUpdate["status"] != "annotation" || before.Task.Status != "completed" {
		t.Errorf("task completion: before_update %v, status %q", before.BeforeUpdate, before.Task.Status)
	}
	var upd struct {
		BeforeUpdate struct {
			UpdatedDate string `json:"updated_date"`
		} `json:"before_update"`
		Task struct {
			UpdatedDate string `json:"updated_date"`
		} `json:"task"`
	}
	if err := json.Unmarshal(saved[1].Body, &upd); err != nil {
		t.Fatal(err)
	}
	if upd.BeforeUpdate.UpdatedDate != task.UpdatedDate.Format("2006-01-02T15:04:05.000000Z") || upd.Task.UpdatedDate <= upd.BeforeUpdate.UpdatedDate {
		t.Errorf("update:task updated_date %s, before %s (task was %v)", upd.Task.UpdatedDate, upd.BeforeUpdate.UpdatedDate, task.UpdatedDate)
	}
	if _, ok := f.Task(task.ID); ok {
		t.Error("deleted task still there")
	}
}

func TestSaveAnnotationsOutsideProject(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{})
	task := f.AddTask(cvatfake.Task{Name: "sandbox"})
	job := f.AddJob(cvatfake.Job{TaskID: task.ID})
	evs, err := f.SaveAnnotations(job.ID)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range evs {
		names = append(names, e.Name)
	}
	if diff := cmp.Diff([]string{"update:job", "update:task"}, names); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	after, _ := f.Task(task.ID)
	if !after.UpdatedDate.After(task.UpdatedDate) {
		t.Error("updated_date did not move")
	}
}

type delivery struct {
	header http.Header
	body   []byte
}

func newRecordingReceiver(t testing.TB, status int) (string, func() []delivery) {
	t.Helper()
	var mu sync.Mutex
	var got []delivery
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, delivery{r.Header.Clone(), b})
		mu.Unlock()
		w.WriteHeader(status)
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/webhooks/cvat", func() []delivery {
		mu.Lock()
		defer mu.Unlock()
		return append([]delivery(nil), got...)
	}
}

func sign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

func TestDeliver(t *testing.T) {
	target, got := newRecordingReceiver(t, http.StatusAccepted)
	f := cvatfake.New(t, cvatfake.Options{Version: "2.40.1"})
	body := payloads.Read(t, "update_task.json")
	tests := []struct {
		name    string
		secret  string
		wantSig string
	}{
		{"signed", "cvat-sync-test-secret", sign("cvat-sync-test-secret", body)},
		{"no secret, no header", "", ""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := f.Deliver(context.Background(), target, tt.secret, body)
			if err != nil || res.StatusCode != http.StatusAccepted || res.Body != "ok" {
				t.Fatalf("Deliver = %+v, %v", res, err)
			}
			d := got()[i]
			if diff := cmp.Diff(map[string]string{"Content-Type": "application/json", "User-Agent": "CVAT/2.40.1 python-requests/2.32.4", "X-Signature-256": tt.wantSig},
				map[string]string{"Content-Type": d.header.Get("Content-Type"), "User-Agent": d.header.Get("User-Agent"), "X-Signature-256": d.header.Get("X-Signature-256")}); diff != "" {
				t.Errorf("headers (-want +got):\n%s", diff)
			}
			if _, present := d.header["X-Signature-256"]; present != (tt.secret != "") {
				t.Errorf("X-Signature-256 present = %v", present)
			}
			if !bytes.Equal(d.body, body) {
				t.Error("body changed in transit")
			}
		})
	}
}

func TestDispatchToRegisteredWebhooks(t *testing.T) {
	target, got := newRecordingReceiver(t, http.StatusOK)
	f := cvatfake.New(t, cvatfake.Options{})
	p := f.AddProject(cvatfake.Project{Name: "p"})
	other := f.AddProject(cvatfake.Project{Name: "other"})
	task := f.AddTask(cvatfake.Task{ProjectID: p.ID})
	job := f.AddJob(cvatfake.Job{TaskID: task.ID})

	create := func(project int64, secret string, events ...string) int64 {
		t.Helper()
		b, _ := json.Marshal(map[string]any{"target_url": target, "type": "project", "project_id": project, "secret": secret, "events": events})
		req, _ := http.NewRequest("POST", f.URL()+"/api/webhooks", bytes.NewReader(b))
		req.Header.Set("Authorization", "Bearer "+f.Token())
		req.Header.Set("Content-Type", "application/json")
		resp, err := f.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var w struct {
			ID int64 `json:"id"`
		}
		if resp.StatusCode != http.StatusCreated || json.NewDecoder(resp.Body).Decode(&w) != nil {
			t.Fatalf("create webhook: %s", resp.Status)
		}
		return w.ID
	}
	hookTask := create(p.ID, "s1", "update:task", "update:job")
	create(other.ID, "s2", "update:task") // other project: receives nothing

	evs, err := f.SaveAnnotations(job.ID)
	if err != nil {
		t.Fatal(err)
	}
	sent := f.Dispatch(context.Background(), evs...)
	var names []string
	for _, s := range sent {
		if s.Err != nil || s.Result.StatusCode != 200 || s.WebhookID != hookTask {
			t.Errorf("sent %+v", s)
		}
		names = append(names, s.Event)
	}
	if diff := cmp.Diff([]string{"update:job", "update:task"}, names); diff != "" {
		t.Errorf("dispatched (-want +got):\n%s", diff)
	}
	for _, d := range got() {
		if d.header.Get("X-Signature-256") != sign("s1", d.body) {
			t.Error("delivery not signed with the webhook's secret")
		}
		var env struct {
			WebhookID int64 `json:"webhook_id"`
		}
		if json.Unmarshal(d.body, &env) != nil || env.WebhookID != hookTask {
			t.Errorf("webhook_id %d, want %d", env.WebhookID, hookTask)
		}
	}
	if !bytes.Equal(evs[1].Body, evs[1].For(hookTask)) {
		t.Error("Event.Body is not rendered for the registered webhook")
	}
}

func TestPaginationLikeDRF(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{})
	for range 5 {
		f.AddTask(cvatfake.Task{Name: "t"})
	}
	get := func(q string) (int, map[string]any) {
		req, _ := http.NewRequest("GET", f.URL()+"/api/tasks"+q, nil)
		req.Header.Set("Authorization", "Token "+f.Token())
		resp, err := f.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	tests := []struct {
		name         string
		query        string
		wantStatus   int
		wantN        int
		wantNext     any
		wantPrevious any
	}{
		{"default page size", "", 200, 5, nil, nil},
		{"first page", "?page_size=2", 200, 2, f.URL() + "/api/tasks?page=2&page_size=2", nil},
		{"second page", "?page_size=2&page=2", 200, 2, f.URL() + "/api/tasks?page=3&page_size=2", f.URL() + "/api/tasks?page_size=2"},
		{"last page", "?page=3&page_size=2&sort=id", 200, 1, nil, f.URL() + "/api/tasks?page=2&page_size=2&sort=id"},
		{"all", "?page_size=all", 200, 5, nil, nil},
		{"past the end", "?page=4&page_size=2", 404, 0, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, m := get(tt.query)
			if status != tt.wantStatus {
				t.Fatalf("status %d, want %d", status, tt.wantStatus)
			}
			if status != 200 {
				if m["detail"] != "Invalid page." {
					t.Errorf("body %v", m)
				}
				return
			}
			if got := len(m["results"].([]any)); got != tt.wantN || m["count"] != 5.0 {
				t.Errorf("%d results of %v, want %d of 5", got, m["count"], tt.wantN)
			}
			if diff := cmp.Diff([]any{tt.wantNext, tt.wantPrevious}, []any{m["next"], m["previous"]}); diff != "" {
				t.Errorf("next, previous (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFakeAuth(t *testing.T) {
	tests := []struct {
		version, header string
		want            int
	}{
		{"2.64.0", "Bearer " + cvatfake.DefaultToken, 200},
		{"2.47.0", "Bearer " + cvatfake.DefaultToken, 401},
		{"2.10.0", "Token " + cvatfake.DefaultToken, 200},
		{"2.64.0", "Token wrong", 401},
		{"2.64.0", "Basic dXNlcjc6ZmFrZS1jdmF0LXBhc3N3b3Jk", 200}, // user7:fake-cvat-password
		{"2.64.0", "", 401},
	}
	for _, tt := range tests {
		t.Run(tt.version+" "+strings.SplitN(tt.header, " ", 2)[0], func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: tt.version})
			req, _ := http.NewRequest("GET", f.URL()+"/api/tasks", nil)
			if tt.header != "" {
				req.Header.Set("Authorization", tt.header)
			}
			resp, err := f.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("status %d, want %d", resp.StatusCode, tt.want)
			}
			about, _ := http.NewRequest("GET", f.URL()+"/api/server/about", nil)
			resp, err = f.Client().Do(about)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Errorf("about without credentials: %d", resp.StatusCode)
			}
		})
	}
}
