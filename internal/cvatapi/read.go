package cvatapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// About returns GET /api/server/about (sent without credentials: CVAT serves
// it to anyone). A successful answer is cached for the Client's lifetime; it
// picks the export API.
func (c *Client) About(ctx context.Context) (About, error) {
	c.aboutMu.Lock()
	defer c.aboutMu.Unlock()
	if c.about != nil {
		return *c.about, nil
	}
	var a About
	_, err := c.doJSON(ctx, call{method: "GET", route: "/api/server/about", path: "/api/server/about", noAuth: true}, &a)
	if err != nil {
		return About{}, err
	}
	c.about = &a
	return a, nil
}

// Formats returns the export formats the server offers, enabled or not.
func (c *Client) Formats(ctx context.Context) ([]Format, error) {
	var out struct {
		Exporters []Format `json:"exporters"`
	}
	_, err := c.doJSON(ctx, call{method: "GET", route: "/api/server/annotation/formats", path: "/api/server/annotation/formats"}, &out)
	if err != nil {
		return nil, err
	}
	return out.Exporters, nil
}

// CheckFormats returns an error wrapping ErrUnknownFormat if any of names is
// not an enabled export format of the server; the message lists what it
// offers.
func (c *Client) CheckFormats(ctx context.Context, names []string) error {
	fs, err := c.Formats(ctx)
	if err != nil {
		return fmt.Errorf("check export formats: %w", err)
	}
	enabled := map[string]bool{}
	var offered []string
	for _, f := range fs {
		enabled[f.Name] = f.Enabled
		if f.Enabled {
			offered = append(offered, strconv.Quote(f.Name))
		}
	}
	var bad []string
	for _, n := range names {
		on, ok := enabled[n]
		switch {
		case !ok:
			bad = append(bad, strconv.Quote(n)+" is not offered")
		case !on:
			bad = append(bad, strconv.Quote(n)+" is disabled")
		}
	}
	if len(bad) == 0 {
		return nil
	}
	slices.Sort(offered)
	return fmt.Errorf("%w: %s by this CVAT server; it offers %s", ErrUnknownFormat, strings.Join(bad, ", "), strings.Join(offered, ", "))
}

// Task returns one task; errors.Is(err, ErrNotFound) when it does not exist.
func (c *Client) Task(ctx context.Context, id int64) (Task, error) {
	var t Task
	_, err := c.doJSON(ctx, call{method: "GET", route: "/api/tasks/{id}", path: "/api/tasks/" + strconv.FormatInt(id, 10)}, &t)
	if err != nil {
		return Task{}, fmt.Errorf("get task %d: %w", id, err)
	}
	return t, nil
}

// Job returns one job; errors.Is(err, ErrNotFound) when it does not exist.
func (c *Client) Job(ctx context.Context, id int64) (Job, error) {
	var j Job
	_, err := c.doJSON(ctx, call{method: "GET", route: "/api/jobs/{id}", path: "/api/jobs/" + strconv.FormatInt(id, 10)}, &j)
	if err != nil {
		return Job{}, fmt.Errorf("get job %d: %w", id, err)
	}
	return j, nil
}

// Project returns one project; errors.Is(err, ErrNotFound) when it does not
// exist.
func (c *Client) Project(ctx context.Context, id int64) (Project, error) {
	var p Project
	_, err := c.doJSON(ctx, call{method: "GET", route: "/api/projects/{id}", path: "/api/projects/" + strconv.FormatInt(id, 10)}, &p)
	if err != nil {
		return Project{}, fmt.Errorf("get project %d: %w", id, err)
	}
	return p, nil
}

// ErrStop may be returned by a ListTasks callback to stop listing early;
// ListTasks then returns nil.
var ErrStop = errors.New("cvatapi: stop listing")

type page[T any] struct {
	Count   int64   `json:"count"`
	Next    *string `json:"next"`
	Results []T     `json:"results"`
}

// ListTasks calls fn for every task that matches f, page by page, in the
// organization of the Client's Config (none = the personal sandbox), sorted
// by id ascending.
//
// Two deliberate choices:
//   - Pages are requested by number (page=N) on the configured base URL
//     rather than by following CVAT's `next` link. CVAT builds `next` from
//     the request's Host and scheme, which behind a proxy or ingress often
//     differ from the configured URL; following it would either break or
//     send credentials elsewhere. `next` only says whether there is more.
//   - Sorting by id, not updated_date: a task updated while we page moves in
//     an updated_date order (and could be skipped), while ids are stable and
//     new tasks append at the end. A task deleted mid-listing can still
//     shift one task past us; the reconciler's next run sees it.
func (c *Client) ListTasks(ctx context.Context, f TaskFilter, fn func(Task) error) error {
	q := url.Values{}
	if f.ProjectID != 0 {
		q.Set("project_id", strconv.FormatInt(f.ProjectID, 10))
	}
	var rules []any
	if !f.UpdatedSince.IsZero() {
		rules = append(rules, map[string]any{">=": []any{map[string]string{"var": "updated_date"}, cvatTime(f.UpdatedSince)}})
	}
	if len(f.IDs) > 0 {
		rules = append(rules, map[string]any{"in": []any{map[string]string{"var": "id"}, f.IDs}})
	}
	if len(rules) > 0 {
		b, err := json.Marshal(map[string]any{"and": rules})
		if err != nil {
			return err
		}
		q.Set("filter", string(b))
	}
	q.Set("sort", "id")
	size := f.PageSize
	if size <= 0 {
		size = 100
	}
	q.Set("page_size", strconv.Itoa(size))
	for n := 1; ; n++ {
		q.Set("page", strconv.Itoa(n))
		var p page[Task]
		if _, err := c.doJSON(ctx, call{method: "GET", route: "/api/tasks", path: "/api/tasks", query: q}, &p); err != nil {
			return fmt.Errorf("list tasks (page %d): %w", n, err)
		}
		for _, t := range p.Results {
			if err := fn(t); err != nil {
				if errors.Is(err, ErrStop) {
					return nil
				}
				return err
			}
		}
		if p.Next == nil || len(p.Results) == 0 {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// cvatTime formats a time as CVAT does (microseconds, Z).
func cvatTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000000Z") }

// Clock returns CVAT's current time, read from the Date header of a fresh
// GET /api/server/about: windows of incremental listings come from CVAT's
// clock, not ours. Date has a resolution of one second.
func (c *Client) Clock(ctx context.Context) (time.Time, error) {
	resp, err := c.doJSON(ctx, call{method: "GET", route: "/api/server/about", path: "/api/server/about", noAuth: true}, nil)
	if err != nil {
		return time.Time{}, fmt.Errorf("read CVAT's clock: %w", err)
	}
	t, err := http.ParseTime(resp.Header.Get("Date"))
	if err != nil {
		return time.Time{}, fmt.Errorf("read CVAT's clock: no usable Date header in GET /api/server/about")
	}
	return t.UTC(), nil
}
