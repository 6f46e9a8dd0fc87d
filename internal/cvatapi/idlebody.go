package cvatapi

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"mime"
	"slices"
	"strconv"
	"sync"
	"time"
)

// idleBody bounds a streamed download by inactivity instead of total time: a
// 10 GiB archive may take many minutes, but a stalled connection is cut after
// one RequestTimeout without a byte.
type idleBody struct {
	rc      io.ReadCloser
	timeout time.Duration
	cancel  context.CancelFunc
	timer   *time.Timer

	mu    sync.Mutex
	fired bool
	once  sync.Once
}

func newIdleBody(rc io.ReadCloser, timeout time.Duration, cancel context.CancelFunc) *idleBody {
	b := &idleBody{rc: rc, timeout: timeout, cancel: cancel}
	b.timer = time.AfterFunc(timeout, func() {
		b.mu.Lock()
		b.fired = true
		b.mu.Unlock()
		cancel()
	})
	return b
}

func (b *idleBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		b.timer.Reset(b.timeout)
	}
	if err != nil && err != io.EOF {
		b.mu.Lock()
		fired := b.fired
		b.mu.Unlock()
		if fired {
			return n, fmt.Errorf("download idle for %s: %w", b.timeout, context.DeadlineExceeded)
		}
	}
	return n, err
}

func (b *idleBody) Close() error {
	var err error
	b.once.Do(func() {
		b.timer.Stop()
		err = b.rc.Close()
		b.cancel()
	})
	return err
}

// archiveBody validates a download as it streams: an archive content type
// (or none), a zip signature first (PK\x03\x04, or PK\x05\x06 for an empty
// zip), and as many bytes as Content-Length says. Its errors wrap
// ErrInvalidArchive and say what came back, so a streaming upload aborts
// before it commits instead of storing a proxy's page as the archive.
type archiveBody struct {
	rc           io.ReadCloser
	what         string // "GET /api/tasks/9/dataset/download: 200 OK"
	contentType  string
	want         int64 // Content-Length; -1 unknown
	emptyIsCloud bool  // legacy download: no bytes means CVAT uploaded to the task's cloud storage

	head []byte // prefetched bytes, replayed first
	n    int64  // bytes handed out
	err  error  // sticky
}

// archiveTypes are the content types an export may come with: CVAT's
// sendfile guesses application/zip from the file name.
var archiveTypes = []string{"application/zip", "application/x-zip-compressed", "application/x-zip", "application/octet-stream"}

// prefetch checks the content type and the first bytes.
func (b *archiveBody) prefetch() error {
	if b.want == 0 {
		return b.empty()
	}
	mt, _, _ := mime.ParseMediaType(b.contentType)
	if b.contentType != "" && !slices.Contains(archiveTypes, mt) {
		start := make([]byte, 64)
		m, _ := io.ReadFull(b.rc, start)
		return b.invalid(fmt.Sprintf("content type %q is not an archive's", b.contentType), start[:m])
	}
	head := make([]byte, 4)
	m, err := io.ReadFull(b.rc, head)
	head = head[:m]
	switch {
	case m == 0 && (err == io.EOF || err == nil):
		return b.empty()
	case err != nil && err != io.ErrUnexpectedEOF && err != io.EOF:
		return fmt.Errorf("%s: read the download: %w", b.what, err)
	}
	if !bytes.Equal(head, []byte("PK\x03\x04")) && !bytes.Equal(head, []byte("PK\x05\x06")) {
		more := make([]byte, 60)
		k, _ := io.ReadFull(b.rc, more)
		return b.invalid("no zip signature", append(head, more[:k]...))
	}
	b.head = head
	return nil
}

// empty is the error of a download without a body.
func (b *archiveBody) empty() error {
	if b.emptyIsCloud {
		return fmt.Errorf("%w: %s without a body: CVAT wrote the export to the task's cloud storage (%w)", ErrCloudStorage, b.what, ErrInvalidArchive)
	}
	return b.invalid("no bytes", nil)
}

func (b *archiveBody) invalid(why string, start []byte) error {
	length := "no Content-Length"
	if b.want >= 0 {
		length = "Content-Length " + strconv.FormatInt(b.want, 10)
	}
	msg := fmt.Sprintf("%s, %s, %s: %s", b.what, describeType(b.contentType), length, why)
	if len(start) > 0 {
		msg += "; starts " + printable(start, 64)
	}
	return fmt.Errorf("%w: %s", ErrInvalidArchive, msg)
}

func (b *archiveBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if len(b.head) > 0 {
		n := copy(p, b.head)
		b.head = b.head[n:]
		b.n += int64(n)
		return n, nil
	}
	n, err := b.rc.Read(p)
	b.n += int64(n)
	switch {
	case b.want >= 0 && b.n > b.want:
		b.err = b.invalid(fmt.Sprintf("more than %d bytes", b.want), nil)
		return n, b.err
	case err == io.EOF && b.want >= 0 && b.n != b.want, err == io.ErrUnexpectedEOF:
		b.err = fmt.Errorf("%w (%w)", b.invalid(fmt.Sprintf("ended after %d bytes", b.n), nil), err)
		return n, b.err
	}
	return n, err
}

func (b *archiveBody) Close() error { return b.rc.Close() }
