package cvatapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// About returns GET /api/server/about (sent without credentials: CVAT serves
// it to anyone). A successful answer is cached for Config.VersionTTL; the
// version it carries picks the export API and, with AuthScheme "auto", the
// token's scheme.
func (c *Client) About(ctx context.Context) (About, error) {
	c.aboutMu.Lock()
	defer c.aboutMu.Unlock()
	if c.about != nil && time.Since(c.about.fetched) < c.cfg.VersionTTL {
		return c.about.about, nil
	}
	a, _, err := c.fetchAbout(ctx)
	if err != nil {
		return About{}, err
	}
	return a, nil
}

// fetchAbout asks the server and refreshes the cache. The caller holds
// c.aboutMu.
func (c *Client) fetchAbout(ctx context.Context) (About, *http.Response, error) {
	var a About
	resp, err := c.doJSON(ctx, call{method: "GET", route: "/api/server/about", path: "/api/server/about", noAuth: true}, &a)
	if err != nil {
		return About{}, nil, err
	}
	if prev := c.about; prev != nil && prev.about.Version != a.Version {
		c.log.LogAttrs(ctx, slog.LevelInfo, "CVAT version changed",
			slog.String("cvat_version", a.Version), slog.String("previous_version", prev.about.Version))
	}
	c.about = &aboutCache{about: a, fetched: time.Now()}
	return a, resp, nil
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

// maxFailedPages is how many consecutive pages ListTasks skips before it
// gives up: one page that keeps failing is skipped, an outage is not.
const maxFailedPages = 3

// ListTasks calls fn for every task that matches f, page by page, in the
// organization of the Client's Config (none = the personal sandbox), sorted
// by id ascending.
//
// Deliberate choices:
//   - Filters are CVAT's JSON-logic filter, which every release has
//     (project_id= and the other simple filters only exist from 2.4.0;
//     2.3.x ignores them and lists every task).
//   - Pages are requested by number (page=N) on the configured base URL
//     rather than by following CVAT's `next` link. CVAT builds `next` from
//     the request's Host and scheme, which behind a proxy or ingress often
//     differ from the configured URL; following it would either break or
//     send credentials elsewhere. `next` only says whether there is more.
//   - Sorting by id, not updated_date: a task updated while we page moves in
//     an updated_date order (and could be skipped), while ids are stable and
//     new tasks append at the end. A task deleted mid-listing can still
//     shift one task past us; the reconciler's next run sees it.
//   - A page that still fails after the client's retries (a 5xx, an answer
//     that is not CVAT's) is skipped: the listing goes on with the next
//     page and then returns an error wrapping ErrIncompleteListing that
//     names the skipped pages. Three failed pages in a row end the listing
//     (wrapping the last error too, e.g. ErrUnavailable). Errors that are
//     not about one page (401, 403, an unknown organization, ctx) end it at
//     once.
func (c *Client) ListTasks(ctx context.Context, f TaskFilter, fn func(Task) error) error {
	q := url.Values{}
	var rules []any
	if f.ProjectID != 0 {
		rules = append(rules, map[string]any{"==": []any{map[string]string{"var": "project_id"}, f.ProjectID}})
	}
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
	var skipped []int
	var lastErr error
	failedInARow := 0
	last := 0 // the last page, once a page has said how many tasks there are
pages:
	for n := 1; last == 0 || n <= last; n++ {
		q.Set("page", strconv.Itoa(n))
		var p page[Task]
		_, err := c.doJSON(ctx, call{method: "GET", route: "/api/tasks", path: "/api/tasks", query: q}, &p)
		switch {
		case err == nil:
			failedInARow = 0
		case ctx.Err() != nil:
			return fmt.Errorf("list tasks (page %d): %w", n, ctx.Err())
		case pastTheEnd(err):
			break pages // fewer pages than the count said (tasks were deleted)
		case !pageError(err):
			return fmt.Errorf("list tasks (page %d): %w", n, err)
		default:
			skipped, lastErr = append(skipped, n), err
			if failedInARow++; failedInARow == maxFailedPages {
				return fmt.Errorf("list tasks: %w: pages %s failed, the last %d in a row: %w", ErrIncompleteListing, pageList(skipped), maxFailedPages, lastErr)
			}
			c.log.LogAttrs(ctx, slog.LevelWarn, "skipping a page of the task listing that keeps failing",
				slog.Int("page", n), slog.String("error", err.Error()))
			continue
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
			break
		}
		last = int((p.Count + int64(size) - 1) / int64(size))
	}
	if len(skipped) > 0 {
		return fmt.Errorf("list tasks: %w: skipped pages %s of %d tasks per page: %w", ErrIncompleteListing, pageList(skipped), size, lastErr)
	}
	return nil
}

// pageError reports an error of one page that the next page may not have.
func pageError(err error) bool {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Code >= 500 || errors.Is(se, ErrUnavailable)
	}
	return true // transport failures, answers that are not CVAT's JSON, undecodable pages
}

// pastTheEnd is DRF's 404 "Invalid page." for a page beyond the last.
func pastTheEnd(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound && errors.Is(se, ErrNotFound) && strings.HasPrefix(se.Detail, "Invalid page")
}

func pageList(pages []int) string {
	s := make([]string, len(pages))
	for i, p := range pages {
		s[i] = strconv.Itoa(p)
	}
	return strings.Join(s, ", ")
}

// CheckAuth makes one authenticated request (GET /api/users/self) to tell,
// at start-up, whether CVAT accepts the configured credentials. A refusal
// wraps ErrUnauthorized and names the credential setting and the scheme it
// was sent with (never the credential), with a hint when the scheme does
// not fit the server's version; no credentials at all is ErrUnauthorized
// without a request.
func (c *Client) CheckAuth(ctx context.Context) error {
	if c.scheme == "" {
		return fmt.Errorf("check CVAT credentials: %w: none configured (Config.Token, or Config.Username and Config.Password)", ErrUnauthorized)
	}
	var u User
	if _, err := c.doJSON(ctx, call{method: "GET", route: "/api/users/self", path: "/api/users/self"}, &u); err != nil {
		return fmt.Errorf("check CVAT credentials: %w", err)
	}
	c.log.LogAttrs(ctx, slog.LevelDebug, "CVAT accepted the credentials", slog.String("user", u.Username))
	return nil
}

// cvatTime formats a time as CVAT does (microseconds, Z).
func cvatTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000000Z") }

// Clock returns CVAT's current time, read from the Date header of a fresh
// GET /api/server/about (which also refreshes the cached version): windows
// of incremental listings come from CVAT's clock, not ours. Date has a
// resolution of one second.
func (c *Client) Clock(ctx context.Context) (time.Time, error) {
	c.aboutMu.Lock()
	defer c.aboutMu.Unlock()
	_, resp, err := c.fetchAbout(ctx)
	if err != nil {
		return time.Time{}, fmt.Errorf("read CVAT's clock: %w", err)
	}
	t, err := http.ParseTime(resp.Header.Get("Date"))
	if err != nil {
		return time.Time{}, errors.New("read CVAT's clock: no usable Date header in GET /api/server/about")
	}
	return t.UTC(), nil
}
