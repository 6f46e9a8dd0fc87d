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

type exportReq struct {
	rqID       string
	taskID     int64
	projectID  int64
	format     string
	saveImages bool
	snapshot   time.Time // the task's updated_date when the export was requested
	size       int64
	polls      int
	status     string // queued | started | finished | failed
	failMsg    string // set: the export will fail with this message
	created    time.Time
	started    time.Time
	finished   time.Time
}

// FailNextExport makes the next export of task taskID fail with message
// (CVAT's request status "failed", or a 500 on the legacy API). Calls queue
// up: two calls fail the next two exports.
func (s *Server) FailNextExport(taskID int64, message string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failNext[taskID] = append(s.failNext[taskID], message)
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
// download now, and its size.
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

// rqID builds CVAT's export request id: the key=value form from 2.38, the
// colon form before.
func (s *Server) rqID(taskID int64, format string, saveImages bool) string {
	sub := "annotations"
	if saveImages {
		sub = "dataset"
	}
	if s.ver.atLeast(2, 38) {
		f := strings.NewReplacer(" ", "_", ".", "~").Replace(format)
		return fmt.Sprintf("action=export&target=task&target_id=%d&user_id=%d&format=%s&subresource=%s", taskID, userID, f, sub)
	}
	f := strings.NewReplacer(" ", "_", ".", "@").Replace(format)
	return fmt.Sprintf("export:task-%d-%s-in-%s-format-by-%d", taskID, sub, f, userID)
}

// checkFormat answers 400/405 for unknown/disabled formats.
func checkFormat(w http.ResponseWriter, format string) bool {
	if format == DisabledFormat {
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"detail": "Format " + format + " is disabled"})
		return false
	}
	if !slices.Contains(exporters, format) {
		writeJSON(w, http.StatusBadRequest, []string{"Unknown format specified for the request"})
		return false
	}
	return true
}

// newExport records an export request. The caller holds s.mu.
func (s *Server) newExport(t *Task, format string, saveImages bool) *exportReq {
	x := &exportReq{rqID: s.rqID(t.ID, format, saveImages), taskID: t.ID, projectID: t.ProjectID, format: format,
		saveImages: saveImages, snapshot: t.UpdatedDate, size: s.archiveSize(t), status: "queued", created: s.now()}
	if msgs := s.failNext[t.ID]; len(msgs) > 0 {
		x.failMsg = msgs[0]
		s.failNext[t.ID] = msgs[1:]
	}
	return x
}

// advance moves an export one poll further. The caller holds s.mu.
func (s *Server) advance(x *exportReq) {
	if x.status == "finished" || x.status == "failed" {
		return
	}
	x.polls++
	if x.started.IsZero() && (x.polls > 1 || s.opts.ExportPolls < 0) {
		x.started = s.now()
		x.status = "started"
	}
	if s.opts.ExportPolls < 0 || x.polls > s.opts.ExportPolls {
		if x.started.IsZero() {
			x.started = s.now()
		}
		x.finished = s.now()
		x.status = "finished"
		if x.failMsg != "" {
			x.status = "failed"
		}
	}
}

func (s *Server) exportPost(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.lookupTask(w, r)
	if t == nil {
		return
	}
	if !checkFormat(w, q.Get("format")) {
		return
	}
	if loc := q.Get("location"); loc != "" && loc != "local" {
		badRequest(w, "location", "cloud storage exports are not supported by the fake")
		return
	}
	saveImages := q.Get("save_images") == "true"
	rq := s.rqID(t.ID, q.Get("format"), saveImages)
	if x, ok := s.exports[rq]; ok && (x.status == "queued" || x.status == "started") {
		writeJSON(w, http.StatusConflict, map[string]string{"rq_id": rq})
		return
	}
	s.exports[rq] = s.newExport(t, q.Get("format"), saveImages)
	writeJSON(w, http.StatusAccepted, map[string]string{"rq_id": rq})
}

type operationJSON struct {
	Type        string  `json:"type"`
	Target      string  `json:"target"`
	ProjectID   *int64  `json:"project_id"`
	TaskID      *int64  `json:"task_id"`
	JobID       *int64  `json:"job_id"`
	Format      *string `json:"format"`
	Lightweight *bool   `json:"lightweight"`
}

type requestJSON struct {
	Status       string        `json:"status"`
	Message      string        `json:"message"`
	ID           string        `json:"id"`
	Operation    operationJSON `json:"operation"`
	Progress     float64       `json:"progress"`
	CreatedDate  string        `json:"created_date"`
	StartedDate  *string       `json:"started_date"`
	FinishedDate *string       `json:"finished_date"`
	ExpiryDate   *string       `json:"expiry_date"`
	Owner        struct {
		ID       int64  `json:"id"`
		Username string `json:"username"`
	} `json:"owner"`
	ResultURL *string `json:"result_url"`
	ResultID  *int64  `json:"result_id"`
}

func optTime(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	return ptr(cvatTime(t))
}

func (s *Server) requestStatus(w http.ResponseWriter, r *http.Request) {
	rq := r.PathValue("rq_id")
	s.mu.Lock()
	defer s.mu.Unlock()
	x, ok := s.exports[rq]
	if !ok {
		notFound(w, "Request")
		return
	}
	s.advance(x)
	sub := "annotations"
	if x.saveImages {
		sub = "dataset"
	}
	out := requestJSON{Status: x.status, ID: x.rqID,
		Operation: operationJSON{Type: "export:" + sub, Target: "task", ProjectID: optID(x.projectID),
			TaskID: ptr(x.taskID), Format: ptr(x.format)},
		CreatedDate: cvatTime(x.created), StartedDate: optTime(x.started), FinishedDate: optTime(x.finished)}
	out.Owner.ID, out.Owner.Username = userID, userName
	if !x.finished.IsZero() {
		out.ExpiryDate = ptr(cvatTime(x.finished.Add(24 * time.Hour)))
	}
	switch x.status {
	case "finished":
		out.ResultURL = ptr(s.base(r) + "/api/tasks/" + itoa(x.taskID) + "/dataset/download?rq_id=" + url.QueryEscape(x.rqID))
	case "failed":
		out.Message = x.failMsg
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) exportDownload(w http.ResponseWriter, r *http.Request) {
	id, _ := pathID(r)
	s.mu.Lock()
	x, ok := s.exports[r.URL.Query().Get("rq_id")]
	if !ok || x.taskID != id || x.status != "finished" {
		s.mu.Unlock()
		badRequest(w, "rq_id", "Unknown export request or the export has not finished")
		return
	}
	cp := *x
	s.mu.Unlock()
	serveArchive(w, r, &cp)
}

// serveArchive streams an export with the headers CVAT sends.
func serveArchive(w http.ResponseWriter, r *http.Request, x *exportReq) {
	sub := "annotations"
	if x.saveImages {
		sub = "dataset"
	}
	name := fmt.Sprintf("task_%d_%s_%s_%s.zip", x.taskID, sub, x.snapshot.UTC().Format("2006_01_02_15_04_05"), strings.ToLower(x.format))
	w.Header().Set("Content-Type", "application/zip")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": name}))
	w.Header().Set("Content-Length", strconv.FormatInt(x.size, 10))
	w.WriteHeader(http.StatusOK)
	body := ArchiveReader(x.taskID, x.format, x.snapshot, x.size)
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
// then action=download); 410 Gone from 2.32.
func (s *Server) legacyExport(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	saveImages := strings.HasSuffix(r.URL.Path, "/dataset")
	exportParam := false
	for _, p := range []string{"format", "filename", "action", "location", "cloud_storage_id"} {
		exportParam = exportParam || q.Has(p)
	}
	if s.ver.atLeast(2, 32) && exportParam {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusGone)
		_, _ = io.WriteString(w, "This endpoint is no longer supported. Use POST /api/tasks/{id}/dataset/export instead.")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.lookupTask(w, r)
	if t == nil {
		return
	}
	if !exportParam {
		if saveImages {
			badRequest(w, "format", "This field is required.")
			return
		}
		writeJSON(w, http.StatusOK, ordered{{"version", 0}, {"tags", []any{}}, {"shapes", []any{}}, {"tracks", []any{}}})
		return
	}
	format := q.Get("format")
	if !checkFormat(w, format) {
		return
	}
	key := s.rqID(t.ID, format, saveImages)
	x := s.legacy[key]
	if x != nil && !x.snapshot.Equal(t.UpdatedDate) {
		x = nil // the task changed since: CVAT exports again
	}
	if q.Get("action") == "download" {
		if x == nil || x.status != "finished" {
			badRequest(w, "action", "Exporting is not finished yet")
			return
		}
		cp := *x
		s.mu.Unlock()
		defer s.mu.Lock()
		serveArchive(w, r, &cp)
		return
	}
	rqBody := func(enqueued bool) any {
		// <= 2.15: empty 202; 2.16: rq_id on the enqueuing call; 2.17+: always.
		if s.ver.atLeast(2, 17) || (enqueued && s.ver.atLeast(2, 16)) {
			return map[string]string{"rq_id": key}
		}
		return nil
	}
	if x == nil {
		x = s.newExport(t, format, saveImages)
		x.rqID = key
		s.legacy[key] = x
		writeMaybeJSON(w, http.StatusAccepted, rqBody(true))
		return
	}
	s.advance(x)
	switch x.status {
	case "finished":
		writeMaybeJSON(w, http.StatusCreated, nil)
	case "failed":
		delete(s.legacy, key) // CVAT drops the failed job: the next call starts again
		writeJSON(w, http.StatusInternalServerError, x.failMsg)
	default:
		writeMaybeJSON(w, http.StatusAccepted, rqBody(false))
	}
}

// writeMaybeJSON writes v, or an empty body with CVAT's content type.
func writeMaybeJSON(w http.ResponseWriter, status int, v any) {
	if v != nil {
		writeJSON(w, status, v)
		return
	}
	w.Header().Set("Content-Type", mediaType)
	w.WriteHeader(status)
}
