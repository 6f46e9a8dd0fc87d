// Package signature verifies and produces the X-Signature-256 header that CVAT
// puts on every webhook delivery: "sha256=" followed by the lowercase hex
// HMAC-SHA256 of the raw request body under the webhook's secret.
package signature

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash"
	"strings"
	"sync"
	"sync/atomic"
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
// rotated without losing deliveries signed with the old one. It is safe for
// concurrent use.
type Verifier struct {
	keys []key
	// legacyNewline also accepts CVAT 2.3.0's signatures, computed over the body
	// followed by "\n" while the body was sent without it.
	legacyNewline atomic.Bool
}

// key is one secret with a pool of its HMACs: hmac.New hashes the padded key
// twice and allocates both digests, while a pooled one only needs Reset.
type key struct {
	secret []byte
	macs   *sync.Pool
}

// pooledMAC is an HMAC with room for its sum, so a check allocates nothing.
type pooledMAC struct {
	h   hash.Hash
	sum [sha256.Size]byte
}

func newKey(secret string) key {
	k := key{secret: []byte(secret)}
	k.macs = &sync.Pool{New: func() any { return &pooledMAC{h: hmac.New(sha256.New, k.secret)} }}
	return k
}

// matches reports whether want is the HMAC of body (plus "\n" when newline),
// comparing in constant time.
func (k key) matches(want *[sha256.Size]byte, body []byte, newline bool) bool {
	m := k.macs.Get().(*pooledMAC)
	m.h.Reset()
	m.h.Write(body)
	if newline {
		m.h.Write([]byte{'\n'})
	}
	ok := hmac.Equal(want[:], m.h.Sum(m.sum[:0]))
	k.macs.Put(m)
	return ok
}

// Config configures a Verifier.
type Config struct {
	// Secrets are the webhook secrets a signature may be made with: the
	// current one and, during a rotation, the previous one. Empty entries
	// are ignored; at least one non-empty secret is required, because a
	// CVAT webhook without a secret sends no signature at all and so
	// cannot be authenticated.
	Secrets []string
	// LegacyNewline makes the Verifier also accept signatures computed over
	// the body plus a trailing newline, as CVAT 2.3.0 sent them (fixed in
	// 2.4.0). It is the initial value of SetLegacyNewline.
	LegacyNewline bool
}

// SetLegacyNewline turns the acceptance of CVAT 2.3.0's body+"\n" signatures
// on or off while the Verifier is in use, e.g. once the server's version is
// known to be 2.3.x. It is safe to call concurrently with Verify, and costs
// Verify one atomic load.
func (v *Verifier) SetLegacyNewline(on bool) { v.legacyNewline.Store(on) }

// LegacyNewline reports whether CVAT 2.3.0's signatures are accepted.
func (v *Verifier) LegacyNewline() bool { return v.legacyNewline.Load() }

// New returns a Verifier for cfg. It fails with ErrNoSecret when cfg has no
// non-empty secret.
func New(cfg Config) (*Verifier, error) {
	v := &Verifier{}
	for _, s := range cfg.Secrets {
		if s != "" {
			v.keys = append(v.keys, newKey(s))
		}
	}
	if len(v.keys) == 0 {
		return nil, ErrNoSecret
	}
	v.legacyNewline.Store(cfg.LegacyNewline)
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
	var want [sha256.Size]byte
	if err := parse(header, &want); err != nil {
		return err
	}
	legacy := v.legacyNewline.Load()
	ok := false
	for _, k := range v.keys {
		if k.matches(&want, body, false) {
			ok = true
		}
		if legacy && k.matches(&want, body, true) {
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
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return prefix + hex.EncodeToString(m.Sum(nil))
}

// parse extracts the 32-byte digest from "sha256=<hex>" or "<hex>" into out.
// Hex digits may be in either case; the prefix must be exactly "sha256=".
func parse(header string, out *[sha256.Size]byte) error {
	h := strings.TrimPrefix(header, prefix)
	if len(h) != hex.EncodedLen(sha256.Size) {
		return ErrMalformed
	}
	for i := range out {
		hi, ok1 := unhex(h[2*i])
		lo, ok2 := unhex(h[2*i+1])
		if !ok1 || !ok2 {
			return ErrMalformed
		}
		out[i] = hi<<4 | lo
	}
	return nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
