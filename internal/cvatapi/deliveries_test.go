package cvatapi_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
	"github.com/cvat-sync/cvat-sync/internal/cvatfake"
)

// hookReceiver records the bodies and signatures CVAT sends and answers
// status.
type hookReceiver struct {
	url    string
	mu     sync.Mutex
	status int
	bodies [][]byte
	sigs   []string
}

func newHookReceiver(t testing.TB) *hookReceiver {
	t.Helper()
	r := &hookReceiver{status: http.StatusOK}
	r.url = newRawServer(t, func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.bodies = append(r.bodies, b)
		r.sigs = append(r.sigs, req.Header.Get("X-Signature-256"))
		status := r.status
		r.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, `{"status": "accepted"}`)
	}) + "/webhooks/cvat"
	return r
}

func (r *hookReceiver) set(status int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status = status
}

func (r *hookReceiver) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.bodies)
}

func hmacHex(secret string, b []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(b)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// TestEnsureWebhookOnEveryRelease: registering twice makes one webhook and
// changes nothing the second time, with the events the release offers
// (issue 14 finding 6: 2.3.0's `project` field made every register create
// another webhook; 2.3–2.4.1 refused delete:project on project webhooks).
func TestEnsureWebhookOnEveryRelease(t *testing.T) {
	// What cmd/receiver asks for today.
	explicit := []string{"create:task", "update:task", "delete:task", "update:job", "update:project", "delete:project"}
	for _, tt := range []struct {
		version string
		events  []string // spec.Events
		want    []string
	}{
		{"2.3.0", nil, []string{"create:task", "delete:task", "update:job", "update:project", "update:task"}},
		{"2.3.0", explicit, []string{"create:task", "delete:task", "update:job", "update:project", "update:task"}},
		{"2.4.0", nil, []string{"create:task", "delete:task", "update:job", "update:project", "update:task"}},
		{"2.4.1", explicit, []string{"create:task", "delete:task", "update:job", "update:project", "update:task"}},
		{"2.4.2", nil, []string{"create:job", "create:task", "delete:job", "delete:project", "delete:task", "update:job", "update:project", "update:task"}},
		{"2.64.0", nil, []string{"create:job", "create:task", "delete:job", "delete:project", "delete:task", "update:job", "update:project", "update:task"}},
		{"2.64.0", explicit, []string{"create:task", "delete:project", "delete:task", "update:job", "update:project", "update:task"}},
		{"2.74.0", nil, []string{"create:job", "create:task", "delete:job", "delete:project", "delete:task", "update:job", "update:project", "update:task"}},
	} {
		t.Run(tt.version+" "+map[bool]string{true: "default events", false: "explicit events"}[tt.events == nil], func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: tt.version})
			p := f.AddProject(cvatfake.Project{Name: "p"})
			c := newClient(t, f)
			spec := cvatapi.WebhookSpec{TargetURL: "http://cvat-sync:8080/webhooks/cvat", Secret: "s", Events: tt.events, ProjectID: p.ID}
			for i, wantChanged := range []bool{true, false} {
				w, changed, err := c.EnsureWebhook(context.Background(), spec)
				if err != nil {
					t.Fatalf("register #%d: %v", i+1, err)
				}
				if changed != wantChanged || w.ProjectID != p.ID {
					t.Errorf("register #%d: changed %v, project %d", i+1, changed, w.ProjectID)
				}
			}
			hooks := f.Webhooks()
			if len(hooks) != 1 {
				t.Fatalf("%d webhooks after registering twice", len(hooks))
			}
			if diff := cmp.Diff(tt.want, hooks[0].Events); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
		})
	}
}

func TestEnsureWebhookOrganizationEvents(t *testing.T) {
	for _, tt := range []struct {
		version string
		want    []string
	}{
		{"2.4.1", []string{"create:project", "create:task", "delete:project", "delete:task", "update:job", "update:project", "update:task"}},
		{"2.64.0", []string{"create:job", "create:project", "create:task", "delete:job", "delete:project", "delete:task", "update:job", "update:project", "update:task"}},
	} {
		t.Run(tt.version, func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: tt.version})
			f.AddProject(cvatfake.Project{Name: "p", Org: "org1"})
			c := newClient(t, f, func(c *cvatapi.Config) { c.Org = "org1" })
			w, _, err := c.EnsureWebhook(context.Background(), cvatapi.WebhookSpec{TargetURL: "http://r/webhooks/cvat", Secret: "s"})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, w.Events); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.want, cvatapi.DefaultWebhookEvents(tt.version, false)); diff != "" {
				t.Errorf("DefaultWebhookEvents (-want +got):\n%s", diff)
			}
		})
	}
}

func TestEnsureWebhookNoOfferedEvents(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{Version: "2.4.1"})
	p := f.AddProject(cvatfake.Project{Name: "p"})
	_, _, err := newClient(t, f).EnsureWebhook(context.Background(), cvatapi.WebhookSpec{
		TargetURL: "http://r/webhooks/cvat", Secret: "s", ProjectID: p.ID, Events: []string{"delete:project", "create:job"}})
	if err == nil || len(f.Webhooks()) != 0 {
		t.Fatalf("err %v, webhooks %+v", err, f.Webhooks())
	}
}

// TestEnsureWebhook230ProjectOrganization: 2.3.0 fires a project webhook
// only when it was created in the project's organization.
func TestEnsureWebhook230ProjectOrganization(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{Version: "2.3.0"})
	p := f.AddProject(cvatfake.Project{Name: "p", Org: "org1"})
	job := f.AddJob(cvatfake.Job{TaskID: f.AddTask(cvatfake.Task{ProjectID: p.ID}).ID})
	spec := cvatapi.WebhookSpec{TargetURL: "http://r/webhooks/cvat", Secret: "s", ProjectID: p.ID}
	if _, _, err := newClient(t, f).EnsureWebhook(context.Background(), spec); err == nil || !strings.Contains(err.Error(), "organization") {
		t.Fatalf("register outside the project's organization: %v", err)
	}
	if len(f.Webhooks()) != 0 {
		t.Fatalf("a webhook that never fires was created: %+v", f.Webhooks())
	}
	spec.Org = "org1"
	w, _, err := newClient(t, f).EnsureWebhook(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	evs, _ := f.CompleteJob(job.ID) // a REST PATCH: fires on 2.3.0
	if len(evs) != 1 || !slices.Equal(evs[0].Recipients(), []int64{w.ID}) {
		t.Errorf("PATCH of a job reaches %v", evs)
	}
}

// TestPingWebhookOnEveryRelease: ping succeeds on every release (issue 14
// finding 6: 2.3–2.4.1 only queue it).
func TestPingWebhookOnEveryRelease(t *testing.T) {
	for _, version := range []string{"2.3.0", "2.4.0", "2.4.1", "2.4.2", "2.64.0", "2.73.0"} {
		t.Run(version, func(t *testing.T) {
			r := newHookReceiver(t)
			f := cvatfake.New(t, cvatfake.Options{Version: version})
			p := f.AddProject(cvatfake.Project{Name: "p"})
			c := newClient(t, f)
			w, _, err := c.EnsureWebhook(context.Background(), cvatapi.WebhookSpec{TargetURL: r.url, Secret: "k", ProjectID: p.ID})
			if err != nil {
				t.Fatal(err)
			}
			d, err := c.PingWebhook(context.Background(), w.ID)
			if err != nil {
				t.Fatal(err)
			}
			if d.StatusCode != 200 || d.Event != "ping" || d.Response != `{"status": "accepted"}` || r.count() != 1 {
				t.Errorf("delivery %+v, %d requests", d, r.count())
			}
			body := r.bodies[0]
			if version == "2.3.0" {
				body = append(slices.Clone(body), '\n')
			}
			if r.sigs[0] != hmacHex("k", body) {
				t.Errorf("signature %s", r.sigs[0])
			}
		})
	}
}

// TestListDeliveries: newest first, every page, by page number on the
// configured base URL.
func TestListDeliveries(t *testing.T) {
	r := newHookReceiver(t)
	f := cvatfake.New(t, cvatfake.Options{ExternalURL: "https://cvat.example.com"})
	p := f.AddProject(cvatfake.Project{Name: "p"})
	task := f.AddTask(cvatfake.Task{ProjectID: p.ID})
	c := newClient(t, f)
	ctx := context.Background()
	w, _, err := c.EnsureWebhook(ctx, cvatapi.WebhookSpec{TargetURL: r.url, Secret: "k", ProjectID: p.ID})
	if err != nil {
		t.Fatal(err)
	}
	for range 105 {
		evs, _ := f.TouchTask(task.ID)
		f.Dispatch(ctx, evs...)
	}
	var got []cvatapi.Delivery
	if err := c.ListDeliveries(ctx, w.ID, func(d cvatapi.Delivery) error { got = append(got, d); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 105 || !slices.IsSortedFunc(got, func(a, b cvatapi.Delivery) int { return b.UpdatedDate.Compare(a.UpdatedDate) }) {
		t.Fatalf("%d deliveries, newest first: %v", len(got), slices.IsSortedFunc(got, func(a, b cvatapi.Delivery) int { return b.UpdatedDate.Compare(a.UpdatedDate) }))
	}
	if got[0].StatusCode != 200 || got[0].Event != "update:task" || got[0].WebhookID != w.ID || len(got[0].Request) == 0 {
		t.Errorf("newest %+v", got[0])
	}
	if n := len(f.CallsTo("GET", "/api/webhooks/{id}/deliveries")); n != 2 {
		t.Errorf("%d page requests, want 2", n)
	}
	n := 0
	err = c.ListDeliveries(ctx, w.ID, func(cvatapi.Delivery) error { n++; return cvatapi.ErrStop })
	if err != nil || n != 1 {
		t.Errorf("ErrStop: %v after %d", err, n)
	}
}

// TestRedeliver: CVAT sends the stored payload again, as a new delivery
// with redelivery set; its payload key matches the original's.
func TestRedeliver(t *testing.T) {
	r := newHookReceiver(t)
	f := cvatfake.New(t, cvatfake.Options{})
	p := f.AddProject(cvatfake.Project{Name: "p"})
	job := f.AddJob(cvatfake.Job{TaskID: f.AddTask(cvatfake.Task{ProjectID: p.ID}).ID})
	c := newClient(t, f)
	ctx := context.Background()
	w, _, err := c.EnsureWebhook(ctx, cvatapi.WebhookSpec{TargetURL: r.url, Secret: "k", ProjectID: p.ID})
	if err != nil {
		t.Fatal(err)
	}
	r.set(http.StatusServiceUnavailable)
	evs, _ := f.SaveAnnotations(job.ID)
	f.Dispatch(ctx, evs...)
	r.set(http.StatusOK)
	var failed []cvatapi.Delivery
	_ = c.ListDeliveries(ctx, w.ID, func(d cvatapi.Delivery) error { failed = append(failed, d); return nil })
	if len(failed) != 3 || failed[0].OK() || failed[0].StatusCode != 503 {
		t.Fatalf("deliveries %+v", failed)
	}
	if err := c.Redeliver(ctx, w.ID, failed[1].ID); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := f.AwaitDeliveries(wctx, w.ID, func(d []cvatfake.Delivery) bool {
		return len(d) == 4 && d[0].Redelivery && d[0].StatusCode == 200
	}); err != nil {
		t.Fatal(err)
	}
	again, err := c.Delivery(ctx, w.ID, f.Deliveries(w.ID)[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Redelivery || again.PayloadKey() != failed[1].PayloadKey() || again.PayloadKey() == failed[0].PayloadKey() {
		t.Errorf("keys: redelivered %s, original %s, other %s", again.PayloadKey(), failed[1].PayloadKey(), failed[0].PayloadKey())
	}
	if !strings.HasPrefix(again.PayloadKey(), failed[1].Event+"/") {
		t.Errorf("payload key %q", again.PayloadKey())
	}

	f.ResetCalls()
	err = c.Redeliver(ctx, w.ID, 424242)
	var se *cvatapi.StatusError
	if !errors.As(err, &se) || se.Code != 500 || len(f.CallsTo("POST", "/api/webhooks/{id}/deliveries/{delivery_id}/redelivery")) != 1 {
		t.Errorf("redeliver an unknown delivery: %v, %d calls", err, len(f.Calls()))
	}
}

func TestDeliveryRegime(t *testing.T) {
	for version, want := range map[string]cvatapi.DeliveryRegime{
		"2.3.0": cvatapi.DeliveryQueued, "2.4.1": cvatapi.DeliveryQueued, "2.4.2": cvatapi.DeliveryOnce,
		"2.64.0": cvatapi.DeliveryOnce, "2.65.0": cvatapi.DeliveryRetried, "2.74.0": cvatapi.DeliveryRetried,
	} {
		f := cvatfake.New(t, cvatfake.Options{Version: version})
		if got, err := newClient(t, f).DeliveryRegime(context.Background()); err != nil || got != want {
			t.Errorf("%s: %v, %v; want %v", version, got, err, want)
		}
	}
	for code, want := range map[int]bool{500: true, 502: true, 504: true, 408: true, 429: true, 400: false, 401: false, 407: false, 200: false} {
		if cvatapi.RetriedStatus(code) != want {
			t.Errorf("RetriedStatus(%d) = %v", code, !want)
		}
	}
}

// TestEnsureWebhookProjectInOrganization: from 2.4.0 a project webhook
// lives in its project's organization; registered without that context it
// could not be found again.
func TestEnsureWebhookProjectInOrganization(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{Version: "2.64.0"})
	p := f.AddProject(cvatfake.Project{Name: "p", Org: "org1"})
	spec := cvatapi.WebhookSpec{TargetURL: "http://r/webhooks/cvat", Secret: "s", ProjectID: p.ID}
	if _, _, err := newClient(t, f).EnsureWebhook(context.Background(), spec); err == nil || !strings.Contains(err.Error(), "organization") {
		t.Fatalf("register outside the project's organization: %v", err)
	}
	spec.Org = "org1"
	for i := range 2 {
		if _, _, err := newClient(t, f).EnsureWebhook(context.Background(), spec); err != nil {
			t.Fatalf("register #%d: %v", i+1, err)
		}
	}
	if n := len(f.Webhooks()); n != 1 {
		t.Errorf("%d webhooks", n)
	}
}
