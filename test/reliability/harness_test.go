// Package reliability holds cvat-sync's end-to-end reliability tests: the
// real receiver binary (built once in TestMain) against CVAT's fake and
// external Pub/Sub and GCS emulators running in this test process, with
// faults injected, processes killed and hostile clients. Everything listens
// on 127.0.0.1 and every loop is bounded. CVAT_SYNC_LONG_TESTS=1 runs the
// long versions.
package reliability

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"github.com/fsouza/fake-gcs-server/fakestorage"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// receiverBin is the real binary, built by TestMain.
var receiverBin string

// logs collects every line every receiver process wrote, and forbidden the
// strings that must never appear in them (secrets, tokens, passwords);
// TestMain checks them after all tests ran.
var logs struct {
	mu        sync.Mutex
	bufs      []*syncBuffer
	forbidden map[string]bool
}

func forbid(secrets ...string) {
	logs.mu.Lock()
	defer logs.mu.Unlock()
	if logs.forbidden == nil {
		logs.forbidden = map[string]bool{}
	}
	for _, s := range secrets {
		if len(s) >= 8 { // shorter ones would match by chance
			logs.forbidden[s] = true
		}
	}
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cvat-sync-reliability-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	receiverBin = filepath.Join(dir, "receiver")
	build := exec.Command("go", "build", "-o", receiverBin, "github.com/cvat-sync/cvat-sync/cmd/receiver")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build receiver:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	if code == 0 {
		code = checkLogs()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// checkLogs fails the package when any captured log line holds a forbidden
// string.
func checkLogs() int {
	logs.mu.Lock()
	defer logs.mu.Unlock()
	lines, bad := 0, 0
	for _, b := range logs.bufs {
		for _, line := range strings.Split(b.String(), "\n") {
			lines++
			for s := range logs.forbidden {
				if strings.Contains(line, s) {
					bad++
					fmt.Fprintf(os.Stderr, "FAIL: a log line holds a secret (%d chars): %.300s\n", len(s), line)
				}
			}
		}
	}
	if lines == 0 || len(logs.forbidden) == 0 {
		fmt.Fprintln(os.Stderr, "FAIL: no log lines or no secrets were collected: the secret check checked nothing")
		return 1
	}
	if bad > 0 {
		return 1
	}
	return 0
}

func longTests() bool { return os.Getenv("CVAT_SYNC_LONG_TESTS") == "1" }

// syncBuffer is an io.Writer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// receiver is one running receiver process.
type receiver struct {
	t    testing.TB
	cmd  *exec.Cmd
	out  *syncBuffer
	addr string
	done chan struct{}
	err  error
}

// startReceiver runs `receiver serve` with env (plus PATH and HOME, a
// listener on 127.0.0.1:0 and a data dir unless given) and waits for its
// "listening" line. The process is killed when the test ends.
func startReceiver(t testing.TB, env map[string]string) *receiver {
	t.Helper()
	full := map[string]string{
		"PATH":               os.Getenv("PATH"),
		"HOME":               os.Getenv("HOME"),
		"CVAT_SYNC_LISTEN":   "127.0.0.1:0",
		"CVAT_SYNC_DATA_DIR": filepath.Join(t.TempDir(), "data"),
	}
	for k, v := range env {
		full[k] = v
	}
	forbid(full["CVAT_SYNC_WEBHOOK_SECRET"], full["CVAT_SYNC_CVAT_TOKEN"], full["CVAT_SYNC_CVAT_PASSWORD"])
	for _, s := range strings.Split(full["CVAT_SYNC_WEBHOOK_SECRET"], ",") {
		forbid(s)
	}
	r := &receiver{t: t, out: &syncBuffer{}, done: make(chan struct{})}
	logs.mu.Lock()
	logs.bufs = append(logs.bufs, r.out)
	logs.mu.Unlock()
	r.cmd = exec.Command(receiverBin, "serve")
	for k, v := range full {
		r.cmd.Env = append(r.cmd.Env, k+"="+v)
	}
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start receiver: %v", err)
	}
	go func() { r.err = r.cmd.Wait(); close(r.done) }()
	t.Cleanup(r.kill)
	deadline := time.Now().Add(60 * time.Second)
	for r.addr == "" {
		for _, l := range r.lines() {
			if l["message"] == "listening" {
				r.addr, _ = l["addr"].(string)
			}
		}
		if r.addr != "" {
			break
		}
		select {
		case <-r.done:
			t.Fatalf("receiver exited before listening: %v\n%s", r.err, r.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("receiver did not log \"listening\" within 60s:\n%s", r.out.String())
		}
		time.Sleep(20 * time.Millisecond) // polling the log with a deadline
	}
	return r
}

// url is the base URL of the receiver.
func (r *receiver) url() string { return "http://" + r.addr }

// webhookURL is where CVAT delivers.
func (r *receiver) webhookURL() string { return r.url() + "/webhooks/cvat" }

// lines returns the JSON log lines so far.
func (r *receiver) lines() []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(r.out.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// kill sends SIGKILL and waits.
func (r *receiver) kill() {
	select {
	case <-r.done:
		return
	default:
	}
	_ = r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.done
}

// alive reports whether the process still runs.
func (r *receiver) alive() bool {
	select {
	case <-r.done:
		return false
	default:
		return true
	}
}

// metric returns the sum of the samples of a metric whose labels include
// every given label (name="value" pairs), from /metrics.
func (r *receiver) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	resp, err := http.Get(r.url() + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return sumMetric(string(b), name, labels...)
}

func sumMetric(text, name string, labels ...string) float64 {
	var sum float64
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(line, l) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}

// eventually polls cond every 20 ms until it holds or d passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond) // polling with a deadline
	}
}

// emulators are an external Pub/Sub (pstest) and GCS (fake-gcs-server
// behind a reverse proxy that can inject faults) in this process.
type emulators struct {
	ps        *pstest.Server
	gcs       *fakestorage.Server
	proxy     *httptest.Server
	psFail    atomic.Pointer[codes.Code] // Publish fails with this code while set
	psTopic   atomic.Pointer[string]     // ... only to this topic (short name), when set
	gcsFaults atomic.Int64               // answers the GCS proxy replaced
	psFails   atomic.Int64               // publishes failed so far
	gcsFault  atomic.Pointer[func(*http.Request) int]
}

// publishReactor fails Publish while emulators.psFail is set (to the topic
// psTopic, when that is set).
type publishReactor struct{ e *emulators }

func (p publishReactor) React(req any) (bool, any, error) {
	c := p.e.psFail.Load()
	if c == nil {
		return false, nil, nil
	}
	if topic := p.e.psTopic.Load(); topic != nil {
		if pr, ok := req.(*pubsubpb.PublishRequest); !ok || !strings.HasSuffix(pr.GetTopic(), "/topics/"+*topic) {
			return false, nil, nil
		}
	}
	p.e.psFails.Add(1)
	return true, &pubsubpb.PublishResponse{}, status.Error(*c, "injected by the test")
}

func newEmulators(t testing.TB) *emulators {
	t.Helper()
	e := &emulators{}
	e.ps = pstest.NewServerWithAddress("127.0.0.1:0", pstest.ServerReactorOption{FuncName: "Publish", Reactor: publishReactor{e}})
	t.Cleanup(func() { e.ps.Close() })

	var handler http.Handler
	e.proxy = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { handler.ServeHTTP(w, r) }))
	gcs, err := fakestorage.NewServerWithOptions(fakestorage.Options{
		Scheme: "http", Host: "127.0.0.1", Port: 0, Writer: io.Discard,
		StorageRoot: filepath.Join(t.TempDir(), "gcs"),
	})
	if err != nil {
		t.Fatalf("fake-gcs-server: %v", err)
	}
	e.gcs = gcs
	t.Cleanup(gcs.Stop)
	target, _ := url.Parse(gcs.URL())
	rp := httputil.NewSingleHostReverseProxy(target)
	// Resumable uploads continue at the Location of their first answer:
	// keep them on the proxy too.
	rp.ModifyResponse = func(resp *http.Response) error {
		if loc := resp.Header.Get("Location"); loc != "" {
			resp.Header.Set("Location", strings.Replace(loc, gcs.URL(), e.proxy.URL, 1))
		}
		return nil
	}
	rp.ErrorLog = log.New(io.Discard, "", 0) // clients that hang up are part of the tests
	handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f := e.gcsFault.Load(); f != nil {
			if code := (*f)(r); code != 0 {
				e.gcsFaults.Add(1)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(code)
				fmt.Fprintf(w, `{"error":{"code":%d,"message":"injected by the test"}}`, code)
				return
			}
		}
		rp.ServeHTTP(w, r)
	})
	e.proxy.Start() // only now: the handler is in place
	t.Cleanup(e.proxy.Close)
	return e
}

// env is what points the receiver at these emulators.
func (e *emulators) env() map[string]string {
	return map[string]string{"PUBSUB_EMULATOR_HOST": e.ps.Addr, "STORAGE_EMULATOR_HOST": e.proxy.URL}
}

// setGCSFault makes the GCS proxy answer f's status (0: pass through).
func (e *emulators) setGCSFault(f func(*http.Request) int) {
	if f == nil {
		e.gcsFault.Store(nil)
		return
	}
	e.gcsFault.Store(&f)
}

// messages returns the messages published to topic id (short name).
func (e *emulators) messages(topic string) []*pstest.Message {
	var out []*pstest.Message
	for _, m := range e.ps.Messages() {
		if strings.HasSuffix(m.Topic, "/topics/"+topic) {
			out = append(out, m)
		}
	}
	return out
}

// objects lists the objects in bucket (none when it does not exist yet).
func (e *emulators) objects(bucket string) []fakestorage.ObjectAttrs {
	resp, err := e.gcs.ListObjectsWithOptionsPaginated(bucket, fakestorage.ListOptions{})
	if err != nil {
		return nil
	}
	return resp.Objects
}

// post sends body to url with the given headers and returns the status and
// body of the answer.
func post(t testing.TB, ctx context.Context, u string, body []byte, hdr http.Header) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = hdr
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
