// Package signature verifies and produces the X-Signature-256 header that CVAT
// puts on every webhook delivery: "sha256=" followed by the lowercase hex
// HMAC-SHA256 of the raw request body under the webhook's secret.
package signature

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
)

// Header is the name of the HTTP header CVAT puts the signature in.
const Header = "X-Signature-256"

// prefix is what CVAT puts before the hex digest. CVAT's documentation shows the
// bare digest, so both forms are accepted.
const prefix = "sha256="

// Sentinel errors; callers map them to HTTP statuses. None of them carries the
// header's value, the body or a secret.
var (
	// ErrMissing means the request had no signature header (or an empty one).
	ErrMissing = errors.New("signature: X-Signature-256 header missing")
	// ErrMalformed means the header is not "sha256=<64 hex digits>" or "<64 hex digits>".
	ErrMalformed = errors.New("signature: X-Signature-256 is not sha256=<64 hex digits>")
	// ErrMismatch means the digest is well formed but matches no configured secret.
	ErrMismatch = errors.New("signature: X-Signature-256 does not match the body under any configured secret")
	// ErrNoSecret means a Verifier was built without any secret.
	ErrNoSecret = errors.New("signature: no webhook secret configured")
)

// Verifier checks signatures against one or more secrets, so a secret can be
// rotated without losing deliveries signed with the old one.
type Verifier struct {
	keys [][]byte
	// legacyNewline also accepts CVAT 2.3.0's signatures, computed over the body
	// followed by "\n" while the body was sent without it.
	legacyNewline bool
}

// Option configures a Verifier.
type Option func(*Verifier)

// WithLegacyNewline makes the Verifier also accept signatures computed over the
// body plus a trailing newline, as CVAT 2.3.0 sent them (fixed in 2.4.0).
func WithLegacyNewline(on bool) Option {
	return func(v *Verifier) { v.legacyNewline = on }
}

// NewVerifier returns a Verifier for the given secrets. Empty secrets are
// ignored; at least one non-empty secret is required, because a CVAT webhook
// without a secret sends no signature at all and so cannot be authenticated.
func NewVerifier(secrets []string, opts ...Option) (*Verifier, error) {
	v := &Verifier{}
	for _, s := range secrets {
		if s != "" {
			v.keys = append(v.keys, []byte(s))
		}
	}
	if len(v.keys) == 0 {
		return nil, ErrNoSecret
	}
	for _, o := range opts {
		o(v)
	}
	return v, nil
}

// Verify checks header (the X-Signature-256 value) against body. It returns nil
// when the digest matches under any secret, and one of ErrMissing, ErrMalformed
// or ErrMismatch otherwise. Comparisons are constant time and every secret is
// tried, so timing does not reveal which secret matched.
func (v *Verifier) Verify(header string, body []byte) error {
	if header == "" {
		return ErrMissing
	}
	want, err := parse(header)
	if err != nil {
		return err
	}
	ok := false
	for _, k := range v.keys {
		if hmac.Equal(want, mac(k, body, false)) {
			ok = true
		}
		if v.legacyNewline && hmac.Equal(want, mac(k, body, true)) {
			ok = true
		}
	}
	if !ok {
		return ErrMismatch
	}
	return nil
}

// Sign returns the header value CVAT would send for body under secret:
// "sha256=" and the lowercase hex digest.
func Sign(secret string, body []byte) string {
	return prefix + hex.EncodeToString(mac([]byte(secret), body, false))
}

// parse extracts the 32-byte digest from "sha256=<hex>" or "<hex>". Hex digits
// may be in either case; the prefix must be exactly "sha256=".
func parse(header string) ([]byte, error) {
	h := strings.TrimPrefix(header, prefix)
	if len(h) != hex.EncodedLen(sha256.Size) {
		return nil, ErrMalformed
	}
	d, err := hex.DecodeString(h)
	if err != nil {
		return nil, ErrMalformed
	}
	return d, nil
}

func mac(key, body []byte, newline bool) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(body)
	if newline {
		m.Write([]byte{'\n'})
	}
	return m.Sum(nil)
}
