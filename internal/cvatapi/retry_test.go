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

func TestRetries(t *testing.T) {
	const route = "/api/tasks/{id}"
	tests := []struct {
		name       string
		fault      cvatfake.Fault
		wantCalls  []int // statuses the fake answered, in order (0 = dropped)
		wantErr    error
		wantErrMsg string
	}{
		{name: "500 twice then ok", fault: cvatfake.Fault{Status: 500, Times: 2}, wantCalls: []int{500, 500, 200}},
		{name: "502", fault: cvatfake.Fault{Status: 502, Times: 1}, wantCalls: []int{502, 200}},
		{name: "503", fault: cvatfake.Fault{Status: 503, Times: 1}, wantCalls: []int{503, 200}},
		{name: "504", fault: cvatfake.Fault{Status: 504, Times: 1}, wantCalls: []int{504, 200}},
		{name: "429", fault: cvatfake.Fault{Status: 429, Times: 1, RetryAfter: "0"}, wantCalls: []int{429, 200}},
		{name: "dropped connection", fault: cvatfake.Fault{Drop: true, Times: 2}, wantCalls: []int{0, 0, 200}},
		{name: "500 forever gives up", fault: cvatfake.Fault{Status: 500}, wantCalls: []int{500, 500, 500, 500},
			wantErrMsg: "GET /api/tasks/{id}: 500 Internal Server Error"},
		{name: "400 not retried", fault: cvatfake.Fault{Status: 400, Times: 1}, wantCalls: []int{400}, wantErrMsg: "400 Bad Request"},
		{name: "401 not retried", fault: cvatfake.Fault{Status: 401, Times: 1}, wantCalls: []int{401}, wantErr: cvatapi.ErrUnauthorized},
		{name: "403 not retried", fault: cvatfake.Fault{Status: 403, Times: 1}, wantCalls: []int{403}, wantErr: cvatapi.ErrForbidden},
		{name: "404 not retried", fault: cvatfake.Fault{Status: 404, Times: 1}, wantCalls: []int{404}, wantErr: cvatapi.ErrNotFound},
		{name: "409 not retried", fault: cvatfake.Fault{Status: 409, Times: 1}, wantCalls: []int{409}, wantErrMsg: "409 Conflict"},
		{name: "410 not retried", fault: cvatfake.Fault{Status: 410, Times: 1}, wantCalls: []int{410}, wantErrMsg: "410 Gone"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{})
			_, task, _ := seed(f)
			c := newClient(t, f, func(c *cvatapi.Config) { c.MaxRetries = 3 })
			ft := tt.fault
			ft.Method, ft.Route = "GET", route
			f.Inject(ft)
			_, err := c.Task(context.Background(), task.ID)
			wantFail := tt.wantErr != nil || tt.wantErrMsg != ""
			if (err != nil) != wantFail || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
				t.Fatalf("err = %v, want %v %q", err, tt.wantErr, tt.wantErrMsg)
			}
			if tt.wantErrMsg != "" {
				want := strings.ReplaceAll(tt.wantErrMsg, "{id}", itoa(task.ID))
				if !strings.Contains(err.Error(), want) {
					t.Errorf("err = %q, want it to contain %q", err, want)
				}
			}
			var got []int
			for _, call := range f.CallsTo("GET", route) {
				got = append(got, call.Status)
			}
			if diff := cmp.Diff(tt.wantCalls, got); diff != "" {
				t.Errorf("answers (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRetryAfterIsRespected(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{})
	_, task, _ := seed(f)
	c := newClient(t, f)
	f.Inject(cvatfake.Fault{Route: "/api/tasks/{id}", Status: 429, RetryAfter: "1", Times: 1})
	if _, err := c.Task(context.Background(), task.ID); err != nil {
		t.Fatal(err)
	}
	calls := f.CallsTo("GET", "/api/tasks/{id}")
	if len(calls) != 2 {
		t.Fatalf("%d calls", len(calls))
	}
	// The fake stamps calls when answered; the retry came at least ~1 s later.
	if gap := calls[1].Time.Sub(calls[0].Time); gap < 900*time.Millisecond {
		t.Errorf("retried after %s, want >= Retry-After 1s", gap)
	}
}

func TestRetryAfterCapped(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{})
	_, task, _ := seed(f)
	c := newClient(t, f, func(c *cvatapi.Config) { c.RetryAfterMax = 10 * time.Millisecond })
	f.Inject(cvatfake.Fault{Route: "/api/tasks/{id}", Status: 503, RetryAfter: "3600", Times: 1})
	start := time.Now()
	if _, err := c.Task(context.Background(), task.ID); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %s; Retry-After must be capped by RetryAfterMax", d)
	}
}

func TestExportErrorsNameEndpointTaskAndStatus(t *testing.T) {
	tests := []struct {
		name  string
		fault cvatfake.Fault
		want  string
	}{
		{name: "POST export", fault: cvatfake.Fault{Method: "POST", Route: "/api/tasks/{id}/dataset/export", Status: 500},
			want: `export task {id} as "COCO 1.0": POST /api/tasks/{id}/dataset/export: 500 Internal Server Error`},
		{name: "poll", fault: cvatfake.Fault{Route: "/api/requests/{rq_id}", Status: 503},
			want: `export task {id} as "COCO 1.0": GET /api/requests/action=export&target=task&target_id={id}&user_id=10&format=COCO_1~0&subresource=annotations: 503 Service Unavailable`},
		{name: "download", fault: cvatfake.Fault{Route: "/api/tasks/{id}/dataset/download", Status: 502},
			want: `export task {id} as "COCO 1.0": GET /api/tasks/{id}/dataset/download: 502 Bad Gateway`},
		{name: "unknown format", fault: cvatfake.Fault{Route: "/api/tasks/{id}/dataset/export", Status: 400, Body: `["Unknown format specified for the request"]`},
			want: `export task {id} as "COCO 1.0": POST /api/tasks/{id}/dataset/export: 400 Bad Request: ["Unknown format specified for the request"]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{})
			_, task, _ := seed(f)
			c := newClient(t, f, func(c *cvatapi.Config) { c.MaxRetries = 1 })
			f.Inject(tt.fault)
			_, err := c.ExportTask(context.Background(), task.ID, coco, cvatapi.ExportOptions{})
			want := strings.ReplaceAll(tt.want, "{id}", itoa(task.ID))
			if err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("err = %v\nwant prefix %s", err, want)
			}
		})
	}
}

func TestExportRetriesTransientFailures(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{})
	_, task, _ := seed(f)
	c := newClient(t, f)
	for _, ft := range []cvatfake.Fault{
		{Method: "POST", Route: "/api/tasks/{id}/dataset/export", Status: 500, Times: 1},
		{Route: "/api/requests/{rq_id}", Drop: true, Times: 1},
		{Route: "/api/tasks/{id}/dataset/download", Status: 429, RetryAfter: "0", Times: 1},
	} {
		f.Inject(ft)
	}
	x, err := c.ExportTask(context.Background(), task.ID, coco, cvatapi.ExportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Body.Close()
	r, _, _ := f.ExpectedArchive(task.ID, coco)
	if sum(t, x.Body) != sum(t, r) {
		t.Error("archive differs")
	}
}

func TestTimeouts(t *testing.T) {
	t.Run("slow answer", func(t *testing.T) {
		f := cvatfake.New(t, cvatfake.Options{})
		_, task, _ := seed(f)
		c := newClient(t, f, func(c *cvatapi.Config) { c.RequestTimeout = 50 * time.Millisecond; c.MaxRetries = 1 })
		f.Inject(cvatfake.Fault{Route: "/api/tasks/{id}", Delay: time.Minute})
		start := time.Now()
		_, err := c.Task(context.Background(), task.ID)
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "GET /api/tasks/"+itoa(task.ID)) {
			t.Fatalf("err = %v; want a timeout naming the call", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("took %s", d)
		}
	})
	t.Run("slow answer then fast", func(t *testing.T) {
		f := cvatfake.New(t, cvatfake.Options{})
		_, task, _ := seed(f)
		c := newClient(t, f, func(c *cvatapi.Config) { c.RequestTimeout = 50 * time.Millisecond })
		f.Inject(cvatfake.Fault{Route: "/api/tasks/{id}", Delay: time.Minute, Times: 1})
		if _, err := c.Task(context.Background(), task.ID); err != nil {
			t.Fatalf("a timeout must be retried: %v", err)
		}
	})
	t.Run("stalled download", func(t *testing.T) {
		f := cvatfake.New(t, cvatfake.Options{})
		p := f.AddProject(cvatfake.Project{})
		task := f.AddTask(cvatfake.Task{ProjectID: p.ID, ArchiveSize: 1 << 20})
		c := newClient(t, f, func(c *cvatapi.Config) { c.RequestTimeout = 100 * time.Millisecond })
		f.Inject(cvatfake.Fault{Route: "/api/tasks/{id}/dataset/download", StallAfter: 1000})
		x, err := c.ExportTask(context.Background(), task.ID, coco, cvatapi.ExportOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer x.Body.Close()
		n, err := io.Copy(io.Discard, x.Body)
		if !errors.Is(err, context.DeadlineExceeded) || n != 1000 {
			t.Fatalf("read %d bytes, err = %v; want 1000 then an idle timeout", n, err)
		}
	})
	t.Run("export never finishes", func(t *testing.T) {
		f := cvatfake.New(t, cvatfake.Options{ExportPolls: 1 << 30})
		_, task, _ := seed(f)
		c := newClient(t, f, func(c *cvatapi.Config) { c.ExportTimeout = 50 * time.Millisecond })
		_, err := c.ExportTask(context.Background(), task.ID, coco, cvatapi.ExportOptions{})
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "did not finish the export within 50ms") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("caller cancels while polling", func(t *testing.T) {
		f := cvatfake.New(t, cvatfake.Options{ExportPolls: 1 << 30})
		_, task, _ := seed(f)
		c := newClient(t, f)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		defer cancel()
		_, err := c.ExportTask(ctx, task.ID, coco, cvatapi.ExportOptions{})
		if !errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "did not finish") {
			t.Fatalf("err = %v; want the caller's deadline", err)
		}
	})
	t.Run("connection refused", func(t *testing.T) {
		f := cvatfake.New(t, cvatfake.Options{})
		url := f.URL()
		f.Close()
		c, err := cvatapi.New(cvatapi.Config{BaseURL: url, Token: "t", MaxRetries: 2, RetryWaitMin: time.Millisecond, RetryWaitMax: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, err = c.About(context.Background())
		var ne *cvatapi.NetError
		if !errors.As(err, &ne) || !strings.Contains(err.Error(), "GET /api/server/about") {
			t.Fatalf("err = %v; want a NetError naming the call", err)
		}
	})
}

func TestRedirectToOtherOriginRefused(t *testing.T) {
	leaked := make(chan string, 1)
	other := newRawServer(t, func(w http.ResponseWriter, r *http.Request) {
		leaked <- r.Header.Get("Authorization")
	})
	base := newRawServer(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other+r.URL.Path, http.StatusFound)
	})
	c, err := cvatapi.New(cvatapi.Config{BaseURL: base, Token: "s3cret", MaxRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Task(context.Background(), 1)
	if !errors.Is(err, cvatapi.ErrOffOrigin) {
		t.Fatalf("err = %v, want ErrOffOrigin", err)
	}
	select {
	case a := <-leaked:
		t.Fatalf("the other origin was called (Authorization %q)", a)
	default:
	}
}
