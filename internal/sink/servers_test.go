package sink

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/pstest"
	"cloud.google.com/go/storage"
	"github.com/fsouza/fake-gcs-server/fakestorage"
	"github.com/googleapis/gax-go/v2"
	"google.golang.org/api/option"

	"github.com/cvat-sync/cvat-sync/internal/cloud"
	"github.com/cvat-sync/cvat-sync/internal/cloud/cloudtest"
)

const (
	testBucket  = "cvat-sync-test"
	testProject = "test-project"
	testTopic   = "cvat-sync-exports"
	testSub     = "cvat-sync-exports-tail"
)

// newFakeGCS starts fake-gcs-server on a loopback port with the test bucket;
// root "" keeps objects in memory, otherwise in that directory.
func newFakeGCS(t testing.TB, root string) *fakestorage.Server {
	t.Helper()
	srv, err := fakestorage.NewServerWithOptions(fakestorage.Options{
		Scheme:      "http",
		Host:        "127.0.0.1",
		Port:        0,
		StorageRoot: root,
		Writer:      io.Discard,
	})
	if err != nil {
		t.Fatalf("start fake-gcs-server: %v", err)
	}
	t.Cleanup(srv.Stop)
	srv.CreateBucketWithOpts(fakestorage.CreateBucketOpts{Name: testBucket})
	return srv
}

// newGCSClient returns the official client talking JSON over HTTP to
// baseURL (the fake, or a proxy in front of it). Retries back off in
// milliseconds so failure tests stay fast; retry=false turns them off.
func newGCSClient(t testing.TB, baseURL string, retry bool) *storage.Client {
	t.Helper()
	tr := &http.Transport{}
	c, err := storage.NewClient(context.Background(),
		option.WithEndpoint(baseURL+"/storage/v1/"),
		option.WithHTTPClient(&http.Client{Transport: tr}),
		// Reads default to the XML API on the endpoint's host, which the
		// fake serves only under its PublicHost, unknown before it listens.
		storage.WithJSONReads(),
	)
	if err != nil {
		t.Fatalf("storage client: %v", err)
	}
	c.SetRetry(storage.WithBackoff(gax.Backoff{Initial: time.Millisecond, Max: 5 * time.Millisecond}))
	if !retry {
		c.SetRetry(storage.WithErrorFunc(func(error) bool { return false }))
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close storage client: %v", err)
		}
		tr.CloseIdleConnections()
	})
	return c
}

// faultProxy stands between the client and fake-gcs-server and breaks
// things on request: it answers 503 to the next n requests, or rewrites a
// marker inside upload bodies, so that the bytes reaching GCS are not the
// bytes the client sent.
type faultProxy struct {
	URL string

	mu         sync.Mutex
	unavail    int // requests still to answer 503; -1: all
	corruptOld []byte
	corruptNew []byte
	requests   int
}

func newFaultProxy(t testing.TB, target string) *faultProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(u)
		r.Out.Host = r.In.Host // the fake builds resumable upload URLs from Host
	}}
	p := &faultProxy{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.requests++
		unavail := p.unavail != 0
		if p.unavail > 0 {
			p.unavail--
		}
		oldB, newB := p.corruptOld, p.corruptNew
		p.mu.Unlock()
		if unavail {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"error":{"code":503,"message":"injected: backend unavailable"}}`)
			return
		}
		if oldB != nil && r.Body != nil {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			body = bytes.ReplaceAll(body, oldB, newB)
			r.Body = io.NopCloser(bytes.NewReader(body))
			r.ContentLength = int64(len(body))
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
}

func (p *faultProxy) failNext(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.unavail = n
}

func (p *faultProxy) corrupt(oldB, newB []byte) {
	if len(oldB) != len(newB) {
		panic("corrupt: replacement must keep the length")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.corruptOld, p.corruptNew = oldB, newB
}

func (p *faultProxy) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.requests
}

// pubsubEnv is cloudtest's Pub/Sub emulator with the outbox topic and a
// subscription.
type pubsubEnv struct {
	em     *cloudtest.Emulators
	srv    *pstest.Server
	client *pubsub.Client
}

// stopServer cuts the client off the server, as an outage does.
func (e *pubsubEnv) stopServer() { e.em.PubSubDown() }

func newPubSub(t testing.TB) *pubsubEnv {
	t.Helper()
	em := cloudtest.Start(t, cloudtest.Options{Project: testProject})
	em.Subscription(t, testSub, testTopic, cloud.SubscriptionOptions{Ordering: true, AckDeadline: 10 * time.Second})
	return &pubsubEnv{em: em, srv: em.PubSub(), client: em.Open(t).PubSub}
}

// publisher returns a publisher of the outbox topic, stopped at cleanup.
func (e *pubsubEnv) publisher(t testing.TB) *pubsub.Publisher {
	t.Helper()
	p := e.client.Publisher(testTopic)
	t.Cleanup(p.Stop)
	return p
}

// The benchmark's GCS fake runs in a child process: fake-gcs-server keeps a
// resumable upload's content in memory until it completes, which would
// otherwise count as the client's heap.
const fakeGCSChildEnv = "SINK_TEST_FAKE_GCS_ROOT"

func runFakeGCSChild(root string) int {
	srv, err := fakestorage.NewServerWithOptions(fakestorage.Options{
		Scheme: "http", Host: "127.0.0.1", Port: 0, StorageRoot: root, Writer: io.Discard,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer srv.Stop()
	srv.CreateBucketWithOpts(fakestorage.CreateBucketOpts{Name: testBucket})
	fmt.Println(srv.URL())
	_, _ = io.Copy(io.Discard, os.Stdin) // until the parent closes stdin
	return 0
}

// readURL reads the first line the child prints: its URL.
func readURL(r io.Reader) (string, error) {
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read fake-gcs-server URL: %w", err)
	}
	return line[:len(line)-1], nil
}
