// Package cvatfake is a CVAT server fake over real HTTP for tests. It speaks
// CVAT's wire format (checked against CVAT's OpenAPI schema by this package's
// tests) for the endpoints cvat-sync uses and behaves like the release it
// impersonates (Options.Version, changeable with SetVersion): the export API
// generations and their quirks (409 bodies, result_url, target storage and
// use_default_location, downloads that work once, re-enqueued exports),
// authentication schemes and server sessions, list filters, absolute links
// built from the proxies' headers, and a Date header from its own clock. It
// also produces and delivers signed webhook bodies like CVAT.
//
//	f := cvatfake.New(t, cvatfake.Options{Version: "2.64.0"})
//	p := f.AddProject(cvatfake.Project{Name: "p"})
//	task := f.AddTask(cvatfake.Task{Name: "t", ProjectID: p.ID})
//	job := f.AddJob(cvatfake.Job{TaskID: task.ID})
//	// client: BaseURL f.URL(), Token f.Token()
//
// Test controls: Inject (faults, optionally for one query value or with a
// content type), FailNextExport and FailExports, StartExports, ExpireExports,
// DropExportFiles, HideTask, SetVersion, SetClockOffset, and a record of every
// call (Calls, CallsTo) and of the server sessions created (Sessions).
//
// Exports hold the task's state when their job starts (as CVAT's worker reads
// the database when it runs), not when they were requested: a task saved
// while an export is queued changes what the archive holds, and a task saved
// after the job started does not.
package cvatfake

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Defaults for Options.
const (
	DefaultVersion  = "2.64.0"
	DefaultToken    = "fake-cvat-token"
	DefaultUsername = "user7"
	DefaultPassword = "fake-cvat-password"
)

// The user every request acts as (CVAT's test asset user7).
const (
	userID   = 10
	userName = "user7"
)

// Options configure a Server. Zero values take the documented defaults.
type Options struct {
	Version     string           // CVAT version impersonated; default DefaultVersion
	Token       string           // accepted as "Token <t>" and, from 2.48, "Bearer <t>"; default DefaultToken
	Username    string           // Basic auth; default DefaultUsername
	Password    string           // default DefaultPassword
	ExportPolls int              // observations (status polls, legacy polls, refused POSTs) an export stays queued/started before it is done; default 2, negative = done at the first
	ArchiveSize int64            // default archive size when a Task has none; default 4096
	ExternalURL string           // scheme://host CVAT believes it is served at (absolute links: next, result_url, url fields), as behind a proxy; default from the request (X-Forwarded-Proto, X-Forwarded-Host, Host) as Django builds it
	Now         func() time.Time // clock for dates and the Date header; default time.Now
}

// TB is the part of testing.TB New needs.
type TB interface {
	Helper()
	Cleanup(func())
	Fatalf(string, ...any)
}

// Server is a running CVAT fake. All methods are safe for concurrent use.
type Server struct {
	srv *httptest.Server

	mu         sync.Mutex
	opts       Options // Version changes with SetVersion, under mu
	ver        version // parsed opts.Version, under mu
	mux        *http.ServeMux
	offset     time.Duration // SetClockOffset
	projects   map[int64]*Project
	tasks      map[int64]*Task
	jobs       map[int64]*Job
	orgs       map[string]int64
	nextID     int64
	exports    map[string]*exportReq // by CVAT's RQ job id (shared by both export APIs from 2.16)
	failNext   map[int64][]string    // task id -> messages of the next exports to fail
	failAlways map[int64]string      // task id -> message every export fails with (FailExports)
	hidden     map[int64]bool        // tasks the credentials may not see (HideTask)
	sessions   map[string]bool       // server-side sessions (2.3-2.16 Token logins)
	hooks      map[int64]*webhook
	nextHook   int64
	nextDel    int64
	hk         hookState // webhooks.go, deliveries.go: the delivery log and pending retries
	faults     []*Fault
	calls      []Call
	lastTime   time.Time
}

// New starts a fake on a loopback port and closes it when t's test ends.
func New(t TB, opts Options) *Server {
	t.Helper()
	s, err := Start(opts)
	if err != nil {
		t.Fatalf("cvatfake: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// Start starts a fake; the caller must Close it. New is the usual entry point
// in tests; Start suits benchmarks' and programs' own lifecycles.
func Start(opts Options) (*Server, error) {
	if opts.Version == "" {
		opts.Version = DefaultVersion
	}
	v, ok := parseVersion(opts.Version)
	if !ok {
		return nil, fmt.Errorf("unparsable Version %q", opts.Version)
	}
	if opts.Token == "" {
		opts.Token = DefaultToken
	}
	if opts.Username == "" {
		opts.Username = DefaultUsername
	}
	if opts.Password == "" {
		opts.Password = DefaultPassword
	}
	if opts.ExportPolls == 0 {
		opts.ExportPolls = 2
	}
	if opts.ArchiveSize <= 0 {
		opts.ArchiveSize = 4096
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Server{
		opts:       opts,
		ver:        v,
		projects:   map[int64]*Project{},
		tasks:      map[int64]*Task{},
		jobs:       map[int64]*Job{},
		orgs:       map[string]int64{},
		exports:    map[string]*exportReq{},
		failNext:   map[int64][]string{},
		failAlways: map[int64]string{},
		hidden:     map[int64]bool{},
		sessions:   map[string]bool{},
		hooks:      map[int64]*webhook{},
		nextID:     100,
	}
	s.mux = s.routes(v)
	s.srv = httptest.NewServer(s)
	return s, nil
}

// URL is the fake's base URL (http://127.0.0.1:port).
func (s *Server) URL() string { return s.srv.URL }

// Version is the CVAT version impersonated.
func (s *Server) Version() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opts.Version
}

// SetVersion makes the fake impersonate another release from its next
// request on, as when CVAT is upgraded (or rolled back) under a running
// client. Tasks, webhooks and export jobs stay.
func (s *Server) SetVersion(v string) error {
	pv, ok := parseVersion(v)
	if !ok {
		return fmt.Errorf("cvatfake: unparsable version %q", v)
	}
	mux := s.routes(pv)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opts.Version, s.ver, s.mux = v, pv, mux
	return nil
}

// Token is the accepted access token.
func (s *Server) Token() string { return s.opts.Token }

// BasicAuth is the accepted user name and password.
func (s *Server) BasicAuth() (user, password string) { return s.opts.Username, s.opts.Password }

// Client is an *http.Client for the fake.
func (s *Server) Client() *http.Client { return s.srv.Client() }

// Close stops the server and waits for its handlers.
func (s *Server) Close() {
	s.srv.CloseClientConnections()
	s.srv.Close()
}

// SetClockOffset sets CVAT's clock to the host's plus d (negative: CVAT is
// behind): the Date header and every date CVAT hands out from now on.
func (s *Server) SetClockOffset(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.offset = d
}

// Clock is CVAT's current time (Options.Now plus the clock offset).
func (s *Server) Clock() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.clock()
}

// clock reads CVAT's clock. The caller holds s.mu.
func (s *Server) clock() time.Time { return s.opts.Now().Add(s.offset).UTC() }

// HideTask makes task id invisible to the fake's credentials, as a
// permission change in CVAT does: listings omit it and every request on it
// (read, export) answers CVAT's 403. hidden=false shows it again.
func (s *Server) HideTask(id int64, hidden bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if hidden {
		s.hidden[id] = true
	} else {
		delete(s.hidden, id)
	}
}

// Sessions is the number of server-side sessions the fake created: CVAT
// 2.3-2.16 log a Token-authenticated request without a valid session cookie
// in, which creates a session and answers Set-Cookie.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// routes builds the URL map of release v.
func (s *Server) routes(v version) *http.ServeMux {
	m := http.NewServeMux()
	m.HandleFunc("GET /api/server/about", s.about)
	m.HandleFunc("GET /api/server/annotation/formats", s.formats)
	m.HandleFunc("GET /api/users/self", s.usersSelf)
	m.HandleFunc("GET /api/tasks", s.listTasks)
	m.HandleFunc("GET /api/tasks/{id}", s.getTask)
	m.HandleFunc("GET /api/jobs", s.listJobs)
	m.HandleFunc("GET /api/jobs/{id}", s.getJob)
	m.HandleFunc("GET /api/projects/{id}", s.getProject)
	if v.atLeast(2, 16) {
		m.HandleFunc("POST /api/tasks/{id}/dataset/export", s.exportPost)
		m.HandleFunc("GET /api/requests/{rq_id}", s.requestStatus)
	}
	if v.atLeast(2, 32) {
		m.HandleFunc("GET /api/tasks/{id}/dataset/download", s.exportDownload)
	}
	m.HandleFunc("GET /api/tasks/{id}/annotations", s.legacyExport)
	m.HandleFunc("GET /api/tasks/{id}/annotations/", s.legacyExport) // CVAT: r'annotations/?$'
	m.HandleFunc("GET /api/tasks/{id}/dataset", s.legacyExport)
	s.webhookRoutes(m)
	return m
}

// Call is one request the fake received. It never holds a credential.
type Call struct {
	Method string
	Route  string // route template, e.g. /api/tasks/{id}; "" for unknown paths
	Path   string // the real path
	Query  url.Values
	Auth   string // scheme sent: "bearer", "token", "basic", "" (none) or "other"
	Org    string // X-Organization
	Status int    // 0 when the connection was dropped
	Time   time.Time
}

// Calls returns every call so far, in arrival order of completion.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Call(nil), s.calls...)
}

// CallsTo returns the calls to one method and route template.
func (s *Server) CallsTo(method, route string) []Call {
	var out []Call
	for _, c := range s.Calls() {
		if c.Method == method && c.Route == route {
			out = append(out, c)
		}
	}
	return out
}

// ResetCalls forgets the recorded calls.
func (s *Server) ResetCalls() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = nil
}

// Fault makes matching requests misbehave. It applies to the next Times
// matching calls (0: until ClearFaults); the first matching fault wins.
type Fault struct {
	Method      string        // "" matches any
	Route       string        // route template, "" matches any
	Path        string        // exact request path (e.g. "/api/tasks/42"), "" matches any
	Query       url.Values    // every value listed must be in the request's query (e.g. {"page": {"3"}}): one page of a listing
	Status      int           // answer this status instead of handling the call
	Body        string        // body of that answer; default {"detail": "<status text>"}
	ContentType string        // content type of that answer; default CVAT's JSON type (e.g. "text/html" for a proxy's page)
	RetryAfter  string        // Retry-After header of that answer
	Delay       time.Duration // wait this long first (cut short when the client goes away)
	Drop        bool          // close the connection without answering
	StallAfter  int64         // downloads only: send this many bytes, then stall until the client goes away
	Times       int

	used int
}

// Inject adds a fault.
func (s *Server) Inject(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &f)
}

// ClearFaults removes every fault.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

func (f *Fault) matches(r *http.Request, route string) bool {
	if (f.Method != "" && f.Method != r.Method) || (f.Route != "" && f.Route != route) || (f.Path != "" && f.Path != r.URL.Path) {
		return false
	}
	q := r.URL.Query()
	for k, vs := range f.Query {
		for _, v := range vs {
			if !containsString(q[k], v) {
				return false
			}
		}
	}
	return true
}

func containsString(list []string, v string) bool {
	for _, e := range list {
		if e == v {
			return true
		}
	}
	return false
}

func (s *Server) takeFault(r *http.Request, route string) *Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range s.faults {
		if !f.matches(r, route) {
			continue
		}
		f.used++
		if f.Times > 0 && f.used >= f.Times {
			s.faults = append(s.faults[:i:i], s.faults[i+1:]...)
		}
		cp := *f
		return &cp
	}
	return nil
}

type stallKey struct{}

type recorder struct {
	http.ResponseWriter
	status int
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// ServeHTTP records the call, applies faults and auth, then routes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	mux := s.mux
	// Django (through gunicorn/uvicorn) stamps every answer from CVAT's
	// clock; a CVAT whose clock is off shows it here.
	w.Header().Set("Date", s.clock().Format(http.TimeFormat))
	s.mu.Unlock()
	_, pattern := mux.Handler(r)
	route := pattern
	if i := strings.IndexByte(pattern, ' '); i >= 0 {
		route = pattern[i+1:]
	}
	c := Call{Method: r.Method, Route: route, Path: r.URL.Path, Query: r.URL.Query(), Auth: authScheme(r), Org: r.Header.Get("X-Organization")}
	rec := &recorder{ResponseWriter: w}
	defer func() {
		c.Status = rec.status
		c.Time = time.Now()
		s.mu.Lock()
		s.calls = append(s.calls, c)
		s.mu.Unlock()
	}()

	if f := s.takeFault(r, route); f != nil {
		if f.Delay > 0 {
			t := time.NewTimer(f.Delay)
			select {
			case <-r.Context().Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		if f.Drop {
			if hj, ok := w.(http.Hijacker); ok {
				if conn, _, err := hj.Hijack(); err == nil {
					conn.Close()
				}
			}
			return
		}
		if f.Status != 0 {
			if f.RetryAfter != "" {
				w.Header().Set("Retry-After", f.RetryAfter)
			}
			body := f.Body
			if body == "" {
				body = fmt.Sprintf(`{"detail": %q}`, http.StatusText(f.Status))
			}
			ct := f.ContentType
			if ct == "" {
				ct = mediaType
			}
			w.Header().Set("Content-Type", ct)
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			rec.WriteHeader(f.Status)
			_, _ = rec.Write([]byte(body))
			return
		}
		if f.StallAfter > 0 {
			r = r.WithContext(context.WithValue(r.Context(), stallKey{}, f.StallAfter))
		}
	}

	if pattern == "" {
		// No such route in this release: Django's own page, not DRF's JSON.
		djangoNotFound(rec)
		return
	}
	switch s.authenticate(rec, r) {
	case authFailed:
		return
	case anonymous:
		if route != "/api/server/about" { // permission_classes=[]: open to anyone
			writeUnauthorized(rec, "Authentication credentials were not provided.")
			return
		}
	}
	if org := r.Header.Get("X-Organization"); org != "" {
		s.mu.Lock()
		_, ok := s.orgs[org]
		v := s.ver
		s.mu.Unlock()
		switch {
		case ok:
		case !v.atLeast(2, 4):
			// 2.3's iam/views.py get_context raises Django's BadRequest,
			// which DRF does not handle: Django's 400 page.
			writeText(rec, http.StatusBadRequest, "\n<!doctype html>\n<html lang=\"en\">\n<head>\n  <title>Bad Request (400)</title>\n</head>\n<body>\n  <h1>Bad Request (400)</h1><p></p>\n</body>\n</html>\n")
			return
		default:
			writeJSON(rec, http.StatusNotFound, map[string]string{"detail": org + " organization does not exist."})
			return
		}
	}
	mux.ServeHTTP(rec, r)
}

// djangoNotFound is what Django answers (DEBUG off) for a path no route
// matches, e.g. the request-queue API on a release before 2.16.
func djangoNotFound(w http.ResponseWriter) {
	const page = "\n<!doctype html>\n<html lang=\"en\">\n<head>\n  <title>Not Found</title>\n</head>\n<body>\n  <h1>Not Found</h1><p>The requested resource was not found on this server.</p>\n</body>\n</html>\n"
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(page)))
	w.WriteHeader(http.StatusNotFound)
	_, _ = w.Write([]byte(page))
}

func authScheme(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if h == "" {
		return ""
	}
	scheme, _, _ := strings.Cut(h, " ")
	switch strings.ToLower(scheme) {
	case "bearer", "token", "basic":
		return strings.ToLower(scheme)
	}
	return "other"
}

type authResult int

const (
	anonymous  authResult = iota // no authenticator recognised the request
	authorized                   // a credential was accepted
	authFailed                   // an authenticator refused it; the 401 is written
)

const sessionCookie = "sessionid"

// authenticate runs CVAT's DEFAULT_AUTHENTICATION_CLASSES in order, as DRF
// does on every request (even the open /api/server/about: a wrong token is a
// 401 there too):
//
//	2.3-2.16  TokenAuthenticationEx (Token; logs in: a session and Set-Cookie
//	          unless the request carries a valid session), signed URLs,
//	          SessionAuthentication, Basic
//	2.17-2.47 TokenAuthentication, (signed URLs until 2.4x), Session, Basic
//	2.48+     Token, AccessTokenAuthentication (Bearer), Session, Basic
//
// A Bearer header before 2.48 matches no authenticator: anonymous.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request) authResult {
	s.mu.Lock()
	v := s.ver
	s.mu.Unlock()
	scheme, cred, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	switch strings.ToLower(scheme) {
	case "token":
		if cred != s.opts.Token {
			writeUnauthorized(w, "Invalid token.")
			return authFailed
		}
		if !v.atLeast(2, 17) && !s.validSession(r) {
			s.login(w)
		}
		return authorized
	case "bearer":
		if v.atLeast(2, 48) {
			if cred != s.opts.Token {
				writeUnauthorized(w, "Invalid token.")
				return authFailed
			}
			return authorized
		}
	}
	if s.validSession(r) {
		// SessionAuthentication enforces CSRF on unsafe methods.
		if r.Method != http.MethodGet && r.Method != http.MethodHead && r.Method != http.MethodOptions && r.Header.Get("X-CSRFToken") == "" {
			writeJSON(w, http.StatusForbidden, map[string]string{"detail": "CSRF Failed: CSRF token missing."})
			return authFailed
		}
		return authorized
	}
	if strings.EqualFold(scheme, "basic") {
		b, err := base64.StdEncoding.DecodeString(cred)
		u, p, _ := strings.Cut(string(b), ":")
		if err != nil || u != s.opts.Username || p != s.opts.Password {
			writeUnauthorized(w, "Invalid username/password.")
			return authFailed
		}
		return authorized
	}
	return anonymous
}

func (s *Server) validSession(r *http.Request) bool {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions[c.Value]
}

// login is Django's login(): a new session, its cookie and a rotated CSRF
// token cookie.
func (s *Server) login(w http.ResponseWriter) {
	id := randomHex(16)
	s.mu.Lock()
	s.sessions[id] = true
	s.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: "csrftoken", Value: randomHex(32), Path: "/", MaxAge: 31449600, SameSite: http.SameSiteLaxMode})
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: id, Path: "/", MaxAge: 1209600, HttpOnly: true, SameSite: http.SameSiteLaxMode})
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// writeUnauthorized is DRF's 401; the header names the first authenticator
// (TokenAuthentication on every release).
func writeUnauthorized(w http.ResponseWriter, detail string) {
	w.Header().Set("WWW-Authenticate", "Token")
	writeJSON(w, http.StatusUnauthorized, map[string]string{"detail": detail})
}

const mediaType = "application/vnd.cvat+json"

// writeJSON answers v as DRF renders it (no HTML escaping of &, < and >).
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeRawJSON(w, status, b)
}

func writeRawJSON(w http.ResponseWriter, status int, b []byte) {
	w.Header().Set("Content-Type", mediaType)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// writeText is Django's HttpResponse family (HttpResponseBadRequest,
// HttpResponseNotFound, HttpResponseGone): plain text labelled text/html.
func writeText(w http.ResponseWriter, status int, text string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(text)))
	w.WriteHeader(status)
	_, _ = w.Write([]byte(text))
}

func notFound(w http.ResponseWriter, model string) {
	writeJSON(w, http.StatusNotFound, map[string]string{"detail": "No " + model + " matches the given query."})
}

func forbidden(w http.ResponseWriter) {
	writeJSON(w, http.StatusForbidden, map[string]string{"detail": "You do not have permission to perform this action."})
}

// base is the scheme://host absolute links are built from, like Django's
// request.build_absolute_uri with CVAT's settings: USE_X_FORWARDED_HOST
// (the host from X-Forwarded-Host, else Host) and SECURE_PROXY_SSL_HEADER
// (https only when X-Forwarded-Proto's first value is https); no forwarded
// port.
func (s *Server) base(r *http.Request) string {
	if s.opts.ExternalURL != "" {
		return strings.TrimRight(s.opts.ExternalURL, "/")
	}
	scheme := "http"
	if p, _, _ := strings.Cut(r.Header.Get("X-Forwarded-Proto"), ","); strings.TrimSpace(p) == "https" {
		scheme = "https"
	}
	host := r.Host
	if h := r.Header.Get("X-Forwarded-Host"); h != "" {
		host = h
	}
	return scheme + "://" + host
}

func pathID(r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	return id, err == nil
}

// now returns CVAT's clock, in CVAT's microsecond precision, strictly after
// every date handed out before, so each save moves updated_date. The caller
// holds s.mu.
func (s *Server) now() time.Time {
	t := s.clock().Truncate(time.Microsecond)
	if !t.After(s.lastTime) {
		t = s.lastTime.Add(time.Microsecond)
	}
	s.lastTime = t
	return t
}
