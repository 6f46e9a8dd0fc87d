package cvatapi_test

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
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

// newProxy is a reverse proxy in front of the fake, as a load balancer or
// an ingress that ends TLS: it sets X-Forwarded-Proto and X-Forwarded-Host
// (when given), from which CVAT builds its absolute URLs.
func newProxy(t testing.TB, target, proto, host string) string {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	rp := &httputil.ReverseProxy{Transport: tr, Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(u)
		if proto != "" {
			r.Out.Header.Set("X-Forwarded-Proto", proto)
		}
		if host != "" {
			r.Out.Header.Set("X-Forwarded-Host", host)
		}
	}}
	return newRawServer(t, rp.ServeHTTP)
}

// beforeTransport runs before for each request (with the request) before
// sending it over the real network: a test's way to make CVAT's state move
// at an exact point of the client's conversation.
type beforeTransport struct {
	tr     http.Transport
	before func(*http.Request)
}

func (b *beforeTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if b.before != nil {
		b.before(r)
	}
	return b.tr.RoundTrip(r)
}

// CloseIdleConnections lets Client.Close release the connections.
func (b *beforeTransport) CloseIdleConnections() { b.tr.CloseIdleConnections() }

// once returns a func that runs f the first time cond holds for a request.
func once(cond func(*http.Request) bool, f func()) func(*http.Request) {
	var o sync.Once
	return func(r *http.Request) {
		if cond(r) {
			o.Do(f)
		}
	}
}
