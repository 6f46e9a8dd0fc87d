package sink

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"cloud.google.com/go/storage"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/iterator"
)

// ContentType is the media type of every archive the sink writes: CVAT's
// dataset and annotation exports are zip archives.
const ContentType = "application/zip"

// DefaultChunkSize is the upload buffer of one Put: the storage client keeps
// at most this much of the archive in memory, whatever the archive's size.
const DefaultChunkSize = 8 << 20

// ErrChecksumMismatch reports an upload whose bytes, as GCS stored them, are
// not the bytes that were streamed: the CRC32C (or the size) GCS reports
// differs from the one computed while sending.
var ErrChecksumMismatch = errors.New("sink: stored object does not match the uploaded bytes")

// ErrInvalidKey reports a Key that cannot name an archive.
var ErrInvalidKey = errors.New("sink: invalid key")

var crc32cTable = crc32.MakeTable(crc32.Castagnoli)

// Key identifies one exported state of a task: the same key always maps to
// the same object name, so exporting the same state twice is one object.
type Key struct {
	TaskID      int64
	Format      string    // exact CVAT format name, e.g. "CVAT for images 1.1"
	UpdatedDate time.Time // the task's updated_date at export time
}

func (k Key) validate() error {
	switch {
	case k.TaskID <= 0:
		return fmt.Errorf("%w: task id %d is not positive", ErrInvalidKey, k.TaskID)
	case k.Format == "":
		return fmt.Errorf("%w: task %d: empty format", ErrInvalidKey, k.TaskID)
	case k.UpdatedDate.IsZero():
		return fmt.Errorf("%w: task %d: zero updated_date", ErrInvalidKey, k.TaskID)
	}
	return nil
}

// ObjectName returns the object name of the archive of k under prefix:
//
//	<prefix>/tasks/<task id>/<updated_date, UTC, basic ISO 8601>/<format>.zip
//	e.g. exports/tasks/42/20260504T094127.118604Z/CVAT_for_images_1.1.zip
//
// The name is deterministic and injective: distinct keys never share a name.
// The updated_date keeps microseconds (CVAT's precision, and fixed width, so a
// listing sorts chronologically) and switches to nanoseconds only when the
// time carries them. The format keeps ASCII letters (case included, since
// "coco" and "COCO" are different names), digits, '.' and '-'; a space
// becomes '_' and every other byte is escaped as '~' and two lowercase hex
// digits, so the name is readable for CVAT's formats and safe for any string.
func ObjectName(prefix string, k Key) string {
	var b strings.Builder
	b.WriteString(TaskPrefix(prefix, k.TaskID))
	b.WriteString(formatUpdated(k.UpdatedDate))
	b.WriteByte('/')
	b.WriteString(escapeFormat(k.Format))
	b.WriteString(".zip")
	return b.String()
}

// TaskPrefix is the prefix of every archive of task id under prefix:
// <prefix>/tasks/<task id>/.
func TaskPrefix(prefix string, id int64) string {
	var b strings.Builder
	if p := strings.Trim(prefix, "/"); p != "" {
		b.WriteString(p)
		b.WriteByte('/')
	}
	b.WriteString("tasks/")
	b.WriteString(strconv.FormatInt(id, 10))
	b.WriteByte('/')
	return b.String()
}

func formatUpdated(t time.Time) string {
	t = t.UTC()
	if t.Nanosecond()%1000 != 0 {
		return t.Format("20060102T150405.000000000Z")
	}
	return t.Format("20060102T150405.000000Z")
}

func escapeFormat(s string) string {
	const hexdigits = "0123456789abcdef"
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '-':
			b.WriteByte(c)
		case c == ' ':
			b.WriteByte('_')
		default:
			b.WriteByte('~')
			b.WriteByte(hexdigits[c>>4])
			b.WriteByte(hexdigits[c&0xf])
		}
	}
	return b.String()
}

// Metadata is stored on the object beside the archive, so that a bucket
// listing alone says what each archive is.
type Metadata struct {
	ProjectID   int64  // 0: the task is in no project
	TaskName    string // optional
	CVATURL     string // optional: the CVAT base URL the archive came from
	CVATVersion string // optional: CVAT's server version
}

// Object describes an archive as GCS holds it.
type Object struct {
	URI        string // gs://<bucket>/<name>
	Bucket     string
	Name       string
	Generation int64
	Size       int64
	CRC32C     uint32
	MD5        []byte
	Created    bool // false: the object already existed (same state exported before)
}

func objectFromAttrs(a *storage.ObjectAttrs, created bool) Object {
	return Object{
		URI:        "gs://" + a.Bucket + "/" + a.Name,
		Bucket:     a.Bucket,
		Name:       a.Name,
		Generation: a.Generation,
		Size:       a.Size,
		CRC32C:     a.CRC32C,
		MD5:        a.MD5,
		Created:    created,
	}
}

// CRC32CBase64 returns the object's CRC32C the way GCS's JSON API and
// gsutil print it: base64 of the big-endian checksum.
func (o Object) CRC32CBase64() string { return crc32cBase64(o.CRC32C) }

func crc32cBase64(c uint32) string {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], c)
	return base64.StdEncoding.EncodeToString(b[:])
}

// Archives writes export archives to one GCS bucket.
type Archives struct {
	client    *storage.Client
	bucket    string
	prefix    string
	chunkSize int
	log       *slog.Logger
	m         *archiveMetrics
}

// ArchivesConfig configures Archives.
type ArchivesConfig struct {
	Client *storage.Client
	Bucket string
	Prefix string // archives go under gs://Bucket/Prefix/tasks/
	// ChunkSize is the upload buffer (rounded up to 256 KiB by the client):
	// the memory one Put holds, whatever the archive's size, and the size
	// above which an upload is resumable. Default DefaultChunkSize.
	ChunkSize  int
	Registerer prometheus.Registerer // nil: no metrics
	Logger     *slog.Logger          // nil: discard
}

// NewArchives validates cfg and returns an Archives writing under
// gs://Bucket/Prefix/.
func NewArchives(cfg ArchivesConfig) (*Archives, error) {
	if cfg.Client == nil || cfg.Bucket == "" {
		return nil, errors.New("sink: archives need a storage Client and a Bucket")
	}
	if cfg.ChunkSize <= 0 {
		cfg.ChunkSize = DefaultChunkSize
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	m, err := newArchiveMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Archives{
		client:    cfg.Client,
		bucket:    cfg.Bucket,
		prefix:    strings.Trim(cfg.Prefix, "/"),
		chunkSize: cfg.ChunkSize,
		log:       cfg.Logger,
		m:         m,
	}, nil
}

// Prefix is the archive prefix (without slashes at its ends).
func (a *Archives) Prefix() string { return a.prefix }

// Put streams the archive read from r to the object named by k, unless that
// object already exists. It returns the stored object; Created is false when
// the same state had been exported before, which is success, not an error.
//
// commit, if not nil, is called once r is read to its end, before the upload
// is committed: an error from it aborts the upload (no object is written)
// and is returned. The pipeline uses it to check that the task is still in
// the state the name says, so an archive is only ever named for a state it
// holds.
//
// The client computes the CRC32C while streaming and sends it with the upload
// (in the metadata of a single-request upload, with the final chunk of a
// resumable one) so that GCS refuses corrupted bytes; Put also computes its
// own and compares it and the size with what GCS reports. On a mismatch it
// deletes that generation, so a retry can write the object again, and
// returns an error wrapping ErrChecksumMismatch.
func (a *Archives) Put(ctx context.Context, k Key, m Metadata, r io.Reader, commit func(context.Context) error) (Object, error) {
	if err := k.validate(); err != nil {
		return Object{}, err
	}
	name := ObjectName(a.prefix, k)
	uri := "gs://" + a.bucket + "/" + name
	obj, err := a.put(ctx, k, m, name, r, commit)
	switch {
	case err != nil:
		a.m.writes.WithLabelValues(outcomeError).Inc()
		return Object{}, fmt.Errorf("put task %d as %q to %s: %w", k.TaskID, k.Format, uri, err)
	case obj.Created:
		a.m.writes.WithLabelValues(outcomeCreated).Inc()
		a.log.DebugContext(ctx, "archive written", "uri", uri, "generation", obj.Generation, "size", obj.Size)
	default:
		a.m.writes.WithLabelValues(outcomeExists).Inc()
		a.log.DebugContext(ctx, "archive already exists", "uri", uri, "generation", obj.Generation)
	}
	return obj, nil
}

func (a *Archives) put(ctx context.Context, k Key, m Metadata, name string, r io.Reader, commit func(context.Context) error) (Object, error) {
	// Cancelling the writer's context is the only way to abort an upload
	// without committing what was written so far.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()

	handle := a.client.Bucket(a.bucket).Object(name)
	w := handle.If(storage.Conditions{DoesNotExist: true}).NewWriter(wctx)
	w.ChunkSize = a.chunkSize
	w.ContentType = ContentType
	w.Metadata = m.attrs(k)
	// SendCRC32C stays false on purpose: it sends Writer.CRC32C in the
	// upload's first request, so it needs the checksum before the first byte,
	// which a stream does not have. The client's automatic checksum (on by
	// default, and off as soon as SendCRC32C is set) sends the CRC32C it
	// computed while streaming at the end of the upload instead.

	src := &checksumReader{r: r, h: crc32.New(crc32cTable)}
	_, copyErr := io.Copy(w, src)
	a.m.bytes.Add(float64(src.n))
	if copyErr != nil {
		cancel()
		_ = w.Close() // reports the cancellation; copyErr says more
		if src.err != nil {
			return Object{}, fmt.Errorf("read archive after %d bytes: %w", src.n, src.err)
		}
		if isPreconditionFailed(copyErr) {
			return a.existing(ctx, handle)
		}
		return Object{}, fmt.Errorf("upload after %d bytes: %w", src.n, classify(copyErr))
	}
	if commit != nil {
		if err := commit(ctx); err != nil {
			cancel()
			_ = w.Close()
			return Object{}, fmt.Errorf("not committed after %d bytes: %w", src.n, err)
		}
	}
	if err := w.Close(); err != nil {
		if isPreconditionFailed(err) {
			return a.existing(ctx, handle)
		}
		return Object{}, fmt.Errorf("upload %d bytes: %w", src.n, classify(err))
	}

	got := objectFromAttrs(w.Attrs(), true)
	sum := src.h.Sum32()
	if got.CRC32C == sum && got.Size == src.n {
		return got, nil
	}
	err := fmt.Errorf("%w: sent %d bytes with crc32c %s, GCS holds %d bytes with crc32c %s (generation %d)",
		ErrChecksumMismatch, src.n, crc32cBase64(sum), got.Size, got.CRC32CBase64(), got.Generation)
	// The precondition would make every retry a no-op on the corrupt object:
	// remove exactly this generation so the next attempt writes it again.
	if derr := handle.If(storage.Conditions{GenerationMatch: got.Generation}).Delete(ctx); derr != nil {
		return Object{}, fmt.Errorf("%w; deleting the corrupt generation failed too: %w", err, derr)
	}
	return Object{}, fmt.Errorf("%w; deleted it", err)
}

// existing returns the object that made the if-not-exists precondition fail.
func (a *Archives) existing(ctx context.Context, h *storage.ObjectHandle) (Object, error) {
	attrs, err := h.Attrs(ctx)
	if err != nil {
		// Deleted between the precondition failure and now (a lifecycle
		// rule, an operator): the caller retries and writes it again.
		return Object{}, fmt.Errorf("object exists (412) but reading its attributes failed: %w", classify(err))
	}
	return objectFromAttrs(attrs, false), nil
}

// Stat reports whether the archive of k exists, and if so what GCS holds: the
// reconciler's "is this state already exported?".
func (a *Archives) Stat(ctx context.Context, k Key) (Object, bool, error) {
	if err := k.validate(); err != nil {
		return Object{}, false, err
	}
	name := ObjectName(a.prefix, k)
	attrs, err := a.client.Bucket(a.bucket).Object(name).Attrs(ctx)
	if errors.Is(err, storage.ErrObjectNotExist) {
		return Object{}, false, nil
	}
	if err != nil {
		return Object{}, false, fmt.Errorf("stat gs://%s/%s: %w", a.bucket, name, classify(err))
	}
	return objectFromAttrs(attrs, false), true, nil
}

// HasAny reports whether any archive of task id exists: a task exported by
// a release that kept no record (or whose record was lost) is still known.
func (a *Archives) HasAny(ctx context.Context, id int64) (bool, error) {
	prefix := TaskPrefix(a.prefix, id)
	q := &storage.Query{Prefix: prefix}
	if err := q.SetAttrSelection([]string{"Name"}); err != nil {
		return false, err
	}
	it := a.client.Bucket(a.bucket).Objects(ctx, q)
	it.PageInfo().MaxSize = 1
	_, err := it.Next()
	switch {
	case errors.Is(err, iterator.Done):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("list gs://%s/%s: %w", a.bucket, prefix, classify(err))
	}
	return true, nil
}

func (m Metadata) attrs(k Key) map[string]string {
	md := map[string]string{
		"cvat_task_id":      strconv.FormatInt(k.TaskID, 10),
		"cvat_format":       k.Format,
		"cvat_updated_date": k.UpdatedDate.UTC().Format(time.RFC3339Nano),
		"cvat_sync_schema":  Schema,
	}
	if m.ProjectID > 0 {
		md["cvat_project_id"] = strconv.FormatInt(m.ProjectID, 10)
	}
	for key, v := range map[string]string{"cvat_task_name": m.TaskName, "cvat_url": m.CVATURL, "cvat_version": m.CVATVersion} {
		if v != "" {
			md[key] = v
		}
	}
	return md
}

func isPreconditionFailed(err error) bool {
	var gerr *googleapi.Error
	return errors.As(err, &gerr) && gerr.Code == http.StatusPreconditionFailed
}

// checksumReader computes the CRC32C and length of what is read through it
// and keeps the reader's own error apart from the upload's.
type checksumReader struct {
	r   io.Reader
	h   hash.Hash32
	n   int64
	err error
}

func (c *checksumReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.h.Write(p[:n])
	c.n += int64(n)
	if err != nil && err != io.EOF {
		c.err = err
	}
	return n, err
}

// Reader opens the archive object name for reading (consumers' view; tests
// compare it with what CVAT served).
func (a *Archives) Reader(ctx context.Context, name string) (io.ReadCloser, error) {
	r, err := a.client.Bucket(a.bucket).Object(name).NewReader(ctx)
	if err != nil {
		return nil, fmt.Errorf("read gs://%s/%s: %w", a.bucket, name, classify(err))
	}
	return r, nil
}

// IsArchive reports whether object o (at its generation) starts like a zip
// archive, as every CVAT export does: it tells an archive from what an
// older release stored when a proxy answered a page instead.
func (a *Archives) IsArchive(ctx context.Context, o Object) (bool, error) {
	r, err := a.client.Bucket(o.Bucket).Object(o.Name).Generation(o.Generation).NewRangeReader(ctx, 0, 4)
	if err != nil {
		return false, fmt.Errorf("read the start of %s: %w", o.URI, classify(err))
	}
	defer r.Close()
	var b [4]byte
	n, err := io.ReadFull(r, b[:])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("read the start of %s: %w", o.URI, classify(err))
	}
	s := string(b[:n])
	return s == "PK\x03\x04" || s == "PK\x05\x06", nil
}

// Discard deletes exactly generation o.Generation of object o, so the state
// it named can be written again.
func (a *Archives) Discard(ctx context.Context, o Object) error {
	err := a.client.Bucket(o.Bucket).Object(o.Name).If(storage.Conditions{GenerationMatch: o.Generation}).Delete(ctx)
	if err != nil && !errors.Is(err, storage.ErrObjectNotExist) && !isPreconditionFailed(err) {
		return fmt.Errorf("delete %s (generation %d): %w", o.URI, o.Generation, classify(err))
	}
	return nil
}
