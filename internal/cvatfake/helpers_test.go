package cvatfake_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
)

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// newReceiver is a webhook receiver that accepts everything.
func newReceiver(t testing.TB) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"status": "accepted"}`)
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/webhooks/cvat"
}
