package cloud

import (
	"errors"
	"fmt"

	"google.golang.org/api/googleapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Sentinels that errors of this package wrap, for errors.Is.
var (
	// ErrNotFound: a topic, subscription or bucket does not exist (on GCP,
	// where they are checked and not created).
	ErrNotFound = errors.New("does not exist")
	// ErrPermissionDenied: the credentials may not do what was asked.
	ErrPermissionDenied = errors.New("permission denied")
)

// ResourceError is a failed check, creation or deletion of a topic,
// subscription or bucket, with what to do about it.
type ResourceError struct {
	Kind string // "topic", "subscription" or "bucket"
	Name string // full resource name, or gs://<bucket>
	Err  error  // wraps ErrNotFound or ErrPermissionDenied when it is that
	Fix  string // what to grant or run
}

func (e *ResourceError) Error() string {
	prefix := "pubsub "
	if e.Kind == "bucket" {
		prefix = ""
	}
	if e.Fix == "" {
		return fmt.Sprintf("%s%s %s: %v", prefix, e.Kind, e.Name, e.Err)
	}
	return fmt.Sprintf("%s%s %s: %v: %s", prefix, e.Kind, e.Name, e.Err, e.Fix)
}

func (e *ResourceError) Unwrap() error { return e.Err }

// pubsubErr classifies err from an RPC on a Pub/Sub resource: notFound is
// what to do when it is missing, denied what the credentials need.
func pubsubErr(kind, name string, err error, notFound, denied string) error {
	switch status.Code(err) {
	case codes.OK:
		return nil
	case codes.NotFound:
		return &ResourceError{Kind: kind, Name: name, Err: ErrNotFound, Fix: notFound}
	case codes.PermissionDenied:
		return &ResourceError{Kind: kind, Name: name, Err: fmt.Errorf("%w: %w", ErrPermissionDenied, err), Fix: "the service account needs " + denied}
	default:
		return &ResourceError{Kind: kind, Name: name, Err: err}
	}
}

// httpCode is the HTTP status of a Cloud Storage error, 0 for other errors.
func httpCode(err error) int {
	var gerr *googleapi.Error
	if errors.As(err, &gerr) {
		return gerr.Code
	}
	return 0
}
