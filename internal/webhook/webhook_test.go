package webhook_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/cvat-sync/cvat-sync/internal/cloud/cloudtest"
	"github.com/cvat-sync/cvat-sync/internal/inbox"
	"github.com/cvat-sync/cvat-sync/internal/logbuf"
	"github.com/cvat-sync/cvat-sync/internal/payloads"
	"github.com/cvat-sync/cvat-sync/internal/signature"
	"github.com/cvat-sync/cvat-sync/internal/webhook"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, cloudtest.LeakOptions()...) }

const (
	secret    = "cvat-sync-test-secret"
	oldSecret = "previous-secret-value"
	project   = "p"
	topicID   = "cvat-sync-inbox"
)

type harness struct {
	url  string
	em   *cloudtest.Emulators
	reg  *prometheus.Registry
	logs *logbuf.Buffer
}

// newHarness serves the ingress over real HTTP with its inbox on the Pub/Sub
// emulator.
func newHarness(t testing.TB, limit int64) *harness {
	t.Helper()
	em := cloudtest.Start(t, cloudtest.Options{Project: project})
	em.Topic(t, topicID)
	client := em.Open(t).PubSub
	q, err := inbox.NewQueue(inbox.QueueConfig{Publisher: client.Publisher(topicID), Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	v, err := signature.New(signature.Config{Secrets: []string{secret, oldSecret}})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	logs := logbuf.New()
	srv, err := webhook.New(webhook.Config{
		Verifier: v, MaxBodyBytes: limit, Queue: q, Registerer: reg, Gatherer: reg,
		Logger:         logs.Logger(),
		EnqueueTimeout: 2 * time.Second,
		Checks: []webhook.Check{{Name: "pubsub", Required: true, Run: func(ctx context.Context) error {
			_, err := client.TopicAdminClient.GetTopic(ctx, &pubsubpb.GetTopicRequest{Topic: "projects/" + project + "/topics/" + topicID})
			return err
		}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		hs.Close()
		q.Stop()
		for _, s := range []string{secret, oldSecret} {
			if strings.Contains(logs.String(), s) {
				t.Errorf("a secret appears in the logs")
			}
		}
	})
	return &harness{url: hs.URL, em: em, reg: reg, logs: logs}
}

type reply struct {
	code int
	body map[string]any
}

func (h *harness) post(t testing.TB, path string, body []byte, header map[string]string) reply {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, h.url+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	return do(t, req)
}

func do(t testing.TB, req *http.Request) reply {
	t.Helper()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	r := reply{code: res.StatusCode}
	if err := json.Unmarshal(raw, &r.body); err != nil && req.Method != http.MethodHead {
		t.Fatalf("%s %s: answer is not JSON: %q", req.Method, req.URL.Path, raw)
	}
	return r
}

func signed(body []byte) map[string]string {
	return map[string]string{signature.Header: signature.Sign(secret, body)}
}

func TestStatuses(t *testing.T) {
	const limit = 4096
	h := newHarness(t, limit)
	exact := append([]byte(`{"event":"ping"}`), bytes.Repeat([]byte(" "), limit-16)...)
	over := append(exact, ' ')
	tests := []struct {
		name    string
		path    string
		body    []byte
		header  map[string]string
		code    int
		status  string
		errPart string
	}{
		{"stored", "/webhooks/cvat", payloads.Read(t, "update_job.json"), signed(payloads.Read(t, "update_job.json")), 202, "stored", ""},
		{"trailing slash is not redirected", "/webhooks/cvat/", payloads.Read(t, "update_task.json"), signed(payloads.Read(t, "update_task.json")), 202, "stored", ""},
		{"ping", "/webhooks/cvat", payloads.Read(t, "ping.json"), signed(payloads.Read(t, "ping.json")), 200, "pong", ""},
		{"ignored known event", "/webhooks/cvat", payloads.Read(t, "create_comment.json"), signed(payloads.Read(t, "create_comment.json")), 200, "ignored", ""},
		{"unknown event accepted", "/webhooks/cvat", []byte(`{"event":"explode:galaxy"}`), signed([]byte(`{"event":"explode:galaxy"}`)), 200, "ignored", ""},
		{"body of exactly the limit", "/webhooks/cvat", exact, signed(exact), 200, "pong", ""},
		{"one byte over the limit", "/webhooks/cvat", over, signed(over), 413, "", "over the limit"},
		{"missing signature", "/webhooks/cvat", payloads.Read(t, "update_job.json"), nil, 401, "", "missing"},
		{"wrong secret", "/webhooks/cvat", payloads.Read(t, "update_job.json"), map[string]string{signature.Header: signature.Sign("nope", payloads.Read(t, "update_job.json"))}, 401, "", "does not match"},
		{"sha1 prefix", "/webhooks/cvat", payloads.Read(t, "update_job.json"), map[string]string{signature.Header: "sha1=" + strings.Repeat("a", 40)}, 401, "", "sha256="},
		{"not JSON", "/webhooks/cvat", []byte("event=ping"), signed([]byte("event=ping")), 400, "", "not a JSON object"},
		{"JSON array", "/webhooks/cvat", []byte(`[1]`), signed([]byte(`[1]`)), 400, "", "not a JSON object"},
		{"no event", "/webhooks/cvat", []byte(`{"task":{"id":1}}`), signed([]byte(`{"task":{"id":1}}`)), 400, "", "event"},
		{"wrong content type still verified", "/webhooks/cvat", payloads.Read(t, "ping.json"), map[string]string{signature.Header: signature.Sign(secret, payloads.Read(t, "ping.json")), "Content-Type": "text/plain"}, 200, "pong", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := h.post(t, tt.path, tt.body, tt.header)
			if r.code != tt.code {
				t.Fatalf("status %d, want %d (%v)", r.code, tt.code, r.body)
			}
			if tt.status != "" && r.body["status"] != tt.status {
				t.Errorf("status field %v, want %q", r.body["status"], tt.status)
			}
			if tt.errPart != "" {
				msg, _ := r.body["error"].(string)
				if !strings.Contains(msg, tt.errPart) {
					t.Errorf("error %q does not contain %q", msg, tt.errPart)
				}
			}
		})
	}
}

func TestMetricsCount(t *testing.T) {
	h := newHarness(t, 1<<20)
	body := payloads.Read(t, "update_job.json")
	h.post(t, "/webhooks/cvat", body, signed(body))
	h.post(t, "/webhooks/cvat", body, nil)
	h.post(t, "/webhooks/cvat", body, map[string]string{signature.Header: "sha256=zz"})
	unknown := []byte(`{"event":"frobnicate:thing"}`)
	h.post(t, "/webhooks/cvat", unknown, signed(unknown))
	badID := []byte(`{"event":"update:task","task":{"id":"9"}}`)
	h.post(t, "/webhooks/cvat", badID, signed(badID))
	notJSON := []byte(`{"event":`)
	h.post(t, "/webhooks/cvat", notJSON, signed(notJSON))
	ping := payloads.Read(t, "ping.json")
	h.post(t, "/webhooks/cvat/", ping, signed(ping))
	res, err := http.Get(h.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %d", res.StatusCode)
	}
	for _, tt := range []struct {
		event, outcome string
		want           float64
	}{
		{"update:job", "stored", 1},
		{"unverified", "unauthorized", 2},
		{"unknown", "ignored", 1},
		{"update:task", "bad_request", 1},
		{"unknown", "bad_request", 1},
		{"ping", "ping", 1},
		{"update:task", "stored", 0},
		{"unverified", "too_large", 0},
	} {
		if got := h.metric(t, "cvat_sync_webhook_deliveries_total", map[string]string{"event": tt.event, "outcome": tt.outcome}); got != tt.want {
			t.Errorf("deliveries{%s,%s} = %v, want %v", tt.event, tt.outcome, got, tt.want)
		}
	}
	// The series a delivery can produce exist from the start; impossible
	// pairs do not.
	series := h.series(t, "cvat_sync_webhook_deliveries_total")
	for _, want := range []string{"delete:task/stored", "delete:task/unavailable", "update:project/bad_request",
		"create:comment/ignored", "completed:request[export:dataset]/ignored", "unverified/too_large"} {
		if !series[want] {
			t.Errorf("no series %s at start", want)
		}
	}
	for _, not := range []string{"ping/stored", "create:comment/stored", "unverified/stored"} {
		if series[not] {
			t.Errorf("series %s exists", not)
		}
	}
	want := `
# HELP cvat_sync_webhook_signature_failures_total Webhook deliveries refused for their signature, by reason (missing, malformed, mismatch).
# TYPE cvat_sync_webhook_signature_failures_total counter
cvat_sync_webhook_signature_failures_total{reason="malformed"} 1
cvat_sync_webhook_signature_failures_total{reason="mismatch"} 0
cvat_sync_webhook_signature_failures_total{reason="missing"} 1
`
	if err := testutil.GatherAndCompare(h.reg, strings.NewReader(want), "cvat_sync_webhook_signature_failures_total"); err != nil {
		t.Error(err)
	}
	// Both spellings of the webhook path are one route in the duration
	// metric.
	dur := h.series(t, "cvat_sync_http_request_duration_seconds")
	// (Labels in name order: code, method, route.)
	for _, want := range []string{"200/POST//webhooks/cvat", "202/POST//webhooks/cvat", "401/POST//webhooks/cvat", "400/POST//webhooks/cvat"} {
		if !dur[want] {
			t.Errorf("no duration series %s in %v", want, dur)
		}
	}
	if dur["200/POST//webhooks/cvat/"] {
		t.Error("the trailing-slash spelling has a route label of its own")
	}
}

// series lists a metric's series as their label values joined by "/".
func (h *harness) series(t testing.TB, name string) map[string]bool {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var vals []string
			for _, lp := range m.GetLabel() {
				vals = append(vals, lp.GetValue())
			}
			out[strings.Join(vals, "/")] = true
		}
	}
	return out
}

func mustReq(t testing.TB, method, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// TestEveryPayload: each real CVAT payload is accepted with its signature and
// refused with a wrong, missing or truncated one, or another body's.
func TestEveryPayload(t *testing.T) {
	h := newHarness(t, 1<<20)
	all := payloads.All(t)
	if len(all) < 22 {
		t.Fatalf("payloads: %d files", len(all))
	}
	other := []byte(`{"event":"ping","webhook":{"id":1}}`)
	for _, name := range slices.Sorted(maps.Keys(all)) {
		body := all[name]
		good := signature.Sign(secret, body)
		t.Run(name, func(t *testing.T) {
			cases := []struct {
				name   string
				header map[string]string
				ok     bool
			}{
				{"valid", map[string]string{signature.Header: good}, true},
				{"valid under the old secret", map[string]string{signature.Header: signature.Sign(oldSecret, body)}, true},
				{"bare hex", map[string]string{signature.Header: strings.TrimPrefix(good, "sha256=")}, true},
				{"wrong secret", map[string]string{signature.Header: signature.Sign("wrong-secret", body)}, false},
				{"missing", nil, false},
				{"truncated", map[string]string{signature.Header: good[:len(good)-1]}, false},
				{"another body's signature", map[string]string{signature.Header: signature.Sign(secret, other)}, false},
			}
			for _, c := range cases {
				r := h.post(t, "/webhooks/cvat", body, c.header)
				if c.ok && (r.code < 200 || r.code > 299) {
					t.Errorf("%s: status %d (%v), want 2xx", c.name, r.code, r.body)
				}
				if !c.ok && r.code != http.StatusUnauthorized {
					t.Errorf("%s: status %d, want 401", c.name, r.code)
				}
			}
		})
	}
}

// TestStoredBeforeAnswer reads the work item back from the Pub/Sub server:
// a 2xx means it is there.
func TestStoredBeforeAnswer(t *testing.T) {
	h := newHarness(t, 1<<20)
	for _, name := range []string{"update_job.json", "update_task.json", "update_project.json", "delete_task.json"} {
		body := payloads.Read(t, name)
		if r := h.post(t, "/webhooks/cvat", body, signed(body)); r.code != http.StatusAccepted {
			t.Fatalf("%s: %d %v", name, r.code, r.body)
		}
	}
	msgs := h.em.Messages(topicID)
	type got struct {
		Key, Event string
		Task, Job  int64
		TaskName   string
	}
	var gots []got
	for _, m := range msgs {
		it, err := inbox.Decode(&pubsub.Message{Data: m.Data, Attributes: m.Attributes})
		if err != nil {
			t.Fatal(err)
		}
		if it.ReceivedAt.IsZero() || it.RequestID == "" || it.Source != "webhook" {
			t.Errorf("item lacks receipt data: %+v", it)
		}
		gots = append(gots, got{m.OrderingKey, it.Event, it.TaskID, it.JobID, it.TaskName})
	}
	want := []got{
		{"task-9", "update:job", 9, 14, ""},
		{"task-9", "update:task", 9, 0, ""},
		{"project-1", "update:project", 0, 0, ""},
		{"task-9", "delete:task", 9, 0, "task1_in_project1"},
	}
	if diff := cmp.Diff(want, gots); diff != "" {
		t.Errorf("inbox (-want +got):\n%s", diff)
	}
}

// TestInboxDown: with Pub/Sub cut off the answer is 503 and nothing
// is claimed stored.
func TestInboxDown(t *testing.T) {
	h := newHarness(t, 1<<20)
	h.em.PubSubDown()
	body := payloads.Read(t, "update_job.json")
	r := h.post(t, "/webhooks/cvat", body, signed(body))
	if r.code != http.StatusServiceUnavailable {
		t.Fatalf("status %d (%v), want 503", r.code, r.body)
	}
	if msg, _ := r.body["error"].(string); !strings.Contains(msg, "could not be stored") {
		t.Errorf("error %q", msg)
	}
	if r.body["status"] == "stored" {
		t.Error("claimed stored")
	}
	// Ping needs no storage and still answers.
	ping := payloads.Read(t, "ping.json")
	if r := h.post(t, "/webhooks/cvat", ping, signed(ping)); r.code != http.StatusOK {
		t.Errorf("ping with inbox down: %d", r.code)
	}
	if r := do(t, mustReq(t, http.MethodGet, h.url+"/readyz")); r.code != http.StatusServiceUnavailable {
		t.Errorf("/readyz with inbox down: %d, want 503", r.code)
	}
	if !strings.Contains(h.logs.String(), `"outcome":"unavailable"`) {
		t.Error("503 not logged")
	}
}

func TestProbesAndMethods(t *testing.T) {
	h := newHarness(t, 1<<20)
	tests := []struct {
		method, path string
		code         int
	}{
		{http.MethodGet, "/healthz", 200},
		{http.MethodGet, "/readyz", 200},
		{http.MethodGet, "/metrics", 200},
		{http.MethodGet, "/webhooks/cvat", 405},
		{http.MethodGet, "/webhooks/cvat/", 405},
		{http.MethodPut, "/webhooks/cvat", 405},
		{http.MethodPost, "/webhooks/other", 404},
		{http.MethodPost, "/webhooks/cvat//", 404},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			req := mustReq(t, tt.method, h.url+tt.path)
			if tt.path == "/metrics" {
				res, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				res.Body.Close()
				if res.StatusCode != tt.code {
					t.Errorf("status %d, want %d", res.StatusCode, tt.code)
				}
				return
			}
			r := do(t, req)
			if r.code != tt.code {
				t.Errorf("status %d, want %d", r.code, tt.code)
			}
			if tt.code >= 400 && r.body["error"] == nil {
				t.Errorf("error body %v has no \"error\"", r.body)
			}
		})
	}
}

// TestRequestIDOnEveryLine: a safe incoming X-Request-Id is kept, an unsafe
// one replaced, and every log line of a delivery carries it.
func TestRequestIDOnEveryLine(t *testing.T) {
	h := newHarness(t, 1<<20)
	body := payloads.Read(t, "update_job.json")
	req, _ := http.NewRequest(http.MethodPost, h.url+"/webhooks/cvat", bytes.NewReader(body))
	req.Header.Set(signature.Header, signature.Sign(secret, body))
	req.Header.Set("X-Request-Id", "req-from-proxy-1")
	if r := do(t, req); r.body["request_id"] != "req-from-proxy-1" {
		t.Errorf("request id %v", r.body["request_id"])
	}
	evil := "has space;" + strings.Repeat("z", 100)
	req, _ = http.NewRequest(http.MethodPost, h.url+"/webhooks/cvat", bytes.NewReader(body))
	req.Header.Set("X-Request-Id", evil)
	if r := do(t, req); r.body["request_id"] == evil || r.body["request_id"] == "" {
		t.Errorf("unsafe request id kept: %v", r.body["request_id"])
	}
	for _, line := range strings.Split(strings.TrimSpace(h.logs.String()), "\n") {
		if strings.Contains(line, "webhook") && !strings.Contains(line, `"request_id"`) {
			t.Errorf("log line without request id: %s", line)
		}
	}
}

func BenchmarkHandler(b *testing.B) {
	h := newHarness(b, 1<<20)
	for _, name := range []string{"ping.json", "update_job.json"} {
		body := payloads.Read(b, name)
		sig := signature.Sign(secret, body)
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
		b.Run(strings.TrimSuffix(name, ".json"), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				req, _ := http.NewRequest(http.MethodPost, h.url+"/webhooks/cvat", bytes.NewReader(body))
				req.Header.Set(signature.Header, sig)
				res, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode/100 != 2 {
					b.Fatalf("status %d", res.StatusCode)
				}
			}
		})
		client.CloseIdleConnections()
	}
}

// withField returns a real payload with one field of its resource object
// replaced by raw JSON, or removed when raw is nil.
func withField(t testing.TB, body []byte, object, key string, raw json.RawMessage) []byte {
	t.Helper()
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil {
		t.Fatal(err)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(top[object], &obj); err != nil {
		t.Fatal(err)
	}
	if raw == nil {
		delete(obj, key)
	} else {
		obj[key] = raw
	}
	b, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	top[object] = b
	out, err := json.Marshal(top)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// metric sums the samples of a counter whose labels include all of labels.
func (h *harness) metric(t testing.TB, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// TestUnreadableIDs (issue 11): a task-relevant event whose ids cannot be
// read is answered 400 naming the field, counted as bad_request, and nothing
// is stored; it is never a 202 that the pipeline drops later. Ids that may be
// null (a task outside any project) are accepted when null or absent.
func TestUnreadableIDs(t *testing.T) {
	h := newHarness(t, 1<<20)
	values := []struct {
		name string
		raw  json.RawMessage
	}{
		{"missing", nil},
		{"null", json.RawMessage(`null`)},
		{"string", json.RawMessage(`"9"`)},
		{"float", json.RawMessage(`9.5`)},
		{"integral float", json.RawMessage(`9.0`)},
		{"exponent", json.RawMessage(`9e0`)},
		{"negative", json.RawMessage(`-9`)},
		{"zero", json.RawMessage(`0`)},
		{"larger than int64", json.RawMessage(`9223372036854775808`)},
		{"object", json.RawMessage(`{"id":9}`)},
		{"boolean", json.RawMessage(`true`)},
	}
	fields := []struct {
		file, object, key string
		nullable          bool
	}{
		{"create_task.json", "task", "id", false},
		{"update_task.json", "task", "id", false},
		{"delete_task.json", "task", "id", false},
		{"update_task.json", "task", "project_id", true},
		{"create_job.json", "job", "id", false},
		{"update_job.json", "job", "id", false},
		{"update_job.json", "job", "task_id", false},
		{"create_job.json", "job", "task_id", false},
		{"update_job.json", "job", "project_id", true},
		{"create_project.json", "project", "id", false},
		{"update_project.json", "project", "id", false},
	}
	refused := map[string]float64{}
	for _, f := range fields {
		for _, v := range values {
			field := f.object + "." + f.key
			t.Run(f.file+"/"+field+"/"+v.name, func(t *testing.T) {
				body := withField(t, payloads.Read(t, f.file), f.object, f.key, v.raw)
				var env struct {
					Event string `json:"event"`
				}
				if err := json.Unmarshal(body, &env); err != nil {
					t.Fatal(err)
				}
				before := len(h.em.Messages(topicID))
				r := h.post(t, "/webhooks/cvat", body, signed(body))
				if f.nullable && (v.name == "missing" || v.name == "null") {
					if r.code != http.StatusAccepted {
						t.Fatalf("status %d (%v), want 202: %s may be %s", r.code, r.body, field, v.name)
					}
					return
				}
				if r.code != http.StatusBadRequest {
					t.Fatalf("status %d (%v), want 400", r.code, r.body)
				}
				refused[env.Event]++
				if msg, _ := r.body["error"].(string); !strings.HasPrefix(msg, field+": ") {
					t.Errorf("error %q does not start with %q", msg, field+": ")
				}
				if n := len(h.em.Messages(topicID)); n != before {
					t.Errorf("%d items stored for a refused delivery", n-before)
				}
			})
		}
	}
	// Without the resource object at all, the object is the field.
	for _, tt := range []struct{ body, field string }{
		{`{"event":"update:task","webhook_id":2}`, "task"},
		{`{"event":"delete:job","job":null,"webhook_id":2}`, "job"},
		{`{"event":"update:project","project":[1],"webhook_id":2}`, "project"},
	} {
		r := h.post(t, "/webhooks/cvat", []byte(tt.body), signed([]byte(tt.body)))
		if msg, _ := r.body["error"].(string); r.code != http.StatusBadRequest || !strings.HasPrefix(msg, tt.field+": ") {
			t.Errorf("%s: %d %v, want 400 naming %q", tt.body, r.code, r.body, tt.field)
			continue
		}
		var env struct{ Event string }
		_ = json.Unmarshal([]byte(tt.body), &env)
		refused[env.Event]++
	}
	for ev, n := range refused {
		if got := h.metric(t, "cvat_sync_webhook_deliveries_total", map[string]string{"event": ev, "outcome": "bad_request"}); got != n {
			t.Errorf("%s: %v deliveries counted bad_request, want %v", ev, got, n)
		}
	}
	if got := h.metric(t, "cvat_sync_webhook_deliveries_total", map[string]string{"outcome": "stored"}); got != 4 {
		t.Errorf("%v deliveries stored, want the 4 with a null or absent project_id", got)
	}
}

// logLines returns the JSON log lines written so far, failing t on a line
// that is not JSON.
func (h *harness) logLines(t testing.TB) []map[string]any {
	t.Helper()
	lines := strings.Count(h.logs.String(), "\n")
	recs := h.logs.Records() // written after String are included
	if len(recs) < lines {
		t.Fatalf("%d of %d log lines are JSON:\n%s", len(recs), lines, h.logs)
	}
	return recs
}

// TestRefusalLogs: every refused delivery is logged once with who sent it
// (remote address, user agent, and X-Forwarded-For when a proxy set one),
// so an operator can tell CVAT from a scanner; accepted deliveries log at
// debug level only; no line carries an id of 0.
func TestRefusalLogs(t *testing.T) {
	h := newHarness(t, 2048)
	const cvatUA = "CVAT/2.64.0 python-requests/2.32.3"
	job, task := payloads.Read(t, "update_job.json"), payloads.Read(t, "update_task.json")
	badID := []byte(`{"event":"update:job","job":{"id":14,"task_id":null},"webhook_id":2}`)
	big := append([]byte(`{"event":"ping"}`), bytes.Repeat([]byte(" "), 4096)...)
	cases := []struct {
		name   string
		body   []byte
		header map[string]string
		code   int
		want   map[string]any
	}{
		{"401", job, map[string]string{"User-Agent": "zgrab/0.x", "X-Forwarded-For": "203.0.113.7"}, 401,
			map[string]any{"outcome": "unauthorized", "signature": "missing", "user_agent": "zgrab/0.x", "forwarded_for": "203.0.113.7", "event": "unverified"}},
		{"413", big, map[string]string{"User-Agent": cvatUA, signature.Header: signature.Sign(secret, big)}, 413,
			map[string]any{"outcome": "too_large", "user_agent": cvatUA}},
		{"400 unreadable id", badID, map[string]string{"User-Agent": cvatUA, signature.Header: signature.Sign(secret, badID)}, 400,
			map[string]any{"outcome": "bad_request", "event": "update:job", "webhook_id": 2.0, "reason": "job.task_id: is null", "user_agent": cvatUA}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := len(h.logLines(t))
			if r := h.post(t, "/webhooks/cvat", c.body, c.header); r.code != c.code {
				t.Fatalf("status %d (%v), want %d", r.code, r.body, c.code)
			}
			lines := h.logLines(t)[before:]
			if len(lines) != 1 {
				t.Fatalf("%d log lines, want 1: %v", len(lines), lines)
			}
			l := lines[0]
			if l["msg"] != "webhook refused" || l["level"] != "WARN" || l["status"] != float64(c.code) {
				t.Errorf("line %v", l)
			}
			if addr, _ := l["remote_addr"].(string); !strings.HasPrefix(addr, "127.0.0.1:") {
				t.Errorf("remote_addr %q", addr)
			}
			if l["request_id"] == nil || l["request_id"] == "" {
				t.Error("no request_id")
			}
			for k, v := range c.want {
				if l[k] != v {
					t.Errorf("%s = %v, want %v", k, l[k], v)
				}
			}
		})
	}

	// Accepted deliveries: debug lines with the ids they have, none of 0.
	h.post(t, "/webhooks/cvat", job, signed(job))
	h.post(t, "/webhooks/cvat", task, signed(task))
	stored := h.logs.Find("webhook stored")
	if len(stored) != 2 {
		t.Fatalf("stored lines %v", stored)
	}
	if stored[0]["level"] != "DEBUG" || stored[0]["job_id"] != 14.0 || stored[0]["task_id"] != 9.0 {
		t.Errorf("update:job line %v", stored[0])
	}
	if _, ok := stored[1]["job_id"]; ok {
		t.Errorf("update:task line has a job_id: %v", stored[1])
	}
	for _, l := range h.logLines(t) {
		for _, k := range []string{"task_id", "job_id", "project_id", "webhook_id"} {
			if v, ok := l[k]; ok && v == 0.0 {
				t.Errorf("%s of 0 logged: %v", k, l)
			}
		}
	}
}

// TestStoreFailureLog: a 503 is logged as an error with the sender, the ids
// and the inbox's error.
func TestStoreFailureLog(t *testing.T) {
	h := newHarness(t, 1<<20)
	h.em.PubSubDown()
	body := payloads.Read(t, "update_task.json")
	hdr := signed(body)
	hdr["User-Agent"] = "CVAT/2.64.0 python-requests/2.32.3"
	if r := h.post(t, "/webhooks/cvat", body, hdr); r.code != http.StatusServiceUnavailable {
		t.Fatalf("status %d", r.code)
	}
	var got map[string]any
	if refused := h.logs.Find("webhook refused"); len(refused) > 0 {
		got = refused[len(refused)-1]
	}
	if got["level"] != "ERROR" || got["task_id"] != 9.0 || got["project_id"] != 1.0 || got["user_agent"] != hdr["User-Agent"] ||
		got["error"] == nil || got["remote_addr"] == nil {
		t.Errorf("503 line %v", got)
	}
	if _, ok := got["job_id"]; ok {
		t.Errorf("job_id of an update:task logged: %v", got)
	}
}

// TestConfig: New names what is missing; a nil Logger discards and a zero
// MaxBodyBytes is the 1 MiB default.
func TestConfig(t *testing.T) {
	if _, err := webhook.New(webhook.Config{}); err == nil || !strings.Contains(err.Error(), "Verifier, Queue, Registerer and Gatherer") {
		t.Errorf("New(Config{}) = %v", err)
	}
	v, err := signature.New(signature.Config{Secrets: []string{secret}})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	srv, err := webhook.New(webhook.Config{Verifier: v, Queue: nopQueue{}, Registerer: reg, Gatherer: reg})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	h := &harness{url: hs.URL, reg: reg}
	exact := append([]byte(`{"event":"ping"}`), bytes.Repeat([]byte(" "), webhook.DefaultMaxBodyBytes-16)...)
	if r := h.post(t, "/webhooks/cvat", exact, signed(exact)); r.code != http.StatusOK {
		t.Errorf("body of 1 MiB: %d", r.code)
	}
	over := append(exact, ' ')
	if r := h.post(t, "/webhooks/cvat", over, signed(over)); r.code != http.StatusRequestEntityTooLarge {
		t.Errorf("body of 1 MiB + 1: %d", r.code)
	}
}

type nopQueue struct{}

func (nopQueue) Enqueue(context.Context, inbox.Item) error { return nil }
