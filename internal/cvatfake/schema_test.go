package cvatfake_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
	"github.com/cvat-sync/cvat-sync/internal/cvatfake"
)

// schemaValidator is an http.RoundTripper that checks every request against
// CVAT's OpenAPI schema and every answer of the fake against it too, so the
// fake cannot drift from CVAT (nor the client from what CVAT accepts).
//
// CVAT answers application/vnd.cvat+json; kin-openapi decodes any "+json"
// media type with its JSON decoder (RFC 6839 fallback), so no decoder needs
// registering (which would be global state).
type schemaValidator struct {
	t      testing.TB
	router routers.Router

	mu   sync.Mutex
	seen map[string]bool // "METHOD /template STATUS"
}

func newSchemaValidator(t testing.TB, schemaFile, serverURL string) *schemaValidator {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromFile(schemaFile)
	if err != nil {
		t.Fatal(err)
	}
	doc.Servers = openapi3.Servers{{URL: serverURL}}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return &schemaValidator{t: t, router: router, seen: map[string]bool{}}
}

// hidden reports requests to endpoints CVAT hides from its schema or answers
// with bodies the schema does not describe: skipped explicitly.
func hidden(r *http.Request) bool {
	return strings.HasSuffix(r.URL.Path, "/dataset/download") || // result_url: not in the schema
		r.URL.Query().Get("action") == "download" // legacy download: a zip, the schema says AnnotationsRead
}

func (v *schemaValidator) RoundTrip(req *http.Request) (*http.Response, error) {
	if hidden(req) {
		return http.DefaultTransport.RoundTrip(req)
	}
	var reqBody []byte
	if req.Body != nil {
		reqBody, _ = io.ReadAll(req.Body)
		req.Body.Close()
		req.Body = io.NopCloser(bytes.NewReader(reqBody))
	}
	route, params, err := v.router.FindRoute(req)
	if err != nil {
		// CVAT routes annotations with r'annotations/?$': the schema lists
		// the slash form, CVAT (and the fake) accept both.
		alt := req.Clone(req.Context())
		alt.URL.Path += "/"
		route, params, err = v.router.FindRoute(alt)
	}
	if err != nil {
		v.t.Errorf("%s %s: not in CVAT's schema: %v", req.Method, req.URL.Path, err)
		return http.DefaultTransport.RoundTrip(req)
	}
	ctx := context.Background()
	check := req.Clone(ctx)
	check.Body = io.NopCloser(bytes.NewReader(reqBody))
	in := &openapi3filter.RequestValidationInput{Request: check, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
	if q := check.URL.Query(); q.Get("page_size") == "all" {
		// Known schema deviation: CVAT's paginator accepts page_size=all,
		// its schema says integer.
		q.Del("page_size")
		check.URL.RawQuery = q.Encode()
	}
	if err := openapi3filter.ValidateRequest(ctx, in); err != nil {
		v.t.Errorf("request %s %s does not match CVAT's schema: %v", req.Method, route.Path, err)
	}

	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Body: io.NopCloser(bytes.NewReader(deviations(v.t, route.Path, body))), Options: &openapi3filter.Options{IncludeResponseStatus: true}}
	if resp.StatusCode >= 400 {
		// CVAT documents few error answers; only their bodies' JSON-ness is ours to check.
		out.Options.IncludeResponseStatus = false
	}
	if err := openapi3filter.ValidateResponse(ctx, out); err != nil {
		v.t.Errorf("answer %d to %s %s does not match CVAT's schema: %v\nbody: %.300s", resp.StatusCode, req.Method, route.Path, err, body)
	}
	v.mu.Lock()
	v.seen[fmt.Sprintf("%s %s %d", req.Method, route.Path, resp.StatusCode)] = true
	v.mu.Unlock()
	return resp, nil
}

// deviations adjusts an answer where real CVAT (and so the fake) departs
// from CVAT's own schema, after checking the departure is the known one.
func deviations(t testing.TB, route string, body []byte) []byte {
	if !strings.HasSuffix(route, "/ping") && !strings.Contains(route, "/deliveries") {
		return body
	}
	// WebhookDeliveryRead.response is declared an object, but CVAT stores and
	// returns the receiver's answer as a string (api/webhook_ping_response.json).
	var d map[string]any
	if err := json.Unmarshal(body, &d); err != nil {
		return body
	}
	if _, ok := d["response"].(string); !ok {
		t.Errorf("%s: response is %T, CVAT sends a string", route, d["response"])
	}
	d["response"] = map[string]any{}
	b, _ := json.Marshal(d)
	return b
}

func (v *schemaValidator) requireSeen(t *testing.T, want ...string) {
	t.Helper()
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, w := range want {
		if !v.seen[w] {
			var got []string
			for k := range v.seen {
				got = append(got, k)
			}
			slices.Sort(got)
			t.Errorf("never validated %q; validated:\n%s", w, strings.Join(got, "\n"))
		}
	}
}

// rawDo sends one authenticated request through the validator.
func rawDo(t *testing.T, v *schemaValidator, f *cvatfake.Server, method, pathQuery string) int {
	t.Helper()
	req, _ := http.NewRequest(method, f.URL()+pathQuery, nil)
	req.Header.Set("Authorization", "Token "+f.Token())
	resp, err := (&http.Client{Transport: v}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestSchemaV264(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{Version: "2.64.0"})
	v := newSchemaValidator(t, "testdata/schema/cvat-v2.64.0-schema.yml", f.URL())
	p := f.AddProject(cvatfake.Project{Name: "p"})
	f.AddProject(cvatfake.Project{Name: "org project", Org: "org1"})
	var tasks []cvatfake.Task
	for range 5 {
		tasks = append(tasks, f.AddTask(cvatfake.Task{Name: "t", ProjectID: p.ID, Subset: "train"}))
	}
	job := f.AddJob(cvatfake.Job{TaskID: tasks[0].ID})
	f.AddTask(cvatfake.Task{Name: "sandbox"})

	receiver := newReceiver(t)
	c, err := cvatapi.New(cvatapi.Config{BaseURL: f.URL(), Token: f.Token(), HTTPClient: &http.Client{Transport: v}, PollInterval: 1, RetryWaitMin: 1, MaxRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err = c.About(ctx)
	must(err)
	must(c.CheckAuth(ctx))
	must(c.CheckFormats(ctx, []string{"COCO 1.0"}))
	_, err = c.Task(ctx, f.AddTask(cvatfake.Task{Name: "no data yet", ProjectID: p.ID, NoData: true}).ID)
	must(err)
	hidden := f.AddTask(cvatfake.Task{Name: "hidden", ProjectID: p.ID})
	f.HideTask(hidden.ID, true)
	if _, err := c.Task(ctx, hidden.ID); !errors.Is(err, cvatapi.ErrForbidden) {
		t.Errorf("hidden task: %v", err)
	}
	_, err = c.Task(ctx, tasks[0].ID)
	must(err)
	_, err = c.Job(ctx, job.ID)
	must(err)
	_, err = c.Project(ctx, p.ID)
	must(err)
	must(c.ListTasks(ctx, cvatapi.TaskFilter{PageSize: 2, ProjectID: p.ID}, func(cvatapi.Task) error { return nil }))
	x, err := c.ExportTask(ctx, tasks[1].ID, "COCO 1.0", cvatapi.ExportOptions{})
	must(err)
	x.Body.Close()
	f.FailNextExport(tasks[2].ID, "boom")
	if _, err := c.ExportTask(ctx, tasks[2].ID, "COCO 1.0", cvatapi.ExportOptions{}); err == nil {
		t.Fatal("failed export succeeded")
	}
	w, _, err := c.EnsureWebhook(ctx, cvatapi.WebhookSpec{TargetURL: receiver, Secret: "s", Events: []string{"update:task"}, ProjectID: p.ID})
	must(err)
	_, _, err = c.EnsureWebhook(ctx, cvatapi.WebhookSpec{TargetURL: receiver, Secret: "s2", Events: []string{"update:task", "update:job"}, ProjectID: p.ID})
	must(err)
	_, err = c.PingWebhook(ctx, w.ID)
	must(err)

	// Paths the client does not take.
	rawDo(t, v, f, "POST", "/api/tasks/"+itoa(tasks[3].ID)+"/dataset/export?format=COCO+1.0&save_images=false")
	if got := rawDo(t, v, f, "POST", "/api/tasks/"+itoa(tasks[3].ID)+"/dataset/export?format=COCO+1.0&save_images=false"); got != http.StatusConflict {
		t.Errorf("second POST = %d, want 409", got)
	}
	rawDo(t, v, f, "GET", "/api/jobs?task_id="+itoa(tasks[0].ID))
	rawDo(t, v, f, "GET", "/api/tasks?page_size=all")
	rawDo(t, v, f, "GET", "/api/tasks/"+itoa(tasks[0].ID)+"/annotations")
	rawDo(t, v, f, "GET", "/api/webhooks/"+itoa(w.ID))
	rawDo(t, v, f, "GET", "/api/tasks/424242")
	rawDo(t, v, f, "DELETE", "/api/webhooks/"+itoa(w.ID))

	v.requireSeen(t,
		"GET /api/server/about 200",
		"GET /api/users/self 200",
		"GET /api/tasks/{id} 403",
		"GET /api/server/annotation/formats 200",
		"GET /api/tasks 200",
		"GET /api/tasks/{id} 200",
		"GET /api/tasks/{id} 404",
		"GET /api/jobs 200",
		"GET /api/jobs/{id} 200",
		"GET /api/projects/{id} 200",
		"POST /api/tasks/{id}/dataset/export 202",
		"POST /api/tasks/{id}/dataset/export 409",
		"GET /api/requests/{id} 200",
		"GET /api/tasks/{id}/annotations/ 200",
		"GET /api/webhooks 200",
		"POST /api/webhooks 201",
		"PATCH /api/webhooks/{id} 200",
		"GET /api/webhooks/{id} 200",
		"POST /api/webhooks/{id}/ping 200",
		"DELETE /api/webhooks/{id} 204",
	)
}

func TestSchemaV231Legacy(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{Version: "2.31.0", ExportPolls: 1})
	v := newSchemaValidator(t, "testdata/schema/cvat-v2.31.0-schema.yml", f.URL())
	p := f.AddProject(cvatfake.Project{Name: "p"})
	task := f.AddTask(cvatfake.Task{Name: "t", ProjectID: p.ID})
	failing := f.AddTask(cvatfake.Task{Name: "t", ProjectID: p.ID})

	c, err := cvatapi.New(cvatapi.Config{BaseURL: f.URL(), Token: f.Token(), AuthScheme: "token", HTTPClient: &http.Client{Transport: v}, PollInterval: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.CheckAuth(context.Background()); err != nil {
		t.Fatal(err)
	}
	x, err := c.ExportTask(context.Background(), task.ID, "CVAT for images 1.1", cvatapi.ExportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	x.Body.Close()
	// The request API and the legacy GET share jobs on 2.16-2.31: another task.
	other := f.AddTask(cvatfake.Task{Name: "t", ProjectID: p.ID})
	pq := "/api/tasks/" + itoa(other.ID) + "/dataset/export?format=COCO+1.0&save_images=false&location=local"
	rawDo(t, v, f, "POST", pq)
	if got := rawDo(t, v, f, "POST", pq); got != http.StatusConflict {
		t.Errorf("second POST = %d, want 409", got)
	}

	legacy := "/api/tasks/" + itoa(task.ID) + "/annotations?format=COCO+1.0&use_default_location=false&location=local"
	for _, want := range []int{http.StatusAccepted, http.StatusAccepted, http.StatusCreated} {
		if got := rawDo(t, v, f, "GET", legacy); got != want {
			t.Fatalf("legacy GET = %d, want %d", got, want)
		}
	}
	if got := rawDo(t, v, f, "GET", legacy+"&action=download"); got != http.StatusOK {
		t.Errorf("legacy download = %d", got)
	}
	rawDo(t, v, f, "GET", "/api/tasks/"+itoa(task.ID)+"/dataset?format=COCO+1.0")
	f.FailNextExport(failing.ID, "boom")
	rawDo(t, v, f, "GET", "/api/tasks/"+itoa(failing.ID)+"/annotations?format=COCO+1.0")
	rawDo(t, v, f, "GET", "/api/tasks/"+itoa(failing.ID)+"/annotations?format=COCO+1.0")
	if got := rawDo(t, v, f, "GET", "/api/tasks/"+itoa(failing.ID)+"/annotations?format=COCO+1.0"); got != http.StatusInternalServerError {
		t.Errorf("failed legacy export = %d, want 500", got)
	}

	v.requireSeen(t,
		"GET /api/server/about 200",
		"GET /api/users/self 200",
		"POST /api/tasks/{id}/dataset/export 202",
		"POST /api/tasks/{id}/dataset/export 409",
		"GET /api/requests/{id} 200",
		"GET /api/tasks/{id}/annotations/ 202",
		"GET /api/tasks/{id}/annotations/ 201",
		"GET /api/tasks/{id}/annotations/ 500",
		"GET /api/tasks/{id}/dataset 202",
	)
}
