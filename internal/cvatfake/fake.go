// Package cvatfake is a CVAT server fake over real HTTP for tests. It speaks
// CVAT's wire format (checked against CVAT's OpenAPI schema by this package's
// tests) for the endpoints cvat-sync uses, in both export API generations,
// chosen by the version it impersonates; it also produces and delivers
// signed webhook bodies exactly like CVAT 2.64.0.
//
//	f := cvatfake.New(t, cvatfake.Options{Version: "2.64.0"})
//	p := f.AddProject(cvatfake.Project{Name: "p"})
//	task := f.AddTask(cvatfake.Task{Name: "t", ProjectID: p.ID})
//	job := f.AddJob(cvatfake.Job{TaskID: task.ID})
//	// client: BaseURL f.URL(), Token f.Token()
//
// Faults (Inject), failed exports (FailNextExport) and a record of every
// call (Calls) make the client's error paths testable.
package cvatfake

import (
	"context"
	"encoding/base64"
	"encoding/json"
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
	ExportPolls int              // status polls an export stays queued/started before it is done; default 2, negative = done at once
	ArchiveSize int64            // default archive size when a Task has none; default 4096
	ExternalURL string           // scheme://host CVAT believes it is served at (absolute links: next, result_url, url fields), as behind a proxy; default the request's Host
	Now         func() time.Time // clock for dates; default time.Now
}

// TB is the part of testing.TB New needs.
type TB interface {
	Helper()
	Cleanup(func())
	Fatalf(string, ...any)
}

// Server is a running CVAT fake. All methods are safe for concurrent use.
type Server struct {
	opts Options
	ver  version
	srv  *httptest.Server
	mux  *http.ServeMux

	mu       sync.Mutex
	projects map[int64]*Project
	tasks    map[int64]*Task
	jobs     map[int64]*Job
	orgs     map[string]int64
	nextID   int64
	exports  map[string]*exportReq // by rq_id
	legacy   map[string]*exportReq // by task/format/subresource
	failNext map[int64][]string    // task id -> messages of the next exports to fail
	hooks    map[int64]*webhook
	nextHook int64
	nextDel  int64
	hk       hookState // webhooks.go, deliveries.go: the delivery log and pending retries
	faults   []*Fault
	calls    []Call
	lastTime time.Time
	hidden   map[int64]bool // HideTask
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
		opts:     opts,
		ver:      v,
		projects: map[int64]*Project{},
		tasks:    map[int64]*Task{},
		jobs:     map[int64]*Job{},
		orgs:     map[string]int64{},
		exports:  map[string]*exportReq{},
		legacy:   map[string]*exportReq{},
		failNext: map[int64][]string{},
		hooks:    map[int64]*webhook{},
		nextID:   100,
	}
	s.routes()
	s.srv = httptest.NewServer(s)
	return s, nil
}

// URL is the fake's base URL (http://127.0.0.1:port).
func (s *Server) URL() string { return s.srv.URL }

// Version is the CVAT version impersonated.
func (s *Server) Version() string { return s.opts.Version }

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

func (s *Server) routes() {
	m := http.NewServeMux()
	m.HandleFunc("GET /api/server/about", s.about)
	m.HandleFunc("GET /api/server/annotation/formats", s.formats)
	m.HandleFunc("GET /api/tasks", s.listTasks)
	m.HandleFunc("GET /api/tasks/{id}", s.getTask)
	m.HandleFunc("GET /api/jobs", s.listJobs)
	m.HandleFunc("GET /api/jobs/{id}", s.getJob)
	m.HandleFunc("GET /api/projects/{id}", s.getProject)
	if s.ver.atLeast(2, 16) {
		m.HandleFunc("POST /api/tasks/{id}/dataset/export", s.exportPost)
		m.HandleFunc("GET /api/requests/{rq_id}", s.requestStatus)
		m.HandleFunc("GET /api/tasks/{id}/dataset/download", s.exportDownload)
	}
	m.HandleFunc("GET /api/tasks/{id}/annotations", s.legacyExport)
	m.HandleFunc("GET /api/tasks/{id}/annotations/", s.legacyExport) // CVAT: r'annotations/?$'

	m.HandleFunc("GET /api/tasks/{id}/dataset", s.legacyExport)
	s.webhookRoutes(m)
	s.mux = m
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
	Method     string        // "" matches any
	Route      string        // route template, "" matches any
	Status     int           // answer this status instead of handling the call
	Body       string        // body of that answer (JSON); default {"detail": "<status text>"}
	RetryAfter string        // Retry-After header of that answer
	Delay      time.Duration // wait this long first (cut short when the client goes away)
	Drop       bool          // close the connection without answering
	StallAfter int64         // downloads only: send this many bytes, then stall until the client goes away
	Times      int

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

func (s *Server) takeFault(method, route string) *Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range s.faults {
		if (f.Method != "" && f.Method != method) || (f.Route != "" && f.Route != route) {
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
	_, pattern := s.mux.Handler(r)
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

	if f := s.takeFault(r.Method, route); f != nil {
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
			w.Header().Set("Content-Type", mediaType)
			rec.WriteHeader(f.Status)
			_, _ = rec.Write([]byte(body))
			return
		}
		if f.StallAfter > 0 {
			r = r.WithContext(context.WithValue(r.Context(), stallKey{}, f.StallAfter))
		}
	}

	if route != "/api/server/about" || r.Header.Get("Authorization") != "" {
		if !s.authorized(r) {
			writeJSON(rec, http.StatusUnauthorized, map[string]string{"detail": "Authentication credentials were not provided."})
			return
		}
	}
	if org := r.Header.Get("X-Organization"); org != "" {
		s.mu.Lock()
		_, ok := s.orgs[org]
		s.mu.Unlock()
		if !ok {
			writeJSON(rec, http.StatusNotFound, map[string]string{"detail": "No Organization matches the given query."})
			return
		}
	}
	s.mux.ServeHTTP(rec, r)
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

func (s *Server) authorized(r *http.Request) bool {
	h := r.Header.Get("Authorization")
	scheme, cred, _ := strings.Cut(h, " ")
	switch strings.ToLower(scheme) {
	case "token":
		return cred == s.opts.Token
	case "bearer":
		// Personal access tokens arrived in 2.48; older servers have no
		// authenticator for Bearer and treat the request as anonymous.
		return s.ver.atLeast(2, 48) && cred == s.opts.Token
	case "basic":
		b, err := base64.StdEncoding.DecodeString(cred)
		if err != nil {
			return false
		}
		u, p, _ := strings.Cut(string(b), ":")
		return u == s.opts.Username && p == s.opts.Password
	}
	return false
}

const mediaType = "application/vnd.cvat+json"

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", mediaType)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func notFound(w http.ResponseWriter, model string) {
	writeJSON(w, http.StatusNotFound, map[string]string{"detail": "No " + model + " matches the given query."})
}

// base is the scheme://host absolute links are built from, like Django's
// request.build_absolute_uri.
func (s *Server) base(r *http.Request) string {
	if s.opts.ExternalURL != "" {
		return strings.TrimRight(s.opts.ExternalURL, "/")
	}
	return "http://" + r.Host
}

func pathID(r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	return id, err == nil
}

// now returns the fake's clock, in CVAT's microsecond precision, strictly
// after every date handed out before, so each save moves updated_date. The
// caller holds s.mu.
func (s *Server) now() time.Time {
	t := s.opts.Now().UTC().Truncate(time.Microsecond)
	if !t.After(s.lastTime) {
		t = s.lastTime.Add(time.Microsecond)
	}
	s.lastTime = t
	return t
}
