package localgcs

import (
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// maxMetadataBytes bounds the JSON object resource sent with an upload.
const maxMetadataBytes = 1 << 20

// serveUpload handles an upload request for bucket and reports whether it
// did; requests it leaves (upload ids it does not know, gcloud's
// X-Goog-Upload-Protocol, other upload types) go to fake-gcs-server.
func (s *Server) serveUpload(w http.ResponseWriter, r *http.Request, bucket string) bool {
	q := r.URL.Query()
	if id := q.Get("upload_id"); id != "" {
		sess := s.sessions.get(id)
		if sess == nil {
			return false
		}
		switch r.Method {
		case http.MethodPut, http.MethodPost:
			s.chunk(w, r, sess)
		case http.MethodDelete:
			s.cancel(w, sess)
		default:
			writeError(w, &apiError{code: http.StatusMethodNotAllowed, reason: "invalid", msg: "method " + r.Method + " on an upload session"})
		}
		return true
	}
	if r.Method != http.MethodPost || r.Header.Get("X-Goog-Upload-Protocol") != "" {
		return false
	}
	switch q.Get("uploadType") {
	case "resumable":
		s.startResumable(w, r, bucket)
	case "multipart":
		s.multipart(w, r, bucket)
	case "media":
		s.media(w, r, bucket)
	default:
		return false
	}
	return true
}

// startResumable opens a resumable upload session: 200 with the session URI
// in Location and no body, as GCS answers. The object's metadata and
// preconditions are given now and applied when the upload completes.
func (s *Server) startResumable(w http.ResponseWriter, r *http.Request, bucket string) {
	body, err := requestBody(r)
	if err != nil {
		writeError(w, err)
		return
	}
	spec, err := readSpec(r, bucket, body)
	if err != nil {
		writeError(w, err)
		return
	}
	if spec.ContentType == "" {
		spec.ContentType = r.Header.Get("X-Upload-Content-Type")
	}
	total := int64(-1)
	if v := r.Header.Get("X-Upload-Content-Length"); v != "" {
		if total, err = strconv.ParseInt(v, 10, 64); err != nil || total < 0 {
			writeError(w, invalid("X-Upload-Content-Length %q is not a size", v))
			return
		}
	}
	up, err := s.newUpload(bucket)
	if err != nil {
		writeError(w, err)
		return
	}
	sess := s.sessions.add(spec, up, total)
	loc := "http://" + r.Host + "/upload/storage/v1/b/" + url.PathEscape(bucket) +
		"/o?uploadType=resumable&name=" + url.QueryEscape(spec.Name) + "&upload_id=" + sess.id
	w.Header().Set("Location", loc)
	w.Header().Set("X-GUploader-UploadID", sess.id)
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusOK)
}

// chunk receives one request of a resumable upload: data at an offset
// (Content-Range "bytes first-last/total", total "*" while unknown), the
// end of the upload ("bytes */size"), or a status query ("bytes */*").
//
// As on GCS, bytes the session already holds are skipped (a chunk resent
// because its answer was lost), an offset past them is a 400, a chunk is
// persisted whole before it is acknowledged, and a request that ends before
// its Content-Range does leaves the session as it was. A chunk is
// acknowledged with 308 and the Range held, or, to clients that send
// X-GUploader-No-308 (the Go client), with 200 and
// X-Http-Status-Code-Override: 308. The last request is answered with the
// object resource, or the error that ended the upload; the session replays
// that answer to any later request.
func (s *Server) chunk(w http.ResponseWriter, r *http.Request, sess *session) {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	defer sess.touch()
	if sess.final != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		sess.final.write(w)
		return
	}
	cr, err := parseContentRange(r.Header.Get("Content-Range"))
	if err != nil {
		writeError(w, err)
		return
	}
	up := sess.up
	switch {
	case cr.none:
	case cr.first < 0 && cr.total < 0:
		writeIncomplete(w, r, up.size)
		return
	case cr.first < 0:
		if cr.total != up.size {
			writeError(w, invalid("Content-Range %q ends the upload at %d bytes, but %d were uploaded", cr.raw, cr.total, up.size))
			return
		}
		s.finish(w, r, sess)
		return
	}
	body, err := requestBody(r)
	if err != nil {
		writeError(w, err)
		return
	}
	if cr.none {
		// No Content-Range: the body is the rest of the upload.
		if err := up.append(body, -1); err != nil {
			writeError(w, err)
			return
		}
		s.finish(w, r, sess)
		return
	}
	n := cr.last - cr.first + 1
	switch {
	case cr.first > up.size:
		writeError(w, invalid("Invalid request. According to the Content-Range header, the upload offset is %d byte(s), which exceeds already uploaded size of %d byte(s).", cr.first, up.size))
		return
	case r.ContentLength >= 0 && r.ContentLength != n && r.Header.Get("Content-Encoding") == "":
		writeError(w, invalid("Content-Range %q announces %d bytes, Content-Length %d", cr.raw, n, r.ContentLength))
		return
	case cr.total >= 0 && cr.last >= cr.total:
		writeError(w, invalid("Content-Range %q goes past the object's size", cr.raw))
		return
	case sess.total >= 0 && (cr.last >= sess.total || cr.total >= 0 && cr.total != sess.total):
		writeError(w, invalid("Content-Range %q disagrees with X-Upload-Content-Length %d", cr.raw, sess.total))
		return
	}
	if skip := up.size - cr.first; skip > 0 {
		if m, err := io.CopyN(io.Discard, body, min(skip, n)); err != nil {
			writeError(w, clientError(fmt.Errorf("resent chunk ended after %d bytes: %w", m, err)))
			return
		}
	}
	if rest := cr.last + 1 - up.size; rest > 0 {
		if err := up.append(body, rest); err != nil {
			writeError(w, err)
			return
		}
	}
	if cr.total >= 0 && up.size == cr.total {
		s.finish(w, r, sess)
		return
	}
	writeIncomplete(w, r, up.size)
}

// finish completes sess with the request that carried its last bytes.
func (s *Server) finish(w http.ResponseWriter, r *http.Request, sess *session) {
	resp := s.store.commit(sess.spec, sess.up, r.Header.Values("X-Goog-Hash"))
	sess.up, sess.final = nil, &resp
	resp.write(w)
}

// cancel ends sess without an object: 499, as GCS answers the DELETE of a
// session.
func (s *Server) cancel(w http.ResponseWriter, sess *session) {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	defer sess.touch()
	if sess.final == nil {
		sess.up.discard()
		sess.up = nil
		sess.final = &response{status: 499}
	}
	sess.final.write(w)
}

func writeIncomplete(w http.ResponseWriter, r *http.Request, size int64) {
	if size > 0 {
		w.Header().Set("Range", "bytes=0-"+strconv.FormatInt(size-1, 10))
	}
	w.Header().Set("Content-Length", "0")
	if r.Header.Get("X-GUploader-No-308") == "yes" {
		w.Header().Set("X-Http-Status-Code-Override", "308")
		w.WriteHeader(http.StatusOK)
		return
	}
	w.WriteHeader(http.StatusPermanentRedirect)
}

// multipart stores a single-request upload: a multipart/related body of
// the JSON object resource, then the media, streamed to disk.
func (s *Server) multipart(w http.ResponseWriter, r *http.Request, bucket string) {
	mediaType, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || !strings.HasPrefix(mediaType, "multipart/") || params["boundary"] == "" {
		writeError(w, invalid("a multipart upload needs a multipart/related Content-Type with a boundary, got %q", r.Header.Get("Content-Type")))
		return
	}
	body, err := requestBody(r)
	if err != nil {
		writeError(w, err)
		return
	}
	mr := multipart.NewReader(body, params["boundary"])
	part, err := mr.NextPart()
	if err != nil {
		writeError(w, invalid("multipart upload: no metadata part: %v", err))
		return
	}
	spec, err := readSpec(r, bucket, part)
	if err != nil {
		writeError(w, err)
		return
	}
	media, err := mr.NextPart()
	if err != nil {
		writeError(w, invalid("multipart upload: no media part: %v", err))
		return
	}
	if spec.ContentType == "" {
		spec.ContentType = media.Header.Get("Content-Type")
	}
	s.single(w, r, spec, media, func() error {
		if _, err := mr.NextPart(); err != io.EOF {
			return invalid("multipart upload: more than two parts")
		}
		return nil
	})
}

// media stores a single-request upload whose body is the media: the name
// and preconditions in the query, the content type in Content-Type, custom
// metadata in X-Goog-Meta-* headers (as fake-gcs-server accepts).
func (s *Server) media(w http.ResponseWriter, r *http.Request, bucket string) {
	spec, err := newSpec(r, bucket, nil)
	if err != nil {
		writeError(w, err)
		return
	}
	spec.ContentType = r.Header.Get("Content-Type")
	for k, v := range r.Header {
		if name, ok := strings.CutPrefix(strings.ToLower(k), "x-goog-meta-"); ok && len(v) > 0 {
			if spec.Metadata == nil {
				spec.Metadata = map[string]string{}
			}
			spec.Metadata[name] = v[0]
		}
	}
	body, err := requestBody(r)
	if err != nil {
		writeError(w, err)
		return
	}
	s.single(w, r, spec, body, nil)
}

// single spools media and commits it as spec's object; check, if set, runs
// once the media is read.
func (s *Server) single(w http.ResponseWriter, r *http.Request, spec *objectSpec, media io.Reader, check func() error) {
	up, err := s.newUpload(spec.Bucket)
	if err != nil {
		writeError(w, err)
		return
	}
	if err := up.append(media, -1); err != nil {
		up.discard()
		writeError(w, err)
		return
	}
	if check != nil {
		if err := check(); err != nil {
			up.discard()
			writeError(w, err)
			return
		}
	}
	resp := s.store.commit(spec, up, r.Header.Values("X-Goog-Hash"))
	resp.write(w)
}

// newUpload starts spooling an upload into bucket, which must exist (GCS
// answers 404 at once, not when the upload completes).
func (s *Server) newUpload(bucket string) (*upload, error) {
	if !s.store.bucketExists(bucket) {
		return nil, errNoBucket
	}
	up, err := s.spool.create()
	if err != nil {
		return nil, internalError(err)
	}
	return up, nil
}

// requestBody is r's body, decompressed when the client sent it gzipped.
func requestBody(r *http.Request) (io.Reader, error) {
	if !strings.EqualFold(r.Header.Get("Content-Encoding"), "gzip") {
		return r.Body, nil
	}
	zr, err := gzip.NewReader(r.Body)
	if err != nil {
		return nil, invalid("Content-Encoding gzip: %v", err)
	}
	return zr, nil
}

// objectMeta is the part of the JSON object resource an upload may set.
type objectMeta struct {
	Name               string            `json:"name"`
	Bucket             string            `json:"bucket"`
	ContentType        string            `json:"contentType"`
	ContentEncoding    string            `json:"contentEncoding"`
	ContentDisposition string            `json:"contentDisposition"`
	ContentLanguage    string            `json:"contentLanguage"`
	CacheControl       string            `json:"cacheControl"`
	StorageClass       string            `json:"storageClass"`
	CustomTime         string            `json:"customTime"`
	Md5Hash            string            `json:"md5Hash"`
	Crc32c             string            `json:"crc32c"`
	Metadata           map[string]string `json:"metadata"`
	Retention          *struct {
		Mode            string `json:"mode"`
		RetainUntilTime string `json:"retainUntilTime"`
	} `json:"retention"`
}

// readMetadata decodes an object resource; an empty body is no metadata.
func readMetadata(r io.Reader) (*objectMeta, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxMetadataBytes+1))
	if err != nil {
		return nil, clientError(fmt.Errorf("read the object metadata: %w", err))
	}
	if len(b) > maxMetadataBytes {
		return nil, invalid("object metadata over %d bytes", maxMetadataBytes)
	}
	var m objectMeta
	if len(strings.TrimSpace(string(b))) == 0 {
		return &m, nil
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, invalid("object metadata is not a JSON object resource: %v", err)
	}
	return &m, nil
}

// readSpec is the upload r asks for, its object resource read from meta.
func readSpec(r *http.Request, bucket string, meta io.Reader) (*objectSpec, error) {
	m, err := readMetadata(meta)
	if err != nil {
		return nil, err
	}
	return newSpec(r, bucket, m)
}

// objectSpec is what an upload asks for: the object, its attributes, the
// checksums the client declared and the preconditions.
type objectSpec struct {
	Bucket, Name       string
	ContentType        string
	ContentEncoding    string
	ContentDisposition string
	ContentLanguage    string
	CacheControl       string
	StorageClass       string
	CustomTime         time.Time
	Metadata           map[string]string
	PredefinedACL      string
	RetentionMode      string
	RetainUntil        time.Time
	MD5, CRC32C        string // declared, base64; checked when the upload completes
	Cond               conditions
	Projection         string
}

func newSpec(r *http.Request, bucket string, m *objectMeta) (*objectSpec, error) {
	if m == nil {
		m = &objectMeta{}
	}
	q := r.URL.Query()
	name := q.Get("name")
	switch {
	case name == "":
		name = m.Name
	case m.Name != "" && m.Name != name:
		return nil, invalid("Value '%s' in content does not agree with value '%s'.", m.Name, name)
	}
	if name == "" {
		return nil, &apiError{code: http.StatusBadRequest, reason: "required", msg: "Required"}
	}
	if err := checkName(name); err != nil {
		return nil, err
	}
	cond, err := parseConditions(q)
	if err != nil {
		return nil, err
	}
	spec := &objectSpec{
		Bucket: bucket, Name: name,
		ContentType: m.ContentType, ContentEncoding: m.ContentEncoding, ContentDisposition: m.ContentDisposition,
		ContentLanguage: m.ContentLanguage, CacheControl: m.CacheControl, StorageClass: m.StorageClass,
		Metadata: m.Metadata, PredefinedACL: q.Get("predefinedAcl"),
		MD5: m.Md5Hash, CRC32C: m.Crc32c, Cond: cond, Projection: q.Get("projection"),
	}
	if v := q.Get("contentEncoding"); v != "" {
		spec.ContentEncoding = v
	}
	if m.CustomTime != "" {
		if spec.CustomTime, err = time.Parse(time.RFC3339Nano, m.CustomTime); err != nil {
			return nil, invalid("customTime %q is not an RFC 3339 time", m.CustomTime)
		}
	}
	if m.Retention != nil {
		spec.RetentionMode = m.Retention.Mode
		if m.Retention.RetainUntilTime != "" {
			if spec.RetainUntil, err = time.Parse(time.RFC3339Nano, m.Retention.RetainUntilTime); err != nil {
				return nil, invalid("retention.retainUntilTime %q is not an RFC 3339 time", m.Retention.RetainUntilTime)
			}
		}
	}
	return spec, nil
}

// conditions are an upload's preconditions on the live generation.
type conditions struct {
	genMatch, genNotMatch, metaMatch, metaNotMatch *int64
}

func parseConditions(q url.Values) (conditions, error) {
	var c conditions
	for _, p := range []struct {
		name string
		dst  **int64
	}{
		{"ifGenerationMatch", &c.genMatch}, {"ifGenerationNotMatch", &c.genNotMatch},
		{"ifMetagenerationMatch", &c.metaMatch}, {"ifMetagenerationNotMatch", &c.metaNotMatch},
	} {
		v := q.Get(p.name)
		if v == "" {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return c, invalid("Invalid argument: %s=%q is not a number", p.name, v)
		}
		*p.dst = &n
	}
	return c, nil
}

// met reports whether c holds for the live generation gen (0: no object).
// The filesystem backend keeps one metageneration, 1, per generation.
func (c conditions) met(gen int64) bool {
	meta := int64(0)
	if gen != 0 {
		meta = 1
	}
	for _, t := range []struct {
		want     *int64
		have     int64
		mustDiff bool
	}{{c.genMatch, gen, false}, {c.genNotMatch, gen, true}, {c.metaMatch, meta, false}, {c.metaNotMatch, meta, true}} {
		if t.want != nil && (*t.want == t.have) == t.mustDiff {
			return false
		}
	}
	return true
}

// contentRange is a parsed Content-Range of an upload request. first and
// last are -1 for "*", total is -1 for "*"; none marks a missing header.
type contentRange struct {
	raw                string
	first, last, total int64
	none               bool
}

func parseContentRange(v string) (contentRange, error) {
	cr := contentRange{raw: v, first: -1, last: -1, total: -1}
	if v == "" {
		cr.none = true
		return cr, nil
	}
	bad := invalid("Content-Range %q is not bytes <first>-<last>/<total or *> or bytes */<total or *>", v)
	spec, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return cr, bad
	}
	rng, total, ok := strings.Cut(spec, "/")
	if !ok {
		return cr, bad
	}
	if total != "*" {
		n, err := strconv.ParseInt(total, 10, 64)
		if err != nil || n < 0 {
			return cr, bad
		}
		cr.total = n
	}
	if rng == "*" {
		return cr, nil
	}
	a, b, ok := strings.Cut(rng, "-")
	if !ok {
		return cr, bad
	}
	first, err1 := strconv.ParseInt(a, 10, 64)
	last, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || first < 0 || last < first {
		return cr, bad
	}
	cr.first, cr.last = first, last
	return cr, nil
}

// errNoBucket is GCS's answer for an upload into a bucket that does not
// exist.
var errNoBucket = &apiError{code: http.StatusNotFound, reason: "notFound", msg: "The specified bucket does not exist."}

// errPrecondition is GCS's answer when a precondition does not hold.
var errPrecondition = &apiError{code: http.StatusPreconditionFailed, reason: "conditionNotMet",
	msg: "At least one of the pre-conditions you specified did not hold."}

// apiError is an error answer in the JSON API's format.
type apiError struct {
	code        int
	reason, msg string
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s: %s", e.code, e.reason, e.msg) }

func invalid(format string, args ...any) *apiError {
	return &apiError{code: http.StatusBadRequest, reason: "invalid", msg: fmt.Sprintf(format, args...)}
}

// clientError is a request whose body could not be read: the client went
// away or sent less than it announced.
func clientError(err error) *apiError {
	return &apiError{code: http.StatusBadRequest, reason: "invalid", msg: err.Error()}
}

func internalError(err error) *apiError {
	return &apiError{code: http.StatusInternalServerError, reason: "backendError", msg: "embedded GCS: " + err.Error()}
}

// response is a complete answer, kept to be replayed.
type response struct {
	status int
	header http.Header
	body   []byte
}

func errorResponse(err error) response {
	var e *apiError
	if !errors.As(err, &e) {
		e = internalError(err)
	}
	type item struct {
		Domain  string `json:"domain"`
		Reason  string `json:"reason"`
		Message string `json:"message"`
	}
	var body struct {
		Error struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
			Errors  []item `json:"errors"`
		} `json:"error"`
	}
	body.Error.Code, body.Error.Message = e.code, e.msg
	body.Error.Errors = []item{{Domain: "global", Reason: e.reason, Message: e.msg}}
	b, _ := json.Marshal(body) // strings and ints always encode
	return response{status: e.code, header: http.Header{"Content-Type": {"application/json; charset=UTF-8"}}, body: b}
}

func writeError(w http.ResponseWriter, err error) {
	resp := errorResponse(err)
	resp.write(w)
}

func (r *response) write(w http.ResponseWriter) {
	for k, v := range r.header {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(r.body)))
	w.WriteHeader(r.status)
	_, _ = w.Write(r.body)
}
