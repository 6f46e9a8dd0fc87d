package cvatfake

import (
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Export job states, as CVAT's RQ jobs have them (deferred and scheduled are
// not modelled: a job here is queued as soon as it is enqueued).
const (
	stQueued   = "queued"
	stStarted  = "started"
	stFinished = "finished"
	stFailed   = "failed"
)

// exportReq is one RQ export job.
type exportReq struct {
	rqID       string
	taskID     int64
	projectID  int64
	format     string
	saveImages bool
	cloud      bool      // the effective location is a cloud storage: the worker uploads there, nothing to download
	requested  time.Time // CVAT's clock when it was enqueued (the "request timestamp" of its meta)
	reqUpdated time.Time // the task's updated_date then (the 2.32+ file name)
	snapshot   time.Time // the task's updated_date when the job started: what the archive holds
	resultURL  string    // request API: built from the POST, stored in the job
	size       int64
	polls      int
	status     string
	failMsg    string // set: the job fails with this message when it ends
	fileGone   bool   // the file was removed from the export cache (DropExportFiles)
	created    time.Time
	started    time.Time
	finished   time.Time
}

// The exception a task without data makes the export worker raise (from
// TaskData: db_task.data is None); inferred from dataset_manager/bindings.py,
// not run.
const noDataException = "AttributeError: 'NoneType' object has no attribute 'get_frame_step'\n"

// FailNextExport makes the next export of task taskID fail with message
// (CVAT's request status "failed", or a 500 on the legacy API). Calls queue
// up: two calls fail the next two exports.
func (s *Server) FailNextExport(taskID int64, message string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failNext[taskID] = append(s.failNext[taskID], message)
}

// FailExports makes every export of task taskID that ends from now on fail
// with message, until FailExports(taskID, "") clears it.
func (s *Server) FailExports(taskID int64, message string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if message == "" {
		delete(s.failAlways, taskID)
		return
	}
	s.failAlways[taskID] = message
}

// StartExports starts every queued export job now, as a free CVAT worker
// does: each takes its snapshot of the task's current state. It returns how
// many it started.
func (s *Server) StartExports() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, x := range s.exports {
		if x.status == stQueued {
			s.start(x)
			n++
		}
	}
	return n
}

// ExpireExports drops every export job of task taskID, as their result TTL
// (or a cancel) does: /api/requests answers 404 for them and their
// downloads fail as CVAT's do for unknown jobs.
func (s *Server) ExpireExports(taskID int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, x := range s.exports {
		if x.taskID == taskID {
			delete(s.exports, id)
		}
	}
}

// DropExportFiles removes the files of task taskID's finished exports from
// the export cache while their jobs stay: downloads answer CVAT's "file
// gone" answers of the release.
func (s *Server) DropExportFiles(taskID int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, x := range s.exports {
		if x.taskID == taskID {
			x.fileGone = true
		}
	}
}

// ArchiveReader returns the bytes the fake serves as the export of a task in
// a format at a given updated_date: a zip local-file signature, a readable
// header line, then pseudo-random bytes seeded by the three, size bytes in
// all. It is generated as it is read: any size costs no memory.
func ArchiveReader(taskID int64, format string, updated time.Time, size int64) io.Reader {
	header := fmt.Sprintf("PK\x03\x04cvatfake task=%d format=%q updated=%s\n", taskID, format, cvatTime(updated))
	seed := sha256.Sum256([]byte(header))
	return io.LimitReader(io.MultiReader(strings.NewReader(header), rand.NewChaCha8(seed)), size)
}

// ExpectedArchive returns what an export of task taskID in format would
// download if its job started now (the task's current state), and its size.
func (s *Server) ExpectedArchive(taskID int64, format string) (io.Reader, int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[taskID]
	if !ok {
		return nil, 0, fmt.Errorf("cvatfake: no task %d", taskID)
	}
	size := s.archiveSize(t)
	return ArchiveReader(taskID, format, t.UpdatedDate, size), size, nil
}

func (s *Server) archiveSize(t *Task) int64 {
	if t.ArchiveSize > 0 {
		return t.ArchiveSize
	}
	return s.opts.ArchiveSize
}

// rqID builds CVAT's export job id: the key=value form from 2.38, the
// export:task-... form of the request API from 2.16, and for the legacy API
// before 2.16 the 2.15 form (not per user; 2.3's "/api/task/<id>/annotations/
// <format>", shared by dataset and annotations, is not modelled). The
// caller holds s.mu.
func (s *Server) rqID(taskID int64, format string, saveImages bool) string {
	sub := "annotations"
	if saveImages {
		sub = "dataset"
	}
	switch {
	case s.ver.atLeast(2, 38):
		f := strings.NewReplacer(" ", "_", ".", "~").Replace(format)
		return fmt.Sprintf("action=export&target=task&target_id=%d&user_id=%d&format=%s&subresource=%s", taskID, userID, f, sub)
	case s.ver.atLeast(2, 16):
		f := strings.NewReplacer(" ", "_", ".", "@").Replace(format)
		return fmt.Sprintf("export:task-%d-%s-in-%s-format-by-%d", taskID, sub, f, userID)
	}
	return fmt.Sprintf("export:%s-for-task.id%d-in-%s-format", sub, taskID, strings.ReplaceAll(format, " ", "_"))
}

// checkFormat answers 400/405 for unknown/disabled formats. The caller holds
// s.mu.
func (s *Server) checkFormat(w http.ResponseWriter, format string) bool {
	if format == DisabledFormat {
		if s.ver.atLeast(2, 38) {
			writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"detail": "Format is disabled"})
		} else {
			writeMaybeJSON(w, http.StatusMethodNotAllowed, nil)
		}
		return false
	}
	if !slices.Contains(exporters, format) {
		writeJSON(w, http.StatusBadRequest, []string{"Unknown format specified for the request"})
		return false
	}
	return true
}

// location is CVAT's get_location_configuration for a target: cloud reports
// whether the export goes to a cloud storage. From 2.16 a location parameter
// wins and its absence means the task's target storage; before, the
// parameters count only with use_default_location=false (default true: the
// task's target storage). ok is false when the 400 is written. The caller
// holds s.mu.
func (s *Server) location(w http.ResponseWriter, q url.Values, t *Task) (cloud, ok bool) {
	useTask := !q.Has("location")
	if !s.ver.atLeast(2, 16) {
		useTask = !isFalse(q.Get("use_default_location"))
	}
	if useTask {
		return t.TargetCloudStorageID != 0, true
	}
	switch loc := q.Get("location"); loc {
	case "", "local":
		return false, true
	case "cloud_storage":
		if q.Get("cloud_storage_id") == "" {
			writeJSON(w, http.StatusBadRequest, []string{"Cloud storage was selected as location but cloud_storage_id was not specified"})
			return false, false
		}
		return true, true
	default:
		writeJSON(w, http.StatusBadRequest, []string{"The specified location " + loc + " is not supported"})
		return false, false
	}
}

// isFalse is Python's strtobool/to_bool false.
func isFalse(v string) bool {
	switch strings.ToLower(v) {
	case "false", "f", "0", "no", "n", "off":
		return true
	}
	return false
}

// enqueue records a new export job. The caller holds s.mu.
func (s *Server) enqueue(t *Task, format string, saveImages, cloud bool) *exportReq {
	now := s.now()
	x := &exportReq{rqID: s.rqID(t.ID, format, saveImages), taskID: t.ID, projectID: t.ProjectID, format: format,
		saveImages: saveImages, cloud: cloud, requested: now, reqUpdated: t.UpdatedDate, size: s.archiveSize(t),
		status: stQueued, created: now}
	if msgs := s.failNext[t.ID]; len(msgs) > 0 {
		x.failMsg = msgs[0]
		s.failNext[t.ID] = msgs[1:]
	}
	s.exports[x.rqID] = x
	return x
}

// start runs the job: it reads the task's state now, as CVAT's worker does.
// The caller holds s.mu.
func (s *Server) start(x *exportReq) {
	x.started = s.now()
	x.status = stStarted
	t, ok := s.tasks[x.taskID]
	switch {
	case !ok:
		x.failMsg = "cvat.apps.engine.models.Task.DoesNotExist: Task matching query does not exist.\n"
	case t.NoData:
		x.failMsg = noDataException
	default:
		x.snapshot = t.UpdatedDate
		x.size = s.archiveSize(t)
	}
}

// observe moves an export one observation further (a status poll, a legacy
// poll, a POST refused with 409): it starts after the first and ends after
// Options.ExportPolls. The caller holds s.mu.
func (s *Server) observe(x *exportReq) {
	if x.status == stFinished || x.status == stFailed {
		return
	}
	x.polls++
	if x.started.IsZero() && (x.polls > 1 || s.opts.ExportPolls < 0) {
		s.start(x)
	}
	if s.opts.ExportPolls < 0 || x.polls > s.opts.ExportPolls {
		if x.started.IsZero() {
			s.start(x)
		}
		x.finished = s.now()
		x.status = stFinished
		if msg := s.failAlways[x.taskID]; msg != "" && x.failMsg == "" {
			x.failMsg = msg
		}
		if x.failMsg != "" {
			x.status = stFailed
		}
	}
}

// outdated is CVAT's "request_time < instance_update_time": the task was
// saved after the export was requested. The caller holds s.mu.
func (s *Server) outdated(x *exportReq, t *Task) bool { return x.requested.Before(t.UpdatedDate) }

// exportPost is POST /api/tasks/{id}/dataset/export (2.16+). The same export
// (same user, task, format, subresource) already queued or running is a
// 409: a JSON string on 2.16 ("Export process is already queued" or
// "... started") and on 2.17-2.36 ("Export request is being processed"),
// {"rq_id"} from 2.37. A finished or failed one is replaced.
func (s *Server) exportPost(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.lookupTask(w, r)
	if t == nil {
		return
	}
	format := q.Get("format")
	if !s.checkFormat(w, format) {
		return
	}
	cloud, ok := s.location(w, q, t)
	if !ok {
		return
	}
	saveImages := !isFalse(q.Get("save_images")) && q.Get("save_images") != ""
	if x, ok := s.exports[s.rqID(t.ID, format, saveImages)]; ok {
		s.observe(x)
		if x.status == stQueued || x.status == stStarted {
			switch {
			case s.ver.atLeast(2, 37):
				writeJSON(w, http.StatusConflict, map[string]string{"rq_id": x.rqID})
			case s.ver.atLeast(2, 17):
				writeJSON(w, http.StatusConflict, "Export request is being processed")
			default:
				writeJSON(w, http.StatusConflict, "Export process is already "+map[bool]string{true: "started", false: "queued"}[x.status == stStarted])
			}
			return
		}
	}
	x := s.enqueue(t, format, saveImages, cloud)
	if !cloud {
		x.resultURL = s.resultURL(r, t.ID, x)
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"rq_id": x.rqID})
}

// resultURL is what CVAT stores in the job at POST time: absolute, from the
// POST's host and scheme; 2.16-2.31 the legacy endpoint with the POST's own
// query plus action=download, 2.32+ .../dataset/download?rq_id=. The caller
// holds s.mu.
func (s *Server) resultURL(r *http.Request, taskID int64, x *exportReq) string {
	base := s.base(r) + "/api/tasks/" + itoa(taskID)
	if s.ver.atLeast(2, 32) {
		return base + "/dataset/download?rq_id=" + pyQuote(x.rqID)
	}
	sub := "/annotations"
	if x.saveImages {
		sub = "/dataset"
	}
	return base + sub + "?" + queryDictEncode(r.URL.RawQuery, "action", "download")
}

// pyQuote is Python's urllib.parse.quote with its default safe "/".
func pyQuote(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("_.-~/", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// queryDictEncode is Django's QueryDict.copy(), [key] = value, urlencode():
// the parameters in their order, key set (replaced in place or appended),
// each encoded with quote_plus.
func queryDictEncode(raw, key, value string) string {
	type kv struct{ k, v string }
	var params []kv
	set := false
	for _, part := range strings.Split(raw, "&") {
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		k, _ = url.QueryUnescape(k)
		v, _ = url.QueryUnescape(v)
		if k == key {
			if set {
				continue
			}
			v, set = value, true
		}
		params = append(params, kv{k, v})
	}
	if !set {
		params = append(params, kv{key, value})
	}
	out := make([]string, 0, len(params))
	for _, p := range params {
		out = append(out, url.QueryEscape(p.k)+"="+url.QueryEscape(p.v))
	}
	return strings.Join(out, "&")
}

// requestStatus is GET /api/requests/{rq_id} (2.16+).
func (s *Server) requestStatus(w http.ResponseWriter, r *http.Request) {
	rq := r.PathValue("rq_id")
	s.mu.Lock()
	defer s.mu.Unlock()
	x, ok := s.exports[rq]
	if !ok {
		msg := "There is no request with specified id"
		if !s.ver.atLeast(2, 19) {
			msg += ": " + rq
		}
		writeText(w, http.StatusNotFound, msg)
		return
	}
	s.observe(x)
	writeJSON(w, http.StatusOK, s.requestJSON(x))
}

// requestJSON renders RequestSerializer; the operation's keys by release:
// function_id (null) 2.17-2.30, org_id after job_id from 2.65, lightweight
// from 2.44. The caller holds s.mu.
func (s *Server) requestJSON(x *exportReq) ordered {
	sub := "annotations"
	if x.saveImages {
		sub = "dataset"
	}
	op := ordered{{"type", "export:" + sub}, {"target", "task"}, {"project_id", optID(x.projectID)},
		{"task_id", x.taskID}, {"job_id", nil}}
	if s.ver.atLeast(2, 65) {
		var org *int64
		if t, ok := s.tasks[x.taskID]; ok {
			org = s.orgID(t.Org)
		}
		op = append(op, pair{"org_id", org})
	}
	op = append(op, pair{"format", x.format})
	if s.ver.atLeast(2, 17) && !s.ver.atLeast(2, 31) {
		op = append(op, pair{"function_id", nil})
	}
	if s.ver.atLeast(2, 44) {
		op = append(op, pair{"lightweight", nil})
	}
	var expiry *string
	if !x.finished.IsZero() {
		expiry = ptr(cvatTime(x.finished.Add(24 * time.Hour)))
	}
	var resultURL *string
	message := ""
	switch x.status {
	case stFinished:
		if x.resultURL != "" {
			resultURL = &x.resultURL
		}
	case stFailed:
		message = x.failMsg
	}
	status := x.status
	return ordered{
		{"status", status}, {"message", message}, {"id", x.rqID}, {"operation", op}, {"progress", 0.0},
		{"created_date", cvatTime(x.created)}, {"started_date", optTime(x.started)},
		{"finished_date", optTime(x.finished)}, {"expiry_date", expiry},
		{"owner", ordered{{"id", userID}, {"username", userName}}},
		{"result_url", resultURL}, {"result_id", nil},
	}
}

func optTime(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	return ptr(cvatTime(t))
}

// exportDownload is GET /api/tasks/{id}/dataset/download?rq_id= (2.32+):
// repeatable until the job expires.
func (s *Server) exportDownload(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	t := s.lookupTask(w, r)
	if t == nil {
		s.mu.Unlock()
		return
	}
	x, ok := s.exports[r.URL.Query().Get("rq_id")]
	switch {
	case !ok:
		s.mu.Unlock()
		writeText(w, http.StatusBadRequest, "Unknown export request id")
		return
	case x.taskID != t.ID:
		s.mu.Unlock()
		writeJSON(w, http.StatusBadRequest, []string{"The provided request id does not match exported target or subresource"})
		return
	case x.status != stFinished:
		s.mu.Unlock()
		writeText(w, http.StatusBadRequest, "The export process is not finished")
		return
	case x.cloud:
		s.mu.Unlock()
		writeText(w, http.StatusBadRequest, "The export process has no result file to be downloaded locally")
		return
	case x.fileGone:
		s.mu.Unlock()
		writeJSON(w, http.StatusNotFound, "The exported file has expired, please retry exporting")
		return
	}
	a := s.archive(x, t)
	s.mu.Unlock()
	serveArchive(w, r, a)
}

// archive is one download: the bytes of x's snapshot under the file name
// CVAT gives it. The caller holds s.mu.
type archive struct {
	taskID   int64
	format   string
	snapshot time.Time
	size     int64
	name     string
}

func (s *Server) archive(x *exportReq, t *Task) archive {
	sub := "annotations"
	if x.saveImages {
		sub = "dataset"
	}
	var name string
	switch {
	case s.ver.atLeast(2, 32): // build_annotations_file_name with the id and the updated_date at POST time
		name = fmt.Sprintf("task_%d_%s_%s_%s.zip", t.ID, sub, x.reqUpdated.UTC().Format("2006_01_02_15_04_05"), x.format)
	case s.ver.since(2, 10, 1): // the task's name and current updated_date
		name = fmt.Sprintf("task_%s_%s_%s_%s.zip", t.Name, sub, t.UpdatedDate.UTC().Format("2006_01_02_15_04_05"), x.format)
	default:
		name = fmt.Sprintf("task_%s-%s-%s.zip", t.Name, t.UpdatedDate.UTC().Format("2006_01_02_15_04_05"), x.format)
	}
	return archive{taskID: x.taskID, format: x.format, snapshot: x.snapshot, size: x.size, name: strings.ToLower(name)}
}

// serveArchive streams an export with the headers CVAT's sendfile sends.
func serveArchive(w http.ResponseWriter, r *http.Request, a archive) {
	w.Header().Set("Content-Type", "application/zip")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": a.name}))
	w.Header().Set("Content-Length", strconv.FormatInt(a.size, 10))
	w.WriteHeader(http.StatusOK)
	body := ArchiveReader(a.taskID, a.format, a.snapshot, a.size)
	if n, ok := r.Context().Value(stallKey{}).(int64); ok {
		_, _ = io.CopyN(w, body, n)
		http.NewResponseController(w).Flush()
		<-r.Context().Done()
		return
	}
	buf := make([]byte, 64<<10)
	_, _ = io.CopyBuffer(w, body, buf)
}

// legacyExport is GET /api/tasks/{id}/annotations and /dataset with a
// format: the export API before 2.32 (202 while preparing, 201 when ready,
// then action=download, which works once); 410 Gone from 2.32. Every release
// range answers as its code does; see the comments of legacyV1 and
// legacyOld.
func (s *Server) legacyExport(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	saveImages := strings.HasSuffix(r.URL.Path, "/dataset")
	exportParam := false
	for _, p := range []string{"format", "filename", "action", "location", "cloud_storage_id"} {
		exportParam = exportParam || q.Has(p)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ver.atLeast(2, 32) && saveImages {
		writeText(w, http.StatusGone, gone("save_images=True")) // 2.32+: no task lookup, no data check
		return
	}
	t := s.lookupTask(w, r)
	if t == nil {
		return
	}
	if t.NoData {
		what := "annotations from a task"
		if saveImages {
			what = "a dataset from a task"
		}
		msg := "Exporting " + what + " without data is not allowed"
		if s.ver.atLeast(2, 16) {
			writeText(w, http.StatusBadRequest, msg)
		} else {
			writeJSON(w, http.StatusBadRequest, msg)
		}
		return
	}
	if s.ver.atLeast(2, 32) && exportParam {
		writeText(w, http.StatusGone, gone("save_images=False"))
		return
	}
	if !exportParam || q.Get("format") == "" {
		if saveImages {
			writeJSON(w, http.StatusBadRequest, "Format is not specified")
			return
		}
		writeJSON(w, http.StatusOK, ordered{{"version", 0}, {"tags", []any{}}, {"shapes", []any{}}, {"tracks", []any{}}})
		return
	}
	format := q.Get("format")
	action := strings.ToLower(q.Get("action"))
	if action != "" && action != "download" {
		writeJSON(w, http.StatusBadRequest, []string{"Unexpected action specified for the request"})
		return
	}
	if !s.checkFormat(w, format) {
		return
	}
	cloud, ok := s.location(w, q, t)
	if !ok {
		return
	}
	key := s.rqID(t.ID, format, saveImages)
	if s.ver.atLeast(2, 16) {
		s.legacyV1(w, r, t, key, format, saveImages, cloud, action == "download")
		return
	}
	s.legacyOld(w, r, t, key, format, saveImages, cloud, action == "download")
}

func gone(params string) string {
	return "This endpoint is no longer supported.\nTo initiate the export process, use POST /api/tasks/id/dataset/export?" + params + ".\n" +
		"To check the process status, use GET /api/requests/rq_id,\nwhere rq_id is obtained from the response of the previous request.\n" +
		"To download the prepared file, use the result_url obtained from the response of the previous request.\n"
}

// legacyOld is engine/views.py _export_annotations of 2.3.0-2.15 (empty 202
// bodies). The caller holds s.mu.
//
//	all         a job requested before the task's last save is cancelled and
//	            enqueued again (202), whatever the action
//	2.3-2.10.0  finished: the download sends the file (local) or uploads it
//	            and answers 200 without a body (cloud target); a poll answers
//	            201; a file gone from the cache is exported again (202)
//	2.10.1-2.14.2 finished with a cloud target: 200 without a body (job
//	            deleted); file gone: 500 up to 2.14.0, from 2.14.1 the
//	            download 404s and a poll exports again; a download while the
//	            job runs, or with no job, just polls/enqueues (202)
//	2.14.3-2.15 a download with no finished job (none, running, or just
//	            replaced because the task changed) is a 400 "Export has not
//	            finished"; a cloud location cannot be downloaded (400)
//	all         failed: 500 with the exception text, the job is deleted
func (s *Server) legacyOld(w http.ResponseWriter, r *http.Request, t *Task, key, format string, saveImages, cloud, download bool) {
	v := s.ver
	x := s.exports[key]
	if x != nil && s.outdated(x, t) {
		delete(s.exports, key)
		x = nil
	}
	if v.since(2, 14, 3) && download {
		s.downloadStrict(w, r, x, t, cloud)
		return
	}
	if x != nil {
		s.observe(x)
		switch x.status {
		case stFinished:
			switch {
			case !v.since(2, 10, 1):
				if !x.fileGone {
					if !download {
						writeMaybeJSON(w, http.StatusCreated, nil)
					} else if cloud {
						delete(s.exports, key) // uploaded to the bucket during this call
						writeMaybeJSON(w, http.StatusOK, nil)
					} else {
						s.sendOnce(w, r, x, t)
					}
					return
				}
				// File gone: exported again below.
			case cloud:
				delete(s.exports, key)
				writeMaybeJSON(w, http.StatusOK, nil)
				return
			case x.fileGone && !v.since(2, 14, 1):
				writeJSON(w, http.StatusInternalServerError, "The result file does not exist in export cache")
				return
			case x.fileGone && download:
				writeJSON(w, http.StatusNotFound, "The exported file has expired, please retry exporting")
				return
			case x.fileGone:
				// A poll with the file gone: exported again below.
			case download:
				s.sendOnce(w, r, x, t)
				return
			default:
				writeMaybeJSON(w, http.StatusCreated, nil)
				return
			}
		case stFailed:
			delete(s.exports, key) // CVAT drops the failed job: the next call starts again
			writeJSON(w, http.StatusInternalServerError, x.failMsg)
			return
		default:
			writeMaybeJSON(w, http.StatusAccepted, nil)
			return
		}
	}
	s.enqueue(t, format, saveImages, cloud)
	writeMaybeJSON(w, http.StatusAccepted, nil)
}

// legacyV1 is the legacy GET of 2.16-2.31 (DatasetExportManager version 1),
// which shares its jobs with the request API: result_url points here. The
// caller holds s.mu.
//
//	2.16.x      a job requested before the task's last save is cancelled and
//	            enqueued again, for a download too: 202 {"rq_id"}; no job:
//	            enqueued, 202 {"rq_id"}; a download of an unfinished (or
//	            failed) job: 400 "Export has not finished"; later polls of a
//	            running job: 202 without a body
//	2.17-2.31   a download with no job: 400 "Unknown export request id...";
//	            of an unfinished job: 400 "Dataset export has not been
//	            finished yet"; no change check on a download; every 202
//	            carries {"rq_id"}
//	both        finished with a cloud location: 200 without a body (job
//	            deleted); the download sends the file and deletes the job;
//	            file gone: the download 404s, a poll enqueues again;
//	            failed: 500 with the exception text, the job deleted
func (s *Server) legacyV1(w http.ResponseWriter, r *http.Request, t *Task, key, format string, saveImages, cloud, download bool) {
	v217 := s.ver.atLeast(2, 17)
	x := s.exports[key]
	enqueue := func() {
		// setup_background_job is shared with the request API: a job the
		// legacy GET enqueues has a result_url too (this GET's query plus
		// action=download).
		x := s.enqueue(t, format, saveImages, cloud)
		if !cloud {
			x.resultURL = s.resultURL(r, t.ID, x)
		}
		writeJSON(w, http.StatusAccepted, map[string]string{"rq_id": key})
	}
	if !v217 {
		if x != nil && s.outdated(x, t) {
			delete(s.exports, key)
			x = nil
		}
		if x == nil {
			enqueue()
			return
		}
		if download {
			s.downloadStrict(w, r, x, t, cloud)
			return
		}
	} else {
		if x == nil {
			if download {
				writeText(w, http.StatusBadRequest, "Unknown export request id. Please request export first by sending a request without the action=download parameter.")
				return
			}
			enqueue()
			return
		}
		if download {
			if cloud {
				writeText(w, http.StatusBadRequest, `Action "download" is only supported for a local dataset location`)
				return
			}
			if x.status != stFinished && x.status != stFailed {
				writeText(w, http.StatusBadRequest, "Dataset export has not been finished yet")
				return
			}
		}
	}
	s.observe(x)
	switch x.status {
	case stFinished:
		switch {
		case cloud:
			delete(s.exports, key)
			writeMaybeJSON(w, http.StatusOK, nil)
		case download && x.fileGone:
			writeJSON(w, http.StatusNotFound, "The exported file has expired, please retry exporting")
		case download:
			s.sendOnce(w, r, x, t)
		case x.fileGone || s.outdated(x, t):
			delete(s.exports, key)
			enqueue()
		default:
			writeMaybeJSON(w, http.StatusCreated, nil)
		}
	case stFailed:
		delete(s.exports, key)
		writeJSON(w, http.StatusInternalServerError, x.failMsg)
	default:
		if v217 && s.outdated(x, t) {
			delete(s.exports, key)
			enqueue()
			return
		}
		if v217 {
			writeJSON(w, http.StatusAccepted, map[string]string{"rq_id": key})
			return
		}
		writeMaybeJSON(w, http.StatusAccepted, nil)
	}
}

// downloadStrict is the legacy download of 2.14.3-2.16.x: only a finished
// job's file, with JSON-string 400/404 answers otherwise. The caller holds
// s.mu.
func (s *Server) downloadStrict(w http.ResponseWriter, r *http.Request, x *exportReq, t *Task, cloud bool) {
	switch {
	case cloud:
		writeJSON(w, http.StatusBadRequest, `Action "download" is only supported for a local export location`)
	case x == nil || x.status != stFinished:
		writeJSON(w, http.StatusBadRequest, "Export has not finished")
	case x.fileGone:
		writeJSON(w, http.StatusNotFound, "The exported file has expired, please retry exporting")
	default:
		s.sendOnce(w, r, x, t)
	}
}

// sendOnce is a legacy download: the job is deleted, then the file is sent
// (without holding s.mu). The caller holds s.mu.
func (s *Server) sendOnce(w http.ResponseWriter, r *http.Request, x *exportReq, t *Task) {
	delete(s.exports, x.rqID)
	a := s.archive(x, t)
	s.mu.Unlock()
	defer s.mu.Lock()
	serveArchive(w, r, a)
}

// writeMaybeJSON writes v, or an empty body with CVAT's content type.
func writeMaybeJSON(w http.ResponseWriter, status int, v any) {
	if v != nil {
		writeJSON(w, status, v)
		return
	}
	w.Header().Set("Content-Type", mediaType)
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(status)
}
