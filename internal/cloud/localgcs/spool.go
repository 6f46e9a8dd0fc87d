package localgcs

import (
	"crypto/md5"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// copyBufSize is the buffer one request copies its body through, and the
// one a follower reads back through.
const copyBufSize = 256 << 10

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// spoolDir holds the uploads in progress of this process, in a directory
// of its own under the configured spool directory, marked live by an
// exclusive lock on its .lock file. A process killed mid-upload leaves its
// directory unlocked; the next New removes it.
type spoolDir struct {
	dir       string
	live      *os.File // locked for the life of the server
	storeLock *os.File // <spool>/store.lock: commits of every process sharing the bucket directory
}

const (
	spoolPrefix  = "spool-"
	liveLockName = ".lock"
	// staleGrace spares a directory without a lock file for a moment: its
	// process may be between creating it and locking it.
	staleGrace = time.Minute
)

func openSpoolDir(root string, log *slog.Logger) (*spoolDir, error) {
	if err := os.MkdirAll(root, 0o750); err != nil {
		return nil, fmt.Errorf("localgcs: spool directory: %w", err)
	}
	removeStale(root, log)
	storeLock, err := os.OpenFile(filepath.Join(root, "store.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("localgcs: spool directory: %w", err)
	}
	dir, err := os.MkdirTemp(root, spoolPrefix)
	if err != nil {
		storeLock.Close()
		return nil, fmt.Errorf("localgcs: spool directory: %w", err)
	}
	live, err := os.OpenFile(filepath.Join(dir, liveLockName), os.O_CREATE|os.O_RDWR, 0o600)
	if err == nil {
		var ok bool
		if ok, err = tryLock(live); err == nil && !ok {
			err = errors.New("locked by another process")
		}
		if err != nil {
			live.Close()
		}
	}
	if err != nil {
		storeLock.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("localgcs: lock spool directory %s: %w", dir, err)
	}
	return &spoolDir{dir: dir, live: live, storeLock: storeLock}, nil
}

// removeStale removes the spool directories of processes that are gone:
// those whose lock can be taken.
func removeStale(root string, log *slog.Logger) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), spoolPrefix) {
			continue
		}
		dir := filepath.Join(root, e.Name())
		f, err := os.OpenFile(filepath.Join(dir, liveLockName), os.O_RDWR, 0)
		if err != nil {
			if info, serr := e.Info(); serr != nil || time.Since(info.ModTime()) < staleGrace {
				continue
			}
		} else {
			ok, lerr := tryLock(f)
			if lerr != nil || !ok {
				f.Close()
				continue
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			log.Warn("embedded GCS: cannot remove the spool files of a process that is gone", "dir", dir, "error", err.Error())
		} else {
			log.Info("embedded GCS: removed the spool files of a process that is gone (uploads it had not finished)", "dir", dir)
		}
		if f != nil {
			f.Close()
		}
	}
}

func (d *spoolDir) close() error {
	err := os.RemoveAll(d.dir)
	return errors.Join(err, d.live.Close(), d.storeLock.Close())
}

// create starts an upload in a new spool file.
func (d *spoolDir) create() (*upload, error) {
	f, err := os.CreateTemp(d.dir, "upload-")
	if err != nil {
		return nil, err
	}
	return &upload{f: f, crc: 0, md5: newFollower(f)}, nil
}

// upload is the bytes of one object on their way to disk: its spool file,
// the CRC32C of what the file holds, and a follower computing its MD5.
type upload struct {
	f    *os.File
	size int64
	crc  uint32
	md5  *follower
	done bool // the file is closed: renamed into place or removed
}

// append adds the bytes r yields, exactly n of them (n < 0: up to EOF).
// When r fails or ends early, or the file cannot take them, what this call
// wrote is taken back, so the upload is as it was: a client that resends
// the chunk starts from the same offset.
func (u *upload) append(r io.Reader, n int64) error {
	start, crc := u.size, u.crc
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	if n >= 0 {
		r = io.LimitReader(r, n)
	}
	var err error
	for {
		m, rerr := r.Read(buf)
		if m > 0 {
			if _, werr := u.f.WriteAt(buf[:m], u.size); werr != nil {
				err = internalError(werr)
				break
			}
			u.crc = crc32.Update(u.crc, castagnoli, buf[:m])
			u.size += int64(m)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			err = clientError(fmt.Errorf("request body ended after %d bytes: %w", u.size-start, rerr))
			break
		}
	}
	if err == nil && n >= 0 && u.size-start != n {
		err = clientError(fmt.Errorf("request body ended after %d of %d bytes", u.size-start, n))
	}
	if err != nil {
		u.size, u.crc = start, crc
		if terr := u.f.Truncate(start); terr != nil {
			return internalError(fmt.Errorf("%w; and taking the bytes back failed: %w", err, terr))
		}
		return err
	}
	u.md5.advance(u.size)
	return nil
}

// sums waits for the MD5 of all the upload holds and returns both sums.
func (u *upload) sums() (uint32, []byte, error) {
	sum, err := u.md5.finish()
	return u.crc, sum, err
}

// discard drops the upload: nothing of it stays on disk.
func (u *upload) discard() {
	if u == nil || u.done {
		return
	}
	u.done = true
	u.md5.abort()
	name := u.f.Name()
	u.f.Close()
	os.Remove(name)
}

// follower computes the MD5 of a file as it grows, reading back what was
// appended (from the page cache) on a goroutine of its own: GCS records an
// MD5 of every object, and at ~600 MB/s it would otherwise cost the upload
// more time than writing the bytes does. It also starts the writeback of
// what it has hashed, so the disk works while the upload goes on.
type follower struct {
	f       *os.File
	mu      sync.Mutex
	cond    *sync.Cond
	limit   int64 // bytes it may hash
	closed  bool  // limit is final
	aborted bool
	done    chan struct{}
	sum     []byte
	err     error
}

func newFollower(f *os.File) *follower {
	fl := &follower{f: f, done: make(chan struct{})}
	fl.cond = sync.NewCond(&fl.mu)
	go fl.run()
	return fl
}

func (fl *follower) run() {
	defer close(fl.done)
	h := md5.New()
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	var off int64
	for {
		fl.mu.Lock()
		for off == fl.limit && !fl.closed && !fl.aborted {
			fl.cond.Wait()
		}
		limit, closed, aborted := fl.limit, fl.closed, fl.aborted
		fl.mu.Unlock()
		if aborted {
			return
		}
		from := off
		for off < limit {
			m, err := fl.f.ReadAt(buf[:min(int64(len(buf)), limit-off)], off)
			h.Write(buf[:m])
			off += int64(m)
			if err != nil && !(errors.Is(err, io.EOF) && off == limit) {
				fl.err = fmt.Errorf("read back the spool file for its MD5: %w", err)
				return
			}
		}
		if off > from {
			startWriteback(fl.f, from, off-from)
		}
		if closed {
			fl.sum = h.Sum(nil)
			return
		}
	}
}

// advance lets the follower hash the first limit bytes.
func (fl *follower) advance(limit int64) {
	fl.mu.Lock()
	fl.limit = limit
	fl.mu.Unlock()
	fl.cond.Signal()
}

// finish waits for the MD5 of all the follower was allowed to hash.
func (fl *follower) finish() ([]byte, error) {
	fl.mu.Lock()
	fl.closed = true
	fl.mu.Unlock()
	fl.cond.Signal()
	<-fl.done
	if fl.err == nil && fl.sum == nil {
		return nil, errors.New("MD5 follower stopped")
	}
	return fl.sum, fl.err
}

// abort stops the follower without a sum.
func (fl *follower) abort() {
	fl.mu.Lock()
	fl.aborted = true
	fl.mu.Unlock()
	fl.cond.Signal()
	<-fl.done
}
