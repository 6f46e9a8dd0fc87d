package cvatapi_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
	"github.com/cvat-sync/cvat-sync/internal/cvatfake"
)

// rawDo sends one Token-authenticated request (accepted by every release),
// as another replica or a person with the same account would.
func rawDo(t *testing.T, f *cvatfake.Server, method, pathQuery string) int {
	t.Helper()
	req, _ := http.NewRequest(method, f.URL()+pathQuery, nil)
	req.Header.Set("Authorization", "Token "+f.Token())
	resp, err := f.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// want is the sha256 of what an export of task id started now holds.
func want(t *testing.T, f *cvatfake.Server, id int64) [32]byte {
	t.Helper()
	r, _, err := f.ExpectedArchive(id, coco)
	if err != nil {
		t.Fatal(err)
	}
	return sum(t, r)
}

// exportSum exports and reads the whole archive.
func exportSum(t *testing.T, c *cvatapi.Client, id int64, o cvatapi.ExportOptions) ([32]byte, error) {
	t.Helper()
	x, err := c.ExportTask(context.Background(), id, coco, o)
	if err != nil {
		return [32]byte{}, err
	}
	defer x.Body.Close()
	return sum(t, x.Body), nil
}

// exportCurrent exports task id and fails the test unless the archive
// holds the task's current state.
func exportCurrent(t *testing.T, c *cvatapi.Client, f *cvatfake.Server, id int64) {
	t.Helper()
	got, err := exportSum(t, c, id, cvatapi.ExportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got != want(t, f, id) {
		t.Error("the archive does not hold the task's current state")
	}
}

func statuses(calls []cvatfake.Call) []int {
	var out []int
	for _, c := range calls {
		out = append(out, c.Status)
	}
	return out
}

// Issue 14 #1: a 409 is a JSON string on 2.16-2.36 and {"rq_id"} from 2.37.
// Either way the export already running (here started before the task was
// saved, so holding the previous state) must not be followed: the client
// waits for it to end and requests the current state.
func TestExportConflictWaitsAndRequestsAgain(t *testing.T) {
	for _, version := range []string{"2.16.0", "2.16.3", "2.17.0", "2.31.0", "2.36.0", "2.37.0", "2.48.0", "2.64.0", "2.73.0"} {
		t.Run(version, func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: version})
			_, task, _ := seed(f)
			if got := rawDo(t, f, "POST", "/api/tasks/"+itoa(task.ID)+"/dataset/export?format=COCO+1.0&save_images=false&location=local"); got != http.StatusAccepted {
				t.Fatalf("the other replica's POST = %d", got)
			}
			if n := f.StartExports(); n != 1 {
				t.Fatalf("started %d exports", n)
			}
			if _, err := f.TouchTask(task.ID); err != nil { // saved while that export runs
				t.Fatal(err)
			}
			c := newClient(t, f)
			exportCurrent(t, c, f, task.ID)
			posts := statuses(f.CallsTo("POST", "/api/tasks/{id}/dataset/export"))
			if len(posts) < 3 || posts[0] != 202 || posts[1] != 409 || posts[len(posts)-1] != 202 {
				t.Errorf("POST answers = %v; want 202 (other), 409 (ours), ..., 202 (ours, requested again)", posts)
			}
		})
	}
}

// Issue 14 #2: result_url is absolute and built from the proxies' headers
// (a load balancer ending TLS makes it https://<public host>/...): its path
// and query are fetched from the configured origin, credentials never go
// elsewhere. On 2.16-2.31 it is the legacy download.
func TestExportResultURLOnConfiguredOrigin(t *testing.T) {
	for _, version := range []string{"2.16.0", "2.20.0", "2.31.0", "2.32.0", "2.64.0"} {
		t.Run(version+" behind a TLS proxy", func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: version})
			_, task, _ := seed(f)
			proxy := newProxy(t, f.URL(), "https", "cvat.example.com")
			c := newClient(t, f, func(c *cvatapi.Config) { c.BaseURL = proxy })
			exportCurrent(t, c, f, task.ID)
		})
		t.Run(version+" another host", func(t *testing.T) {
			leaked := make(chan string, 10)
			other := newRawServer(t, func(w http.ResponseWriter, r *http.Request) { leaked <- r.Header.Get("Authorization") })
			f := cvatfake.New(t, cvatfake.Options{Version: version, ExternalURL: other})
			_, task, _ := seed(f)
			c := newClient(t, f)
			if _, err := exportSum(t, c, task.ID, cvatapi.ExportOptions{}); err != nil {
				t.Fatal(err)
			}
			select {
			case a := <-leaked:
				t.Fatalf("the host of result_url was called (Authorization %q)", a)
			default:
			}
			var downloads []cvatfake.Call
			for _, call := range f.Calls() {
				if call.Query.Get("action") == "download" || call.Route == "/api/tasks/{id}/dataset/download" {
					downloads = append(downloads, call)
				}
			}
			if len(downloads) != 1 || downloads[0].Auth == "" || downloads[0].Status != 200 {
				t.Errorf("downloads = %+v; want one, authenticated, on the fake", downloads)
			}
		})
	}
}

// Issue 14 #3: up to 2.15 location=local counts only with
// use_default_location=false; a task whose target storage is a bucket
// would otherwise be uploaded there (2.3-2.10.0: the download answers 200
// with no body; 2.10.1+: the poll answers 200).
func TestLegacyExportOfCloudTargetTask(t *testing.T) {
	for _, version := range []string{"2.3.0", "2.10.0", "2.10.1", "2.14.3", "2.15.0"} {
		t.Run(version, func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: version})
			p := f.AddProject(cvatfake.Project{Name: "p"})
			task := f.AddTask(cvatfake.Task{Name: "t", ProjectID: p.ID, TargetCloudStorageID: 3})
			c := newClient(t, f)
			exportCurrent(t, c, f, task.ID)
			for _, call := range f.CallsTo("GET", "/api/tasks/{id}/annotations") {
				if call.Query.Get("use_default_location") != "false" || call.Query.Get("location") != "local" {
					t.Errorf("legacy call without use_default_location=false&location=local: %v", call.Query)
				}
			}
		})
	}
}

// A CVAT that ignores the client's location (here: the parameters dropped
// on the way) exports to the bucket; the client says so instead of
// storing an empty archive.
func TestLegacyCloudExportIsAnError(t *testing.T) {
	for _, version := range []string{"2.3.0", "2.10.0", "2.10.1", "2.15.0"} {
		t.Run(version, func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: version})
			p := f.AddProject(cvatfake.Project{Name: "p"})
			task := f.AddTask(cvatfake.Task{Name: "t", ProjectID: p.ID, TargetCloudStorageID: 3})
			tr := &beforeTransport{before: func(r *http.Request) {
				q := r.URL.Query()
				q.Del("use_default_location")
				q.Del("location")
				r.URL.RawQuery = q.Encode()
			}}
			c := newClient(t, f, func(c *cvatapi.Config) { c.HTTPClient = &http.Client{Transport: tr} })
			x, err := c.ExportTask(context.Background(), task.ID, coco, cvatapi.ExportOptions{})
			if err == nil {
				n, _ := io.Copy(io.Discard, x.Body)
				x.Body.Close()
				t.Fatalf("export succeeded with %d bytes", n)
			}
			if !errors.Is(err, cvatapi.ErrCloudStorage) {
				t.Fatalf("err = %v; want ErrCloudStorage", err)
			}
		})
	}
}

// Issue 14 #11: on 2.16.x a download after the task changed re-enqueues the
// export and answers 202 {"rq_id"}: followed to the new export's file.
func TestExport216FollowsReenqueuedDownload(t *testing.T) {
	for _, version := range []string{"2.16.0", "2.16.3"} {
		t.Run(version, func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: version})
			_, task, _ := seed(f)
			tr := &beforeTransport{}
			tr.before = once(func(r *http.Request) bool { return r.URL.Query().Get("action") == "download" }, func() {
				if _, err := f.TouchTask(task.ID); err != nil {
					t.Error(err)
				}
			})
			c := newClient(t, f, func(c *cvatapi.Config) { c.HTTPClient = &http.Client{Transport: tr} })
			exportCurrent(t, c, f, task.ID)
			if diff := cmp.Diff([]int{202, 200}, statuses(f.CallsTo("GET", "/api/tasks/{id}/annotations"))); diff != "" {
				t.Errorf("downloads (-want +got):\n%s", diff)
			}
		})
	}
}

// Issue 14 #11, issue 11: a 404 from /api/requests (expired, cancelled) or
// a download CVAT no longer has is not "task gone": the export is
// requested again.
func TestExportStartsAgainWhenCVATLosesIt(t *testing.T) {
	type env struct {
		f    *cvatfake.Server
		task cvatfake.Task
		t    *testing.T
	}
	isPoll := func(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/api/requests/") }
	isDownload := func(r *http.Request) bool {
		return r.URL.Query().Get("action") == "download" || strings.HasSuffix(r.URL.Path, "/dataset/download")
	}
	tests := []struct {
		name    string
		version string
		cond    func(*http.Request) bool
		act     func(env, *http.Request)
	}{
		{"request expired 2.64", "2.64.0", isPoll, func(e env, _ *http.Request) { e.f.ExpireExports(e.task.ID) }},
		{"request expired 2.16 (id in the 404)", "2.16.0", isPoll, func(e env, _ *http.Request) { e.f.ExpireExports(e.task.ID) }},
		{"file expired 2.64", "2.64.0", isDownload, func(e env, _ *http.Request) { e.f.DropExportFiles(e.task.ID) }},
		{"file expired 2.20", "2.20.0", isDownload, func(e env, _ *http.Request) { e.f.DropExportFiles(e.task.ID) }},
		{"job expired before the download 2.64", "2.64.0", isDownload, func(e env, _ *http.Request) { e.f.ExpireExports(e.task.ID) }},
		{"download taken by another replica 2.20", "2.20.0", isDownload, func(e env, r *http.Request) {
			if got := rawDo(e.t, e.f, "GET", r.URL.RequestURI()); got != 200 {
				e.t.Errorf("other replica's download = %d", got)
			}
		}},
		{"legacy download after a change 2.15", "2.15.0", isDownload, func(e env, _ *http.Request) { _, _ = e.f.TouchTask(e.task.ID) }},
		{"legacy download after a change 2.10", "2.10.0", isDownload, func(e env, _ *http.Request) { _, _ = e.f.TouchTask(e.task.ID) }},
		{"legacy file expired 2.14.1", "2.14.1", isDownload, func(e env, _ *http.Request) { e.f.DropExportFiles(e.task.ID) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: tt.version})
			_, task, _ := seed(f)
			e := env{f, task, t}
			tr := &beforeTransport{}
			var o bool
			tr.before = func(r *http.Request) {
				if !o && tt.cond(r) {
					o = true
					tt.act(e, r)
				}
			}
			c := newClient(t, f, func(c *cvatapi.Config) { c.HTTPClient = &http.Client{Transport: tr} })
			exportCurrent(t, c, f, task.ID)
		})
	}

	t.Run("bounded", func(t *testing.T) {
		f := cvatfake.New(t, cvatfake.Options{})
		_, task, _ := seed(f)
		tr := &beforeTransport{before: func(r *http.Request) {
			if isPoll(r) {
				f.ExpireExports(task.ID)
			}
		}}
		c := newClient(t, f, func(c *cvatapi.Config) { c.HTTPClient = &http.Client{Transport: tr} })
		_, err := exportSum(t, c, task.ID, cvatapi.ExportOptions{})
		if err == nil || errors.Is(err, cvatapi.ErrNotFound) || !strings.Contains(err.Error(), "lost the export 4 times") {
			t.Fatalf("err = %v; want it to give up after 3 new requests, not ErrNotFound", err)
		}
		if n := len(f.CallsTo("POST", "/api/tasks/{id}/dataset/export")); n != 4 {
			t.Errorf("%d POSTs, want 4", n)
		}
	})
}

// Issue 14 #11: tasks without data: a clear error, not a retry loop.
func TestExportNoData(t *testing.T) {
	for _, version := range []string{"2.3.0", "2.15.0", "2.16.0", "2.31.0", "2.32.0", "2.64.0"} {
		t.Run(version, func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: version})
			p := f.AddProject(cvatfake.Project{Name: "p"})
			task := f.AddTask(cvatfake.Task{Name: "empty", ProjectID: p.ID, NoData: true})
			c := newClient(t, f)
			_, err := c.ExportTask(context.Background(), task.ID, coco, cvatapi.ExportOptions{})
			if !errors.Is(err, cvatapi.ErrNoData) {
				t.Fatalf("err = %v; want ErrNoData", err)
			}
			if n := len(f.CallsTo("POST", "/api/tasks/{id}/dataset/export")); n > 1 {
				t.Errorf("%d export requests; want at most one", n)
			}
		})
	}
}

// Issue 11: a download that is not an archive (a proxy's sign-in page, a
// JSON error, a cut body) fails the export with an error saying what came
// back.
func TestExportRejectsNonArchiveDownload(t *testing.T) {
	const route = "/api/tasks/{id}/dataset/download"
	tests := []struct {
		name  string
		fault cvatfake.Fault
		want  []string
	}{
		{"html page", cvatfake.Fault{Route: route, Status: 200, ContentType: "text/html; charset=utf-8", Body: "<!doctype html><title>Sign in</title>"},
			[]string{`"text/html; charset=utf-8"`, `starts "<!doctype html>`}},
		{"json", cvatfake.Fault{Route: route, Status: 200, ContentType: "application/json", Body: `{"ok": true}`}, []string{`"application/json"`}},
		{"zip type, html bytes", cvatfake.Fault{Route: route, Status: 200, ContentType: "application/zip", Body: "<html>nope</html>"},
			[]string{"no zip signature", `starts "<html>`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{})
			_, task, _ := seed(f)
			f.Inject(tt.fault)
			c := newClient(t, f)
			_, err := exportSum(t, c, task.ID, cvatapi.ExportOptions{})
			if !errors.Is(err, cvatapi.ErrInvalidArchive) {
				t.Fatalf("err = %v; want ErrInvalidArchive", err)
			}
			for _, w := range append(tt.want, "200 OK", "export task "+itoa(task.ID)) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err = %q; want it to say %s", err, w)
				}
			}
			if strings.Contains(err.Error(), f.Token()) {
				t.Error("error leaks the token")
			}
		})
	}

	t.Run("cut short", func(t *testing.T) {
		f := cvatfake.New(t, cvatfake.Options{})
		p := f.AddProject(cvatfake.Project{})
		task := f.AddTask(cvatfake.Task{ProjectID: p.ID, ArchiveSize: 1 << 20})
		// A proxy that loses the connection half way: the body ends before
		// Content-Length.
		cut := newRawServer(t, func(w http.ResponseWriter, r *http.Request) {
			req, _ := http.NewRequest(r.Method, f.URL()+r.URL.RequestURI(), nil)
			req.Header = r.Header.Clone()
			resp, err := f.Client().Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			for k, v := range resp.Header {
				w.Header()[k] = v
			}
			w.WriteHeader(resp.StatusCode)
			n := resp.ContentLength
			if strings.HasSuffix(r.URL.Path, "/dataset/download") {
				n /= 2
			}
			_, _ = io.CopyN(w, resp.Body, n)
		})
		c := newClient(t, f, func(c *cvatapi.Config) { c.BaseURL = cut })
		x, err := c.ExportTask(context.Background(), task.ID, coco, cvatapi.ExportOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer x.Body.Close()
		_, err = io.Copy(io.Discard, x.Body)
		if !errors.Is(err, cvatapi.ErrInvalidArchive) || !strings.Contains(err.Error(), "ended after") {
			t.Fatalf("read err = %v; want ErrInvalidArchive naming the short length", err)
		}
	})
}

// Issue 11: CVAT upgraded from 2.15 to 2.40 under a running client (and
// back): the export endpoints' 410 or missing route make it read the
// version again, and exports continue.
func TestVersionChangeWhileRunning(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{Version: "2.15.0"})
	_, task, _ := seed(f)
	c := newClient(t, f)
	export := func(wantAPI string) {
		t.Helper()
		x, err := c.ExportTask(context.Background(), task.ID, coco, cvatapi.ExportOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer x.Body.Close()
		if sum(t, x.Body) != want(t, f, task.ID) || x.API != wantAPI {
			t.Errorf("API %s, want %s (or the archive differs)", x.API, wantAPI)
		}
	}
	export(cvatapi.APILegacy)
	if err := f.SetVersion("2.40.0"); err != nil {
		t.Fatal(err)
	}
	export(cvatapi.APIRequests)
	if v, err := c.Version(context.Background()); err != nil || v != (cvatapi.Version{Major: 2, Minor: 40}) {
		t.Errorf("Version = %v, %v; want 2.40.0", v, err)
	}
	if err := f.SetVersion("2.15.0"); err != nil { // rolled back
		t.Fatal(err)
	}
	export(cvatapi.APILegacy)
	if n := len(f.CallsTo("GET", "/api/server/about")); n != 3 {
		t.Errorf("about read %d times; want once at the start and once per change", n)
	}
}

func TestVersionTTL(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{Version: "2.15.0"})
	c := newClient(t, f, func(c *cvatapi.Config) { c.VersionTTL = time.Nanosecond })
	for range 2 {
		if _, err := c.Version(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(f.CallsTo("GET", "/api/server/about")); n != 2 {
		t.Errorf("about read %d times with an expired TTL, want 2", n)
	}
}

// A task saved while CVAT prepares its export: the archive holds the state
// when CVAT's job started, which need not be the one the caller read.
// ExportOptions.UpdatedDate turns that into ErrStateChanged.
func TestExportStateChanged(t *testing.T) {
	for _, version := range []string{"2.10.0", "2.20.0", "2.64.0"} {
		t.Run(version, func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: version})
			_, task, _ := seed(f)
			read, _ := f.Task(task.ID)
			tr := &beforeTransport{}
			tr.before = once(func(r *http.Request) bool {
				return strings.HasPrefix(r.URL.Path, "/api/requests/") || r.URL.Query().Has("format") && r.Method == "GET"
			}, func() { _, _ = f.TouchTask(task.ID) })
			c := newClient(t, f, func(c *cvatapi.Config) { c.HTTPClient = &http.Client{Transport: tr} })
			_, err := exportSum(t, c, task.ID, cvatapi.ExportOptions{UpdatedDate: read.UpdatedDate})
			var sc *cvatapi.StateChangedError
			if !errors.Is(err, cvatapi.ErrStateChanged) || !errors.As(err, &sc) || !sc.Want.Equal(read.UpdatedDate) {
				t.Fatalf("err = %v; want ErrStateChanged from %v", err, read.UpdatedDate)
			}
		})
	}
}

// Each error is wrapped once: "export task N as F" appears once.
func TestExportErrorsWrappedOnce(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{})
	_, task, _ := seed(f)
	f.FailExports(task.ID, "boom")
	c := newClient(t, f)
	_, err := c.ExportTask(context.Background(), task.ID, coco, cvatapi.ExportOptions{})
	if !errors.Is(err, cvatapi.ErrExportFailed) || strings.Count(err.Error(), "export task") != 1 {
		t.Fatalf("err = %q", err)
	}
}
