package sink

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/pstest"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cvat-sync/cvat-sync/internal/golden"
	"github.com/cvat-sync/cvat-sync/internal/task"
)

var (
	testExportedAt = time.Date(2026, 5, 4, 9, 42, 3, 500000000, time.UTC)
	testObject     = Object{
		URI:        "gs://cvat-sync-exports/exports/tasks/42/20260504T094127.118604Z/CVAT_for_images_1.1.zip",
		Bucket:     "cvat-sync-exports",
		Name:       "exports/tasks/42/20260504T094127.118604Z/CVAT_for_images_1.1.zip",
		Generation: 1777887747118604,
		Size:       184467,
		CRC32C:     0x9a3f11c2,
		MD5:        []byte{0x3b, 0x5d, 0x5c, 0x37, 0x12, 0x8e, 0x92, 0xae, 0x1d, 0x0a, 0x0e, 0x63, 0x3c, 0x57, 0x7f, 0x4e},
		Created:    true,
	}
	testCVAT = CVAT{BaseURL: "http://cvat-backend-service.cvat.svc:8080", Version: "2.49.0"}
)

func mustOutbox(t testing.TB, cfg OutboxConfig) *Outbox {
	t.Helper()
	o, err := NewOutbox(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func exportedNotice() Notice {
	return NewExportNotice(testObject, "CVAT for images 1.1", testCVAT,
		task.State{ID: 42, Name: "street scenes, batch 7", ProjectID: 3, OrganizationID: 2, Status: "annotation", UpdatedDate: testUpdated},
		task.Trigger{Event: "update:job", WebhookID: 1, JobID: 117, Sender: "annotator1", Coalesced: 4},
		testExportedAt)
}

func deletedNotice() Notice {
	return NewDeletionNotice(testCVAT,
		task.State{ID: 43, Name: "old task", Status: "completed", UpdatedDate: testUpdated},
		task.Trigger{Event: "delete:task", WebhookID: 1, Sender: "admin", Coalesced: 1},
		testExportedAt)
}

// outboxSchema compiles docs/outbox-v1.schema.json once per test binary.
var outboxSchema = sync.OnceValues(func() (*jsonschema.Schema, error) {
	f, err := os.Open("../../docs/outbox-v1.schema.json")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		return nil, err
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource("outbox-v1.schema.json", doc); err != nil {
		return nil, err
	}
	return c.Compile("outbox-v1.schema.json")
})

func validateAgainstSchema(data []byte) error {
	sch, err := outboxSchema()
	if err != nil {
		return err
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		return err
	}
	return sch.Validate(inst)
}

// checkMessage validates a published message against the contract: the
// schema for the data, and the attributes and ordering key.
func checkMessage(t *testing.T, m *pstest.Message, want Notice) {
	t.Helper()
	if err := validateAgainstSchema(m.Data); err != nil {
		t.Errorf("message %s does not validate against the schema: %v\n%s", m.ID, err, m.Data)
	}
	var got Notice
	if err := json.Unmarshal(m.Data, &got); err != nil {
		t.Fatalf("decode message %s: %v", m.ID, err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("message %s data (-want +got):\n%s", m.ID, diff)
	}
	if diff := cmp.Diff(want.Attributes(), m.Attributes); diff != "" {
		t.Errorf("message %s attributes (-want +got):\n%s", m.ID, diff)
	}
	if want := "task-" + m.Attributes["task_id"]; m.OrderingKey != want {
		t.Errorf("message %s ordering key = %q, want %q", m.ID, m.OrderingKey, want)
	}
}

func TestOutboxPublish(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		notice    Notice
		wantAttrs map[string]string
	}{
		{
			name:   "task exported",
			notice: exportedNotice(),
			wantAttrs: map[string]string{
				"schema": "cvat-sync.export/v1", "kind": "task.exported", "task_id": "42", "project_id": "3",
				"format": "CVAT for images 1.1", "export_id": ExportID(testObject),
			},
		},
		{
			name:   "task deleted, outside any project",
			notice: deletedNotice(),
			wantAttrs: map[string]string{
				"schema": "cvat-sync.export/v1", "kind": "task.deleted", "task_id": "43", "project_id": "",
				"format": "", "export_id": DeletionID(43, testUpdated),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ps := newPubSub(t)
			o := mustOutbox(t, OutboxConfig{Publisher: ps.publisher(t), Registerer: prometheus.NewPedanticRegistry()})
			id, err := o.Publish(context.Background(), tt.notice)
			if err != nil {
				t.Fatalf("Publish: %v", err)
			}
			m := ps.srv.Message(id)
			if m == nil {
				t.Fatalf("the server has no message %q", id)
			}
			checkMessage(t, m, tt.notice)
			if diff := cmp.Diff(tt.wantAttrs, m.Attributes); diff != "" {
				t.Errorf("attributes (-want +got):\n%s", diff)
			}
			if got := testutil.ToFloat64(o.m.publishes.WithLabelValues(string(tt.notice.Kind), outcomeOK)); got != 1 {
				t.Errorf("publishes{%s,ok} = %v, want 1", tt.notice.Kind, got)
			}
		})
	}
}

func TestExportIDs(t *testing.T) {
	t.Parallel()
	other := testObject
	other.Generation++
	tests := []struct {
		name      string
		a, b      string
		wantEqual bool
	}{
		{name: "same object, same id", a: ExportID(testObject), b: ExportID(testObject), wantEqual: true},
		{name: "Created does not matter", a: ExportID(testObject), b: ExportID(Object{Bucket: testObject.Bucket, Name: testObject.Name, Generation: testObject.Generation}), wantEqual: true},
		{name: "new generation, new id", a: ExportID(testObject), b: ExportID(other)},
		{name: "deletion: same task and time", a: DeletionID(43, testUpdated), b: DeletionID(43, testUpdated.In(time.FixedZone("X", 3600))), wantEqual: true},
		{name: "deletion: other time", a: DeletionID(43, testUpdated), b: DeletionID(43, testUpdated.Add(time.Microsecond))},
		{name: "deletion: other task", a: DeletionID(43, testUpdated), b: DeletionID(44, testUpdated)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if (tt.a == tt.b) != tt.wantEqual {
				t.Errorf("ids %q and %q: equal = %v, want %v", tt.a, tt.b, tt.a == tt.b, tt.wantEqual)
			}
			if len(tt.a) != 32 {
				t.Errorf("id %q is not 32 hex digits", tt.a)
			}
		})
	}
}

// failingPublish makes the emulator refuse Publish calls while it is on.
type failingPublish struct {
	on   atomic.Bool
	code codes.Code
}

func (f *failingPublish) fault(method string, _ any) error {
	if method == "Publish" && f.on.Load() {
		return status.Error(f.code, "injected publish failure")
	}
	return nil
}

func TestOutboxPublishFailures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		code     codes.Code // injected by the emulator's fault hook
		stop     bool       // cut the server off instead
		notice   func() Notice
		wantIs   error
		wantCode codes.Code
		wantErr  string
	}{
		{name: "server refuses", code: codes.PermissionDenied, notice: exportedNotice, wantCode: codes.PermissionDenied, wantErr: "publish task.exported of task 42 (export "},
		{name: "server refuses a deletion", code: codes.InvalidArgument, notice: deletedNotice, wantCode: codes.InvalidArgument, wantErr: "publish task.deleted of task 43"},
		{name: "server stopped", stop: true, notice: exportedNotice, wantErr: "publish task.exported of task 42"},
		{
			name: "invalid notice never sent",
			notice: func() Notice {
				n := exportedNotice()
				n.Object = nil
				return n
			},
			wantIs:  ErrInvalidNotice,
			wantErr: "task.exported without an object",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fail := &failingPublish{code: tt.code}
			ps := newPubSub(t)
			ps.em.SetPubSubFault(fail.fault)
			pub := ps.publisher(t)
			pub.PublishSettings.Timeout = 500 * time.Millisecond // bounds the client's retries when the server is gone
			o := mustOutbox(t, OutboxConfig{Publisher: pub, Registerer: prometheus.NewRegistry()})
			ctx := context.Background()
			n := tt.notice()

			fail.on.Store(tt.code != codes.OK)
			if tt.stop {
				ps.stopServer()
			}
			_, err := o.Publish(ctx, n)
			if err == nil {
				t.Fatal("Publish succeeded, want an error")
			}
			t.Logf("Publish: %v", err)
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Publish error %q does not contain %q", err, tt.wantErr)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("Publish: %v, want %v", err, tt.wantIs)
			}
			if tt.wantCode != codes.OK && status.Code(err) != tt.wantCode {
				t.Errorf("Publish: code %v, want %v", status.Code(err), tt.wantCode)
			}
			if got := testutil.ToFloat64(o.m.publishes.WithLabelValues(string(n.Kind), outcomeError)); got != 1 {
				t.Errorf("publishes{%s,error} = %v, want 1", n.Kind, got)
			}
			if tt.stop || tt.wantIs != nil {
				return
			}

			// The failure paused the task's ordering key; the retry must go
			// through, not fail with ErrPublishingPaused.
			fail.on.Store(false)
			id, err := o.Publish(ctx, n)
			if err != nil {
				t.Fatalf("Publish after the failure: %v", err)
			}
			checkMessage(t, ps.srv.Message(id), n)
		})
	}
}

func TestNoticeValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		edit   func(*Notice)
		base   func() Notice
		errStr string // "" means valid
	}{
		{name: "exported is valid", base: exportedNotice, edit: func(*Notice) {}},
		{name: "deleted is valid", base: deletedNotice, edit: func(*Notice) {}},
		{name: "no export id", base: exportedNotice, edit: func(n *Notice) { n.ExportID = "" }, errStr: "empty export_id"},
		{name: "unknown kind", base: exportedNotice, edit: func(n *Notice) { n.Kind = "task.renamed" }, errStr: "unknown kind"},
		{name: "other schema", base: exportedNotice, edit: func(n *Notice) { n.Schema = "v2" }, errStr: "schema"},
		{name: "exported without format", base: exportedNotice, edit: func(n *Notice) { n.Format = "" }, errStr: "without a format"},
		{name: "uri not matching", base: exportedNotice, edit: func(n *Notice) { n.Object.URI = "gs://x/y" }, errStr: "uri"},
		{name: "deleted with an object", base: deletedNotice, edit: func(n *Notice) { n.Object = testObject.Ref() }, errStr: "task.deleted with an object"},
		{name: "no task id", base: deletedNotice, edit: func(n *Notice) { n.Task.ID = 0 }, errStr: "task id 0"},
		{name: "no base url", base: deletedNotice, edit: func(n *Notice) { n.CVAT.BaseURL = "" }, errStr: "base_url"},
		{name: "no trigger", base: deletedNotice, edit: func(n *Notice) { n.Trigger.Event = "" }, errStr: "trigger.event"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			n := tt.base()
			tt.edit(&n)
			err := n.Validate()
			if tt.errStr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidNotice) || !strings.Contains(err.Error(), tt.errStr) {
				t.Errorf("Validate: %v, want ErrInvalidNotice mentioning %q", err, tt.errStr)
			}
			// The schema refuses it as well, where it can tell.
			if tt.name == "other schema" || tt.name == "no export id" || tt.name == "unknown kind" || tt.name == "deleted with an object" || tt.name == "exported without format" || tt.name == "no task id" {
				data, _ := json.Marshal(n)
				if err := validateAgainstSchema(data); err == nil {
					t.Errorf("the schema accepts a notice Validate refuses: %s", data)
				}
			}
		})
	}
}

func TestTail(t *testing.T) {
	t.Parallel()
	ps := newPubSub(t)
	publishTime := time.Date(2026, 5, 4, 9, 42, 4, 0, time.UTC)
	ps.srv.SetTimeNowFunc(func() time.Time { return publishTime })
	o := mustOutbox(t, OutboxConfig{Publisher: ps.publisher(t), Registerer: nil})
	ctx := context.Background()
	var want []TailLine
	for _, n := range []Notice{exportedNotice(), deletedNotice()} {
		id, err := o.Publish(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		data, err := n.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, TailLine{ID: id, Attributes: n.Attributes(), OrderingKey: task.OrderingKey(n.Task.ID), PublishTime: publishTime, Data: data})
	}

	var out bytes.Buffer
	if err := Tail(ctx, ps.client.Subscriber(testSub), &out, 2); err != nil {
		t.Fatalf("Tail: %v", err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	var got []TailLine
	for _, l := range lines {
		var tl TailLine
		if err := json.Unmarshal([]byte(l), &tl); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		if err := validateAgainstSchema(tl.Data); err != nil {
			t.Errorf("tailed data does not validate: %v", err)
		}
		got = append(got, tl)
	}
	// Two tasks, two ordering keys: no order between them.
	byID := func(a, b TailLine) bool { return a.ID < b.ID }
	if diff := cmp.Diff(want, got, cmpopts.SortSlices(byID), cmp.Transformer("json", func(r json.RawMessage) string { return compactJSON(t, r) })); diff != "" {
		t.Errorf("tailed lines (-want +got):\n%s", diff)
	}
}

func TestTailStopsWithContext(t *testing.T) {
	t.Parallel()
	ps := newPubSub(t)
	ctx, cancel := context.WithCancel(context.Background())
	w := &notifyWriter{wrote: make(chan struct{}, 1)}
	done := make(chan error, 1)
	go func() { done <- Tail(ctx, ps.client.Subscriber(testSub), w, 0) }()
	ps.srv.Publish("projects/"+testProject+"/topics/"+testTopic, []byte("not json"), map[string]string{"k": "v"})
	<-w.wrote
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Tail after cancel: %v", err)
	}
	var tl TailLine
	if err := json.Unmarshal(w.buf.Bytes(), &tl); err != nil {
		t.Fatal(err)
	}
	if string(tl.Data) != `"not json"` {
		t.Errorf("data = %s, want the text as a JSON string", tl.Data)
	}
}

type notifyWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	wrote chan struct{}
}

func (w *notifyWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.buf.Write(p)
	select {
	case w.wrote <- struct{}{}:
	default:
	}
	return n, err
}

func compactJSON(t *testing.T, r json.RawMessage) string {
	var b bytes.Buffer
	if err := json.Compact(&b, r); err != nil {
		t.Fatalf("compact %s: %v", r, err)
	}
	return b.String()
}

// TestNoticeGolden keeps one example message in testdata/notice.golden.json
// (golden.Check: UPDATE_GOLDEN=1 rewrites it) and checks that docs/outbox.md shows the
// same message.
func TestNoticeGolden(t *testing.T) {
	t.Parallel()
	n := exportedNotice()
	data, err := n.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := validateAgainstSchema(data); err != nil {
		t.Fatalf("golden notice does not validate: %v", err)
	}
	msg := struct {
		Attributes  map[string]string `json:"attributes"`
		OrderingKey string            `json:"ordering_key"`
		Data        json.RawMessage   `json:"data"`
	}{n.Attributes(), task.OrderingKey(n.Task.ID), data}
	got, err := json.MarshalIndent(msg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	const goldenFile = "testdata/notice.golden.json"
	golden.Check(t, goldenFile, got)
	want, err := os.ReadFile(goldenFile)
	if err != nil {
		t.Fatal(err)
	}

	doc, err := os.ReadFile("../../docs/outbox.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(doc, want) {
		t.Errorf("docs/outbox.md does not show the example message of %s; paste it in", goldenFile)
	}
}
