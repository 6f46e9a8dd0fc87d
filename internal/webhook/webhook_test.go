package webhook_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cvat-sync/cvat-sync/internal/inbox"
	"github.com/cvat-sync/cvat-sync/internal/signature"
	"github.com/cvat-sync/cvat-sync/internal/webhook"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// grpc and opencensus keep process-wide goroutines.
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
	)
}

const (
	secret    = "cvat-sync-test-secret"
	oldSecret = "previous-secret-value"
	project   = "p"
	topicID   = "cvat-sync-inbox"
)

// logBuffer collects log output safely across goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type harness struct {
	url  string
	ps   *pstest.Server
	reg  *prometheus.Registry
	logs *logBuffer
}

// newHarness serves the ingress over real HTTP with its inbox on an
// in-process Pub/Sub server.
func newHarness(t testing.TB, limit int64) *harness {
	t.Helper()
	ctx := context.Background()
	ps := pstest.NewServer()
	conn, err := grpc.NewClient(ps.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	client, err := pubsub.NewClient(ctx, project, option.WithGRPCConn(conn))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: "projects/" + project + "/topics/" + topicID}); err != nil {
		t.Fatal(err)
	}
	q := inbox.NewQueue(client.Publisher(topicID), 2*time.Second)
	v, err := signature.NewVerifier([]string{secret, oldSecret})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	logs := &logBuffer{}
	srv, err := webhook.New(webhook.Config{
		Verifier: v, MaxBodyBytes: limit, Queue: q, Registerer: reg, Gatherer: reg,
		Logger:         slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
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
		client.Close()
		conn.Close()
		ps.Close()
		for _, s := range []string{secret, oldSecret} {
			if strings.Contains(logs.String(), s) {
				t.Errorf("a secret appears in the logs")
			}
		}
	})
	return &harness{url: hs.URL, ps: ps, reg: reg, logs: logs}
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

func payload(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "payloads", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
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
		{"stored", "/webhooks/cvat", payload(t, "update_job.json"), signed(payload(t, "update_job.json")), 202, "stored", ""},
		{"trailing slash is not redirected", "/webhooks/cvat/", payload(t, "update_task.json"), signed(payload(t, "update_task.json")), 202, "stored", ""},
		{"ping", "/webhooks/cvat", payload(t, "ping.json"), signed(payload(t, "ping.json")), 200, "pong", ""},
		{"ignored known event", "/webhooks/cvat", payload(t, "create_comment.json"), signed(payload(t, "create_comment.json")), 200, "ignored", ""},
		{"unknown event accepted", "/webhooks/cvat", []byte(`{"event":"explode:galaxy"}`), signed([]byte(`{"event":"explode:galaxy"}`)), 200, "ignored", ""},
		{"body of exactly the limit", "/webhooks/cvat", exact, signed(exact), 200, "pong", ""},
		{"one byte over the limit", "/webhooks/cvat", over, signed(over), 413, "", "over the limit"},
		{"missing signature", "/webhooks/cvat", payload(t, "update_job.json"), nil, 401, "", "missing"},
		{"wrong secret", "/webhooks/cvat", payload(t, "update_job.json"), map[string]string{signature.Header: signature.Sign("nope", payload(t, "update_job.json"))}, 401, "", "does not match"},
		{"sha1 prefix", "/webhooks/cvat", payload(t, "update_job.json"), map[string]string{signature.Header: "sha1=" + strings.Repeat("a", 40)}, 401, "", "sha256="},
		{"not JSON", "/webhooks/cvat", []byte("event=ping"), signed([]byte("event=ping")), 400, "", "not a JSON object"},
		{"JSON array", "/webhooks/cvat", []byte(`[1]`), signed([]byte(`[1]`)), 400, "", "not a JSON object"},
		{"no event", "/webhooks/cvat", []byte(`{"task":{"id":1}}`), signed([]byte(`{"task":{"id":1}}`)), 400, "", "event"},
		{"wrong content type still verified", "/webhooks/cvat", payload(t, "ping.json"), map[string]string{signature.Header: signature.Sign(secret, payload(t, "ping.json")), "Content-Type": "text/plain"}, 200, "pong", ""},
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
	body := payload(t, "update_job.json")
	h.post(t, "/webhooks/cvat", body, signed(body))
	h.post(t, "/webhooks/cvat", body, nil)
	h.post(t, "/webhooks/cvat", body, map[string]string{signature.Header: "sha256=zz"})
	unknown := []byte(`{"event":"frobnicate:thing"}`)
	h.post(t, "/webhooks/cvat", unknown, signed(unknown))
	res, err := http.Get(h.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %d", res.StatusCode)
	}
	want := `
# HELP cvat_sync_webhook_deliveries_total Webhook deliveries by CVAT event (unverified ones as "unverified") and outcome.
# TYPE cvat_sync_webhook_deliveries_total counter
cvat_sync_webhook_deliveries_total{event="unknown",outcome="ignored"} 1
cvat_sync_webhook_deliveries_total{event="unverified",outcome="unauthorized"} 2
cvat_sync_webhook_deliveries_total{event="update:job",outcome="stored"} 1
# HELP cvat_sync_webhook_signature_failures_total Webhook deliveries refused for their signature, by reason (missing, malformed, mismatch).
# TYPE cvat_sync_webhook_signature_failures_total counter
cvat_sync_webhook_signature_failures_total{reason="malformed"} 1
cvat_sync_webhook_signature_failures_total{reason="mismatch"} 0
cvat_sync_webhook_signature_failures_total{reason="missing"} 1
`
	if err := testutil.GatherAndCompare(h.reg, strings.NewReader(want),
		"cvat_sync_webhook_deliveries_total", "cvat_sync_webhook_signature_failures_total"); err != nil {
		t.Error(err)
	}
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
	entries, err := filepath.Glob(filepath.Join("..", "..", "testdata", "payloads", "*.json"))
	if err != nil || len(entries) < 15 {
		t.Fatalf("payloads: %v, %d files", err, len(entries))
	}
	other := []byte(`{"event":"ping","webhook":{"id":1}}`)
	for _, p := range entries {
		body, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		good := signature.Sign(secret, body)
		t.Run(filepath.Base(p), func(t *testing.T) {
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
		body := payload(t, name)
		if r := h.post(t, "/webhooks/cvat", body, signed(body)); r.code != http.StatusAccepted {
			t.Fatalf("%s: %d %v", name, r.code, r.body)
		}
	}
	msgs := h.ps.Messages()
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

// TestInboxDown: with the Pub/Sub server gone the answer is 503 and nothing
// is claimed stored.
func TestInboxDown(t *testing.T) {
	h := newHarness(t, 1<<20)
	if err := h.ps.Close(); err != nil {
		t.Fatal(err)
	}
	body := payload(t, "update_job.json")
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
	ping := payload(t, "ping.json")
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
	body := payload(t, "update_job.json")
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
		body := payload(b, name)
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
