// Package logbuf collects a component's JSON log lines in tests: the one log
// buffer of cvat-sync's tests, safe to write from the service's goroutines
// while the test reads it.
package logbuf

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
)

// Buffer is an io.Writer safe for concurrent use. The zero value is ready.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// New returns an empty Buffer.
func New() *Buffer { return &Buffer{} }

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Contains reports whether s was written.
func (b *Buffer) Contains(s string) bool { return strings.Contains(b.String(), s) }

// Logger returns a JSON logger at debug level writing to b, the format the
// service logs in.
func (b *Buffer) Logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Records returns the JSON lines written so far, each as an object, in
// order; lines that are not JSON objects are skipped.
func (b *Buffer) Records() []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(b.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m != nil {
			out = append(out, m)
		}
	}
	return out
}

// Find returns the JSON lines whose message is msg: slog's "msg" key, or
// "message", the key of the service's own logs (Cloud Logging's shape).
func (b *Buffer) Find(msg string) []map[string]any {
	var out []map[string]any
	for _, r := range b.Records() {
		if r["msg"] == msg || r["message"] == msg {
			out = append(out, r)
		}
	}
	return out
}
