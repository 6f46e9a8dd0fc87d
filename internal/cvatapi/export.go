package cvatapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Export APIs, for Export.API.
const (
	APIRequests = "requests" // POST .../dataset/export, GET /api/requests/{rq_id}, GET result_url (CVAT >= 2.16)
	APILegacy   = "legacy"   // GET .../annotations?format= until 201, then &action=download (CVAT < 2.32)
)

// maxRestarts bounds how often one ExportTask starts CVAT's export again
// after CVAT lost the one it followed: a 404 from /api/requests (the job was
// cancelled or expired), a download that expired or was taken by someone
// else (2.16-2.31 downloads work once), or a task saved again and again
// while 2.16.x re-enqueues.
const maxRestarts = 3

// restartError reports that CVAT no longer has the export being followed:
// start again.
type restartError struct{ reason string }

func (e *restartError) Error() string { return e.reason }

// mismatchError reports an export endpoint answering as another release
// than the cached version (410 from a legacy endpoint, a route that is not
// there): the version is read again once.
type mismatchError struct{ err error }

func (e *mismatchError) Error() string { return e.err.Error() }
func (e *mismatchError) Unwrap() error { return e.err }

// ExportTask asks CVAT to export task taskID in format and returns the
// archive as a stream; the caller must close Export.Body. Memory use does not
// depend on the archive's size.
//
// Errors already say `export task <id> as "<format>": `; callers need not
// add it again.
//
// The archive is always of an export CVAT started after ExportTask was
// called: a 409 (the same export already queued or running, for another
// replica, a backfill or a person with the same account) is waited out and
// the export requested again, never followed, since the running export may
// hold an older state. CVAT's export holds the task's state when its job
// starts; set ExportOptions.UpdatedDate to have ExportTask check that the
// task did not change meanwhile (ErrStateChanged).
//
// The API comes from the server version (About, cached): the request-queue
// API from 2.16, the legacy polling API before. The legacy API is asked for
// a local file (use_default_location=false&location=local), which CVAT
// before 2.16 ignores without the first; an export that went to the task's
// cloud storage anyway is ErrCloudStorage, never an empty archive. An
// export CVAT lost (a 404 from /api/requests, an expired download, a
// download that was already taken) is started again, a few times; a 410 or
// a route that is missing re-reads the version once (CVAT upgraded under
// the client). A task without data is ErrNoData. Waiting for CVAT to prepare
// the file is bounded by Config.ExportTimeout; the download itself only by
// ctx and an idle timeout.
func (c *Client) ExportTask(ctx context.Context, taskID int64, format string, o ExportOptions) (*Export, error) {
	x, err := c.exportTask(ctx, taskID, format, o)
	if err != nil {
		return nil, fmt.Errorf("export task %d as %q: %w", taskID, format, err)
	}
	return x, nil
}

func (c *Client) exportTask(ctx context.Context, taskID int64, format string, o ExportOptions) (*Export, error) {
	wctx, cancel := context.WithTimeout(ctx, c.cfg.ExportTimeout)
	defer cancel()
	var restarts []string
	rediscovered := false
	for {
		x, err := c.exportOnce(ctx, wctx, taskID, format, o)
		var re *restartError
		var me *mismatchError
		switch {
		case err == nil:
			return x, nil
		case errors.As(err, &re):
			restarts = append(restarts, re.reason)
			if len(restarts) > maxRestarts {
				return nil, fmt.Errorf("CVAT lost the export %d times: %s", len(restarts), strings.Join(restarts, "; "))
			}
			c.log.LogAttrs(ctx, slog.LevelInfo, "CVAT lost the export; requesting it again",
				slog.Int64("task_id", taskID), slog.String("format", format), slog.String("reason", re.reason))
		case errors.As(err, &me) && !rediscovered:
			rediscovered = true
			c.forgetVersion()
			c.log.LogAttrs(ctx, slog.LevelInfo, "CVAT's export API answered as another release; reading its version again",
				slog.Int64("task_id", taskID), slog.String("error", err.Error()))
		default:
			return nil, c.waitErr(ctx, wctx, err)
		}
	}
}

func (c *Client) exportOnce(ctx, wctx context.Context, taskID int64, format string, o ExportOptions) (*Export, error) {
	v, err := c.Version(wctx)
	requests := true
	var ue *unparsableVersionError
	switch {
	case errors.As(err, &ue):
		c.log.LogAttrs(ctx, slog.LevelWarn, "unparsable CVAT version; using the request-queue export API",
			slog.String("cvat_version", ue.version))
	case err != nil:
		return nil, err
	default:
		requests = v.AtLeast(2, 16, 0)
	}
	if requests {
		return c.exportRequests(ctx, wctx, taskID, format, o)
	}
	return c.exportLegacy(ctx, wctx, taskID, format, o)
}

type requestStatus struct {
	Status    string  `json:"status"` // queued | started | finished | failed
	Message   string  `json:"message"`
	ResultURL *string `json:"result_url"`
}

func (c *Client) exportRequests(ctx, wctx context.Context, taskID int64, format string, o ExportOptions) (*Export, error) {
	rq, err := c.requestExport(wctx, taskID, format, o)
	if err != nil {
		return nil, err
	}
	for hops := 0; ; hops++ {
		st, gone, err := c.pollRequest(wctx, rq)
		switch {
		case err != nil:
			return nil, err
		case gone:
			return nil, &restartError{"GET /api/requests/{rq_id}: CVAT no longer knows the export request"}
		case st.Status == "failed":
			return nil, c.exportFailed(wctx, taskID, st.Message)
		case st.ResultURL == nil || *st.ResultURL == "":
			return nil, fmt.Errorf("%w: CVAT finished the export without a result_url", ErrCloudStorage)
		}
		if err := c.checkState(wctx, taskID, o); err != nil {
			return nil, err
		}
		x, next, err := c.fetchArchive(ctx, *st.ResultURL, "", APIRequests)
		if err != nil || next == "" {
			return x, err
		}
		// 2.16.x: the download re-enqueued the export because the task
		// changed after the request; its new job is followed.
		if hops >= maxRestarts {
			return nil, &restartError{"the task keeps changing while CVAT exports it"}
		}
		rq = next
	}
}

// requestExport POSTs the export and returns its rq_id. A 409 means the same
// export (same user, task and format) is queued or running: its rq_id (2.37+)
// is polled until it ends, or (2.16-2.36, whose 409 is a JSON string) the
// POST is repeated after a wait, until CVAT takes a new request.
func (c *Client) requestExport(wctx context.Context, taskID int64, format string, o ExportOptions) (string, error) {
	id := strconv.FormatInt(taskID, 10)
	q := url.Values{}
	q.Set("format", format)
	q.Set("save_images", strconv.FormatBool(o.SaveImages))
	q.Set("location", "local") // a task whose target storage is a bucket would otherwise leave nothing to download
	post := call{method: "POST", route: "/api/tasks/{id}/dataset/export", path: "/api/tasks/" + id + "/dataset/export", query: q,
		accept: []int{http.StatusConflict, http.StatusNotFound, http.StatusMethodNotAllowed}}
	for wait, logged := c.cfg.PollInterval, false; ; wait = min(wait*3/2, c.cfg.PollMaxInterval) {
		resp, b, err := c.answer(wctx, post)
		if err != nil {
			return "", err
		}
		switch resp.StatusCode {
		case http.StatusNotFound:
			se := statusErrorFrom(post, resp, b)
			if errors.Is(se, ErrNotFound) || errors.Is(se, ErrUnknownOrganization) {
				return "", se
			}
			return "", &mismatchError{se} // no such route: a release before 2.16
		case http.StatusMethodNotAllowed:
			se := statusErrorFrom(post, resp, b)
			if len(b) == 0 || se.Detail == "Format is disabled" {
				return "", fmt.Errorf("%w: %q is disabled on this CVAT server (%s)", ErrUnknownFormat, format, se)
			}
			return "", &mismatchError{se}
		case http.StatusConflict:
			var running struct {
				RqID string `json:"rq_id"`
			}
			_ = json.Unmarshal(b, &running) // 2.16-2.36 answer a JSON string: no id
			if !logged {
				logged = true
				c.log.LogAttrs(wctx, slog.LevelDebug, "the same export is already running in CVAT; waiting for it to end before requesting a new one",
					slog.Int64("task_id", taskID), slog.String("format", format), slog.String("cvat_answer", tidy(cvatMessage(b))))
			}
			if running.RqID != "" {
				if _, _, err := c.pollRequest(wctx, running.RqID); err != nil {
					return "", err
				}
				continue
			}
			if err := sleep(wctx, wait); err != nil {
				return "", fmt.Errorf("waiting for the running export to end: %w", err)
			}
			continue
		}
		var rq struct {
			RqID string `json:"rq_id"`
		}
		if err := decodeJSON(post, resp, b, &rq); err != nil {
			return "", err
		}
		if rq.RqID == "" {
			return "", fmt.Errorf("%s: %s without rq_id", post, resp.Status)
		}
		return rq.RqID, nil
	}
}

// pollRequest polls GET /api/requests/{rq_id} until the request has ended
// (finished or failed); gone reports CVAT's 404 for an id it does not know
// (expired, cancelled, or downloaded on 2.16-2.31). A 404 that is not CVAT's
// text is a missing route: a mismatchError.
func (c *Client) pollRequest(wctx context.Context, rq string) (st requestStatus, gone bool, err error) {
	poll := call{method: "GET", route: "/api/requests/{rq_id}", path: "/api/requests/" + url.PathEscape(rq), accept: []int{http.StatusNotFound}}
	notJSON := 0
	for wait := c.cfg.PollInterval; ; wait = min(wait*3/2, c.cfg.PollMaxInterval) {
		resp, b, err := c.answer(wctx, poll)
		if err != nil {
			return st, false, err
		}
		if ct := resp.Header.Get("Content-Type"); resp.StatusCode == http.StatusOK && ct != "" && !isJSON(ct) && notJSON < c.cfg.MaxRetries {
			notJSON++ // a proxy's page between polls: poll on
			if err := sleep(wctx, wait); err != nil {
				return st, false, fmt.Errorf("waiting for export request: %w", err)
			}
			continue
		}
		notJSON = 0
		if resp.StatusCode == http.StatusNotFound {
			if strings.HasPrefix(strings.TrimSpace(string(b)), "There is no request with specified id") {
				return st, true, nil
			}
			return st, false, &mismatchError{statusErrorFrom(poll, resp, b)}
		}
		st = requestStatus{}
		if err := decodeJSON(poll, resp, b, &st); err != nil {
			return st, false, err
		}
		if st.Status == "finished" || st.Status == "failed" {
			return st, false, nil
		}
		// queued, started, or a status newer than this client: wait.
		if err := sleep(wctx, wait); err != nil {
			return st, false, fmt.Errorf("waiting for export request: %w", err)
		}
	}
}

// exportFailed is the error of a failed export; a task without data (whose
// export the worker fails with an AttributeError) is ErrNoData.
func (c *Client) exportFailed(ctx context.Context, taskID int64, message string) error {
	fe := &ExportFailedError{Message: message}
	if t, err := c.Task(ctx, taskID); err == nil && t.DataID == 0 {
		return fmt.Errorf("%w (%w)", ErrNoData, fe)
	}
	return fe
}

// checkState re-reads the task once CVAT has the export ready: its job
// started after the request, so an unchanged updated_date means the archive
// holds o.UpdatedDate's state.
func (c *Client) checkState(ctx context.Context, taskID int64, o ExportOptions) error {
	if o.UpdatedDate.IsZero() {
		return nil
	}
	t, err := c.Task(ctx, taskID)
	if err != nil {
		return err
	}
	if !t.UpdatedDate.Equal(o.UpdatedDate) {
		return &StateChangedError{Want: o.UpdatedDate, Got: t.UpdatedDate}
	}
	return nil
}

func (c *Client) exportLegacy(ctx, wctx context.Context, taskID int64, format string, o ExportOptions) (*Export, error) {
	path := "/api/tasks/" + strconv.FormatInt(taskID, 10) + "/annotations"
	if o.SaveImages {
		path = "/api/tasks/" + strconv.FormatInt(taskID, 10) + "/dataset"
	}
	q := url.Values{}
	q.Set("format", format)
	// Up to 2.15 location=local counts only with use_default_location=false
	// (default true: the task's target storage); later releases ignore it.
	q.Set("use_default_location", "false")
	q.Set("location", "local")
	// 202 while CVAT prepares the file, 201 when ready. A 500 is CVAT
	// reporting the export job's exception (it then forgets the job, so
	// retrying would silently start it again): not retried.
	poll := call{method: "GET", route: legacyRoute(path), path: path, query: q,
		accept: []int{http.StatusOK, http.StatusBadRequest, http.StatusGone, http.StatusInternalServerError}}
	for wait := c.cfg.PollInterval; ; wait = min(wait*3/2, c.cfg.PollMaxInterval) {
		resp, b, err := c.answer(wctx, poll)
		if err != nil {
			return nil, err
		}
		switch resp.StatusCode {
		case http.StatusCreated:
			if err := c.checkState(wctx, taskID, o); err != nil {
				return nil, err
			}
			dq := url.Values{}
			for k, v := range q {
				dq[k] = v
			}
			dq.Set("action", "download")
			x, _, err := c.fetchArchive(ctx, path+"?"+dq.Encode(), path, APILegacy)
			return x, err
		case http.StatusAccepted:
			if err := sleep(wctx, wait); err != nil {
				return nil, fmt.Errorf("waiting for export: %w", err)
			}
		case http.StatusOK:
			return nil, fmt.Errorf("%w: %s answered 200 without a file (CVAT wrote the export to the task's target storage)", ErrCloudStorage, poll)
		case http.StatusBadRequest:
			se := statusErrorFrom(poll, resp, b)
			if strings.Contains(se.Detail, "without data is not allowed") {
				return nil, fmt.Errorf("%w: %w", ErrNoData, se)
			}
			return nil, se
		case http.StatusGone:
			return nil, &mismatchError{statusErrorFrom(poll, resp, b)} // 2.32+: the legacy API is gone
		case http.StatusInternalServerError:
			return nil, fmt.Errorf("%w (%s)", &ExportFailedError{Message: cvatMessage(b)}, poll)
		default:
			return nil, fmt.Errorf("%s: unexpected %s while waiting for the export", poll, resp.Status)
		}
	}
}

// legacyRoute is the metrics route of a legacy export path.
func legacyRoute(path string) string {
	if strings.HasSuffix(path, "/dataset") {
		return "/api/tasks/{id}/dataset"
	}
	return "/api/tasks/{id}/annotations"
}

// fetchArchive downloads an export of api: a result_url (its path and query,
// on the configured origin), or with legacyPath set the legacy download.
// next is the rq_id of an export the download re-enqueued instead (2.16.x,
// after a change). Answers saying CVAT lost the file or the job are
// restartErrors.
func (c *Client) fetchArchive(ctx context.Context, rawURL, legacyPath, api string) (x *Export, next string, err error) {
	abs := rawURL
	if legacyPath == "" {
		if abs, err = c.onOrigin(rawURL); err != nil {
			return nil, "", fmt.Errorf("result_url: %w", err)
		}
	} else {
		abs = c.base.String() + rawURL
	}
	u, _ := url.Parse(abs)
	route, legacyURL := "/api/tasks/{id}/dataset/download", false
	if !strings.HasSuffix(u.Path, "/dataset/download") {
		route, legacyURL = legacyRoute(u.Path), true // result_url of 2.16-2.31, or the legacy flow
	}
	k := call{method: "GET", route: route, path: abs,
		accept: []int{http.StatusAccepted, http.StatusBadRequest, http.StatusNotFound}}
	if legacyURL {
		k.accept = append(k.accept, http.StatusInternalServerError) // the job failed (and is gone)
	}
	resp, cancel, err := c.do(ctx, k, true)
	if err != nil {
		return nil, "", err
	}
	if resp.StatusCode == http.StatusOK {
		x, err := newExport(k, resp, api, legacyPath != "")
		return x, "", err
	}
	b, _ := readAll(resp)
	cancel()
	switch resp.StatusCode {
	case http.StatusAccepted:
		var rq struct {
			RqID string `json:"rq_id"`
		}
		if json.Unmarshal(b, &rq) == nil && rq.RqID != "" && legacyPath == "" {
			return nil, rq.RqID, nil
		}
		return nil, "", &restartError{k.String() + ": " + resp.Status + ": CVAT exports again (the task changed, or the file was gone)"}
	case http.StatusInternalServerError:
		return nil, "", fmt.Errorf("%w (%s)", &ExportFailedError{Message: cvatMessage(b)}, k)
	}
	se := statusErrorFrom(k, resp, b)
	if lostExport(se.Detail) {
		return nil, "", &restartError{se.Error()}
	}
	if resp.StatusCode < 300 {
		return nil, "", fmt.Errorf("%s: unexpected %s for a download", k, resp.Status)
	}
	return nil, "", se
}

// lostExport reports CVAT's answers for a download whose job or file is
// gone, or not (or no longer) finished: the export must be requested again.
func lostExport(detail string) bool {
	for _, p := range []string{
		"Unknown export request id",                             // 2.17+: no such job (expired, or downloaded before on 2.17-2.31)
		"The exported file has expired",                         // 2.14.1+: the file left the export cache
		"Dataset export has not been finished yet",              // 2.17-2.31
		"The export process is not finished",                    // 2.32+
		"Export has not finished",                               // 2.14.3-2.16.x: also after a change, or a second download
		"Export was cancelled, please request it one more time", // 2.17-2.31
	} {
		if strings.HasPrefix(detail, p) {
			return true
		}
	}
	return false
}

// newExport wraps a 200 download into an Export whose Body validates it.
// The content type and the first bytes are checked at once, so an HTML page
// or an empty answer fails here. With legacy set, an empty body is what
// CVAT 2.3-2.10.0 answer after uploading to the task's cloud storage.
func newExport(k call, resp *http.Response, api string, legacy bool) (*Export, error) {
	body := &archiveBody{rc: resp.Body, what: k.String() + ": " + resp.Status, contentType: resp.Header.Get("Content-Type"),
		want: resp.ContentLength, emptyIsCloud: legacy}
	if err := body.prefetch(); err != nil {
		resp.Body.Close()
		return nil, err
	}
	x := &Export{Body: body, Size: resp.ContentLength, ContentType: body.contentType, API: api}
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

// waitErr says when the export wait, not the caller, ran out of time.
func (c *Client) waitErr(ctx, wctx context.Context, err error) error {
	if ctx.Err() == nil && errors.Is(wctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("CVAT did not finish the export within %s: %w", c.cfg.ExportTimeout, err)
	}
	return err
}
