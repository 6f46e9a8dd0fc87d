package cvatapi_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
	"github.com/cvat-sync/cvat-sync/internal/cvatfake"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const coco = "COCO 1.0"

// newClient builds a client for f with fast polls and retries.
func newClient(t testing.TB, f *cvatfake.Server, mod ...func(*cvatapi.Config)) *cvatapi.Client {
	t.Helper()
	cfg := cvatapi.Config{
		BaseURL:         f.URL(),
		Token:           f.Token(),
		PollInterval:    time.Millisecond,
		PollMaxInterval: 5 * time.Millisecond,
		RetryWaitMin:    time.Millisecond,
		RetryWaitMax:    5 * time.Millisecond,
		RequestTimeout:  5 * time.Second,
	}
	for _, m := range mod {
		m(&cfg)
	}
	c, err := cvatapi.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// seed adds a project with one task and one job.
func seed(f *cvatfake.Server) (cvatfake.Project, cvatfake.Task, cvatfake.Job) {
	p := f.AddProject(cvatfake.Project{Name: "project"})
	t := f.AddTask(cvatfake.Task{Name: "task", ProjectID: p.ID})
	j := f.AddJob(cvatfake.Job{TaskID: t.ID})
	return p, t, j
}

func routes(calls []cvatfake.Call) []string {
	var out []string
	for _, c := range calls {
		out = append(out, c.Method+" "+c.Route)
	}
	return out
}

func sum(t testing.TB, r io.Reader) [32]byte {
	t.Helper()
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

func TestAuth(t *testing.T) {
	tests := []struct {
		name     string
		version  string
		cfg      func(*cvatapi.Config, *cvatfake.Server)
		wantAuth string
		wantErr  error
	}{
		{name: "bearer", version: "2.64.0", cfg: func(c *cvatapi.Config, f *cvatfake.Server) { c.Token = f.Token() }, wantAuth: "bearer"},
		{name: "legacy token", version: "2.64.0", cfg: func(c *cvatapi.Config, f *cvatfake.Server) { c.Token, c.AuthScheme = f.Token(), "token" }, wantAuth: "token"},
		{name: "token on 2.10", version: "2.10.0", cfg: func(c *cvatapi.Config, f *cvatfake.Server) { c.Token, c.AuthScheme = f.Token(), "token" }, wantAuth: "token"},
		{name: "basic", version: "2.64.0", cfg: func(c *cvatapi.Config, f *cvatfake.Server) {
			c.Token = ""
			c.Username, c.Password = f.BasicAuth()
		}, wantAuth: "basic"},
		{name: "bearer before 2.48 is refused", version: "2.40.0", cfg: func(c *cvatapi.Config, f *cvatfake.Server) { c.Token, c.AuthScheme = f.Token(), "bearer" }, wantAuth: "bearer", wantErr: cvatapi.ErrUnauthorized},
		{name: "wrong token", version: "2.64.0", cfg: func(c *cvatapi.Config, f *cvatfake.Server) { c.Token = "s3cret-wrong-token" }, wantAuth: "bearer", wantErr: cvatapi.ErrUnauthorized},
		{name: "wrong password", version: "2.64.0", cfg: func(c *cvatapi.Config, f *cvatfake.Server) {
			c.Token = ""
			c.Username, c.Password = "user7", "s3cret-wrong-password"
		}, wantAuth: "basic", wantErr: cvatapi.ErrUnauthorized},
		{name: "no credentials", version: "2.64.0", cfg: func(c *cvatapi.Config, f *cvatfake.Server) { c.Token = "" }, wantAuth: "", wantErr: cvatapi.ErrUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: tt.version})
			_, task, _ := seed(f)
			c := newClient(t, f, func(c *cvatapi.Config) { tt.cfg(c, f) })
			ctx := context.Background()

			// about is open and sent without credentials, whatever they are.
			a, err := c.About(ctx)
			if err != nil || a.Version != tt.version {
				t.Fatalf("About = %+v, %v; want version %s", a, err, tt.version)
			}
			_, err = c.Task(ctx, task.ID)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("Task: err = %v, want %v", err, tt.wantErr)
			}
			if err != nil && (strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), f.Token())) {
				t.Errorf("error leaks a credential: %v", err)
			}
			got := f.Calls()
			want := []cvatfake.Call{
				{Method: "GET", Route: "/api/server/about", Auth: "", Status: 200},
				{Method: "GET", Route: "/api/tasks/{id}", Auth: tt.wantAuth, Status: map[bool]int{true: 200, false: 401}[tt.wantErr == nil]},
			}
			if diff := cmp.Diff(want, got, cmp.FilterPath(func(p cmp.Path) bool {
				switch p.Last().String() {
				case ".Path", ".Query", ".Time", ".Org":
					return true
				}
				return false
			}, cmp.Ignore())); diff != "" {
				t.Errorf("calls (-want +got), 401 must not be retried:\n%s", diff)
			}
		})
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  cvatapi.Config
	}{
		{"no base URL", cvatapi.Config{}},
		{"relative base URL", cvatapi.Config{BaseURL: "cvat:8080"}},
		{"ftp", cvatapi.Config{BaseURL: "ftp://cvat"}},
		{"unknown scheme", cvatapi.Config{BaseURL: "http://cvat", Token: "t", AuthScheme: "jwt"}},
		{"token and basic", cvatapi.Config{BaseURL: "http://cvat", Token: "t", Username: "u", Password: "p"}},
		{"user without password", cvatapi.Config{BaseURL: "http://cvat", Username: "u"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := cvatapi.New(tt.cfg); err == nil {
				t.Fatal("New succeeded")
			}
		})
	}
}

func TestHeaders(t *testing.T) {
	got := make(chan http.Header, 2)
	srv := newRawServer(t, func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Clone()
		w.Header().Set("Content-Type", cvatapi.MediaType)
		_, _ = io.WriteString(w, `{"name": "Computer Vision Annotation Tool", "version": "2.64.0"}`)
	})
	c, err := cvatapi.New(cvatapi.Config{BaseURL: srv, Token: "tok", Org: "org1", UserAgent: "cvat-sync/test"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.About(context.Background()); err != nil {
		t.Fatal(err)
	}
	h := <-got
	for k, want := range map[string]string{"Accept": cvatapi.MediaType, "User-Agent": "cvat-sync/test", "X-Organization": "org1", "Authorization": ""} {
		if h.Get(k) != want {
			t.Errorf("%s = %q, want %q", k, h.Get(k), want)
		}
	}
}

func TestReads(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{})
	p, task, job := seed(f)
	c := newClient(t, f)
	ctx := context.Background()

	gotTask, err := c.Task(ctx, task.ID)
	if err != nil {
		t.Fatal(err)
	}
	if gotTask.ID != task.ID || gotTask.ProjectID != p.ID || gotTask.Name != "task" || !gotTask.UpdatedDate.Equal(task.UpdatedDate) || gotTask.Jobs.Count != 1 {
		t.Errorf("Task = %+v", gotTask)
	}
	gotJob, err := c.Job(ctx, job.ID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(cvatapi.Job{ID: job.ID, TaskID: task.ID, ProjectID: p.ID, Type: "annotation", Stage: "annotation", State: "new", Status: "annotation",
		CreatedDate: job.CreatedDate, UpdatedDate: job.UpdatedDate}, gotJob); diff != "" {
		t.Errorf("Job (-want +got):\n%s", diff)
	}
	gotProject, err := c.Project(ctx, p.ID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(cvatapi.Project{ID: p.ID, Name: "project", Status: "annotation", CreatedDate: p.CreatedDate, UpdatedDate: p.UpdatedDate}, gotProject); diff != "" {
		t.Errorf("Project (-want +got):\n%s", diff)
	}

	for name, get := range map[string]func() error{
		"task":    func() error { _, err := c.Task(ctx, 99999); return err },
		"job":     func() error { _, err := c.Job(ctx, 99999); return err },
		"project": func() error { _, err := c.Project(ctx, 99999); return err },
	} {
		if err := get(); !errors.Is(err, cvatapi.ErrNotFound) || !strings.Contains(err.Error(), "99999") {
			t.Errorf("%s 99999: err = %v, want ErrNotFound naming the id", name, err)
		}
	}
}

func TestCheckFormats(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{})
	c := newClient(t, f)
	ctx := context.Background()
	if err := c.CheckFormats(ctx, []string{"CVAT for images 1.1", coco}); err != nil {
		t.Fatalf("CheckFormats(offered): %v", err)
	}
	for _, name := range []string{"No Such Format 9.9", cvatfake.DisabledFormat} {
		err := c.CheckFormats(ctx, []string{coco, name})
		if !errors.Is(err, cvatapi.ErrUnknownFormat) || !strings.Contains(err.Error(), `"`+name+`"`) || !strings.Contains(err.Error(), `"Datumaro 1.0"`) {
			t.Errorf("CheckFormats(%q) = %v; want ErrUnknownFormat naming it and listing what is offered", name, err)
		}
	}
}

func TestListTasks(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{ExternalURL: "https://cvat.example.com:8443"}) // next links point elsewhere, as behind a proxy
	pA := f.AddProject(cvatfake.Project{Name: "a"})
	pB := f.AddProject(cvatfake.Project{Name: "b"})
	pOrg := f.AddProject(cvatfake.Project{Name: "org", Org: "org1"})
	base := time.Date(2026, 5, 4, 9, 0, 0, 0, time.UTC)
	var inA, inB, all, recent, inOrg []int64
	for i := range 23 {
		proj := pA.ID
		if i%3 == 0 {
			proj = pB.ID
		}
		tk := f.AddTask(cvatfake.Task{Name: "t", ProjectID: proj, UpdatedDate: base.Add(time.Duration(i) * time.Minute)})
		all = append(all, tk.ID)
		if proj == pA.ID {
			inA = append(inA, tk.ID)
		} else {
			inB = append(inB, tk.ID)
		}
		if i >= 20 {
			recent = append(recent, tk.ID)
		}
	}
	for range 3 {
		inOrg = append(inOrg, f.AddTask(cvatfake.Task{ProjectID: pOrg.ID, Name: "o"}).ID)
	}
	sandbox := f.AddTask(cvatfake.Task{Name: "no project"}).ID
	all = append(all, sandbox)

	tests := []struct {
		name      string
		org       string
		filter    cvatapi.TaskFilter
		want      []int64
		wantPages int
	}{
		{name: "sandbox, several pages", filter: cvatapi.TaskFilter{PageSize: 5}, want: all, wantPages: 5},
		{name: "one project", filter: cvatapi.TaskFilter{ProjectID: pA.ID, PageSize: 4}, want: inA, wantPages: 4},
		{name: "other project, one page", filter: cvatapi.TaskFilter{ProjectID: pB.ID}, want: inB, wantPages: 1},
		{name: "updated since", filter: cvatapi.TaskFilter{UpdatedSince: base.Add(20 * time.Minute), PageSize: 2}, want: append(append([]int64{}, recent...), sandbox), wantPages: 2},
		{name: "ids", filter: cvatapi.TaskFilter{IDs: []int64{all[1], all[4], 424242}}, want: []int64{all[1], all[4]}, wantPages: 1},
		{name: "organization", org: "org1", filter: cvatapi.TaskFilter{PageSize: 2}, want: inOrg, wantPages: 2},
		{name: "nothing", filter: cvatapi.TaskFilter{ProjectID: 424242}, want: nil, wantPages: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.ResetCalls()
			c := newClient(t, f, func(c *cvatapi.Config) { c.Org = tt.org })
			var got []int64
			err := c.ListTasks(context.Background(), tt.filter, func(task cvatapi.Task) error {
				got = append(got, task.ID)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("task ids (-want +got):\n%s", diff)
			}
			if n := len(f.CallsTo("GET", "/api/tasks")); n != tt.wantPages {
				t.Errorf("%d page requests, want %d", n, tt.wantPages)
			}
		})
	}

	t.Run("stop early", func(t *testing.T) {
		c := newClient(t, f)
		n := 0
		err := c.ListTasks(context.Background(), cvatapi.TaskFilter{PageSize: 2}, func(cvatapi.Task) error {
			n++
			if n == 3 {
				return cvatapi.ErrStop
			}
			return nil
		})
		if err != nil || n != 3 {
			t.Fatalf("ListTasks = %v after %d tasks; want nil after 3", err, n)
		}
	})
}

func TestExport(t *testing.T) {
	tests := []struct {
		version    string
		saveImages bool
		wantAPI    string
		wantRoutes []string
	}{
		{version: "2.64.0", wantAPI: "requests", wantRoutes: []string{
			"GET /api/server/about", "POST /api/tasks/{id}/dataset/export", "GET /api/requests/{rq_id}", "GET /api/requests/{rq_id}", "GET /api/requests/{rq_id}", "GET /api/tasks/{id}/dataset/download"}},
		{version: "2.38.0", wantAPI: "requests"},
		{version: "2.31.0", wantAPI: "requests"},
		{version: "2.20.0", saveImages: true, wantAPI: "requests"},
		{version: "2.16.0", wantAPI: "requests"},
		{version: "2.15.2", wantAPI: "legacy", wantRoutes: []string{
			"GET /api/server/about", "GET /api/tasks/{id}/annotations", "GET /api/tasks/{id}/annotations", "GET /api/tasks/{id}/annotations", "GET /api/tasks/{id}/annotations", "GET /api/tasks/{id}/annotations"}},
		{version: "2.10.0", saveImages: true, wantAPI: "legacy", wantRoutes: []string{
			"GET /api/server/about", "GET /api/tasks/{id}/dataset", "GET /api/tasks/{id}/dataset", "GET /api/tasks/{id}/dataset", "GET /api/tasks/{id}/dataset", "GET /api/tasks/{id}/dataset"}},
		{version: "2.3.0", wantAPI: "legacy"},
	}
	for _, tt := range tests {
		t.Run(tt.version, func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: tt.version})
			_, task, _ := seed(f)
			c := newClient(t, f)
			x, err := c.ExportTask(context.Background(), task.ID, coco, cvatapi.ExportOptions{SaveImages: tt.saveImages})
			if err != nil {
				t.Fatal(err)
			}
			got := sum(t, x.Body)
			if err := x.Body.Close(); err != nil {
				t.Fatal(err)
			}
			r, size, _ := f.ExpectedArchive(task.ID, coco)
			if got != sum(t, r) {
				t.Error("archive bytes differ from the fake's")
			}
			sub := "annotations"
			if tt.saveImages {
				sub = "dataset"
			}
			// CVAT's file names: the task's name before 2.32 (and another
			// pattern before 2.10.1), its id from 2.32.
			ts := task.UpdatedDate.Format("2006_01_02_15_04_05")
			wantName := "task_" + itoa(task.ID) + "_" + sub + "_" + ts + "_coco 1.0.zip"
			switch v := tt.version; {
			case v == "2.3.0" || v == "2.10.0":
				wantName = "task_" + task.Name + "-" + ts + "-coco 1.0.zip"
			case v < "2.32":
				wantName = "task_" + task.Name + "_" + sub + "_" + ts + "_coco 1.0.zip"
			}
			if diff := cmp.Diff(cvatapi.Export{Size: size, Filename: wantName, ContentType: "application/zip", API: tt.wantAPI}, *x,
				cmp.FilterPath(func(p cmp.Path) bool { return p.Last().String() == ".Body" }, cmp.Ignore())); diff != "" {
				t.Errorf("Export (-want +got):\n%s", diff)
			}
			calls := f.Calls()
			if tt.wantRoutes != nil {
				if diff := cmp.Diff(tt.wantRoutes, routes(calls)); diff != "" {
					t.Errorf("calls (-want +got):\n%s", diff)
				}
			}
			for _, call := range calls {
				if call.Route == "/api/tasks/{id}/dataset/export" || (call.Route == "/api/tasks/{id}/annotations" && call.Query.Get("action") == "") {
					if call.Query.Get("format") != coco || call.Query.Get("location") != "local" {
						t.Errorf("%s query = %v", call.Route, call.Query)
					}
				}
				if call.Route == "/api/tasks/{id}/dataset/download" && call.Auth == "" {
					t.Error("result_url downloaded without credentials")
				}
			}
		})
	}
}

func TestExportAboutCached(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{})
	_, task, _ := seed(f)
	c := newClient(t, f)
	for range 3 {
		x, err := c.ExportTask(context.Background(), task.ID, coco, cvatapi.ExportOptions{})
		if err != nil {
			t.Fatal(err)
		}
		x.Body.Close()
	}
	if n := len(f.CallsTo("GET", "/api/server/about")); n != 1 {
		t.Errorf("about fetched %d times, want once per client", n)
	}
}

func TestExportFailed(t *testing.T) {
	for _, version := range []string{"2.64.0", "2.20.0", "2.10.0"} {
		t.Run(version, func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: version})
			_, task, _ := seed(f)
			const msg = "FileNotFoundError: [Errno 2] No such file or directory: '/home/django/data/tasks/9/data/raw/IMG_0042.jpg'"
			f.FailNextExport(task.ID, msg+"\n")
			c := newClient(t, f)
			_, err := c.ExportTask(context.Background(), task.ID, coco, cvatapi.ExportOptions{})
			var fe *cvatapi.ExportFailedError
			if !errors.Is(err, cvatapi.ErrExportFailed) || !errors.As(err, &fe) || !strings.HasPrefix(fe.Message, "FileNotFoundError") {
				t.Fatalf("err = %v; want ExportFailedError with CVAT's message", err)
			}
			if !strings.HasPrefix(err.Error(), "export task "+itoa(task.ID)+` as "COCO 1.0": `) {
				t.Errorf("err = %q; want it to name the task and format", err)
			}
			// CVAT forgot the failure; the next export works.
			x, err := c.ExportTask(context.Background(), task.ID, coco, cvatapi.ExportOptions{})
			if err != nil {
				t.Fatalf("second export: %v", err)
			}
			x.Body.Close()
		})
	}
}

func TestLegacyEndpointsGoneFrom232(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{Version: "2.32.0"})
	_, task, _ := seed(f)
	req, _ := http.NewRequest("GET", f.URL()+"/api/tasks/"+itoa(task.ID)+"/annotations?format=COCO+1.0", nil)
	req.Header.Set("Authorization", "Token "+f.Token())
	resp, err := f.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusGone {
		t.Fatalf("legacy GET on 2.32 = %s, want 410", resp.Status)
	}
	c := newClient(t, f)
	x, err := c.ExportTask(context.Background(), task.ID, coco, cvatapi.ExportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	x.Body.Close()
}

func TestMetrics(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{})
	_, task, _ := seed(f)
	reg := prometheus.NewRegistry()
	c := newClient(t, f, func(c *cvatapi.Config) { c.Registerer = reg })
	f.Inject(cvatfake.Fault{Route: "/api/tasks/{id}", Status: 503, Times: 1})
	if _, err := c.Task(context.Background(), task.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Task(context.Background(), 4242); err == nil {
		t.Fatal("no error for a missing task")
	}
	want := `
# HELP cvat_sync_cvat_requests_total HTTP requests to CVAT by endpoint (route template) and status code ("error" for transport failures).
# TYPE cvat_sync_cvat_requests_total counter
cvat_sync_cvat_requests_total{code="200",endpoint="/api/server/about"} 1
cvat_sync_cvat_requests_total{code="200",endpoint="/api/tasks/{id}"} 1
cvat_sync_cvat_requests_total{code="404",endpoint="/api/tasks/{id}"} 1
cvat_sync_cvat_requests_total{code="503",endpoint="/api/tasks/{id}"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "cvat_sync_cvat_requests_total"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(reg, "cvat_sync_cvat_request_duration_seconds"); n != 2 {
		t.Errorf("%d duration series, want 2 (about, for the token's scheme, and the task)", n)
	}
	// A second client on the same registry shares the collectors.
	newClient(t, f, func(c *cvatapi.Config) { c.Registerer = reg })
}

func TestExportLargeArchive(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	f := cvatfake.New(t, cvatfake.Options{})
	p := f.AddProject(cvatfake.Project{})
	task := f.AddTask(cvatfake.Task{ProjectID: p.ID, ArchiveSize: 64 << 20})
	c := newClient(t, f)
	x, err := c.ExportTask(context.Background(), task.ID, coco, cvatapi.ExportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Body.Close()
	r, _, _ := f.ExpectedArchive(task.ID, coco)
	if sum(t, x.Body) != sum(t, r) {
		t.Fatal("64 MiB archive differs")
	}
}
