package cvatapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Sentinel errors; test with errors.Is.
var (
	// ErrNotFound reports CVAT's own 404 (a JSON answer from CVAT): the
	// task, job, project or webhook does not exist, or the organization
	// does not. A 404 that is not CVAT's (an HTML page from a proxy or an
	// ingress) is ErrUnavailable instead.
	ErrNotFound = errors.New("cvat: not found")
	// ErrUnauthorized reports a 401: missing or refused credentials. The
	// error names the credential setting and the scheme it was sent with,
	// never the credential.
	ErrUnauthorized = errors.New("cvat: unauthorized")
	// ErrForbidden reports a 403: the credentials may not do this (CVAT's
	// answer for a task they may not see).
	ErrForbidden = errors.New("cvat: forbidden")
	// ErrOffOrigin reports a redirect to another origin than the configured
	// one; the client never sends credentials there.
	ErrOffOrigin = errors.New("cvat: URL outside the configured CVAT origin refused")
	// ErrExportFailed reports an export CVAT ran and failed; the error is an
	// *ExportFailedError carrying CVAT's message.
	ErrExportFailed = errors.New("cvat: export failed")
	// ErrUnknownFormat reports a format name the server does not offer, or
	// offers disabled.
	ErrUnknownFormat = errors.New("cvat: unknown export format")
	// ErrUnavailable reports that CVAT (or a proxy in front of it) is not
	// answering as CVAT right now: transport failures, timeouts, 408, 429,
	// 502, 503, 504, a 404 that is not CVAT's, and an answer that is not
	// JSON where JSON was expected (a proxy's sign-in page). Work that meets
	// it is held, not failed: it spends no attempt.
	ErrUnavailable = errors.New("cvat: unavailable")
	// ErrInvalidArchive reports a download that is not an export archive
	// (another content type, no zip signature, a length that does not match
	// Content-Length). ExportTask returns it when the answer's first bytes
	// give it away; Export.Body's Read returns it when the length does not
	// match, so a streaming upload aborts before it commits.
	ErrInvalidArchive = errors.New("cvat: download is not an export archive")
	// ErrIncompleteListing reports a task listing that skipped pages which
	// kept failing; the callback saw every task of the other pages.
	ErrIncompleteListing = errors.New("cvat: task listing incomplete")
	// ErrNoData reports an export of a task that has no data (images or
	// video) attached: CVAT refuses or fails it every time, until data is
	// uploaded.
	ErrNoData = errors.New("cvat: task has no data")
	// ErrCloudStorage reports an export CVAT wrote to the task's cloud
	// target storage instead of handing it to this client (nothing, or an
	// empty body, to download).
	ErrCloudStorage = errors.New("cvat: export went to a cloud storage, nothing to download")
	// ErrStateChanged reports that the task changed while CVAT prepared
	// the export (ExportOptions.UpdatedDate): the archive may not hold the
	// state the caller asked for. The error is a *StateChangedError.
	ErrStateChanged = errors.New("cvat: task changed during the export")
	// ErrUnknownOrganization reports CVAT's 404 for the organization of the
	// request (X-Organization, Config.Org) rather than for the object asked
	// for: nothing can be read in that context, and nothing read there is
	// gone.
	ErrUnknownOrganization = errors.New("cvat: the configured organization does not exist, or the credentials are not a member")
)

// StatusError is a non-2xx answer.
type StatusError struct {
	Call        string // "POST /api/tasks/42/dataset/export"
	Code        int
	Status      string // "500 Internal Server Error"
	ContentType string // of the answer; tells CVAT's JSON from a proxy's page
	Detail      string // start of CVAT's answer (its error text), trimmed
	Credential  string // 401: which credential was sent and how, e.g. `Config.Token sent as "Bearer"`; never the credential
	Hint        string // 401: what probably fixes it
}

func (e *StatusError) Error() string {
	s := e.Call + ": " + e.Status
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	if e.Code == http.StatusUnauthorized && e.Credential != "" {
		s += " (refused: " + e.Credential + ")"
		if e.Hint != "" {
			s += "; " + e.Hint
		}
	}
	return s
}

// Is maps statuses to the sentinel errors.
func (e *StatusError) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.Code == http.StatusNotFound && isJSON(e.ContentType) && !e.unknownOrganization()
	case ErrUnknownOrganization:
		return e.unknownOrganization()
	case ErrUnauthorized:
		return e.Code == http.StatusUnauthorized
	case ErrForbidden:
		return e.Code == http.StatusForbidden
	case ErrUnavailable:
		switch e.Code {
		case http.StatusRequestTimeout, http.StatusTooManyRequests, http.StatusBadGateway,
			http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return true
		case http.StatusNotFound:
			return !isJSON(e.ContentType)
		}
	}
	return false
}

// unknownOrganization: CVAT answers a request in an organization context it
// does not know with 404 "<slug> organization does not exist." (2.4 and
// later; 2.3.0 answers 400 with Django's HTML page, which is no 404 either).
func (e *StatusError) unknownOrganization() bool {
	return e.Code == http.StatusNotFound && strings.HasSuffix(strings.TrimSpace(e.Detail), "organization does not exist.")
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

// NotJSONError is a successful answer that is not the JSON CVAT sends, such
// as a proxy's sign-in page.
type NotJSONError struct {
	Call        string
	Status      string
	ContentType string
	Start       string // the answer's first bytes, made printable
}

func (e *NotJSONError) Error() string {
	return fmt.Sprintf("%s: %s answered %s, not CVAT's JSON; starts %s", e.Call, e.Status, describeType(e.ContentType), e.Start)
}

// Is makes errors.Is(err, ErrUnavailable) true: something other than CVAT
// answered.
func (e *NotJSONError) Is(target error) bool { return target == ErrUnavailable }

// ExportFailedError is an export CVAT reports as failed.
type ExportFailedError struct {
	Message string // CVAT's message (the worker's exception text)
}

func (e *ExportFailedError) Error() string {
	return "cvat: export failed: " + strings.TrimSpace(e.Message)
}

// Is makes errors.Is(err, ErrExportFailed) true.
func (e *ExportFailedError) Is(target error) bool { return target == ErrExportFailed }

// StateChangedError reports a task whose updated_date moved while CVAT
// prepared its export.
type StateChangedError struct {
	Want time.Time // ExportOptions.UpdatedDate
	Got  time.Time // the task's updated_date once the export was ready
}

func (e *StateChangedError) Error() string {
	return fmt.Sprintf("cvat: task changed during the export (updated_date %s, now %s): the archive may hold either state",
		e.Want.UTC().Format(time.RFC3339Nano), e.Got.UTC().Format(time.RFC3339Nano))
}

// Is makes errors.Is(err, ErrStateChanged) true.
func (e *StateChangedError) Is(target error) bool { return target == ErrStateChanged }

// retryable: 5xx, 429 and 408 answers, transport errors, and answers that
// are not CVAT's (a proxy's 404 or HTML page), which a moment later may be.
func retryable(err error) bool {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Code >= 500 || se.Code == http.StatusTooManyRequests || se.Code == http.StatusRequestTimeout ||
			(se.Code == http.StatusNotFound && !isJSON(se.ContentType))
	}
	var ne *NetError
	var nj *NotJSONError
	return errors.As(err, &ne) || errors.As(err, &nj)
}

const maxDetail = 300

// statusError reads (the start of) a non-2xx answer into a *StatusError.
func statusError(k call, resp *http.Response) *StatusError {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	return statusErrorFrom(k, resp, b)
}

// statusErrorFrom is statusError of an answer whose body b is read.
func statusErrorFrom(k call, resp *http.Response, b []byte) *StatusError {
	status := resp.Status
	if status == "" {
		status = fmt.Sprintf("%d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
	}
	ct := resp.Header.Get("Content-Type")
	var detail string
	if isJSON(ct) || isCVATText(ct, b) {
		detail = tidy(cvatMessage(b))
	}
	return &StatusError{Call: k.String(), Code: resp.StatusCode, Status: status, ContentType: ct, Detail: detail}
}

// readAll reads a (small, non-streamed) answer's body.
func readAll(resp *http.Response) ([]byte, error) {
	return io.ReadAll(io.LimitReader(resp.Body, maxJSONBody))
}

// isJSON reports a JSON media type: CVAT's application/vnd.cvat+json, or
// plain application/json.
func isJSON(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}

// isCVATText reports one of Django's plain-text answers (HttpResponse*,
// labelled text/html) rather than an HTML page: their text is CVAT's
// message.
func isCVATText(contentType string, b []byte) bool {
	mt, _, _ := mime.ParseMediaType(contentType)
	if mt != "text/html" && mt != "text/plain" {
		return false
	}
	s := strings.TrimSpace(string(b))
	return s != "" && !strings.HasPrefix(s, "<")
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

// printable quotes the start of an answer for an error: at most n bytes,
// control and invalid bytes shown as escapes.
func printable(b []byte, n int) string {
	cut := len(b) > n
	if cut {
		b = b[:n]
	}
	var sb strings.Builder
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		if r == utf8.RuneError && size <= 1 || !unicode.IsPrint(r) && r != ' ' {
			fmt.Fprintf(&sb, `\x%02x`, b[0])
			b = b[1:]
			continue
		}
		sb.WriteRune(r)
		b = b[size:]
	}
	s := strconv.Quote(sb.String())
	s = strings.ReplaceAll(s, `\\x`, `\x`)
	if cut {
		s += "…"
	}
	return s
}

func describeType(ct string) string {
	if ct == "" {
		return "no content type"
	}
	return strconv.Quote(ct)
}
