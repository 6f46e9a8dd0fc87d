package localgcs

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"cloud.google.com/go/storage"
	"github.com/fsouza/fake-gcs-server/fakestorage"
	"github.com/pkg/xattr"
)

// store turns finished uploads into objects of fake-gcs-server's
// filesystem backend (v1.56): the content at <root>/<path-escaped
// bucket>/<object name>, its attributes as JSON in the file's
// user.metadata extended attribute or, on a filesystem without them, in
// <content file>.metadata; the generation is a timestamp in microseconds.
// TestStoreLayoutMatchesFake holds this description to fake-gcs-server's
// own writes.
type store struct {
	root  string
	xattr bool
	fake  *fakestorage.Server
	spool *spoolDir
	now   func() time.Time

	mu sync.Mutex // with spool.storeLock: one writer of the bucket directory at a time
}

// The filesystem backend's metadata locations.
const (
	xattrName      = "user.metadata"
	metadataSuffix = ".metadata"
)

func newStore(root string, fake *fakestorage.Server, spool *spoolDir) *store {
	return &store{root: root, xattr: metadataInXattr(root), fake: fake, spool: spool, now: time.Now}
}

// metadataInXattr makes fake-gcs-server's choice for root (NewStorageFS):
// extended attributes when reading one on root works or reports only that
// it is absent.
func metadataInXattr(root string) bool {
	if !xattr.XATTR_SUPPORTED {
		return false
	}
	_, err := xattr.Get(root, xattrName)
	var xerr *xattr.Error
	return err == nil || errors.As(err, &xerr) && errors.Is(xerr.Err, xattr.ENOATTR)
}

// lock takes the writer's lock of the bucket directory: this process's
// uploads and fake-gcs-server's own writes (deletes, patches, bucket
// changes) hold it, and so does every other process serving the same
// directory, so a precondition checked under it still holds at the rename.
func (s *store) lock() error {
	s.mu.Lock()
	if err := lockFile(s.spool.storeLock); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("lock the bucket directory: %w", err)
	}
	return nil
}

func (s *store) unlock() {
	_ = unlockFile(s.spool.storeLock)
	s.mu.Unlock()
}

// bucketExists reports whether bucket is a directory of the root ("." and
// "..", which GCS refuses as names anyway, would be the root or above it).
func (s *store) bucketExists(bucket string) bool {
	if bucket == "" || bucket == "." || bucket == ".." {
		return false
	}
	info, err := os.Stat(filepath.Join(s.root, url.PathEscape(bucket)))
	return err == nil && info.IsDir()
}

// checkName refuses object names the filesystem layout cannot hold as
// distinct files: GCS takes any UTF-8 name, but here "a//b", "a/./b",
// "a/../b", "/a" and "a/" would collide with other names or escape the
// bucket directory.
func checkName(name string) error {
	switch {
	case len(name) > 1024 || !utf8.ValidString(name):
		return invalid("object name: at most 1024 bytes of UTF-8")
	case strings.ContainsAny(name, "\x00\r\n"):
		return invalid("object name: no NUL, CR or LF")
	case path.Clean(name) != name || strings.HasPrefix(name, "/") || name == ".." || strings.HasPrefix(name, "../"):
		return invalid("object name %q: the embedded server stores objects as files and takes no empty, '.' or '..' segment and no leading or trailing '/'", name)
	}
	return nil
}

// errPrefixIsObject refuses a name under another object's name ("a/b" when
// "a" exists), which the filesystem layout cannot hold.
var errPrefixIsObject = invalid("object name: the embedded server stores objects as files, and a prefix of this name (up to a '/') is another object")

// fsAttrs is the filesystem backend's record of an object (backend.ObjectAttrs,
// encoded with its Go field names; BucketName, Name and Size are not stored).
type fsAttrs struct {
	StorageClass         string
	ContentType          string
	ContentEncoding      string
	ContentDisposition   string
	ContentLanguage      string
	CacheControl         string
	Crc32c               string
	Md5Hash              string
	Etag                 string
	ACL                  []storage.ACLRule
	Metadata             map[string]string
	Created              string
	Deleted              string
	Updated              string
	CustomTime           string
	Generation           int64
	RetentionMode        string
	RetentionRetainUntil string
}

// timestampFormat is fake-gcs-server's.
const timestampFormat = "2006-01-02T15:04:05.999999Z07:00"

// commit makes up, once its checksums agree with those the client declared,
// the live generation of spec's object if spec's preconditions hold, and
// returns the answer to the upload: the object resource as a get answers
// it, or the error. up is gone afterwards, renamed into place or removed.
func (s *store) commit(spec *objectSpec, up *upload, googHash []string) response {
	defer up.discard()
	// Durable before it is visible, as GCS's answer means (and as
	// fake-gcs-server's own writes are); outside the lock, which other
	// writers wait for, and while the MD5 catches up: one waits for the
	// disk, the other for a CPU.
	synced := make(chan error, 1)
	go func() { synced <- up.f.Sync() }()
	crc, sum, err := up.sums()
	err = errors.Join(err, <-synced)
	if err != nil {
		return errorResponse(internalError(err))
	}
	if err := checkSums(spec, googHash, crc, sum); err != nil {
		return errorResponse(err)
	}
	if err := s.lock(); err != nil {
		return errorResponse(internalError(err))
	}
	defer s.unlock()
	if !s.bucketExists(spec.Bucket) {
		return errorResponse(errNoBucket)
	}
	if !s.xattr && strings.HasSuffix(spec.Name, metadataSuffix) {
		return errorResponse(invalid("object name %q: on this filesystem the embedded server keeps attributes in %s files, so no object name may end so", spec.Name, metadataSuffix))
	}
	dest := s.path(spec.Bucket, spec.Name)
	gen, err := s.generation(spec.Bucket, spec.Name, dest)
	if err != nil {
		return errorResponse(err)
	}
	if !spec.Cond.met(gen) {
		return errorResponse(errPrecondition)
	}
	now := s.now().UTC()
	attrs := spec.attrs(max(now.UnixMicro(), gen+1), now, crc, sum)
	enc, err := json.Marshal(attrs)
	if err != nil {
		return errorResponse(internalError(err))
	}
	if err := s.place(up, dest, enc); err != nil {
		return errorResponse(err) // an *apiError says what, others are a 500
	}
	return s.render(spec.Bucket, spec.Name, spec.Projection)
}

// path is where the filesystem backend keeps an object's content.
func (s *store) path(bucket, name string) string {
	return filepath.Join(s.root, url.PathEscape(bucket), filepath.FromSlash(name))
}

// generation is the live generation of the object at dest, 0 when there is
// none.
func (s *store) generation(bucket, name, dest string) (int64, error) {
	if info, err := os.Stat(dest); err == nil && info.IsDir() {
		return 0, invalid("object name %q: the embedded server stores objects as files, and other objects' names start with %q", name, name+"/")
	}
	obj, err := s.fake.GetObjectStreaming(bucket, name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return 0, nil
	case errors.Is(err, syscall.ENOTDIR):
		return 0, errPrefixIsObject
	}
	if err != nil {
		return 0, internalError(fmt.Errorf("read the live generation of %s: %w", name, err))
	}
	obj.Close()
	return obj.Generation, nil
}

// place moves the finished file to dest with its attributes enc. With
// extended attributes the attributes travel with the file, so readers see
// the old object or the new one, never a mix. With .metadata files the
// attributes go first: a new object's content appears only once they are
// there (a listing fails on content without them).
func (s *store) place(up *upload, dest string, enc []byte) error {
	if err := os.MkdirAll(filepath.Dir(dest), 0o700); err != nil {
		if errors.Is(err, syscall.ENOTDIR) {
			return errPrefixIsObject
		}
		return err
	}
	lateXattr := false
	if s.xattr {
		// The spool directory may be on another filesystem, one without them.
		lateXattr = xattr.FSet(up.f, xattrName, enc) != nil
	} else {
		old, rerr := os.ReadFile(dest + metadataSuffix)
		if err := writeFileAtomic(dest+metadataSuffix, enc); err != nil {
			return err
		}
		defer func() {
			if up.done {
				return
			}
			// The content did not move: put the attributes back.
			if rerr == nil {
				_ = writeFileAtomic(dest+metadataSuffix, old)
			} else {
				_ = os.Remove(dest + metadataSuffix)
			}
		}()
	}
	if err := up.f.Chmod(0o600); err != nil {
		return err
	}
	copied, err := moveFile(up.f.Name(), dest)
	if err != nil {
		return err
	}
	up.done = true
	up.md5.abort()
	up.f.Close()
	if s.xattr && (lateXattr || copied) {
		return xattr.Set(dest, xattrName, enc)
	}
	return nil
}

// moveFile renames src to dest, copying across filesystems (which loses
// src's extended attributes).
func moveFile(src, dest string) (copied bool, err error) {
	err = os.Rename(src, dest)
	if !errors.Is(err, syscall.EXDEV) {
		return false, err
	}
	in, err := os.Open(src)
	if err != nil {
		return true, err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dest), ".upload-")
	if err != nil {
		return true, err
	}
	_, err = io.Copy(tmp, in)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), dest)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return true, err
	}
	return true, os.Remove(src)
}

// writeFileAtomic writes b to name through a temporary file and a rename.
func writeFileAtomic(name string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(name), ".metadata-")
	if err != nil {
		return err
	}
	_, err = tmp.Write(b)
	if err == nil {
		err = tmp.Chmod(0o600)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), name)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// attrs is the record of generation gen of spec's object, created at now
// with checksums crc and sum. Its defaults are fake-gcs-server's: storage
// class STANDARD, content type application/octet-stream, the ETag is the
// MD5, and the ACL is the project owner's unless publicRead is asked for.
func (spec *objectSpec) attrs(gen int64, now time.Time, crc uint32, sum []byte) fsAttrs {
	a := fsAttrs{
		StorageClass: spec.StorageClass, ContentType: spec.ContentType, ContentEncoding: spec.ContentEncoding,
		ContentDisposition: spec.ContentDisposition, ContentLanguage: spec.ContentLanguage, CacheControl: spec.CacheControl,
		Crc32c: crc32cBase64(crc), Md5Hash: base64.StdEncoding.EncodeToString(sum),
		ACL:      []storage.ACLRule{{Entity: "projectOwner-test-project", Role: "OWNER"}},
		Metadata: spec.Metadata,
		Created:  now.Format(timestampFormat), Updated: now.Format(timestampFormat),
		Deleted: time.Time{}.Format(timestampFormat), CustomTime: spec.CustomTime.Format(timestampFormat),
		Generation: gen, RetentionMode: spec.RetentionMode,
	}
	a.Etag = a.Md5Hash
	if a.StorageClass == "" {
		a.StorageClass = "STANDARD"
	}
	if a.ContentType == "" {
		a.ContentType = "application/octet-stream"
	}
	if spec.PredefinedACL == "publicRead" {
		a.ACL = []storage.ACLRule{{Entity: "allUsers", Role: "READER"}}
	}
	if !spec.RetainUntil.IsZero() {
		a.RetentionRetainUntil = spec.RetainUntil.Format(timestampFormat)
	}
	return a
}

func crc32cBase64(c uint32) string {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], c)
	return base64.StdEncoding.EncodeToString(b[:])
}

// checkSums compares the checksums of what was uploaded with those the
// client declared in the object resource and in X-Goog-Hash headers
// ("crc32c=<base64>,md5=<base64>"), with GCS's answer on a mismatch.
func checkSums(spec *objectSpec, googHash []string, crc uint32, sum []byte) error {
	gotCRC, gotMD5 := crc32cBase64(crc), base64.StdEncoding.EncodeToString(sum)
	wantCRC, wantMD5 := []string{spec.CRC32C}, []string{spec.MD5}
	for _, h := range googHash {
		for _, kv := range strings.Split(h, ",") {
			k, v, _ := strings.Cut(strings.TrimSpace(kv), "=")
			switch strings.ToLower(k) {
			case "crc32c":
				wantCRC = append(wantCRC, v)
			case "md5":
				wantMD5 = append(wantMD5, v)
			}
		}
	}
	for _, w := range wantCRC {
		if w != "" && !sameSum(w, gotCRC) {
			return invalid("Provided CRC32C %q doesn't match calculated CRC32C %q.", w, gotCRC)
		}
	}
	for _, w := range wantMD5 {
		if w != "" && !sameSum(w, gotMD5) {
			return invalid("Provided MD5 hash %q doesn't match calculated MD5 hash %q.", w, gotMD5)
		}
	}
	return nil
}

// sameSum compares base64 checksums by their bytes (padding may differ).
func sameSum(a, b string) bool {
	da, err1 := base64.StdEncoding.DecodeString(a)
	db, err2 := base64.StdEncoding.DecodeString(b)
	return err1 == nil && err2 == nil && bytes.Equal(da, db)
}

// render answers with what a get of the object answers now, so the upload's
// answer and every later read agree.
func (s *store) render(bucket, name, projection string) response {
	u := "/storage/v1/b/" + url.PathEscape(bucket) + "/o/" + url.PathEscape(name)
	if projection != "" {
		u += "?projection=" + url.QueryEscape(projection)
	}
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		return errorResponse(internalError(err))
	}
	rec := &recorder{header: http.Header{}}
	s.fake.HTTPHandler().ServeHTTP(rec, req)
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	out := response{status: rec.status, header: http.Header{}, body: rec.body.Bytes()}
	if ct := rec.header.Get("Content-Type"); ct != "" {
		out.header.Set("Content-Type", ct)
	}
	return out
}

// recorder is an in-memory http.ResponseWriter for render.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.body.Write(b)
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}
