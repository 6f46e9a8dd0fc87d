package reliability

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cvat-sync/cvat-sync/internal/cloud/cloudtest"
	"github.com/cvat-sync/cvat-sync/internal/cvatfake"
	"github.com/cvat-sync/cvat-sync/internal/payloads"
	"github.com/cvat-sync/cvat-sync/internal/signature"
)

const (
	hostileSecret = "hostile-webhook-secret-5f1c2a"
	hostileToken  = "hostile-cvat-token-9b7e33"
	maxBody       = 1 << 20 // the default CVAT_SYNC_MAX_BODY_BYTES
	inboxTopic    = "cvat-sync-inbox"
)

// padded returns body (a JSON object) grown to exactly n bytes with
// whitespace before its closing brace.
func padded(t testing.TB, body []byte, n int) []byte {
	t.Helper()
	if n < len(body) {
		t.Fatalf("cannot pad %d bytes down to %d", len(body), n)
	}
	out := make([]byte, 0, n)
	out = append(out, body[:len(body)-1]...)
	out = append(out, bytes.Repeat([]byte(" "), n-len(body))...)
	return append(out, '}')
}

func signed(secret string, body []byte) http.Header {
	return http.Header{"Content-Type": {"application/json"}, signature.Header: {signature.Sign(secret, body)}}
}

// hostileEnv starts a receiver on emulators with a CVAT fake whose token is
// known, so that the log check covers both secrets.
func hostileEnv(t *testing.T) (*receiver, *cloudtest.Emulators) {
	t.Helper()
	em := newEmulators(t)
	cv := cvatfake.New(t, cvatfake.Options{Token: hostileToken})
	env := em.Env()
	env["CVAT_SYNC_WEBHOOK_SECRET"] = "old-secret-not-used-7d2e," + hostileSecret
	env["CVAT_SYNC_CVAT_URL"] = cv.URL()
	env["CVAT_SYNC_CVAT_TOKEN"] = hostileToken
	env["CVAT_SYNC_LOG_LEVEL"] = "debug"
	return startReceiver(t, env), em
}

// TestHostileInput throws what a hostile or broken client sends at the real
// binary. Throughout, the inbox must hold exactly one message per 2xx
// "stored" answer, no answer may be a 5xx, no answer may echo a secret, and
// the process must stay up.
func TestHostileInput(t *testing.T) {
	t.Parallel()
	r, em := hostileEnv(t)
	ctx := context.Background()
	stored := 0
	check := func(t *testing.T, code int, body string) {
		t.Helper()
		if code >= 500 {
			t.Errorf("status %d: %s", code, body)
		}
		if strings.Contains(body, hostileSecret) || strings.Contains(body, hostileToken) {
			t.Errorf("answer echoes a secret: %s", body)
		}
		if code == http.StatusAccepted {
			stored++
		}
		if got := len(em.Messages(inboxTopic)); got != stored {
			t.Errorf("inbox holds %d messages after %d stored answers", got, stored)
		}
		if !r.alive() {
			t.Fatalf("receiver died:\n%s", r.out.String())
		}
	}
	job := bytes.TrimSpace(payloads.Read(t, "update_job.json"))

	t.Run("body sizes", func(t *testing.T) {
		tooLarge := r.metric(t, "cvat_sync_webhook_deliveries_total", `outcome="too_large"`)
		refused := 0
		for _, tc := range []struct {
			name    string
			body    []byte
			chunked bool
			want    int
		}{
			{"empty", []byte{}, false, http.StatusBadRequest},
			{"one byte", []byte("{"), false, http.StatusBadRequest},
			{"empty object", []byte("{}"), false, http.StatusBadRequest},
			{"plain", job, false, http.StatusAccepted},
			{"limit-1", padded(t, job, maxBody-1), false, http.StatusAccepted},
			{"limit", padded(t, job, maxBody), false, http.StatusAccepted},
			{"limit chunked", padded(t, job, maxBody), true, http.StatusAccepted},
			{"limit+1", padded(t, job, maxBody+1), false, http.StatusRequestEntityTooLarge},
			{"limit+1 chunked", padded(t, job, maxBody+1), true, http.StatusRequestEntityTooLarge},
			{"2x limit", padded(t, job, 2*maxBody), false, http.StatusRequestEntityTooLarge},
			{"8x limit chunked", padded(t, job, 8*maxBody), true, http.StatusRequestEntityTooLarge},
		} {
			t.Run(tc.name, func(t *testing.T) {
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, r.webhookURL(), bytes.NewReader(tc.body))
				req.Header = signed(hostileSecret, tc.body)
				if tc.chunked {
					req.ContentLength = -1
					req.Body = io.NopCloser(bytes.NewReader(tc.body)) // hide the length: chunked encoding
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					// A refusal before the whole body is read may reset the
					// connection under the client's upload: still a refusal.
					if tc.want == http.StatusRequestEntityTooLarge {
						refused++
						check(t, 0, "")
						return
					}
					t.Fatalf("POST %d bytes: %v", len(tc.body), err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != tc.want {
					t.Errorf("POST %d bytes (chunked %v): status %d, want %d: %s", len(tc.body), tc.chunked, resp.StatusCode, tc.want, b)
				}
				if resp.StatusCode == http.StatusRequestEntityTooLarge {
					refused++
				}
				check(t, resp.StatusCode, string(b))
			})
		}
		if got := r.metric(t, "cvat_sync_webhook_deliveries_total", `outcome="too_large"`) - tooLarge; got != float64(refused) {
			t.Errorf("too_large deliveries moved by %v, want %d", got, refused)
		}
	})

	t.Run("signatures", func(t *testing.T) {
		digest := strings.TrimPrefix(signature.Sign(hostileSecret, job), "sha256=")
		raw, _ := hex.DecodeString(digest)
		for _, tc := range []struct {
			name, header string
			want         int
			reason       string // signature failure reason that must move
		}{
			{"prefixed", "sha256=" + digest, http.StatusAccepted, ""},
			{"bare hex", digest, http.StatusAccepted, ""},
			{"upper-case hex", "sha256=" + strings.ToUpper(digest), http.StatusAccepted, ""},
			{"old secret", signature.Sign("old-secret-not-used-7d2e", job), http.StatusAccepted, ""},
			{"missing", "", http.StatusUnauthorized, "missing"},
			{"prefix only", "sha256=", http.StatusUnauthorized, "malformed"},
			{"63 hex", "sha256=" + digest[:63], http.StatusUnauthorized, "malformed"},
			{"65 hex", "sha256=" + digest + "0", http.StatusUnauthorized, "malformed"},
			{"128 hex", "sha256=" + digest + digest, http.StatusUnauthorized, "malformed"},
			{"non-hex", "sha256=" + digest[:62] + "zz", http.StatusUnauthorized, "malformed"},
			{"base64", "sha256=" + base64.StdEncoding.EncodeToString(raw), http.StatusUnauthorized, "malformed"},
			{"sha1 prefix", "sha1=" + digest, http.StatusUnauthorized, "malformed"},
			{"upper-case prefix", "SHA256=" + digest, http.StatusUnauthorized, "malformed"},
			{"double prefix", "sha256=sha256=" + digest, http.StatusUnauthorized, "malformed"},
			{"inner space", "sha256= " + digest, http.StatusUnauthorized, "malformed"},
			{"tab inside", "sha256=" + digest[:32] + "\t" + digest[32:], http.StatusUnauthorized, "malformed"},
			// HTTP strips whitespace around a field value before anyone sees it.
			{"surrounding spaces", " sha256=" + digest + " ", http.StatusAccepted, ""},
			{"huge", "sha256=" + strings.Repeat("a", 32<<10), http.StatusUnauthorized, "malformed"},
			{"other secret", signature.Sign("not-the-secret", job), http.StatusUnauthorized, "mismatch"},
			{"other body", signature.Sign(hostileSecret, append([]byte(" "), job...)), http.StatusUnauthorized, "mismatch"},
			{"legacy newline (off)", signature.Sign(hostileSecret, append(bytes.Clone(job), '\n')), http.StatusUnauthorized, "mismatch"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				var before float64
				if tc.reason != "" {
					before = r.metric(t, "cvat_sync_webhook_signature_failures_total", `reason="`+tc.reason+`"`)
				}
				hdr := http.Header{"Content-Type": {"application/json"}}
				if tc.header != "" {
					hdr.Set(signature.Header, tc.header)
				}
				code, body := post(t, ctx, r.webhookURL(), job, hdr)
				if code != tc.want {
					t.Errorf("status %d, want %d: %s", code, tc.want, body)
				}
				check(t, code, body)
				if tc.reason != "" {
					if got := r.metric(t, "cvat_sync_webhook_signature_failures_total", `reason="`+tc.reason+`"`) - before; got != 1 {
						t.Errorf("signature failures{reason=%q} moved by %v, want 1", tc.reason, got)
					}
				}
			})
		}
	})

	t.Run("repeated headers", func(t *testing.T) {
		good, bad := signature.Sign(hostileSecret, job), signature.Sign("nope", job)
		for _, tc := range []struct {
			name string
			sigs []string
			want []int
		}{
			{"two good", []string{good, good}, []int{http.StatusAccepted}},
			{"two bad", []string{bad, bad}, []int{http.StatusUnauthorized}},
			// Either answer is defensible; a 5xx or a store without a 2xx is not.
			{"bad then good", []string{bad, good}, []int{http.StatusUnauthorized, http.StatusAccepted}},
			{"good then bad", []string{good, bad}, []int{http.StatusUnauthorized, http.StatusAccepted}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				hdr := http.Header{"Content-Type": {"application/json", "text/plain"}, signature.Header: tc.sigs}
				code, body := post(t, ctx, r.webhookURL(), job, hdr)
				ok := false
				for _, w := range tc.want {
					ok = ok || code == w
				}
				if !ok {
					t.Errorf("status %d, want one of %v: %s", code, tc.want, body)
				}
				check(t, code, body)
			})
		}
		t.Run("conflicting Content-Length", func(t *testing.T) {
			sig := signature.Sign(hostileSecret, job)
			req := "POST /webhooks/cvat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" +
				"X-Signature-256: " + sig + "\r\nContent-Length: " + strconv.Itoa(len(job)) +
				"\r\nContent-Length: " + strconv.Itoa(len(job)-1) + "\r\nConnection: close\r\n\r\n" + string(job)
			code := rawStatus(t, r.addr, req)
			if code != http.StatusBadRequest {
				t.Errorf("status %d, want 400", code)
			}
			check(t, code, "")
		})
	})

	t.Run("content types", func(t *testing.T) {
		for _, ct := range []string{"", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/json; charset=latin1", "application/xml"} {
			t.Run(ct, func(t *testing.T) {
				hdr := signed(hostileSecret, job)
				hdr.Set("Content-Type", ct)
				code, body := post(t, ctx, r.webhookURL(), job, hdr)
				// The signature covers the raw bytes: a content type must
				// neither consume the body (401) nor crash anything.
				if code != http.StatusAccepted && code != http.StatusUnsupportedMediaType {
					t.Errorf("signed body as %q: status %d, want 202 (or 415): %s", ct, code, body)
				}
				check(t, code, body)
				hdr.Del(signature.Header)
				code, body = post(t, ctx, r.webhookURL(), job, hdr)
				if code != http.StatusUnauthorized && code != http.StatusUnsupportedMediaType {
					t.Errorf("unsigned body as %q: status %d, want 401: %s", ct, code, body)
				}
				check(t, code, body)
			})
		}
	})

	t.Run("deep nesting", func(t *testing.T) {
		const depth = 200_000
		arrays := `{"event":"update:job","job":` + strings.Repeat("[", depth) + strings.Repeat("]", depth) + `}`
		objects := `{"event":"update:job","job":` + strings.Repeat(`{"a":`, depth/6) + "1" + strings.Repeat("}", depth/6) + `}`
		unclosed := `{"event":"update:job","job":` + strings.Repeat("[", depth)
		for name, b := range map[string]string{"arrays": arrays, "objects": objects, "unclosed": unclosed} {
			t.Run(name, func(t *testing.T) {
				body := []byte(b)
				if len(body) > maxBody {
					t.Fatalf("body of %d bytes is over the limit: the case would test the limit, not the parser", len(body))
				}
				code, resp := post(t, ctx, r.webhookURL(), body, signed(hostileSecret, body))
				if code != http.StatusBadRequest {
					t.Errorf("status %d, want 400: %.200s", code, resp)
				}
				check(t, code, resp)
				code, resp = post(t, ctx, r.webhookURL(), body, signed("nope", body))
				if code != http.StatusUnauthorized {
					t.Errorf("mis-signed: status %d, want 401", code)
				}
				check(t, code, resp)
			})
		}
	})

	t.Run("slow clients", func(t *testing.T) {
		// Slow-loris: headers or body trickle in. The server's timeouts
		// (5 s for headers, 15 s for the request) must cut them while
		// others are still served.
		sig := signature.Sign(hostileSecret, job)
		cases := map[string]struct{ head, trickle string }{
			"headers": {"POST /webhooks/cvat HTTP/1.1\r\nHost: x\r\n", "X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"},
			"body": {"POST /webhooks/cvat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Signature-256: " + sig +
				"\r\nContent-Length: " + strconv.Itoa(len(job)) + "\r\n\r\n", string(job)},
		}
		results := make(chan string, len(cases)*20)
		for name, c := range cases {
			for i := 0; i < 20; i++ {
				go func() { results <- name + ": " + loris(r.addr, c.head, c.trickle, 60*time.Second) }()
			}
		}
		// While 40 slow clients hold connections, a normal delivery is served.
		code, body := post(t, ctx, r.webhookURL(), job, signed(hostileSecret, job))
		if code != http.StatusAccepted {
			t.Errorf("delivery beside slow clients: status %d: %s", code, body)
		}
		check(t, code, body)
		for range len(cases) * 20 {
			if res := <-results; !strings.HasSuffix(res, "cut") {
				t.Errorf("slow client %s", res)
			}
		}
		check(t, 0, "")
	})
}

// loris opens a connection, sends head, then trickles trickle one byte
// every 200 ms (wrapping around). It returns "cut" when the server closes
// the connection or answers before limit, else what happened.
func loris(addr, head, trickle string, limit time.Duration) string {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return "dial: " + err.Error()
	}
	defer c.Close()
	if _, err := io.WriteString(c, head); err != nil {
		return "cut"
	}
	closed := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, c) // returns when the server closes
		close(closed)
	}()
	deadline := time.After(limit)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-closed:
			return "cut"
		case <-deadline:
			return "still open after " + limit.String()
		case <-tick.C:
			// Stop one byte short of a complete request.
			if i%len(trickle) == len(trickle)-1 && strings.Contains(head, "Content-Length") {
				continue
			}
			if _, err := c.Write([]byte{trickle[i%len(trickle)]}); err != nil {
				return "cut"
			}
		}
	}
}

// rawStatus sends a raw HTTP/1.1 request and returns the answer's status.
func rawStatus(t *testing.T, addr, req string) int {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, net.ErrClosed) && len(b) == 0 {
		t.Fatalf("read answer: %v", err)
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		t.Fatalf("no HTTP answer: %q", b)
	}
	code, _ := strconv.Atoi(f[1])
	return code
}
