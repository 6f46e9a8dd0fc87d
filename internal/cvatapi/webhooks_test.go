package cvatapi_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
	"github.com/cvat-sync/cvat-sync/internal/cvatfake"
)

func TestEnsureWebhook(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{})
	p := f.AddProject(cvatfake.Project{Name: "p"})
	f.AddProject(cvatfake.Project{Name: "in org", Org: "org1"})
	ctx := context.Background()
	const target = "http://cvat-sync.cvat.svc:8080/webhooks/cvat"
	base := cvatapi.WebhookSpec{TargetURL: target, Secret: "first-secret", Events: []string{"update:task", "update:job", "delete:task"}, ProjectID: p.ID, Description: "cvat-sync"}
	writes := func() []string {
		var out []string
		for _, c := range f.Calls() {
			if c.Method != "GET" {
				out = append(out, c.Method+" "+c.Route)
			}
		}
		return out
	}

	steps := []struct {
		name        string
		mod         func(*cvatapi.WebhookSpec)
		org         string
		wantChanged bool
		wantWrites  []string
		wantSecret  string
	}{
		{name: "create", wantChanged: true, wantWrites: []string{"POST /api/webhooks"}, wantSecret: "first-secret"},
		{name: "again: nothing changes", wantChanged: false, wantSecret: "first-secret"},
		{name: "events in another order: nothing changes", mod: func(s *cvatapi.WebhookSpec) {
			s.Events = []string{"delete:task", "update:job", "update:task", "update:job"}
		}, wantSecret: "first-secret"},
		{name: "more events", mod: func(s *cvatapi.WebhookSpec) { s.Events = append(s.Events, "update:project") }, wantChanged: true, wantWrites: []string{"PATCH /api/webhooks/{id}"}, wantSecret: "first-secret"},
		{name: "back to the first events", wantChanged: true, wantWrites: []string{"PATCH /api/webhooks/{id}"}, wantSecret: "first-secret"},
		{name: "rotated secret", mod: func(s *cvatapi.WebhookSpec) { s.Secret = "second-secret" }, wantChanged: true, wantWrites: []string{"PATCH /api/webhooks/{id}"}, wantSecret: "second-secret"},
		{name: "rotated secret again: nothing changes", mod: func(s *cvatapi.WebhookSpec) { s.Secret = "second-secret" }, wantSecret: "second-secret"},
		{name: "organization webhook is another webhook", org: "org1", mod: func(s *cvatapi.WebhookSpec) { s.ProjectID = 0; s.Org = "org1" }, wantChanged: true, wantWrites: []string{"POST /api/webhooks"}, wantSecret: "first-secret"},
		{name: "organization webhook again", org: "org1", mod: func(s *cvatapi.WebhookSpec) { s.ProjectID = 0 }, wantSecret: "first-secret"},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			f.ResetCalls()
			c := newClient(t, f, func(c *cvatapi.Config) { c.Org = st.org })
			spec := base
			spec.Events = append([]string(nil), base.Events...)
			if st.mod != nil {
				st.mod(&spec)
			}
			w, changed, err := c.EnsureWebhook(ctx, spec)
			if err != nil {
				t.Fatal(err)
			}
			if changed != st.wantChanged {
				t.Errorf("changed = %v, want %v", changed, st.wantChanged)
			}
			if diff := cmp.Diff(st.wantWrites, writes()); diff != "" {
				t.Errorf("writes (-want +got):\n%s", diff)
			}
			if !f.WebhookSecretIs(w.ID, st.wantSecret) {
				t.Errorf("webhook %d does not hold secret %q", w.ID, st.wantSecret)
			}
			if w.TargetURL != target || !w.IsActive || !strings.HasPrefix(w.Description, "cvat-sync [cvat-sync secret ") {
				t.Errorf("webhook = %+v", w)
			}
			for _, c := range f.Calls() {
				if strings.Contains(c.Query.Encode(), "secret") {
					t.Errorf("secret in a query: %v", c.Query)
				}
			}
		})
	}
	if n := len(f.Webhooks()); n != 2 {
		t.Errorf("%d webhooks, want 2 (one project, one organization)", n)
	}
}

func TestEnsureWebhookRejectsBadSpecs(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{})
	c := newClient(t, f)
	ok := cvatapi.WebhookSpec{TargetURL: "http://x/webhooks/cvat", Secret: "s", Events: []string{"update:task"}, ProjectID: 1}
	tests := []struct {
		name string
		mod  func(*cvatapi.WebhookSpec)
	}{
		{"no secret", func(s *cvatapi.WebhookSpec) { s.Secret = "" }},
		{"secret too long", func(s *cvatapi.WebhookSpec) { s.Secret = strings.Repeat("x", 65) }},
		{"relative target", func(s *cvatapi.WebhookSpec) { s.TargetURL = "/webhooks/cvat" }},
		{"organization webhook without organization", func(s *cvatapi.WebhookSpec) { s.ProjectID = 0 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := ok
			tt.mod(&spec)
			if _, _, err := c.EnsureWebhook(context.Background(), spec); err == nil {
				t.Fatal("no error")
			}
			if n := len(f.Calls()); n != 0 {
				t.Errorf("%d calls to CVAT for an invalid spec", n)
			}
		})
	}
}

func TestPingWebhook(t *testing.T) {
	const secret = "ping-secret"
	type got struct {
		ua, sig, ct string
		body        []byte
	}
	received := make(chan got, 1)
	target := newRawServer(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		received <- got{r.Header.Get("User-Agent"), r.Header.Get("X-Signature-256"), r.Header.Get("Content-Type"), b}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"status": "accepted"}`)
	})
	f := cvatfake.New(t, cvatfake.Options{})
	p := f.AddProject(cvatfake.Project{Name: "p"})
	c := newClient(t, f)
	ctx := context.Background()
	w, _, err := c.EnsureWebhook(ctx, cvatapi.WebhookSpec{TargetURL: target + "/webhooks/cvat", Secret: secret, Events: []string{"update:task"}, ProjectID: p.ID})
	if err != nil {
		t.Fatal(err)
	}
	d, err := c.PingWebhook(ctx, w.ID)
	if err != nil {
		t.Fatal(err)
	}
	if d.WebhookID != w.ID || d.Event != "ping" || d.StatusCode != 200 || d.Response != `{"status": "accepted"}` {
		t.Errorf("delivery = %+v", d)
	}
	r := <-received
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(r.body)
	if r.sig != "sha256="+hex.EncodeToString(m.Sum(nil)) || r.ct != "application/json" || r.ua != "CVAT/2.64.0 python-requests/2.32.4" {
		t.Errorf("ping request: %+v", r)
	}
	var ping struct {
		Event   string `json:"event"`
		Webhook struct {
			ID int64 `json:"id"`
		} `json:"webhook"`
	}
	if err := json.Unmarshal(r.body, &ping); err != nil || ping.Event != "ping" || ping.Webhook.ID != w.ID {
		t.Errorf("ping body %s: %v", r.body, err)
	}
	var sent, recorded any
	_ = json.Unmarshal(r.body, &sent)
	_ = json.Unmarshal(d.Request, &recorded)
	if diff := cmp.Diff(sent, recorded); diff != "" {
		t.Errorf("delivery.request differs from the body sent (-sent +recorded):\n%s", diff)
	}

	if _, err := c.PingWebhook(ctx, 999); err == nil || !strings.Contains(err.Error(), "ping webhook 999") {
		t.Errorf("ping of a missing webhook: %v", err)
	}
}
