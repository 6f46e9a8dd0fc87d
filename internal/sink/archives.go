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
	if p := strings.Trim(prefix, "/"); p != "" {
		b.WriteString(p)
		b.WriteByte('/')
	}
	b.WriteString("tasks/")
	b.WriteString(strconv.FormatInt(k.TaskID, 10))
	b.WriteByte('/')
	b.WriteString(formatUpdated(k.UpdatedDate))
	b.WriteByte('/')
	b.WriteString(escapeFormat(k.Format))
	b.WriteString(".zip")
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
	// Published reports that MarkPublished recorded the object's notice as
	// sent (Stat and Put of an existing object read it): an object that
	// exists but is not Published still needs its notice.
	Published bool
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

// ArchivesOption adjusts an Archives.
type ArchivesOption func(*Archives)

// WithChunkSize sets the upload chunk size (rounded up to 256 KiB by the
// client): the memory one Put holds, and the size above which an upload is
// resumable rather than a single request. Values below 1 are ignored.
func WithChunkSize(n int) ArchivesOption {
	return func(a *Archives) {
		if n > 0 {
			a.chunkSize = n
		}
	}
}

// NewArchives returns an Archives that writes under gs://bucket/prefix/ with
// c. Its metrics are registered on reg (none if reg is nil); log may be nil.
func NewArchives(c *storage.Client, bucket, prefix string, reg prometheus.Registerer, log *slog.Logger, opts ...ArchivesOption) *Archives {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Archives{
		client:    c,
		bucket:    bucket,
		prefix:    strings.Trim(prefix, "/"),
		chunkSize: DefaultChunkSize,
		log:       log,
		m:         newArchiveMetrics(reg),
	}
	for _, o := range opts {
		o(a)
	}
	return a
}

// Put streams the archive read from r to the object named by k, unless that
// object already exists. It returns the stored object; Created is false when
// the same state had been exported before, which is success, not an error.
//
// The client computes the CRC32C while streaming and sends it with the upload
// (in the metadata of a single-request upload, with the final chunk of a
// resumable one) so that GCS refuses corrupted bytes; Put also computes its
// own and compares it and the size with what GCS reports. On a mismatch it
// deletes that generation, so a retry can write the object again, and
// returns an error wrapping ErrChecksumMismatch.
func (a *Archives) Put(ctx context.Context, k Key, m Metadata, r io.Reader) (Object, error) {
	if err := k.validate(); err != nil {
		return Object{}, err
	}
	name := ObjectName(a.prefix, k)
	uri := "gs://" + a.bucket + "/" + name
	obj, err := a.put(ctx, k, m, name, r)
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

func (a *Archives) put(ctx context.Context, k Key, m Metadata, name string, r io.Reader) (Object, error) {
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
		return Object{}, fmt.Errorf("upload after %d bytes: %w", src.n, copyErr)
	}
	if err := w.Close(); err != nil {
		if isPreconditionFailed(err) {
			return a.existing(ctx, handle)
		}
		return Object{}, fmt.Errorf("upload %d bytes: %w", src.n, err)
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
		return Object{}, fmt.Errorf("object exists (412) but reading its attributes failed: %w", err)
	}
	o := objectFromAttrs(attrs, false)
	if o.Published, err = a.published(ctx, o); err != nil {
		return Object{}, err
	}
	return o, nil
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
		return Object{}, false, fmt.Errorf("stat gs://%s/%s: %w", a.bucket, name, err)
	}
	o := objectFromAttrs(attrs, false)
	if o.Published, err = a.published(ctx, o); err != nil {
		return Object{}, false, err
	}
	return o, true, nil
}

// MarkPublished records that the notice of o (generation o.Generation) went
// out as message messageID, so that Stat and Put report it Published and a
// reconciler does not announce it again.
//
// The record is a small marker object beside the archives
// (<prefix>/_published/tasks/...json), not a metadata patch of the archive:
// fake-gcs-server's filesystem backend, which the embedded default runs on,
// rewrites an object with a new generation on every patch, which would
// strand consumers holding the generation of the notice.
func (a *Archives) MarkPublished(ctx context.Context, o Object, messageID string) error {
	if messageID == "" {
		return fmt.Errorf("mark %s published: empty message id", o.URI)
	}
	if o.Bucket != a.bucket || !strings.HasPrefix(o.Name, a.namePrefix()) {
		return fmt.Errorf("mark %s published: not an archive of gs://%s/%s", o.URI, a.bucket, a.namePrefix())
	}
	gen := strconv.FormatInt(o.Generation, 10)
	w := a.client.Bucket(a.bucket).Object(a.markerName(o.Name)).NewWriter(ctx)
	w.ContentType = "application/json"
	w.Metadata = map[string]string{metaGeneration: gen, metaMessageID: messageID}
	body := fmt.Sprintf("{\"object\":%q,\"generation\":%s,\"message_id\":%q}\n", o.Name, gen, messageID)
	if _, err := io.WriteString(w, body); err != nil {
		_ = w.Close()
		return fmt.Errorf("mark %s (generation %d) published: %w", o.URI, o.Generation, err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("mark %s (generation %d) published: %w", o.URI, o.Generation, err)
	}
	return nil
}

// Metadata keys of the published marker.
const (
	metaGeneration = "cvat_sync_generation"
	metaMessageID  = "cvat_sync_message_id"
)

func (a *Archives) namePrefix() string {
	if a.prefix == "" {
		return ""
	}
	return a.prefix + "/"
}

func (a *Archives) markerName(objectName string) string {
	return a.namePrefix() + "_published/" + strings.TrimPrefix(objectName, a.namePrefix()) + ".json"
}

// published reports whether the marker of o names o's generation.
func (a *Archives) published(ctx context.Context, o Object) (bool, error) {
	attrs, err := a.client.Bucket(a.bucket).Object(a.markerName(o.Name)).Attrs(ctx)
	if errors.Is(err, storage.ErrObjectNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read the published marker of %s: %w", o.URI, err)
	}
	return attrs.Metadata[metaGeneration] == strconv.FormatInt(o.Generation, 10), nil
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
