// Package localgcs is the embedded default's Cloud Storage: fake-gcs-server
// serving buckets from a directory, with the three upload protocols of the
// JSON API (resumable, multipart, media) handled here so that an object of
// any size streams to disk with flat memory.
//
// fake-gcs-server v1.56 keeps a resumable upload in memory until it
// completes (every chunk appended to one slice, the whole re-hashed per
// chunk), and its filesystem backend reads every new object whole into
// memory before writing it: a 1 GiB archive costs gigabytes of RSS. Here an
// upload is spooled chunk by chunk to a file beside the bucket directory,
// with its CRC32C computed as the bytes arrive and its MD5 by a goroutine
// that follows the file. When the upload completes, one lock covers checking
// the preconditions and renaming the finished file, with its attributes,
// into fake-gcs-server's on-disk layout, so a create-if-absent or an
// overwrite of a given generation is atomic. Everything else (gets, lists,
// metadata, deletes, buckets) is fake-gcs-server's own handler on the same
// directory: what an upload stored is what the normal API reads.
package localgcs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fsouza/fake-gcs-server/fakestorage"
)

// DefaultIdleTimeout is how long a resumable upload session may go without a
// request before it is dropped with its spooled bytes. GCS keeps sessions for
// a week; the embedded server's clients are the service's own storage
// clients, which give up on a chunk after 32 s of retries and never resume a
// session later, so an idle session is an abandoned one (a cancelled export)
// whose spool file would otherwise hold disk space until a restart.
const DefaultIdleTimeout = 10 * time.Minute

// Config configures a Server.
type Config struct {
	// Root is the directory fake-gcs-server keeps buckets in (one directory
	// per bucket). Required; created if missing.
	Root string
	// SpoolDir holds uploads in progress. It must be on Root's filesystem
	// for a finished upload to become an object by a rename (otherwise it
	// is copied). Default: Root + "-uploads". Stale spool files of
	// processes that died are removed by New.
	SpoolDir string
	// Addr is the address to listen on. Default "127.0.0.1:0".
	Addr string
	// Middleware, if set, wraps the server's handler (tests put a fault
	// hook in front of it).
	Middleware func(http.Handler) http.Handler
	// IdleTimeout: see DefaultIdleTimeout (the default). Negative: never.
	IdleTimeout time.Duration
	// Logger receives the server's own events; nil discards them.
	Logger *slog.Logger
}

// Server is a running embedded GCS server.
type Server struct {
	log      *slog.Logger
	fake     *fakestorage.Server
	fakeH    http.Handler
	ln       net.Listener
	hs       *http.Server
	url      string
	store    *store
	spool    *spoolDir
	sessions *sessions
	idle     time.Duration

	serveErr chan error
	stop     chan struct{}
	wg       sync.WaitGroup // the sweeper
	once     sync.Once

	mu      sync.Mutex
	closing bool
	active  sync.WaitGroup              // requests in route, from the listener or in-process
	pipes   map[*io.PipeWriter]struct{} // response bodies of in-process requests
}

// New starts a server according to cfg.
func New(cfg Config) (*Server, error) {
	if cfg.Root == "" {
		return nil, errors.New("localgcs: Config.Root (the bucket directory) is required")
	}
	if cfg.SpoolDir == "" {
		cfg.SpoolDir = filepath.Clean(cfg.Root) + "-uploads"
	}
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.Root, 0o750); err != nil {
		return nil, fmt.Errorf("localgcs: bucket directory: %w", err)
	}
	spool, err := openSpoolDir(cfg.SpoolDir, log)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		spool.close()
		return nil, fmt.Errorf("localgcs: listen on %s: %w", cfg.Addr, err)
	}
	url := "http://" + ln.Addr().String()
	// fake-gcs-server is only a handler here: no listener of its own, and
	// the links in its answers (selfLink, mediaLink) point at this server.
	fake, err := fakestorage.NewServerWithOptions(fakestorage.Options{
		StorageRoot: cfg.Root, NoListener: true, ExternalURL: url, Scheme: "http", Writer: io.Discard,
	})
	if err != nil {
		ln.Close()
		spool.close()
		return nil, fmt.Errorf("localgcs: fake-gcs-server on %s: %w", cfg.Root, err)
	}
	s := &Server{
		log:      log,
		fake:     fake,
		fakeH:    fake.HTTPHandler(),
		ln:       ln,
		url:      url,
		store:    newStore(cfg.Root, fake, spool),
		spool:    spool,
		sessions: newSessions(),
		idle:     cfg.IdleTimeout,
		serveErr: make(chan error, 1),
		stop:     make(chan struct{}),
		pipes:    map[*io.PipeWriter]struct{}{},
	}
	var h http.Handler = http.HandlerFunc(s.route)
	if cfg.Middleware != nil {
		h = cfg.Middleware(h)
	}
	// No read timeout: a chunk of a slow upload may take long; headers
	// must come promptly.
	s.hs = &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	go func() { s.serveErr <- s.hs.Serve(ln) }()
	if s.idle > 0 {
		s.wg.Add(1)
		go s.sweep()
	}
	log.Debug("embedded GCS listening", "url", url, "root", cfg.Root, "spool", spool.dir, "metadata_in_xattr", s.store.xattr)
	return s, nil
}

// URL is the server's base URL (http://127.0.0.1:port): the value of
// STORAGE_EMULATOR_HOST, or of option.WithEndpoint with "/storage/v1/".
func (s *Server) URL() string { return s.url }

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Fake is the fake-gcs-server behind the upload front, for reading what the
// bucket holds in tests (GetObject, ListObjectsWithOptionsPaginated). Write
// through the HTTP API: writes through Fake bypass the lock that makes
// preconditions atomic.
func (s *Server) Fake() *fakestorage.Server { return s.fake }

// Close stops the server: in-flight requests are cut off, sessions in
// progress are dropped with their spool files (none becomes an object).
func (s *Server) Close() error {
	var err error
	s.once.Do(func() {
		close(s.stop)
		s.mu.Lock()
		s.closing = true
		for pw := range s.pipes {
			_ = pw.CloseWithError(errClosed) // a reader that stopped reading
		}
		s.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if shutdownErr := s.hs.Shutdown(ctx); shutdownErr != nil {
			_ = s.hs.Close() // long uploads are cut off
		}
		if serveErr := <-s.serveErr; !errors.Is(serveErr, http.ErrServerClosed) {
			err = serveErr
		}
		// Cut off, every request ends soon: its body or its answer fails.
		s.active.Wait()
		s.wg.Wait()
		s.sessions.abortAll()
		s.fake.Stop()
		err = errors.Join(err, s.spool.close())
	})
	return err
}

// sweep drops sessions idle for longer than s.idle.
func (s *Server) sweep() {
	defer s.wg.Done()
	t := time.NewTicker(max(s.idle/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			for _, id := range s.sessions.expire(now.Add(-s.idle)) {
				s.log.Info("embedded GCS: dropped an idle upload session", "upload_id", id, "idle_timeout", s.idle.String())
			}
		}
	}
}

// route sends uploads to this package's handlers and everything else to
// fake-gcs-server, serializing fake-gcs-server's writes with the uploads'
// commits.
func (s *Server) route(w http.ResponseWriter, r *http.Request) {
	if !s.enter() {
		writeError(w, &apiError{code: http.StatusServiceUnavailable, reason: "backendError", msg: errClosed.Error()})
		return
	}
	defer s.active.Done()
	if bucket, ok := uploadBucket(r.URL.EscapedPath()); ok {
		if s.serveUpload(w, r, bucket) {
			return
		}
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		s.fakeH.ServeHTTP(w, r)
	default:
		if err := s.store.lock(); err != nil {
			writeError(w, internalError(err))
			return
		}
		defer s.store.unlock()
		if err := s.checkPreconditions(r); err != nil {
			writeError(w, err)
			return
		}
		s.fakeH.ServeHTTP(w, r)
	}
}

// checkPreconditions evaluates the preconditions of a delete or an update
// of an object, which fake-gcs-server ignores (it honours them on uploads
// only): the sink deletes one corrupt generation with ifGenerationMatch,
// and must not delete a newer one. The caller holds the store lock.
func (s *Server) checkPreconditions(r *http.Request) error {
	rest, ok := strings.CutPrefix(r.URL.EscapedPath(), "/storage/v1/b/")
	if !ok {
		return nil
	}
	bucket, object, ok := strings.Cut(rest, "/o/")
	if !ok || strings.Contains(bucket, "/") || object == "" || isSubresource(object) ||
		r.Method != http.MethodDelete && r.Method != http.MethodPatch && r.Method != http.MethodPut {
		return nil
	}
	cond, err := parseConditions(r.URL.Query())
	if err != nil || cond == (conditions{}) {
		return err
	}
	b, err1 := url.PathUnescape(bucket)
	name, err2 := url.PathUnescape(object)
	if err1 != nil || err2 != nil {
		return invalid("malformed object path %q", r.URL.EscapedPath())
	}
	if !s.store.bucketExists(b) {
		return errNoBucket
	}
	gen, err := s.store.generation(b, name, s.store.path(b, name))
	if err != nil {
		return err
	}
	if !cond.met(gen) {
		return errPrecondition
	}
	return nil
}

// isSubresource reports whether the escaped path after /o/ names more than
// an object (its ACL, or a copy, rewrite or compose).
func isSubresource(object string) bool {
	for _, seg := range strings.Split(object, "/")[1:] {
		switch seg {
		case "acl", "compose", "copyTo", "rewriteTo":
			return true
		}
	}
	return false
}

// enter counts a request in, unless the server is closing.
func (s *Server) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.active.Add(1)
	return true
}

// uploadBucket returns the bucket of an upload path
// (/upload/storage/v1/b/<bucket>/o, with or without a trailing slash).
func uploadBucket(escapedPath string) (string, bool) {
	rest, ok := strings.CutPrefix(escapedPath, "/upload/storage/v1/b/")
	if !ok {
		return "", false
	}
	rest = strings.TrimSuffix(rest, "/")
	bucket, ok := strings.CutSuffix(rest, "/o")
	if !ok || bucket == "" || strings.Contains(bucket, "/") {
		return "", false
	}
	name, err := url.PathUnescape(bucket)
	return name, err == nil
}
