package signature

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cvat-sync/cvat-sync/internal/payloads"
)

// vector is one entry of testdata/vectors.json, copied from the CVAT reference pack.
type vector struct {
	Name         string `json:"name"`
	BodyFile     string `json:"body_file"`
	BodyBase64   string `json:"body_base64"`
	Secret       string `json:"secret"`
	HeaderValue  string `json:"header_value"`
	SignedOver   string `json:"signed_over"`
	ShouldVerify bool   `json:"should_verify"`
}

func loadVectors(t testing.TB) []vector {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "testdata", "vectors.json"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Vectors []vector `json:"vectors"`
	}
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Vectors) < 20 {
		t.Fatalf("only %d vectors loaded", len(f.Vectors))
	}
	return f.Vectors
}

func (v vector) body(t testing.TB) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(v.BodyBase64)
	if err != nil {
		t.Fatalf("%s: body_base64: %v", v.Name, err)
	}
	if v.BodyFile != "" {
		onDisk, err := os.ReadFile(filepath.Join("..", "..", "testdata", v.BodyFile))
		if err != nil {
			t.Fatal(err)
		}
		// Negative vectors may present a file's header with other bytes; the
		// base64 body is what goes on the wire.
		if v.ShouldVerify && string(onDisk) != string(b) {
			t.Fatalf("%s: %s differs from body_base64", v.Name, v.BodyFile)
		}
	}
	return b
}

func TestVectors(t *testing.T) {
	for _, v := range loadVectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			body := v.body(t)
			strict, err := New(Config{Secrets: []string{v.Secret}})
			if err != nil {
				t.Fatal(err)
			}
			legacy, err := New(Config{Secrets: []string{v.Secret}, LegacyNewline: true})
			if err != nil {
				t.Fatal(err)
			}

			wantStrict := v.ShouldVerify
			wantLegacy := v.ShouldVerify
			switch v.Name {
			case "negative-missing-prefix":
				// DESIGN.md: CVAT's docs print the bare digest, so it is accepted.
				wantStrict, wantLegacy = true, true
			case "cvat-2.3.0-newline-variant":
				wantLegacy = true
			}
			if got := strict.Verify(v.HeaderValue, body) == nil; got != wantStrict {
				t.Errorf("strict Verify = %v, want %v", got, wantStrict)
			}
			if got := legacy.Verify(v.HeaderValue, body) == nil; got != wantLegacy {
				t.Errorf("legacy-newline Verify = %v, want %v", got, wantLegacy)
			}
			if v.ShouldVerify && v.SignedOver == "raw body" {
				if got := Sign(v.Secret, body); got != v.HeaderValue {
					t.Errorf("Sign = %s, want %s", got, v.HeaderValue)
				}
			}
		})
	}
}

func TestVerifyErrors(t *testing.T) {
	body := []byte(`{"event": "ping"}`)
	good := Sign("s3cret", body)
	hexOnly := strings.TrimPrefix(good, "sha256=")
	tests := []struct {
		name    string
		secrets []string
		header  string
		body    []byte
		want    error
	}{
		{"prefixed", []string{"s3cret"}, good, body, nil},
		{"bare hex", []string{"s3cret"}, hexOnly, body, nil},
		{"upper-case hex", []string{"s3cret"}, "sha256=" + strings.ToUpper(hexOnly), body, nil},
		{"rotation: old secret first", []string{"old", "s3cret"}, good, body, nil},
		{"rotation: new secret first", []string{"s3cret", "old"}, good, body, nil},
		{"empty secrets ignored", []string{"", "s3cret"}, good, body, nil},
		{"missing", []string{"s3cret"}, "", body, ErrMissing},
		{"sha1 prefix", []string{"s3cret"}, "sha1=" + hexOnly, body, ErrMalformed},
		{"upper-case prefix", []string{"s3cret"}, "SHA256=" + hexOnly, body, ErrMalformed},
		{"prefix only", []string{"s3cret"}, "sha256=", body, ErrMalformed},
		{"truncated", []string{"s3cret"}, good[:len(good)-2], body, ErrMalformed},
		{"too long", []string{"s3cret"}, good + "00", body, ErrMalformed},
		{"not hex", []string{"s3cret"}, "sha256=" + strings.Repeat("zz", 32), body, ErrMalformed},
		{"space padded", []string{"s3cret"}, " " + good, body, ErrMalformed},
		{"base64 digest", []string{"s3cret"}, "sha256=" + base64.StdEncoding.EncodeToString(make([]byte, 32)), body, ErrMalformed},
		{"wrong secret", []string{"other"}, good, body, ErrMismatch},
		{"signature of another body", []string{"s3cret"}, Sign("s3cret", []byte(`{}`)), body, ErrMismatch},
		{"body plus newline, strict", []string{"s3cret"}, Sign("s3cret", append(body, '\n')), body, ErrMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := New(Config{Secrets: tt.secrets})
			if err != nil {
				t.Fatal(err)
			}
			if err := v.Verify(tt.header, tt.body); !errors.Is(err, tt.want) {
				t.Errorf("Verify = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestNewNeedsSecret(t *testing.T) {
	for _, secrets := range [][]string{nil, {}, {""}, {"", ""}} {
		if _, err := New(Config{Secrets: secrets}); !errors.Is(err, ErrNoSecret) {
			t.Errorf("New(%q) = %v, want ErrNoSecret", secrets, err)
		}
	}
}

func TestErrorsCarryNoSecret(t *testing.T) {
	const secret = "top-secret-value"
	v, err := New(Config{Secrets: []string{secret}})
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"event":"ping"}`)
	for _, h := range []string{"", "sha256=" + secret, Sign("x", body), Sign(secret, body)[:20]} {
		if err := v.Verify(h, body); err != nil && (strings.Contains(err.Error(), secret) || (h != "" && strings.Contains(err.Error(), h))) {
			t.Errorf("error %q echoes the secret or the header", err)
		}
	}
}

func FuzzVerify(f *testing.F) {
	v, err := New(Config{Secrets: []string{"cvat-sync-test-secret"}, LegacyNewline: true})
	if err != nil {
		f.Fatal(err)
	}
	for _, vec := range loadVectors(f) {
		f.Add(vec.HeaderValue, vec.body(f))
	}
	f.Add("sha256=", []byte{})
	f.Add("SHA256=00", []byte("x"))
	f.Fuzz(func(t *testing.T, header string, body []byte) {
		err := v.Verify(header, body)
		switch {
		case err == nil:
			// Accepting means the header really is one of the two digests.
			if Sign("cvat-sync-test-secret", body) != "sha256="+strings.ToLower(strings.TrimPrefix(header, "sha256=")) &&
				Sign("cvat-sync-test-secret", append(append([]byte{}, body...), '\n')) != "sha256="+strings.ToLower(strings.TrimPrefix(header, "sha256=")) {
				t.Fatalf("accepted a header that is not the body's signature")
			}
		case errors.Is(err, ErrMissing), errors.Is(err, ErrMalformed), errors.Is(err, ErrMismatch):
		default:
			t.Fatalf("unexpected error %v", err)
		}
		// The signature we produce always verifies.
		if err := v.Verify(Sign("cvat-sync-test-secret", body), body); err != nil {
			t.Fatalf("own signature rejected: %v", err)
		}
	})
}

func BenchmarkVerify(b *testing.B) {
	body := payloads.Read(b, "update_job.json")
	for _, n := range []int{1, 3} {
		secrets := make([]string, n)
		for i := range secrets {
			secrets[i] = "secret-" + string(rune('a'+i))
		}
		v, err := New(Config{Secrets: secrets})
		if err != nil {
			b.Fatal(err)
		}
		h := Sign(secrets[n-1], body)
		b.Run("secrets="+string(rune('0'+n)), func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if err := v.Verify(h, body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestSetLegacyNewline: the run-time switch turns CVAT 2.3.0's body+"\n"
// signatures on and off, also while deliveries are being verified.
func TestSetLegacyNewline(t *testing.T) {
	body := []byte(`{"event": "update:task"}`)
	legacy := Sign("s3cret", append(append([]byte{}, body...), '\n'))
	strict := Sign("s3cret", body)
	v, err := New(Config{Secrets: []string{"other", "s3cret"}})
	if err != nil {
		t.Fatal(err)
	}
	check := func(on bool) {
		t.Helper()
		if v.LegacyNewline() != on {
			t.Errorf("LegacyNewline = %v, want %v", v.LegacyNewline(), on)
		}
		want := ErrMismatch
		if on {
			want = nil
		}
		if err := v.Verify(legacy, body); !errors.Is(err, want) {
			t.Errorf("legacy %v: Verify(body+newline signature) = %v, want %v", on, err, want)
		}
		if err := v.Verify(strict, body); err != nil {
			t.Errorf("legacy %v: Verify(body signature) = %v", on, err)
		}
		if err := v.Verify(Sign("s3cret", []byte("other")), body); !errors.Is(err, ErrMismatch) {
			t.Errorf("legacy %v: another body's signature accepted", on)
		}
	}
	check(false)
	v.SetLegacyNewline(true)
	check(true)
	v.SetLegacyNewline(false)
	check(false)

	on, err := New(Config{Secrets: []string{"s3cret"}, LegacyNewline: true})
	if err != nil {
		t.Fatal(err)
	}
	if !on.LegacyNewline() || on.Verify(legacy, body) != nil {
		t.Error("LegacyNewline: true does not set the switch")
	}

	// Flipped while verifying: -race checks the switch; every answer is
	// one of the two a setting gives.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := v.Verify(strict, body); err != nil {
					t.Errorf("Verify = %v", err)
					return
				}
				if err := v.Verify(legacy, body); err != nil && !errors.Is(err, ErrMismatch) {
					t.Errorf("Verify = %v", err)
					return
				}
			}
		})
	}
	for i := range 1000 {
		v.SetLegacyNewline(i%2 == 0)
	}
	close(stop)
	wg.Wait()
}
