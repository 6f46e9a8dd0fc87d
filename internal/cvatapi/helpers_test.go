package cvatapi_test

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
)

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// newRawServer serves h for tests that inspect raw requests.
func newRawServer(t testing.TB, h http.HandlerFunc) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}
