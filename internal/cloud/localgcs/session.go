package localgcs

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"sync"
	"time"
)

// session is one resumable upload.
type session struct {
	id    string
	spec  *objectSpec
	total int64 // X-Upload-Content-Length, -1 when not given

	mu    sync.Mutex // one request of the session at a time
	up    *upload    // nil once the session ended
	final *response  // the answer that ended it
	last  time.Time  // the end of its last request
}

func (s *session) touch() { s.last = time.Now() }

// sessions are the resumable uploads of a server, by upload id.
type sessions struct {
	mu sync.Mutex
	m  map[string]*session
}

func newSessions() *sessions { return &sessions{m: map[string]*session{}} }

func (ss *sessions) add(spec *objectSpec, up *upload, total int64) *session {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	s := &session{id: hex.EncodeToString(b[:]), spec: spec, total: total, up: up, last: time.Now()}
	ss.mu.Lock()
	ss.m[s.id] = s
	ss.mu.Unlock()
	return s
}

func (ss *sessions) get(id string) *session {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.m[id]
}

// expire drops the sessions whose last request ended before t, with their
// spool files, and returns their ids. A session serving a request is not
// idle.
func (ss *sessions) expire(t time.Time) []string {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	var ids []string
	for id, s := range ss.m {
		if !s.mu.TryLock() {
			continue
		}
		if s.last.Before(t) {
			if s.final == nil {
				ids = append(ids, id)
				// A request that found the session just before it went
				// gets this answer.
				expired := errorResponse(&apiError{code: http.StatusNotFound, reason: "notFound", msg: "upload session expired (idle for too long); start a new one"})
				s.final = &expired
			}
			s.up.discard()
			s.up = nil
			delete(ss.m, id)
		}
		s.mu.Unlock()
	}
	return ids
}

// abortAll drops every session; no request may be running.
func (ss *sessions) abortAll() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	closed := errorResponse(&apiError{code: http.StatusServiceUnavailable, reason: "backendError", msg: errClosed.Error()})
	for id, s := range ss.m {
		s.mu.Lock()
		s.up.discard()
		s.up = nil
		if s.final == nil {
			s.final = &closed
		}
		s.mu.Unlock()
		delete(ss.m, id)
	}
}
