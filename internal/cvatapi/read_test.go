package cvatapi_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
	"github.com/cvat-sync/cvat-sync/internal/cvatfake"
)

func listIDs(t *testing.T, c *cvatapi.Client, f cvatapi.TaskFilter) ([]int64, error) {
	t.Helper()
	var got []int64
	err := c.ListTasks(context.Background(), f, func(task cvatapi.Task) error {
		got = append(got, task.ID)
		return nil
	})
	return got, err
}

// Issue 14 #10: 2.3.0 has no simple filters: project_id= is ignored there
// and every task came back. The JSON-logic filter works on every release.
func TestListTasksOfProjectOnEveryRelease(t *testing.T) {
	for _, version := range []string{"2.3.0", "2.4.0", "2.31.0", "2.64.0", "2.73.0"} {
		t.Run(version, func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: version})
			a := f.AddProject(cvatfake.Project{Name: "a"})
			b := f.AddProject(cvatfake.Project{Name: "b"})
			var inA []int64
			for i := range 7 {
				p := a.ID
				if i%2 == 0 {
					p = b.ID
				}
				task := f.AddTask(cvatfake.Task{Name: "t", ProjectID: p})
				if p == a.ID {
					inA = append(inA, task.ID)
				}
			}
			f.AddTask(cvatfake.Task{Name: "sandbox"})
			c := newClient(t, f)
			got, err := listIDs(t, c, cvatapi.TaskFilter{ProjectID: a.ID, PageSize: 2})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(inA, got); diff != "" {
				t.Errorf("tasks of project a (-want +got):\n%s", diff)
			}
		})
	}
}

// Issue 11: one task-list page that always answers 500 stopped every pass
// at that page; now the other pages are listed and the gap is named.
func TestListTasksSkipsAFailingPage(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{})
	var all []int64
	for range 10 {
		all = append(all, f.AddTask(cvatfake.Task{Name: "t"}).ID)
	}
	f.Inject(cvatfake.Fault{Route: "/api/tasks", Query: url.Values{"page": {"3"}}, Status: 500})
	c := newClient(t, f, func(c *cvatapi.Config) { c.MaxRetries = 1 })
	got, err := listIDs(t, c, cvatapi.TaskFilter{PageSize: 2})
	if !errors.Is(err, cvatapi.ErrIncompleteListing) || !strings.Contains(err.Error(), "pages 3 ") || !strings.Contains(err.Error(), "500") {
		t.Fatalf("err = %v; want ErrIncompleteListing naming page 3 and the 500", err)
	}
	wantIDs := append(append([]int64{}, all[:4]...), all[6:]...)
	if diff := cmp.Diff(wantIDs, got); diff != "" {
		t.Errorf("tasks (-want +got):\n%s", diff)
	}

	t.Run("outage ends the listing", func(t *testing.T) {
		f.ClearFaults()
		f.Inject(cvatfake.Fault{Route: "/api/tasks", Status: 503})
		_, err := listIDs(t, c, cvatapi.TaskFilter{PageSize: 2})
		if !errors.Is(err, cvatapi.ErrIncompleteListing) || !errors.Is(err, cvatapi.ErrUnavailable) || !strings.Contains(err.Error(), "pages 1, 2, 3 failed") {
			t.Fatalf("err = %v; want ErrIncompleteListing and ErrUnavailable after 3 pages", err)
		}
	})
	t.Run("unknown organization is not a page error", func(t *testing.T) {
		f.ClearFaults()
		c := newClient(t, f, func(c *cvatapi.Config) { c.Org = "nope" })
		_, err := listIDs(t, c, cvatapi.TaskFilter{})
		if errors.Is(err, cvatapi.ErrIncompleteListing) || !errors.Is(err, cvatapi.ErrUnknownOrganization) || errors.Is(err, cvatapi.ErrNotFound) {
			t.Fatalf("err = %v; want ErrUnknownOrganization, never ErrNotFound (nothing read there is gone)", err)
		}
	})
}

// Issue 11: a 404 that is not CVAT's (an HTML page from a proxy or an
// ingress) is not "task gone": it is retried, and if it persists it is
// ErrUnavailable. CVAT's JSON 404 stays ErrNotFound.
func TestNotFoundOnlyFromCVAT(t *testing.T) {
	html := cvatfake.Fault{Route: "/api/tasks/{id}", Status: 404, ContentType: "text/html", Body: "<html><body><h1>404 Not Found</h1>nginx</body></html>"}
	t.Run("transient", func(t *testing.T) {
		f := cvatfake.New(t, cvatfake.Options{})
		_, task, _ := seed(f)
		ft := html
		ft.Times = 1
		f.Inject(ft)
		c := newClient(t, f)
		if _, err := c.Task(context.Background(), task.ID); err != nil {
			t.Fatalf("a proxy's 404 once: %v", err)
		}
	})
	t.Run("lasting", func(t *testing.T) {
		f := cvatfake.New(t, cvatfake.Options{})
		_, task, _ := seed(f)
		f.Inject(html)
		c := newClient(t, f)
		_, err := c.Task(context.Background(), task.ID)
		if errors.Is(err, cvatapi.ErrNotFound) || !errors.Is(err, cvatapi.ErrUnavailable) {
			t.Fatalf("err = %v; want ErrUnavailable, not ErrNotFound", err)
		}
	})
	t.Run("sign-in page with 200 once", func(t *testing.T) {
		f := cvatfake.New(t, cvatfake.Options{})
		_, task, _ := seed(f)
		f.Inject(cvatfake.Fault{Route: "/api/tasks/{id}", Status: 200, ContentType: "text/html", Body: "<html>Sign in</html>", Times: 1})
		f.Inject(cvatfake.Fault{Route: "/api/requests/{rq_id}", Status: 200, ContentType: "text/html", Body: "<html>Sign in</html>", Times: 1})
		c := newClient(t, f)
		if _, err := c.Task(context.Background(), task.ID); err != nil {
			t.Fatalf("Task: %v", err)
		}
		exportCurrent(t, c, f, task.ID)
	})
	t.Run("sign-in page with 200", func(t *testing.T) {
		f := cvatfake.New(t, cvatfake.Options{})
		_, task, _ := seed(f)
		f.Inject(cvatfake.Fault{Route: "/api/tasks/{id}", Status: 200, ContentType: "text/html", Body: "<html>Sign in</html>"})
		c := newClient(t, f, func(c *cvatapi.Config) { c.MaxRetries = 1 })
		_, err := c.Task(context.Background(), task.ID)
		if !errors.Is(err, cvatapi.ErrUnavailable) || !strings.Contains(err.Error(), `starts "<html>Sign in</html>"`) {
			t.Fatalf("err = %v; want ErrUnavailable saying what came back", err)
		}
	})
	t.Run("CVAT's", func(t *testing.T) {
		f := cvatfake.New(t, cvatfake.Options{})
		c := newClient(t, f)
		if _, err := c.Task(context.Background(), 4242); !errors.Is(err, cvatapi.ErrNotFound) || errors.Is(err, cvatapi.ErrUnavailable) {
			t.Fatalf("err = %v; want ErrNotFound", err)
		}
	})
}

// A task the credentials may not see: CVAT answers 403 for a direct read
// and leaves it out of listings; neither says it is gone.
func TestHiddenTask(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{})
	_, task, _ := seed(f)
	other := f.AddTask(cvatfake.Task{Name: "visible"})
	f.HideTask(task.ID, true)
	c := newClient(t, f)
	if _, err := c.Task(context.Background(), task.ID); !errors.Is(err, cvatapi.ErrForbidden) || errors.Is(err, cvatapi.ErrNotFound) {
		t.Fatalf("err = %v; want ErrForbidden", err)
	}
	got, err := listIDs(t, c, cvatapi.TaskFilter{})
	if err != nil || !cmp.Equal(got, []int64{other.ID}) {
		t.Fatalf("listing = %v, %v; want only %d", got, err, other.ID)
	}
}

// Issue 11: windows come from CVAT's clock (its Date header), which may be
// off from ours.
func TestClock(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{})
	f.SetClockOffset(-10 * time.Minute)
	c := newClient(t, f)
	got, err := c.Clock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(got) + 10*time.Minute; d < -5*time.Second || d > 5*time.Second {
		t.Errorf("Clock = %v, %v from now; want about 10 minutes behind", got, time.Until(got))
	}
}

func TestParseVersion(t *testing.T) {
	tests := []struct {
		in   string
		want cvatapi.Version
		ok   bool
	}{
		{"2.64.0", cvatapi.Version{Major: 2, Minor: 64}, true},
		{"2.16.3", cvatapi.Version{Major: 2, Minor: 16, Patch: 3}, true},
		{"v2.3", cvatapi.Version{Major: 2, Minor: 3}, true},
		{"2.65.0.dev0", cvatapi.Version{Major: 2, Minor: 65}, true},
		{"2.10.1rc1", cvatapi.Version{Major: 2, Minor: 10, Patch: 1}, true},
		{"dev", cvatapi.Version{}, false},
		{"2", cvatapi.Version{}, false},
	}
	for _, tt := range tests {
		got, ok := cvatapi.ParseVersion(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("ParseVersion(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
	v := cvatapi.Version{Major: 2, Minor: 14, Patch: 3}
	for _, c := range []struct {
		major, minor, patch int
		want                bool
	}{{2, 14, 3, true}, {2, 14, 4, false}, {2, 10, 9, true}, {2, 15, 0, false}, {1, 99, 0, true}, {3, 0, 0, false}} {
		if got := v.AtLeast(c.major, c.minor, c.patch); got != c.want {
			t.Errorf("2.14.3.AtLeast(%d, %d, %d) = %v", c.major, c.minor, c.patch, got)
		}
	}
}
