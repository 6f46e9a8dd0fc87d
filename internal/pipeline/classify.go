package pipeline

import (
	"context"
	"errors"

	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
	"github.com/cvat-sync/cvat-sync/internal/sink"
)

// unavailable reports an error that says a dependency (CVAT, GCS, Pub/Sub)
// cannot serve any task now, not that this task's work is wrong: such work
// is held, without spending attempts, until the dependency returns. CVAT
// answering 5xx to a read (its database down) and refusing the credentials
// or the organization (a token being rotated) are such, unlike a 5xx that
// is CVAT reporting this task's export as failed.
func unavailable(err error) bool {
	if errors.Is(err, cvatapi.ErrUnavailable) || errors.Is(err, sink.ErrUnavailable) ||
		errors.Is(err, cvatapi.ErrUnauthorized) || errors.Is(err, cvatapi.ErrUnknownOrganization) {
		return true
	}
	var se *cvatapi.StatusError
	return errors.As(err, &se) && se.Code >= 500 && !errors.Is(err, cvatapi.ErrExportFailed)
}

// busy reports work to put off because its task is still changing.
func busy(err error) (*busyError, bool) {
	var b *busyError
	if errors.As(err, &b) {
		return b, true
	}
	var m *stateMovedError
	if errors.As(err, &m) {
		return &busyError{reason: m.Error()}, true
	}
	if errors.Is(err, cvatapi.ErrStateChanged) {
		return &busyError{reason: err.Error()}, true
	}
	return nil, false
}

// The reason classes of dead letters: a small fixed set for a metric label.
const (
	reasonExportFailed   = "cvat_export_failed"
	reasonInvalidArchive = "invalid_archive"
	reasonCVATStatus     = "cvat_status"
	reasonUnavailable    = "unavailable"
	reasonTimeout        = "timeout"
	reasonChecksum       = "checksum"
	reasonOther          = "other"
)

var reasonClasses = []string{reasonExportFailed, reasonInvalidArchive, reasonCVATStatus, reasonUnavailable, reasonTimeout, reasonChecksum, reasonOther}

// reasonClass maps an error to a reason class.
func reasonClass(err error) string {
	var se *cvatapi.StatusError
	switch {
	case errors.Is(err, cvatapi.ErrExportFailed):
		return reasonExportFailed
	case errors.Is(err, cvatapi.ErrInvalidArchive):
		return reasonInvalidArchive
	case unavailable(err):
		return reasonUnavailable
	case errors.Is(err, context.DeadlineExceeded):
		return reasonTimeout
	case errors.As(err, &se):
		return reasonCVATStatus
	case errors.Is(err, sink.ErrChecksumMismatch):
		return reasonChecksum
	}
	return reasonOther
}

// permanent reports an error that retrying at once cannot mend (a format the
// server does not offer, a task without data, a record that cannot be
// written): the worker gives the state up to convergence's slower backoff
// straight away.
func permanent(err error) bool {
	for _, e := range []error{cvatapi.ErrUnknownFormat, cvatapi.ErrForbidden, cvatapi.ErrNoData, cvatapi.ErrCloudStorage,
		sink.ErrInvalidNotice, sink.ErrRecord} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
