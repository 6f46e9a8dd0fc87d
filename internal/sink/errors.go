package sink

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"

	"google.golang.org/api/googleapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrUnavailable reports that Cloud Storage or Pub/Sub did not answer, or
// answered that it cannot serve now (5xx, 429, 408, gRPC Unavailable): work
// that meets it is held and retried, spending no attempt.
var ErrUnavailable = errors.New("sink: service unavailable")

type unavailableError struct{ err error }

func (e unavailableError) Error() string        { return e.err.Error() }
func (e unavailableError) Unwrap() error        { return e.err }
func (e unavailableError) Is(target error) bool { return target == ErrUnavailable }

// classify marks err as ErrUnavailable when it is a transient failure of
// the service rather than a refusal of this request.
func classify(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) || !transient(err) {
		return err
	}
	return unavailableError{err}
}

func transient(err error) bool {
	var gerr *googleapi.Error
	if errors.As(err, &gerr) {
		return gerr.Code >= 500 || gerr.Code == http.StatusTooManyRequests || gerr.Code == http.StatusRequestTimeout
	}
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown && s.Code() != codes.OK {
		switch s.Code() {
		case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted, codes.Internal:
			return true
		}
		return false
	}
	var ne net.Error
	var ue *url.Error
	return errors.As(err, &ne) || errors.As(err, &ue) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, context.DeadlineExceeded)
}
