package sink

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"syscall"
	"testing"

	"google.golang.org/api/googleapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"gcs 503", &googleapi.Error{Code: 503}, true},
		{"gcs 429", &googleapi.Error{Code: 429}, true},
		{"gcs 403", &googleapi.Error{Code: 403}, false},
		{"gcs 412", &googleapi.Error{Code: 412}, false},
		{"grpc unavailable", status.Error(codes.Unavailable, "down"), true},
		{"grpc permission", status.Error(codes.PermissionDenied, "no"), false},
		{"refused", &url.Error{Op: "Post", URL: "http://x", Err: syscall.ECONNREFUSED}, true},
		{"deadline", fmt.Errorf("publish: %w", context.DeadlineExceeded), true},
		{"other", errors.New("bad key"), false},
	} {
		if got := errors.Is(classify(tc.err), ErrUnavailable); got != tc.want {
			t.Errorf("%s: unavailable = %v, want %v", tc.name, got, tc.want)
		}
	}
	if classify(nil) != nil {
		t.Error("nil classified")
	}
}
