package cvatapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strconv"
)

// Export APIs, for Export.API.
const (
	APIRequests = "requests" // POST .../dataset/export, GET /api/requests/{rq_id}, GET result_url (CVAT >= 2.16)
	APILegacy   = "legacy"   // GET .../annotations?format= until 201, then &action=download (CVAT < 2.32)
)

// ExportTask asks CVAT to export task taskID in format and returns the
// archive as a stream; the caller must close Export.Body. Memory use does not
// depend on the archive's size.
//
// The API comes from the server version (About, cached): the request-queue
// API from 2.16 (preferred where both exist, 2.16..2.31), the legacy polling
// API before. Waiting for CVAT to prepare the file is bounded by
// Config.ExportTimeout; the download itself only by ctx and an idle timeout.
func (c *Client) ExportTask(ctx context.Context, taskID int64, format string, o ExportOptions) (*Export, error) {
	x, err := c.exportTask(ctx, taskID, format, o)
	if err != nil {
		return nil, fmt.Errorf("export task %d as %q: %w", taskID, format, err)
	}
	return x, nil
}

func (c *Client) exportTask(ctx context.Context, taskID int64, format string, o ExportOptions) (*Export, error) {
	a, err := c.About(ctx)
	if err != nil {
		return nil, err
	}
	v, ok := parseVersion(a.Version)
	if !ok {
		c.log.LogAttrs(ctx, slog.LevelWarn, "unparsable CVAT version; using the request-queue export API",
			slog.String("cvat_version", a.Version))
	}
	if !ok || v.atLeast(2, 16) {
		return c.exportRequests(ctx, taskID, format, o)
	}
	return c.exportLegacy(ctx, taskID, format, o)
}

type requestStatus struct {
	Status    string  `json:"status"` // queued | started | finished | failed
	Message   string  `json:"message"`
	ResultURL *string `json:"result_url"`
}

func (c *Client) exportRequests(ctx context.Context, taskID int64, format string, o ExportOptions) (*Export, error) {
	id := strconv.FormatInt(taskID, 10)
	q := url.Values{}
	q.Set("format", format)
	q.Set("save_images", strconv.FormatBool(o.SaveImages))
	q.Set("location", "local") // a task whose target storage is a bucket would otherwise leave nothing to download
	var rq struct {
		RqID string `json:"rq_id"`
	}
	// Retrying this POST is safe: a duplicate of a running export is a 409
	// carrying the same rq_id, which is followed like a 202.
	post := call{method: "POST", route: "/api/tasks/{id}/dataset/export", path: "/api/tasks/" + id + "/dataset/export", query: q, accept: []int{http.StatusConflict}}
	resp, err := c.doJSON(ctx, post, &rq)
	if err != nil {
		return nil, err
	}
	if rq.RqID == "" {
		return nil, fmt.Errorf("%s: %s without rq_id", post, resp.Status)
	}
	if resp.StatusCode == http.StatusConflict {
		c.log.LogAttrs(ctx, slog.LevelDebug, "export already running in CVAT; following it",
			slog.Int64("task_id", taskID), slog.String("format", format))
	}

	wctx, cancel := context.WithTimeout(ctx, c.cfg.ExportTimeout)
	defer cancel()
	poll := call{method: "GET", route: "/api/requests/{rq_id}", path: "/api/requests/" + url.PathEscape(rq.RqID)}
	var resultURL string
	for wait := c.cfg.PollInterval; ; wait = min(wait*3/2, c.cfg.PollMaxInterval) {
		var st requestStatus
		if _, err := c.doJSON(wctx, poll, &st); err != nil {
			return nil, c.waitErr(ctx, wctx, err)
		}
		if st.Status == "failed" {
			return nil, &ExportFailedError{Message: st.Message}
		}
		if st.Status == "finished" {
			if st.ResultURL == nil || *st.ResultURL == "" {
				return nil, errors.New("CVAT finished the export without a result_url (was it written to cloud storage?)")
			}
			resultURL = *st.ResultURL
			break
		}
		// queued, started, or a status newer than this client: wait.
		if err := sleep(wctx, wait); err != nil {
			return nil, c.waitErr(ctx, wctx, fmt.Errorf("waiting for export request: %w", err))
		}
	}
	u, err := c.resolve(resultURL)
	if err != nil {
		return nil, fmt.Errorf("result_url: %w", err)
	}
	return c.download(ctx, call{method: "GET", route: "/api/tasks/{id}/dataset/download", path: u.String()}, APIRequests)
}

func (c *Client) exportLegacy(ctx context.Context, taskID int64, format string, o ExportOptions) (*Export, error) {
	path := "/api/tasks/" + strconv.FormatInt(taskID, 10) + "/annotations"
	route := "/api/tasks/{id}/annotations"
	if o.SaveImages {
		path = "/api/tasks/" + strconv.FormatInt(taskID, 10) + "/dataset"
		route = "/api/tasks/{id}/dataset"
	}
	q := url.Values{}
	q.Set("format", format)
	q.Set("location", "local")
	wctx, cancel := context.WithTimeout(ctx, c.cfg.ExportTimeout)
	defer cancel()
	// 202 while CVAT prepares the file, 201 when ready. A 500 here is CVAT
	// reporting the export job's exception (it then forgets the job, so
	// retrying would silently start it again): not retried.
	poll := call{method: "GET", route: route, path: path, query: q, noRetry: []int{http.StatusInternalServerError}}
	for wait := c.cfg.PollInterval; ; wait = min(wait*3/2, c.cfg.PollMaxInterval) {
		resp, err := c.doJSON(wctx, poll, nil)
		if err != nil {
			var se *StatusError
			if errors.As(err, &se) && se.Code == http.StatusInternalServerError {
				return nil, fmt.Errorf("%w (%s)", &ExportFailedError{Message: se.Detail}, se.Call)
			}
			return nil, c.waitErr(ctx, wctx, err)
		}
		if resp.StatusCode == http.StatusCreated {
			break
		}
		if resp.StatusCode != http.StatusAccepted {
			return nil, fmt.Errorf("%s: unexpected %s while waiting for the export", poll, resp.Status)
		}
		if err := sleep(wctx, wait); err != nil {
			return nil, c.waitErr(ctx, wctx, fmt.Errorf("waiting for export: %w", err))
		}
	}
	dq := url.Values{}
	for k, v := range q {
		dq[k] = v
	}
	dq.Set("action", "download")
	return c.download(ctx, call{method: "GET", route: route, path: path, query: dq}, APILegacy)
}

// waitErr says when the export wait, not the caller, ran out of time.
func (c *Client) waitErr(ctx, wctx context.Context, err error) error {
	if ctx.Err() == nil && errors.Is(wctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("CVAT did not finish the export within %s: %w", c.cfg.ExportTimeout, err)
	}
	return err
}

func (c *Client) download(ctx context.Context, k call, api string) (*Export, error) {
	resp, _, err := c.do(ctx, k, true)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("%s: unexpected %s for a download", k, resp.Status)
	}
	x := &Export{Body: resp.Body, Size: resp.ContentLength, ContentType: resp.Header.Get("Content-Type"), API: api}
	if x.Size < 0 {
		x.Size = -1
	}
	if cd := resp.Header.Get("Content-Disposition"); cd != "" {
		if _, params, err := mime.ParseMediaType(cd); err == nil {
			x.Filename = params["filename"]
		}
	}
	return x, nil
}
