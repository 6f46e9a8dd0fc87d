package cvatapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"unicode/utf8"
)

// Sentinel errors; test with errors.Is.
var (
	// ErrNotFound reports a 404: the task, job, project or webhook does not
	// exist or is not visible with these credentials and organization.
	ErrNotFound = errors.New("cvat: not found")
	// ErrUnauthorized reports a 401: missing or wrong credentials.
	ErrUnauthorized = errors.New("cvat: unauthorized")
	// ErrForbidden reports a 403: the credentials may not do this.
	ErrForbidden = errors.New("cvat: forbidden")
	// ErrOffOrigin reports a URL from CVAT (result_url, a redirect) that is
	// not on the configured origin; the client never sends credentials there.
	ErrOffOrigin = errors.New("cvat: URL outside the configured CVAT origin refused")
	// ErrExportFailed reports an export CVAT ran and failed; the error is an
	// *ExportFailedError carrying CVAT's message.
	ErrExportFailed = errors.New("cvat: export failed")
	// ErrUnknownFormat reports a format name the server does not offer.
	ErrUnknownFormat = errors.New("cvat: unknown export format")
	// ErrUnavailable reports that CVAT (or a proxy in front of it) is not
	// answering as CVAT right now: transport failures, timeouts, 408, 429,
	// 502, 503, 504. Work that meets it is held, not failed: it spends no
	// attempt.
	ErrUnavailable = errors.New("cvat: unavailable")
	// ErrInvalidArchive reports a download that is not an export archive
	// (another content type, no zip signature, a length that does not match
	// Content-Length). It surfaces from Export.Body's Read, so a streaming
	// upload aborts before it commits.
	ErrInvalidArchive = errors.New("cvat: download is not an export archive")
	// ErrIncompleteListing reports a task listing that skipped pages which
	// kept failing; the callback saw every task of the other pages.
	ErrIncompleteListing = errors.New("cvat: task listing incomplete")
)

// StatusError is a non-2xx answer.
type StatusError struct {
	Call   string // "POST /api/tasks/42/dataset/export"
	Code   int
	Status string // "500 Internal Server Error"
	Detail string // start of CVAT's answer (its error text), trimmed
}

func (e *StatusError) Error() string {
	s := e.Call + ": " + e.Status
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return s
}

// Is maps statuses to the sentinel errors.
func (e *StatusError) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.Code == http.StatusNotFound
	case ErrUnauthorized:
		return e.Code == http.StatusUnauthorized
	case ErrForbidden:
		return e.Code == http.StatusForbidden
	case ErrUnavailable:
		switch e.Code {
		case http.StatusRequestTimeout, http.StatusTooManyRequests, http.StatusBadGateway,
			http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return true
		}
	}
	return false
}

// NetError is a transport failure (connection refused or dropped, timeout).
type NetError struct {
	Call string
	Err  error
}

func (e *NetError) Error() string { return e.Call + ": " + e.Err.Error() }
func (e *NetError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrUnavailable) true: CVAT did not answer.
func (e *NetError) Is(target error) bool { return target == ErrUnavailable }

// ExportFailedError is an export CVAT reports as failed.
type ExportFailedError struct {
	Message string // CVAT's message (the worker's exception text)
}

func (e *ExportFailedError) Error() string {
	return "cvat: export failed: " + strings.TrimSpace(e.Message)
}

// Is makes errors.Is(err, ErrExportFailed) true.
func (e *ExportFailedError) Is(target error) bool { return target == ErrExportFailed }

// retryable: 5xx, 429 (and 408) answers and transport errors.
func retryable(err error) bool {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Code >= 500 || se.Code == http.StatusTooManyRequests || se.Code == http.StatusRequestTimeout
	}
	var ne *NetError
	return errors.As(err, &ne)
}

const maxDetail = 300

func statusError(k call, resp *http.Response) error {
	status := resp.Status
	if status == "" {
		status = fmt.Sprintf("%d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
	}
	var detail string
	ct := strings.ToLower(resp.Header.Get("Content-Type"))
	if strings.Contains(ct, "json") || strings.HasPrefix(ct, "text/plain") {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		detail = tidy(cvatMessage(b))
	}
	return &StatusError{Call: k.String(), Code: resp.StatusCode, Status: status, Detail: detail}
}

// cvatMessage extracts the text of CVAT's usual error bodies: a JSON string
// (legacy export failures) or {"detail": "..."}; anything else stays as is.
func cvatMessage(b []byte) string {
	var s string
	if json.Unmarshal(b, &s) == nil {
		return s
	}
	var d struct {
		Detail *string `json:"detail"`
	}
	if json.Unmarshal(b, &d) == nil && d.Detail != nil {
		return *d.Detail
	}
	return string(b)
}

// tidy makes an answer's start fit on one log line.
func tidy(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > maxDetail {
		s = s[:maxDetail]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
		s += "…"
	}
	return s
}
