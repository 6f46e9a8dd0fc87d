package localgcs

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
)

// Transport is an http.RoundTripper that serves requests with this server's
// handler inside the process, for a storage client living in the same
// process (the embedded default's own): the same handler and protocol as
// over the listener, without pushing every byte of an archive through the
// loopback interface twice. Request bodies are read by the handler as the
// client provides them, and response bodies stream, so a download of any
// size takes no more memory than over a socket.
func (s *Server) Transport() http.RoundTripper { return &inProcess{s: s} }

type inProcess struct{ s *Server }

var errClosed = errors.New("localgcs: server closed")

func (t *inProcess) RoundTrip(req *http.Request) (*http.Response, error) {
	in := req.Clone(req.Context())
	in.RequestURI = req.URL.RequestURI()
	in.RemoteAddr = "in-process"
	if in.Host == "" {
		in.Host = req.URL.Host
	}
	if in.Body == nil {
		in.Body = http.NoBody
	}
	pr, pw := io.Pipe()
	if !t.s.track(pw) {
		closeBody(req)
		return nil, errClosed
	}
	w := &pipeResponse{header: http.Header{}, body: pw, ready: make(chan struct{})}
	go func() {
		defer t.s.untrack(pw)
		defer func() {
			// As http.Server does, a handler's panic fails its request, not
			// the process.
			if p := recover(); p != nil {
				w.commit(http.StatusInternalServerError)
				_ = pw.CloseWithError(fmt.Errorf("localgcs: handler panic: %v", p))
			}
			w.commit(http.StatusOK)
			_ = pw.Close()
			closeBody(in)
		}()
		t.s.hs.Handler.ServeHTTP(w, in)
	}()
	select {
	case <-w.ready:
	case <-req.Context().Done():
		_ = pr.CloseWithError(req.Context().Err())
		return nil, req.Context().Err()
	}
	resp := &http.Response{
		Status: strconv.Itoa(w.status) + " " + http.StatusText(w.status), StatusCode: w.status,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: w.sent, Body: pr, ContentLength: -1, Request: req,
	}
	if n, err := strconv.ParseInt(w.sent.Get("Content-Length"), 10, 64); err == nil {
		resp.ContentLength = n
	}
	if req.Method == http.MethodHead {
		resp.Body = http.NoBody
		_ = pr.Close()
	}
	return resp, nil
}

// track registers the response pipe of an in-process request, for Close
// to break, unless the server is closing.
func (s *Server) track(pw *io.PipeWriter) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.pipes[pw] = struct{}{}
	return true
}

func (s *Server) untrack(pw *io.PipeWriter) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.pipes, pw)
}

func closeBody(r *http.Request) {
	if r.Body != nil {
		_ = r.Body.Close()
	}
}

// pipeResponse is the handler's side of an in-process exchange: the status
// and headers are handed over at the first write (or when the handler
// returns), the body streams through a pipe.
type pipeResponse struct {
	header http.Header
	body   *io.PipeWriter
	once   sync.Once
	ready  chan struct{}
	status int
	sent   http.Header
}

func (w *pipeResponse) Header() http.Header { return w.header }

func (w *pipeResponse) WriteHeader(code int) { w.commit(code) }

func (w *pipeResponse) Write(b []byte) (int, error) {
	w.commit(http.StatusOK)
	return w.body.Write(b)
}

func (w *pipeResponse) commit(code int) {
	w.once.Do(func() {
		w.status, w.sent = code, w.header.Clone()
		close(w.ready)
	})
}
