// Package reliability holds cvat-sync's end-to-end reliability tests: the
// real receiver binary (built once in TestMain) against CVAT's fake and
// external Pub/Sub and GCS emulators running in this test process, with
// faults injected, processes killed and hostile clients. Everything listens
// on 127.0.0.1 and every loop is bounded. CVAT_SYNC_LONG_TESTS=1 runs the
// long versions.
package reliability

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cvat-sync/cvat-sync/internal/cloud"
	"github.com/cvat-sync/cvat-sync/internal/cloud/cloudtest"
	"github.com/cvat-sync/cvat-sync/internal/eventually"
	"github.com/cvat-sync/cvat-sync/internal/logbuf"
	"github.com/cvat-sync/cvat-sync/internal/scrape"
)

// receiverBin is the real binary, built by TestMain.
var receiverBin string

// logs collects every line every receiver process wrote, and forbidden the
// strings that must never appear in them (secrets, tokens, passwords);
// TestMain checks them after all tests ran.
var logs struct {
	mu        sync.Mutex
	bufs      []*logbuf.Buffer
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

// receiver is one running receiver process.
type receiver struct {
	t    testing.TB
	cmd  *exec.Cmd
	out  *logbuf.Buffer
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
	r := &receiver{t: t, out: logbuf.New(), done: make(chan struct{})}
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
	if !eventually.Poll(60*time.Second, func() bool {
		r.addr = r.listeningAddr()
		return r.addr != "" || !r.alive()
	}) {
		t.Fatalf("receiver did not log \"listening\" within 60s:\n%s", r.out)
	}
	if r.addr == "" {
		<-r.done
		t.Fatalf("receiver exited before listening: %v\n%s", r.err, r.out)
	}
	return r
}

// url is the base URL of the receiver.
func (r *receiver) url() string { return "http://" + r.addr }

// webhookURL is where CVAT delivers.
func (r *receiver) webhookURL() string { return r.url() + "/webhooks/cvat" }

// listeningAddr is the address of the receiver's "listening" log line,
// which is how an operator learns it; "" before that line.
func (r *receiver) listeningAddr() string {
	lines := r.out.Find("listening")
	if len(lines) == 0 {
		return ""
	}
	addr, _ := lines[0]["addr"].(string)
	return addr
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
	return scrape.Sum(t, r.url()+"/metrics", name, labels...)
}

// newEmulators starts an external Pub/Sub and GCS in this process, with
// hooks that inject faults (SetPubSubFault, SetGCSFault), on the project the
// receiver defaults to on emulators.
func newEmulators(t testing.TB) *cloudtest.Emulators {
	t.Helper()
	return cloudtest.Start(t, cloudtest.Options{Project: cloud.LocalProject})
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
