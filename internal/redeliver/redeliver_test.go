package redeliver_test

import (
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
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
	"github.com/cvat-sync/cvat-sync/internal/cvatfake"
	"github.com/cvat-sync/cvat-sync/internal/redeliver"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const secret = "redeliver-test-secret"

// service stands in for cvat-sync's webhook endpoint: it answers status
// (503 while "down", as the service does when it cannot store an event) and
// records what it accepted.
type service struct {
	url    string
	mu     sync.Mutex
	status int
	body   string
	got    []string // events of the bodies answered 2xx
	sigsOK bool
}

func newService(t testing.TB) *service {
	t.Helper()
	s := &service{status: http.StatusOK, body: `{"status": "accepted"}`, sigsOK: true}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		m := hmac.New(sha256.New, []byte(secret))
		m.Write(b)
		s.mu.Lock()
		defer s.mu.Unlock()
		sig := "sha256=" + hex.EncodeToString(m.Sum(nil))
		m.Write([]byte("\n")) // CVAT 2.3.0 signs the body plus a newline
		if got := r.Header.Get("X-Signature-256"); got != sig && got != "sha256="+hex.EncodeToString(m.Sum(nil)) {
			s.sigsOK = false
		}
		if s.status/100 == 2 {
			var env struct {
				Event string `json:"event"`
			}
			_ = json.Unmarshal(b, &env)
			s.got = append(s.got, env.Event)
		}
		w.WriteHeader(s.status)
		_, _ = io.WriteString(w, s.body)
	}))
	t.Cleanup(srv.Close)
	s.url = srv.URL + "/webhooks/cvat"
	return s
}

func (s *service) set(status int, body string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status, s.body = status, body
}

func (s *service) accepted() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.got...)
}

type env struct {
	f    *cvatfake.Server
	c    *cvatapi.Client
	svc  *service
	spec cvatapi.WebhookSpec
	hook int64
	job  int64
	reg  *prometheus.Registry
}

func newEnv(t testing.TB, version string) *env {
	t.Helper()
	f := cvatfake.New(t, cvatfake.Options{Version: version})
	p := f.AddProject(cvatfake.Project{Name: "p"})
	task := f.AddTask(cvatfake.Task{ProjectID: p.ID})
	job := f.AddJob(cvatfake.Job{TaskID: task.ID})
	f.AddJob(cvatfake.Job{TaskID: task.ID}) // the task is not completed by one job
	cfg := cvatapi.Config{BaseURL: f.URL(), Token: f.Token(), AuthScheme: "token", PollInterval: time.Millisecond,
		RetryWaitMin: time.Millisecond, RetryWaitMax: 5 * time.Millisecond}
	c, err := cvatapi.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	svc := newService(t)
	spec := cvatapi.WebhookSpec{TargetURL: svc.url, Secret: secret, ProjectID: p.ID}
	w, _, err := c.EnsureWebhook(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	return &env{f: f, c: c, svc: svc, spec: spec, hook: w.ID, job: job.ID, reg: prometheus.NewPedanticRegistry()}
}

func (e *env) redeliverer(t testing.TB, mod ...func(*redeliver.Config)) *redeliver.Redeliverer {
	t.Helper()
	cfg := redeliver.Config{CVAT: e.c, Webhook: e.spec, Registerer: e.reg}
	for _, m := range mod {
		m(&cfg)
	}
	r, err := redeliver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// change makes a change CVAT reports on every release (a REST PATCH of a
// job: update:job) and delivers it as CVAT's worker does.
func (e *env) change(t testing.TB) {
	t.Helper()
	evs, err := e.f.CompleteJob(e.job)
	if err != nil {
		t.Fatal(err)
	}
	e.f.Dispatch(context.Background(), evs...)
}

// metrics reads the two metrics by label value.
func (e *env) metrics(t testing.TB) map[string]float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			name := strings.TrimPrefix(mf.GetName(), "cvat_sync_cvat_") + "/" + m.Label[0].GetValue()
			out[name] = value(m)
		}
	}
	return out
}

func value(m *dto.Metric) float64 {
	if m.Gauge != nil {
		return m.Gauge.GetValue()
	}
	return m.Counter.GetValue()
}

func (e *env) await(t testing.TB, cond func([]cvatfake.Delivery) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := e.f.AwaitDeliveries(ctx, e.hook, cond); err != nil {
		t.Fatal(err)
	}
}

func redelivered(ds []cvatfake.Delivery) bool {
	return len(ds) > 0 && ds[0].Redelivery && ds[0].StatusCode == 200
}

func zero() map[string]float64 {
	return map[string]float64{"failed_deliveries/4xx": 0, "failed_deliveries/5xx": 0, "failed_deliveries/proxy": 0,
		"failed_deliveries/timeout": 0, "redeliveries_total/requested": 0, "redeliveries_total/failed": 0}
}

func with(m map[string]float64, kv ...any) map[string]float64 {
	for i := 0; i < len(kv); i += 2 {
		m[kv[i].(string)] = kv[i+1].(float64)
	}
	return m
}

// TestRedeliversWhatFailedWhileDown: a delivery that failed while the
// service was down is redelivered once it is up, and the metric of CVAT's
// failed deliveries moves and comes back to zero.
func TestRedeliversWhatFailedWhileDown(t *testing.T) {
	for _, version := range []string{"2.3.0", "2.4.0", "2.4.2", "2.64.0"} {
		t.Run(version, func(t *testing.T) {
			e := newEnv(t, version)
			r := e.redeliverer(t)
			if diff := cmp.Diff(zero(), e.metrics(t)); diff != "" {
				t.Errorf("metrics before any scan (-want +got):\n%s", diff)
			}
			e.svc.set(http.StatusServiceUnavailable, `{"error": "inbox unavailable"}`)
			e.change(t)
			e.svc.set(http.StatusOK, `{"status": "accepted"}`)

			rep, err := r.Scan(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if rep.WebhookID != e.hook || rep.Redelivered != 1 || rep.Failed["5xx"] != 1 {
				t.Errorf("report %+v", rep)
			}
			if diff := cmp.Diff(with(zero(), "failed_deliveries/5xx", 1.0, "redeliveries_total/requested", 1.0), e.metrics(t)); diff != "" {
				t.Errorf("metrics after the scan (-want +got):\n%s", diff)
			}
			e.await(t, redelivered)
			if got := e.svc.accepted(); len(got) != 1 || got[0] != "update:job" || !e.svc.sigsOK {
				t.Errorf("service accepted %v (signatures ok: %v)", got, e.svc.sigsOK)
			}

			// Recovered: the metric is back at zero, nothing redelivered again.
			rep, err = r.Scan(context.Background())
			if err != nil || rep.Redelivered != 0 {
				t.Fatalf("second scan %+v, %v", rep, err)
			}
			if diff := cmp.Diff(with(zero(), "redeliveries_total/requested", 1.0), e.metrics(t)); diff != "" {
				t.Errorf("metrics after recovery (-want +got):\n%s", diff)
			}
		})
	}
}

// TestAtMostOnce: a redelivery that fails too is not asked for again, by
// this process or by a new one (the log shows the redelivery).
func TestAtMostOnce(t *testing.T) {
	e := newEnv(t, "2.64.0")
	e.svc.set(http.StatusServiceUnavailable, "")
	e.change(t)
	r := e.redeliverer(t)
	if rep, _ := r.Scan(context.Background()); rep.Redelivered != 1 {
		t.Fatalf("first scan %+v", rep)
	}
	e.await(t, func(ds []cvatfake.Delivery) bool { return len(ds) == 2 && ds[0].Redelivery })
	for _, scanner := range []*redeliver.Redeliverer{r, e.redeliverer(t, func(c *redeliver.Config) { c.Registerer = nil })} {
		rep, err := scanner.Scan(context.Background())
		if err != nil || rep.Redelivered != 0 || rep.Failed["5xx"] != 1 {
			t.Errorf("scan %+v, %v", rep, err)
		}
	}
}

// TestRetriedReleases: from 2.65 CVAT retries a 5xx itself; only a final
// failure (another 4xx, or the retries exhausted) is redelivered.
func TestRetriedReleases(t *testing.T) {
	ctx := context.Background()
	t.Run("a 503 is left to CVAT's retry", func(t *testing.T) {
		e := newEnv(t, "2.70.0")
		r := e.redeliverer(t)
		e.svc.set(http.StatusServiceUnavailable, "")
		e.change(t)
		e.svc.set(http.StatusOK, "")
		rep, err := r.Scan(ctx)
		if err != nil || rep.Redelivered != 0 || rep.Waiting != 1 || rep.Failed["5xx"] != 1 {
			t.Fatalf("scan %+v, %v", rep, err)
		}
		e.f.RetryPending(ctx)
		if rep, _ := r.Scan(ctx); rep.Failed["5xx"] != 0 || rep.Redelivered != 0 {
			t.Errorf("after CVAT's retry: %+v", rep)
		}
		if got := e.svc.accepted(); len(got) != 1 {
			t.Errorf("accepted %v: once, by CVAT's retry", got)
		}
	})
	t.Run("retries exhausted", func(t *testing.T) {
		e := newEnv(t, "2.70.0")
		r := e.redeliverer(t)
		e.svc.set(http.StatusServiceUnavailable, "")
		e.change(t)
		for e.f.PendingRetries() > 0 {
			if rep, _ := r.Scan(ctx); rep.Redelivered != 0 {
				t.Fatalf("redelivered while CVAT still retries: %+v", rep)
			}
			e.f.RetryPending(ctx)
		}
		e.svc.set(http.StatusOK, "")
		if rep, _ := r.Scan(ctx); rep.Redelivered != 1 {
			t.Fatalf("after %d attempts: %+v", cvatfake.MaxAttempts, rep)
		}
		e.await(t, redelivered)
	})
	t.Run("a final 4xx", func(t *testing.T) {
		e := newEnv(t, "2.70.0")
		r := e.redeliverer(t)
		e.svc.set(http.StatusForbidden, "")
		e.change(t)
		e.svc.set(http.StatusOK, "")
		rep, err := r.Scan(ctx)
		if err != nil || rep.Redelivered != 1 || rep.Failed["4xx"] != 1 || e.f.PendingRetries() != 0 {
			t.Fatalf("scan %+v, %v", rep, err)
		}
		e.await(t, redelivered)
	})
}

// TestStatusClasses: a refused connection is recorded as 502 (proxy
// class), the proxy's 407 too.
func TestStatusClasses(t *testing.T) {
	e := newEnv(t, "2.64.0")
	r := e.redeliverer(t)
	e.svc.set(http.StatusProxyAuthRequired, "")
	e.change(t)
	if rep, _ := r.Scan(context.Background()); rep.Failed["proxy"] != 1 || rep.Redelivered != 1 {
		t.Errorf("407: %+v", rep)
	}

	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	other := cvatapi.WebhookSpec{TargetURL: dead.URL + "/webhooks/cvat", Secret: secret, ProjectID: e.spec.ProjectID}
	if _, _, err := e.c.EnsureWebhook(context.Background(), other); err != nil {
		t.Fatal(err)
	}
	down := e.redeliverer(t, func(c *redeliver.Config) { c.Webhook = other; c.Registerer = nil })
	task := e.f.AddTask(cvatfake.Task{ProjectID: e.spec.ProjectID})
	saved, _ := e.f.TouchTask(task.ID)
	e.f.Dispatch(context.Background(), saved...)
	if rep, _ := down.Scan(context.Background()); rep.Failed["proxy"] != 1 || rep.Redelivered != 1 {
		t.Errorf("connection refused: %+v", rep)
	}
}

// TestQueuedNeverSent: on 2.3–2.4.1 a delivery that stays queued (here: the
// worker failed on a reply that is not UTF-8) counts as failed after the
// grace period, not before.
func TestQueuedNeverSent(t *testing.T) {
	e := newEnv(t, "2.4.0")
	e.svc.set(http.StatusOK, "\xff\xfe")
	e.change(t)
	e.svc.set(http.StatusOK, "")
	now := time.Now()
	clock := func() time.Time { return now }
	r := e.redeliverer(t, func(c *redeliver.Config) { c.Now = clock })
	if rep, _ := r.Scan(context.Background()); rep.Failed["timeout"] != 0 || rep.Redelivered != 0 {
		t.Errorf("within the grace: %+v", rep)
	}
	now = now.Add(redeliver.DefaultQueuedGrace + time.Minute)
	if rep, _ := r.Scan(context.Background()); rep.Failed["timeout"] != 1 || rep.Redelivered != 1 {
		t.Errorf("after the grace: %+v", rep)
	}
	e.await(t, redelivered)
}

// TestLookBack: rows older than the look-back are not read.
func TestLookBack(t *testing.T) {
	e := newEnv(t, "2.64.0")
	e.svc.set(http.StatusServiceUnavailable, "")
	e.change(t)
	later := time.Now().Add(redeliver.DefaultLookBack + time.Hour)
	r := e.redeliverer(t, func(c *redeliver.Config) { c.Now = func() time.Time { return later } })
	if rep, err := r.Scan(context.Background()); err != nil || rep.Read != 0 || rep.Redelivered != 0 {
		t.Errorf("scan %+v, %v", rep, err)
	}
	r = e.redeliverer(t, func(c *redeliver.Config) { c.MaxDeliveries = 1; c.Registerer = nil })
	e.change(t) // a second PATCH: a second row
	if rep, _ := r.Scan(context.Background()); rep.Read != 1 {
		t.Errorf("MaxDeliveries 1: read %d", rep.Read)
	}
}

func TestNoWebhook(t *testing.T) {
	e := newEnv(t, "2.64.0")
	spec := e.spec
	spec.Secret = "another secret" // someone else's webhook on the same URL
	r := e.redeliverer(t, func(c *redeliver.Config) { c.Webhook = spec })
	rep, err := r.Scan(context.Background())
	if err != nil || rep.WebhookID != 0 {
		t.Errorf("scan %+v, %v", rep, err)
	}
	if diff := cmp.Diff(zero(), e.metrics(t)); diff != "" {
		t.Errorf("metrics (-want +got):\n%s", diff)
	}
}

// TestRun: Run scans at once, keeps going on errors, returns when ctx ends.
func TestRun(t *testing.T) {
	e := newEnv(t, "2.64.0")
	e.svc.set(http.StatusServiceUnavailable, "")
	e.change(t)
	e.svc.set(http.StatusOK, "")
	r := e.redeliverer(t, func(c *redeliver.Config) { c.Interval = time.Hour })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	e.await(t, redelivered)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if got := e.metrics(t)["redeliveries_total/requested"]; got != 1 {
		t.Errorf("requested %v", got)
	}
}

func TestNew(t *testing.T) {
	c, err := cvatapi.New(cvatapi.Config{BaseURL: "http://cvat"})
	if err != nil {
		t.Fatal(err)
	}
	ok := redeliver.Config{CVAT: c, Webhook: cvatapi.WebhookSpec{TargetURL: "http://r/webhooks/cvat", Secret: "s"}}
	for _, tt := range []struct {
		name string
		mod  func(*redeliver.Config)
		want string
	}{
		{"no CVAT", func(c *redeliver.Config) { c.CVAT = nil }, "CVAT"},
		{"no target", func(c *redeliver.Config) { c.Webhook.TargetURL = "" }, "Webhook.TargetURL"},
		{"no secret", func(c *redeliver.Config) { c.Webhook.Secret = "" }, "Webhook.Secret"},
		{"look-back within the grace", func(c *redeliver.Config) { c.LookBack = time.Minute }, "LookBack"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := ok
			tt.mod(&cfg)
			if _, err := redeliver.New(cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New = %v, want an error naming %s", err, tt.want)
			}
		})
	}
	reg := prometheus.NewPedanticRegistry()
	cfg := ok
	cfg.Registerer = reg
	if _, err := redeliver.New(cfg); err != nil {
		t.Fatal(err)
	}
	// A second one on the same registry shares the series (internal/metrics).
	if _, err := redeliver.New(cfg); err != nil {
		t.Errorf("second New on one registry: %v", err)
	}
	if n, err := testutil.GatherAndCount(reg, "cvat_sync_cvat_failed_deliveries"); err != nil || n != 4 {
		t.Errorf("failed-deliveries series: %d, %v; want the 4 classes once", n, err)
	}
}
