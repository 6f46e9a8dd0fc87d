package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/cvat-sync/cvat-sync/internal/cloud/cloudtest"
	"github.com/cvat-sync/cvat-sync/internal/eventually"
	"github.com/cvat-sync/cvat-sync/internal/logbuf"
	"github.com/cvat-sync/cvat-sync/internal/payloads"
	"github.com/cvat-sync/cvat-sync/internal/signature"
)

func TestMain(m *testing.M) {
	code := m.Run()
	// The tests' own idle keep-alive connections (http.Get, CVAT's fake's
	// deliveries) are not the service's.
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	if code == 0 {
		if err := goleak.Find(cloudtest.LeakOptions()...); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// service is a running `receiver serve`.
type service struct {
	addr   string
	logs   *logbuf.Buffer
	cancel context.CancelFunc
	done   chan error
}

// envMap turns a map into a getenv function.
func envMap(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// startService runs `receiver serve` on 127.0.0.1:0 and waits until it logs
// the address it listens on.
func startService(t *testing.T, env map[string]string, args ...string) *service {
	t.Helper()
	if env["CVAT_SYNC_DATA_DIR"] == "" {
		env["CVAT_SYNC_DATA_DIR"] = t.TempDir()
	}
	if env["CVAT_SYNC_LISTEN"] == "" {
		env["CVAT_SYNC_LISTEN"] = "127.0.0.1:0"
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &service{logs: logbuf.New(), cancel: cancel, done: make(chan error, 1)}
	addr := make(chan string, 1)
	go func() {
		s.done <- run(ctx, append([]string{"receiver", "serve"}, args...), envMap(env),
			stdio{out: s.logs, listening: func(a string) { addr <- a }})
	}()
	select {
	case s.addr = <-addr:
	case err := <-s.done:
		cancel()
		t.Fatalf("serve exited early: %v\n%s", err, s.logs)
	case <-time.After(20 * time.Second):
		cancel()
		t.Fatalf("serve did not start listening:\n%s", s.logs)
	}
	t.Cleanup(func() {
		s.stop(t)
		if t.Failed() {
			lines := strings.Split(strings.TrimSpace(s.logs.String()), "\n")
			t.Logf("last log lines of the service at %s:\n%s", s.addr, strings.Join(lines[max(0, len(lines)-250):], "\n"))
		}
	})
	return s
}

func (s *service) stop(t *testing.T) {
	t.Helper()
	if s.cancel == nil {
		return
	}
	s.cancel()
	s.cancel = nil
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("serve: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("serve did not stop within 30s of SIGTERM")
	}
}

func (s *service) post(t *testing.T, body []byte, sig string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+s.addr+"/webhooks/cvat", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if sig != "" {
		req.Header.Set(signature.Header, sig)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(res.Body).Decode(&m)
	return res.StatusCode, m
}

func get(t *testing.T, url string) int {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}

// TestServeEmbedded runs the real program on its embedded default: probes
// answer, a signed event is stored, an unsigned one refused, and SIGTERM
// (context cancellation) stops it cleanly.
func TestServeEmbedded(t *testing.T) {
	const secret = "embedded-test-secret"
	s := startService(t, map[string]string{"CVAT_SYNC_WEBHOOK_SECRET": secret})
	for _, p := range []string{"/healthz", "/metrics"} {
		if code := get(t, "http://"+s.addr+p); code != http.StatusOK {
			t.Errorf("GET %s: %d", p, code)
		}
	}
	// Readiness answers from the background probes: not ready until Pub/Sub
	// and GCS answered their first one, a few milliseconds after the
	// listener opened (asking at once raced them).
	eventually.Within(t, 10*time.Second, "GET /readyz 200", func() bool {
		return get(t, "http://"+s.addr+"/readyz") == http.StatusOK
	})
	body := payloads.Read(t, "update_job.json")
	if code, m := s.post(t, body, signature.Sign(secret, body)); code != http.StatusAccepted || m["status"] != "stored" {
		t.Errorf("signed update:job: %d %v", code, m)
	}
	if code, _ := s.post(t, body, ""); code != http.StatusUnauthorized {
		t.Errorf("unsigned: %d, want 401", code)
	}
	s.stop(t)
	logs := s.logs.String()
	for _, want := range []string{`"severity":"INFO"`, `"message":"stopped"`, `"mode":"embedded"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %s", want)
		}
	}
	if strings.Contains(logs, secret) {
		t.Error("the webhook secret appears in the logs")
	}
}

func TestServeRefusesBadConfig(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"no secret", map[string]string{}, "CVAT_SYNC_WEBHOOK_SECRET"},
		{"bad duration", map[string]string{"CVAT_SYNC_WEBHOOK_SECRET": "abcdefgh", "CVAT_SYNC_DEBOUNCE": "later"}, "CVAT_SYNC_DEBOUNCE"},
		{"port taken", map[string]string{"CVAT_SYNC_WEBHOOK_SECRET": "abcdefgh", "CVAT_SYNC_LISTEN": "256.0.0.1:1"}, "CVAT_SYNC_LISTEN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.env["CVAT_SYNC_DATA_DIR"] = t.TempDir()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			err := run(ctx, []string{"receiver"}, envMap(tt.env), stdio{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("run = %v, want an error naming %s", err, tt.want)
			}
		})
	}
}

func TestSignAndVersion(t *testing.T) {
	file := filepath.Join(payloads.Dir(), "ping.json")
	body := payloads.Read(t, "ping.json")
	// The reference vector for ping.json under this secret.
	const want = "sha256=6eb21d23f5283"
	for name, std := range map[string]func(out io.Writer) stdio{
		"file":  func(out io.Writer) stdio { return stdio{out: out} },
		"stdin": func(out io.Writer) stdio { return stdio{in: bytes.NewReader(body), out: out} },
	} {
		args := []string{"receiver", "sign", "--secret", "cvat-sync-test-secret"}
		if name == "file" {
			args = append(args, file)
		}
		var out bytes.Buffer
		if err := run(context.Background(), args, envMap(nil), std(&out)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !strings.HasPrefix(out.String(), want) || len(strings.TrimSpace(out.String())) != 71 {
			t.Errorf("sign (%s) printed %q, want %s...", name, out.String(), want)
		}
	}
	for _, args := range [][]string{{"version"}, {"--version"}} {
		var out bytes.Buffer
		if err := run(context.Background(), append([]string{"receiver"}, args...), envMap(nil), stdio{out: &out}); err != nil || out.String() != "receiver "+version+"\n" {
			t.Errorf("receiver %s: %v %q", args[0], err, out.String())
		}
	}
	err := run(context.Background(), []string{"receiver", "sign", file}, envMap(nil), stdio{})
	if exitCode(err) != 2 {
		t.Errorf("sign without a secret: %v (exit %d), want a usage error", err, exitCode(err))
	}
	err = run(context.Background(), []string{"receiver", "frobnicate"}, envMap(nil), stdio{})
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 2 {
		t.Errorf("unknown command: %v", err)
	}
}

// TestReadyWithoutCVATCredentials: the Secret contract lets the receiver
// start without a CVAT token; /readyz says so from its first answer, not
// "not checked yet" while a probe of a slow CVAT is still running, and the
// service stays ready (it stores webhooks without CVAT).
func TestReadyWithoutCVATCredentials(t *testing.T) {
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select { // a CVAT that does not answer while the test runs
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(slow.Close)
	t.Cleanup(func() { close(release) })
	s := startService(t, map[string]string{"CVAT_SYNC_WEBHOOK_SECRET": "no-token-test-secret", "CVAT_SYNC_CVAT_URL": slow.URL})
	var code int
	var body []byte
	readyz := func() bool {
		res, err := http.Get("http://" + s.addr + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		code = res.StatusCode
		body, _ = io.ReadAll(res.Body)
		return code == http.StatusOK
	}
	// Ready once Pub/Sub and GCS answered their first probes (milliseconds);
	// the probe of the silent CVAT is still running then.
	eventually.Within(t, 10*time.Second, "ready", readyz)
	if !strings.Contains(string(body), "no CVAT credentials") {
		t.Fatalf("/readyz without a CVAT token: %d %s, want it to name the missing credentials", code, body)
	}
	if got := s.metric(t, "cvat_sync_cvat_credentials_ok"); got != 0 {
		t.Errorf("cvat_sync_cvat_credentials_ok = %v, want 0", got)
	}
	s.stop(t)
}
