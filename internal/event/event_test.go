package event

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cvat-sync/cvat-sync/internal/golden"
	"github.com/cvat-sync/cvat-sync/internal/payloads"
)

// allPayloads returns every CVAT payload under testdata/payloads, keyed by
// its path relative to that folder, and fails t without the reference pack.
func allPayloads(t testing.TB) map[string][]byte {
	t.Helper()
	out := payloads.All(t)
	if len(out) < 22 {
		t.Fatalf("found %d payloads, want the 22 of the reference pack", len(out))
	}
	return out
}

// TestGolden parses every real payload and compares the parsed form with its
// golden file (golden.Check: UPDATE_GOLDEN=1 rewrites them).
func TestGolden(t *testing.T) {
	for name, body := range allPayloads(t) {
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
			golden.Check(t, filepath.Join("testdata", "golden", strings.TrimSuffix(name, ".json")+".golden.json"), got)
		})
	}
}

// TestFields pins the facts the pipeline relies on, independently of the
// golden files.
func TestFields(t *testing.T) {
	all := allPayloads(t)
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
		// 2.73.0: before_update and changes keyed by model attribute names,
		// changes as {field: {"from", "to"}}; key order event, webhook_id, ...
		{"v2.73.0/update_task.json", Envelope{Event: "update:task", Action: "update", Resource: "task", Known: true,
			WebhookID: 2, ObjectID: 9, TaskID: 9, ProjectID: 1, Sender: "user7",
			UpdatedDate: ts("2026-05-04T09:41:27.124377Z"), Status: "annotation", Changed: []string{"updated_date"}}},
		// After cvat-ai/cvat#11104: neither before_update nor changes.
		{"post-11104/update_task.json", Envelope{Event: "update:task", Action: "update", Resource: "task", Known: true,
			WebhookID: 2, ObjectID: 9, TaskID: 9, ProjectID: 1, Sender: "user7",
			UpdatedDate: ts("2026-05-04T09:41:27.124377Z"), Status: "annotation"}},
		{"v2.73.0/completed_request_export_annotations.json", Envelope{Event: "completed:request[export:annotations]",
			Action: "completed", Resource: "request", Known: true, WebhookID: 2, ObjectID: 9, TaskID: 9, ProjectID: 1,
			Status: "finished"}},
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
		{"2.3 key order, before_update on every update",
			`{"event":"update:task","task":{"id":15,"project_id":7,"organization":null,"status":"completed","updated_date":"2022-10-04T11:04:51.451681Z"},"before_update":{"status":"annotation"},"webhook_id":1,"sender":{"username":"admin1"}}`,
			Envelope{Event: "update:task", Action: "update", Resource: "task", Known: true, WebhookID: 1, ObjectID: 15, TaskID: 15, ProjectID: 7,
				Sender: "admin1", UpdatedDate: time.Date(2022, 10, 4, 11, 4, 51, 451681000, time.UTC), Status: "completed",
				Changed: []string{"status"}, PreviousStatus: "annotation"}, true, true},
		{"2.3 empty before_update",
			`{"event":"update:task","task":{"id":15},"before_update":{},"webhook_id":1}`,
			Envelope{Event: "update:task", Action: "update", Resource: "task", Known: true, WebhookID: 1, ObjectID: 15, TaskID: 15,
				Changed: []string{}}, true, false},
		{"2.73 before_update and changes {from, to}",
			`{"event":"update:job","webhook_id":4,"job":{"id":3,"task_id":2,"state":"completed"},"sender":{"id":1},"before_update":{"state":"in progress","updated_date":"2026-05-04T09:41:27.1Z"},"changes":{"state":{"from":"in progress","to":"completed"},"updated_date":{"from":"2026-05-04T09:41:27.1Z","to":"2026-05-04T09:42:00Z"}}}`,
			Envelope{Event: "update:job", Action: "update", Resource: "job", Known: true, WebhookID: 4, ObjectID: 3, TaskID: 2, JobID: 3,
				Status: "completed", Changed: []string{"state", "updated_date"}, PreviousStatus: "in progress"}, true, true},
		{"2.73 changes read as {from, to} without before_update",
			`{"event":"update:task","webhook_id":4,"task":{"id":3,"status":"completed"},"changes":{"status":{"from":"validation","to":"completed"},"assignee_id":{"from":1,"to":2}}}`,
			Envelope{Event: "update:task", Action: "update", Resource: "task", Known: true, WebhookID: 4, ObjectID: 3, TaskID: 3,
				Status: "completed", Changed: []string{"assignee_id", "status"}, PreviousStatus: "validation"}, true, true},
		{"2.73 touch: both empty",
			`{"event":"update:task","webhook_id":4,"task":{"id":3,"status":"annotation"},"sender":{"username":"u"},"before_update":{},"changes":{}}`,
			Envelope{Event: "update:task", Action: "update", Resource: "task", Known: true, WebhookID: 4, ObjectID: 3, TaskID: 3,
				Sender: "u", Status: "annotation", Changed: []string{}}, true, false},
		{"post-2.73: neither key, completed from the current state",
			`{"event":"update:job","webhook_id":4,"job":{"id":3,"task_id":2,"state":"completed"},"sender":{"username":"u"}}`,
			Envelope{Event: "update:job", Action: "update", Resource: "job", Known: true, WebhookID: 4, ObjectID: 3, TaskID: 2, JobID: 3,
				Sender: "u", Status: "completed"}, true, true},
		{"before_update null falls back to changes",
			`{"event":"update:task","task":{"id":3},"before_update":null,"changes":{"name":{"from":"a","to":"b"}}}`,
			Envelope{Event: "update:task", Action: "update", Resource: "task", Known: true, ObjectID: 3, TaskID: 3,
				Changed: []string{"name"}}, true, false},
		{"2.73 completed:request",
			`{"event":"completed:request[export:dataset]","request":{"status":"failed","operation":{"type":"export:dataset","target":"project","project_id":4,"task_id":null}},"webhook_id":2}`,
			Envelope{Event: "completed:request[export:dataset]", Action: "completed", Resource: "request", Known: true,
				WebhookID: 2, ObjectID: 4, ProjectID: 4, Status: "failed"}, false, false},
		{"2.65-2.72 flat create:export",
			`{"event":"create:export","status":"succeeded","target":"task","target_id":9,"rq_id":"x","format":"COCO 1.0","webhook_id":2}`,
			Envelope{Event: "create:export", Action: "create", Resource: "export", Known: true,
				WebhookID: 2, ObjectID: 9, TaskID: 9, Status: "succeeded"}, false, false},
		{"unknown event",
			`{"event":"explode:galaxy","galaxy":{"id":1}}`,
			Envelope{Event: "explode:galaxy", Action: "explode", Resource: "galaxy", ObjectID: 1}, false, false},
		{"ignored event with unreadable ids",
			`{"event":"create:issue","issue":{"id":"6","job":-1}}`,
			Envelope{Event: "create:issue", Action: "create", Resource: "issue", Known: true}, false, false},
		{"escaped keys and values",
			`{"ev\u0065nt":"update:task","task":{"\u0069d":5,"status":"c\u00f6mpleted","updated_date":"2022-10-04T11:04:51Z"},"task":{"id":6}}`,
			Envelope{Event: "update:task", Action: "update", Resource: "task", Known: true, ObjectID: 6, TaskID: 6}, true, false},
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

// TestParseIDs (issue 11): a create, update or delete of a task, job or
// project whose ids cannot be read is an error naming the field, with the
// event still named for the metrics.
func TestParseIDs(t *testing.T) {
	tests := []struct {
		name, body, field, problem string
	}{
		{"task id missing", `{"event":"update:task","task":{"name":"x"}}`, "task.id", "missing"},
		{"task id null", `{"event":"update:task","task":{"id":null}}`, "task.id", "is null"},
		{"task id string", `{"event":"create:task","task":{"id":"15"}}`, "task.id", "is a string, want a positive integer"},
		{"task id float", `{"event":"update:task","task":{"id":1.5}}`, "task.id", "is not an integer"},
		{"task id integral float", `{"event":"update:task","task":{"id":15.0}}`, "task.id", "is not an integer"},
		{"task id exponent", `{"event":"update:task","task":{"id":1E2}}`, "task.id", "is not an integer"},
		{"task id negative", `{"event":"delete:task","task":{"id":-3}}`, "task.id", "is negative"},
		{"task id negative zero", `{"event":"delete:task","task":{"id":-0}}`, "task.id", "is negative"},
		{"task id zero", `{"event":"update:task","task":{"id":0}}`, "task.id", "is zero"},
		{"task id over int64", `{"event":"update:task","task":{"id":9223372036854775808}}`, "task.id", "is larger than int64"},
		{"task id object", `{"event":"update:task","task":{"id":{"id":3}}}`, "task.id", "is an object, want a positive integer"},
		{"task id boolean", `{"event":"update:task","task":{"id":true}}`, "task.id", "is a boolean, want a positive integer"},
		{"task missing", `{"event":"delete:task","webhook_id":2}`, "task", "missing"},
		{"task null", `{"event":"delete:task","task":null}`, "task", "is null, want an object"},
		{"task array", `{"event":"update:task","task":[1,2]}`, "task", "is an array, want an object"},
		{"task project_id string", `{"event":"update:task","task":{"id":3,"project_id":"7"}}`, "task.project_id", "is a string, want a positive integer"},
		{"task organization negative", `{"event":"update:task","task":{"id":3,"organization":-1}}`, "task.organization", "is negative"},
		{"task organization_id float", `{"event":"update:task","task":{"id":3,"organization_id":1.5}}`, "task.organization_id", "is not an integer"},
		{"job id missing", `{"event":"update:job","job":{"task_id":9}}`, "job.id", "missing"},
		{"job task_id missing", `{"event":"update:job","job":{"id":14}}`, "job.task_id", "missing"},
		{"job task_id null", `{"event":"create:job","job":{"id":14,"task_id":null}}`, "job.task_id", "is null"},
		{"job task_id zero", `{"event":"delete:job","job":{"id":14,"task_id":0}}`, "job.task_id", "is zero"},
		{"job project_id zero", `{"event":"update:job","job":{"id":14,"task_id":9,"project_id":0}}`, "job.project_id", "is zero"},
		{"project id missing", `{"event":"update:project","project":{"name":"p"}}`, "project.id", "missing"},
		{"project id huge", `{"event":"delete:project","project":{"id":99999999999999999999}}`, "project.id", "is larger than int64"},
		{"project id negative huge", `{"event":"delete:project","project":{"id":-99999999999999999999}}`, "project.id", "is negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := Parse([]byte(tt.body))
			var fe *FieldError
			if !errors.As(err, &fe) || !errors.Is(err, ErrInvalidID) {
				t.Fatalf("Parse = %v, want a *FieldError", err)
			}
			if fe.Field != tt.field || fe.Problem != tt.problem {
				t.Errorf("FieldError{%q, %q}, want {%q, %q}", fe.Field, fe.Problem, tt.field, tt.problem)
			}
			if !strings.HasPrefix(err.Error(), tt.field+": ") {
				t.Errorf("message %q does not start with the field", err)
			}
			if e.Event == "" || e.Resource == "" || !e.Known {
				t.Errorf("envelope does not name the event: %+v", e)
			}
		})
	}
	// Nullable ids may be null or absent.
	for _, body := range []string{
		`{"event":"update:task","task":{"id":3,"project_id":null,"organization":null,"organization_id":null}}`,
		`{"event":"update:job","job":{"id":3,"task_id":2}}`,
		`{"event":"update:project","project":{"id":9223372036854775807,"organization":4}}`,
	} {
		if _, err := Parse([]byte(body)); err != nil {
			t.Errorf("Parse(%s) = %v", body, err)
		}
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

// reference reads what Parse reads with encoding/json (exact keys, the last
// of repeated keys, escapes decoded): the slow decoder Parse replaced, kept
// to check the scanner against.
type reference struct {
	valid, hasEvent bool
	event           string
	webhookID       int64
	sender          string
	object          map[string]json.RawMessage
	objectRaw       json.RawMessage
}

func readReference(body []byte) reference {
	var r reference
	trimmed := strings.TrimLeft(string(body), " \t\r\n")
	if !json.Valid(body) || !strings.HasPrefix(trimmed, "{") {
		return r
	}
	r.valid = true
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil {
		panic(err)
	}
	if json.Unmarshal(top["event"], &r.event) != nil || strings.TrimSpace(r.event) == "" {
		return r
	}
	r.hasEvent = true
	r.webhookID = referenceID(top["webhook_id"])
	var sender map[string]json.RawMessage
	if json.Unmarshal(top["sender"], &sender) == nil {
		_ = json.Unmarshal(sender["username"], &r.sender)
	}
	if _, res := Split(r.event); res != "" {
		r.objectRaw = top[res]
	}
	_ = json.Unmarshal(r.objectRaw, &r.object)
	return r
}

func referenceID(raw json.RawMessage) int64 {
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil {
		return 0
	}
	num, ok := v.(json.Number)
	if !ok || strings.ContainsAny(string(num), ".eE") {
		return 0
	}
	n, err := num.Int64()
	if err != nil || n <= 0 {
		return 0
	}
	return n
}

func referenceString(raw json.RawMessage) string {
	var s string
	_ = json.Unmarshal(raw, &s)
	return s
}

// FuzzParse checks Parse against encoding/json: the same bodies are JSON
// objects, the same have an event, and the values read agree.
func FuzzParse(f *testing.F) {
	for _, b := range allPayloads(f) {
		f.Add(b)
	}
	f.Add([]byte(`{"event":"completed:request[export:dataset]","target":"task","target_id":"7"}`))
	f.Add([]byte(`{"event":"update:job","job":{"id":1,"task_id":9},"before_update":null}`))
	f.Add([]byte(`{"\u0065vent":"update:task","task":{"id":1e3,"status":"\ud83d\ude00 \ud800"}} `))
	f.Add([]byte(`{"event":"update:task","task":{"id":-0.5e-3,"status":"\xff"}}`))
	f.Add([]byte("\v{\"event\":\"ping\"}"))
	f.Fuzz(func(t *testing.T, body []byte) {
		ref := readReference(body)
		e, err := Parse(body)
		switch {
		case !ref.valid:
			if !errors.Is(err, ErrNotObject) {
				t.Fatalf("encoding/json refuses the body, Parse says %v", err)
			}
			return
		case !ref.hasEvent:
			if !errors.Is(err, ErrNoEvent) {
				t.Fatalf("no event per encoding/json, Parse says %v", err)
			}
			return
		case err != nil && !errors.Is(err, ErrInvalidID):
			t.Fatalf("unexpected error %v", err)
		}
		if e.Event != ref.event || e.WebhookID != ref.webhookID && e.Resource != ResourceWebhook || e.Sender != ref.sender {
			t.Fatalf("envelope %+v, encoding/json reads event %q webhook_id %d sender %q", e, ref.event, ref.webhookID, ref.sender)
		}
		if e.Known && MetricLabel(e.Event) != e.Event {
			t.Fatal("known event not its own label")
		}
		switch e.Resource {
		case ResourceRequest, ResourceExport, ResourceBackup:
			return
		}
		if want := referenceID(ref.object["id"]); e.ObjectID != want {
			t.Fatalf("ObjectID %d, encoding/json reads %d", e.ObjectID, want)
		}
		status := ref.object["status"]
		if e.Resource == ResourceJob {
			status = ref.object["state"]
		}
		if want := referenceString(status); e.Status != want {
			t.Fatalf("Status %q, encoding/json reads %q", e.Status, want)
		}
		var fe *FieldError
		if errors.As(err, &fe) {
			if !e.TaskRelevant() {
				t.Fatalf("%v for an event that is not task-relevant", err)
			}
			if _, key, ok := strings.Cut(fe.Field, "."); ok && referenceID(ref.object[key]) != 0 {
				t.Fatalf("%v, but encoding/json reads %s", err, ref.object[key])
			}
			return
		}
		if e.TaskRelevant() {
			if e.ObjectID == 0 || e.Resource == ResourceJob && (e.TaskID == 0 || e.TaskID != referenceID(ref.object["task_id"])) {
				t.Fatalf("task-relevant event accepted without its ids: %+v", e)
			}
		}
	})
}

func BenchmarkParse(b *testing.B) {
	all := allPayloads(b)
	for _, name := range []string{"ping.json", "update_job.json", "v2.73.0/update_task.json"} {
		body := all[name]
		b.Run(strings.TrimSuffix(name, ".json"), func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Parse(body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestSyntaxErrorMessage: one line, the offset, never the body.
func TestSyntaxErrorMessage(t *testing.T) {
	_, err := Parse([]byte(`{"event":"ping",}`))
	if got, want := err.Error(), "body is not a JSON object: invalid JSON at byte 16"; got != want {
		t.Errorf("error %q, want %q", got, want)
	}
}
