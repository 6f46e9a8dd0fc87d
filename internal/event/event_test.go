package event

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// payloads returns every CVAT payload under testdata/payloads, keyed by its
// path relative to that folder.
func payloads(t testing.TB) map[string][]byte {
	t.Helper()
	root := filepath.Join("..", "..", "testdata", "payloads")
	out := map[string][]byte{}
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".json") {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out[filepath.ToSlash(rel)] = b
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) < 19 {
		t.Fatalf("found %d payloads, want the 19 of the reference pack", len(out))
	}
	return out
}

// TestGolden parses every real payload and compares the parsed form with its
// golden file (UPDATE_GOLDEN=1 rewrites them).
func TestGolden(t *testing.T) {
	for name, body := range payloads(t) {
		t.Run(name, func(t *testing.T) {
			e, err := Parse(body)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !e.Known {
				t.Errorf("event %q not known", e.Event)
			}
			if string(e.Raw) != string(body) {
				t.Error("Raw is not the body")
			}
			got, err := json.MarshalIndent(e, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			golden := filepath.Join("testdata", "golden", strings.TrimSuffix(name, ".json")+".golden.json")
			if os.Getenv("UPDATE_GOLDEN") != "" {
				if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with UPDATE_GOLDEN=1 to create it)", err)
			}
			if diff := cmp.Diff(string(want), string(got)); diff != "" {
				t.Errorf("parsed form differs from %s (-want +got):\n%s", golden, diff)
			}
		})
	}
}

// TestFields pins the facts the pipeline relies on, independently of the
// golden files.
func TestFields(t *testing.T) {
	all := payloads(t)
	ts := func(s string) time.Time { t, _ := time.Parse(time.RFC3339Nano, s); return t }
	tests := []struct {
		file string
		want Envelope
	}{
		{"update_job.json", Envelope{Event: "update:job", Action: "update", Resource: "job", Known: true,
			WebhookID: 2, ObjectID: 14, TaskID: 9, JobID: 14, ProjectID: 1, Sender: "user7",
			UpdatedDate: ts("2026-05-04T09:41:27.118604Z"), Status: "in progress", Stage: "annotation",
			Changed: []string{"updated_date"}}},
		{"create_job.json", Envelope{Event: "create:job", Action: "create", Resource: "job", Known: true,
			WebhookID: 2, ObjectID: 64, TaskID: 36, JobID: 64, ProjectID: 1, Sender: "user7",
			UpdatedDate: ts("2026-05-04T09:11:12.870489Z"), Status: "new", Stage: "annotation"}},
		{"ping.json", Envelope{Event: "ping", Action: "ping", Resource: "webhook", Known: true,
			WebhookID: 2, ObjectID: 2, ProjectID: 1, Sender: "user7",
			UpdatedDate: ts("2026-05-04T08:55:02.184377Z")}},
		{"create_project.json", Envelope{Event: "create:project", Action: "create", Resource: "project", Known: true,
			WebhookID: 6, ObjectID: 19, ProjectID: 19, OrganizationID: 1, Sender: "user1",
			UpdatedDate: ts("2026-05-05T07:30:12.004548Z"), Status: "annotation"}},
		{"create_issue.json", Envelope{Event: "create:issue", Action: "create", Resource: "issue", Known: true,
			WebhookID: 2, ObjectID: 6, JobID: 14, Sender: "user7",
			UpdatedDate: ts("2026-05-04T10:20:05.338171Z")}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got, err := Parse(all[tt.file])
			if err != nil {
				t.Fatal(err)
			}
			got.Raw = nil
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseShapes(t *testing.T) {
	tests := []struct {
		name     string
		body     string
		want     Envelope
		relevant bool
		complete bool
	}{
		{"2.3 key order, summary ids as objects",
			`{"event":"update:task","task":{"id":"15","project_id":{"id":7},"organization":null,"status":"completed","updated_date":"2022-10-04T11:04:51.451681Z"},"before_update":{"status":"annotation"},"webhook_id":1,"sender":{"username":"admin1"}}`,
			Envelope{Event: "update:task", Action: "update", Resource: "task", Known: true, WebhookID: 1, ObjectID: 15, TaskID: 15, ProjectID: 7,
				Sender: "admin1", UpdatedDate: time.Date(2022, 10, 4, 11, 4, 51, 451681000, time.UTC), Status: "completed",
				Changed: []string{"status"}, PreviousStatus: "annotation"}, true, true},
		{"2.73 changes instead of before_update",
			`{"job":{"id":3,"task_id":2,"state":"completed"},"sender":{"id":1},"event":"update:job","changes":{"state":{"old":"in progress","new":"completed"}},"webhook_id":4}`,
			Envelope{Event: "update:job", Action: "update", Resource: "job", Known: true, WebhookID: 4, ObjectID: 3, TaskID: 2, JobID: 3,
				Status: "completed", Changed: []string{"state"}, PreviousStatus: "in progress"}, true, true},
		{"completed:request flat body",
			`{"event":"completed:request[export:annotations]","status":"succeeded","target":"task","target_id":9,"rq_id":"x","format":"COCO 1.0","webhook_id":2}`,
			Envelope{Event: "completed:request[export:annotations]", Action: "completed", Resource: "request", Known: true,
				WebhookID: 2, TaskID: 9, Status: "succeeded"}, false, false},
		{"unknown event",
			`{"event":"explode:galaxy","galaxy":{"id":1}}`,
			Envelope{Event: "explode:galaxy", Action: "explode", Resource: "galaxy", ObjectID: 1}, false, false},
		{"resource object missing", `{"event":"delete:task","webhook_id":2}`,
			Envelope{Event: "delete:task", Action: "delete", Resource: "task", Known: true, WebhookID: 2}, true, false},
		{"resource of wrong type", `{"event":"update:task","task":[1,2]}`,
			Envelope{Event: "update:task", Action: "update", Resource: "task", Known: true}, true, false},
		{"bad date tolerated", `{"event":"update:task","task":{"id":1,"updated_date":"yesterday"}}`,
			Envelope{Event: "update:task", Action: "update", Resource: "task", Known: true, ObjectID: 1, TaskID: 1}, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			got.Raw = nil
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if got.TaskRelevant() != tt.relevant {
				t.Errorf("TaskRelevant = %v, want %v", got.TaskRelevant(), tt.relevant)
			}
			if got.Completed() != tt.complete {
				t.Errorf("Completed = %v, want %v", got.Completed(), tt.complete)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		body string
		want error
	}{
		{"empty", ``, ErrNotObject},
		{"whitespace", " \n", ErrNotObject},
		{"array", `[{"event":"ping"}]`, ErrNotObject},
		{"string", `"ping"`, ErrNotObject},
		{"null", `null`, ErrNotObject},
		{"number", `42`, ErrNotObject},
		{"truncated", `{"event":"ping"`, ErrNotObject},
		{"trailing garbage", `{"event":"ping"} x`, ErrNotObject},
		{"deep nesting", strings.Repeat(`{"a":`, 20000) + "1" + strings.Repeat("}", 20000), ErrNotObject},
		{"no event", `{"task":{"id":1}}`, ErrNoEvent},
		{"event not a string", `{"event":42}`, ErrNoEvent},
		{"event null", `{"event":null}`, ErrNoEvent},
		{"event empty", `{"event":"  "}`, ErrNoEvent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.body))
			if !errors.Is(err, tt.want) {
				t.Fatalf("Parse = %v, want %v", err, tt.want)
			}
			if len(tt.body) > 0 && strings.Contains(err.Error(), tt.body) {
				t.Errorf("error %q quotes the body", err)
			}
		})
	}
}

func TestMetricLabel(t *testing.T) {
	if got := MetricLabel("update:task"); got != "update:task" {
		t.Errorf("MetricLabel(update:task) = %q", got)
	}
	if got := MetricLabel("drop table"); got != "unknown" {
		t.Errorf("MetricLabel(drop table) = %q, want unknown", got)
	}
	if n := len(KnownEvents()); n < 30 {
		t.Errorf("only %d known events", n)
	}
}

func FuzzParse(f *testing.F) {
	for _, b := range payloads(f) {
		f.Add(b)
	}
	f.Add([]byte(`{"event":"completed:request[export:dataset]","target":"task","target_id":"7"}`))
	f.Add([]byte(`{"event":"update:job","job":{"task_id":{"id":"9"}},"before_update":null}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		e, err := Parse(body)
		if err != nil {
			if !errors.Is(err, ErrNotObject) && !errors.Is(err, ErrNoEvent) {
				t.Fatalf("unexpected error type: %v", err)
			}
			return
		}
		if e.Event == "" {
			t.Fatal("accepted a body with no event")
		}
		if e.Known && MetricLabel(e.Event) != e.Event {
			t.Fatal("known event not its own label")
		}
	})
}

func BenchmarkParse(b *testing.B) {
	body := payloads(b)["update_job.json"]
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(body); err != nil {
			b.Fatal(err)
		}
	}
}
