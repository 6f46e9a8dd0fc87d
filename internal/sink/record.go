package sink

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"cloud.google.com/go/storage"
	"google.golang.org/api/iterator"

	"github.com/cvat-sync/cvat-sync/internal/task"
)

// RecordVersion is the version of the record's encoding, the "v" of every
// record and cursor. Like the archive names and the outbox contract it is a
// frozen format: a newer release reads every older version.
const RecordVersion = 1

// metaRecord is the custom metadata key that holds a record's JSON, so that
// one listing of the records' prefix reads about a thousand tasks' records
// per call without a GET each.
const metaRecord = "cvat_sync_record"

// maxRecordBytes keeps a record inside GCS's 8 KiB of custom metadata, and
// inside the one filesystem block (4 KiB on ext4) in which fake-gcs-server,
// the embedded default's GCS, keeps all of an object's attributes as an
// extended attribute.
const maxRecordBytes = 2560

// ErrConflict reports that a record changed between its read and its
// write (another replica wrote it); Records.Update retries on it.
var ErrConflict = errors.New("sink: record changed concurrently")

// ErrRecord reports a record that cannot be used: one too large for GCS's
// metadata, or of a version this release cannot read. Retrying does not
// mend it.
var ErrRecord = errors.New("sink: unusable record")

// Record is the bucket's record of one task: what was exported and
// announced, whether its deletion was announced, and the failures of its
// latest state. It lives outside the archive prefix, so consumers listing
// the archives see only archives.
type Record struct {
	V      int          `json:"v"`
	TaskID int64        `json:"task_id"`
	Task   RecordedTask `json:"task"`
	// Formats holds, per CVAT format name, the last state announced.
	Formats map[string]Announced `json:"formats,omitempty"`
	Deleted *Deletion            `json:"deleted,omitempty"`
	Failure *Failure             `json:"failure,omitempty"`
	// Completed describes the task's completed jobs at its last export (the
	// completed policy exports when another job completes).
	Completed *CompletedJobs `json:"completed_jobs,omitempty"`
	// Checked is the last state the policy looked at and did not export
	// (completed policy: nothing newly completed), so passes do not check it
	// again.
	Checked time.Time `json:"checked,omitzero"`

	generation int64 // of the record object; 0: not stored yet
}

// RecordedTask is the task as last seen in CVAT.
type RecordedTask struct {
	Name           string    `json:"name,omitempty"`
	ProjectID      int64     `json:"project_id,omitempty"`
	OrganizationID int64     `json:"organization_id,omitempty"`
	Status         string    `json:"status,omitempty"`
	UpdatedDate    time.Time `json:"updated_date"`
}

// Announced is one format's last announced export: the archive of state
// UpdatedDate (its name follows from the key, ObjectName) at Generation,
// announced at At (its export_id follows from the object, ExportID).
type Announced struct {
	UpdatedDate time.Time `json:"updated_date"`
	Generation  int64     `json:"generation"`
	At          time.Time `json:"at"`
}

// CompletedJobs is a set of completed jobs, kept as a count and a digest
// of the sorted ids so a task with thousands of jobs still fits the record.
type CompletedJobs struct {
	Count  int    `json:"count"`
	Digest string `json:"digest"`
}

// Deletion records the announcement of a task's deletion.
type Deletion struct {
	ExportID string    `json:"export_id"`
	At       time.Time `json:"at"`
}

// Failure records that exporting a state kept failing: convergence retries
// it at Next, later after each further failure.
type Failure struct {
	UpdatedDate time.Time `json:"updated_date"` // the state that failed
	Count       int       `json:"count"`        // consecutive give-ups
	Since       time.Time `json:"since"`
	Next        time.Time `json:"next"`
	Error       string    `json:"error"`
}

// Exists reports whether the record is stored.
func (r Record) Exists() bool { return r.generation != 0 }

// Exported reports whether anything of the task was ever announced: an
// archive, or its deletion. A record holding only a failure is not.
func (r Record) Exported() bool { return len(r.Formats) > 0 || r.Deleted != nil }

// State is the task as last recorded.
func (r Record) State() task.State {
	return task.State{ID: r.TaskID, Name: r.Task.Name, ProjectID: r.Task.ProjectID,
		OrganizationID: r.Task.OrganizationID, Status: r.Task.Status, UpdatedDate: r.Task.UpdatedDate}
}

// Current reports whether the state updated is announced in every format.
func (r Record) Current(formats []string, updated time.Time) bool {
	for _, f := range formats {
		if a, ok := r.Formats[f]; !ok || !a.UpdatedDate.Equal(updated) {
			return false
		}
	}
	return len(formats) > 0
}

// LastAnnounced is the time of the record's newest announcement.
func (r Record) LastAnnounced() time.Time {
	var t time.Time
	for _, a := range r.Formats {
		if a.At.After(t) {
			t = a.At
		}
	}
	if r.Deleted != nil && r.Deleted.At.After(t) {
		t = r.Deleted.At
	}
	return t
}

// SetState records the task as just read from CVAT.
func (r *Record) SetState(s task.State) {
	r.Task = RecordedTask{Name: s.Name, ProjectID: s.ProjectID, OrganizationID: s.OrganizationID,
		Status: s.Status, UpdatedDate: s.UpdatedDate.UTC()}
}

// RecordsConfig configures Records.
type RecordsConfig struct {
	Client *storage.Client
	Bucket string
	// Prefix is where the records live, e.g. "_cvat-sync"; it must not
	// overlap the archive prefix.
	Prefix string
	Logger *slog.Logger
}

// Records reads and writes the records of one bucket.
type Records struct {
	client *storage.Client
	bucket string
	prefix string
	log    *slog.Logger
}

// NewRecords validates cfg.
func NewRecords(cfg RecordsConfig) (*Records, error) {
	prefix := strings.Trim(cfg.Prefix, "/")
	switch {
	case cfg.Client == nil:
		return nil, errors.New("sink: records need a storage Client")
	case cfg.Bucket == "":
		return nil, errors.New("sink: records need a Bucket")
	case prefix == "":
		return nil, errors.New("sink: records need a Prefix (e.g. _cvat-sync)")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Records{client: cfg.Client, bucket: cfg.Bucket, prefix: prefix, log: cfg.Logger}, nil
}

// CheckPrefixes reports an archive prefix and a record prefix that overlap:
// consumers listing the archives would see records, or records would be
// taken for archives.
func CheckPrefixes(archives, records string) error {
	a, r := strings.Trim(archives, "/"), strings.Trim(records, "/")
	switch {
	case r == "":
		return errors.New("the record prefix must not be empty")
	case a == "" && (r == "tasks" || strings.HasPrefix(r, "tasks/")):
		return fmt.Errorf("record prefix %q lies inside the archives' %q", r, "tasks/")
	case a != "" && (a == r || strings.HasPrefix(r, a+"/") || strings.HasPrefix(a, r+"/")):
		return fmt.Errorf("record prefix %q and archive prefix %q overlap", r, a)
	}
	return nil
}

func (s *Records) taskPrefix() string { return s.prefix + "/tasks/" }

func (s *Records) name(id int64) string { return s.taskPrefix() + strconv.FormatInt(id, 10) + ".json" }

// URI is where the records live, for messages.
func (s *Records) URI() string { return "gs://" + s.bucket + "/" + s.prefix + "/" }

// Get reads task id's record; one not stored yet is returned empty (Exists
// false) with TaskID set.
func (s *Records) Get(ctx context.Context, id int64) (Record, error) {
	attrs, err := s.client.Bucket(s.bucket).Object(s.name(id)).Attrs(ctx)
	if errors.Is(err, storage.ErrObjectNotExist) {
		return Record{V: RecordVersion, TaskID: id}, nil
	}
	if err != nil {
		return Record{}, fmt.Errorf("read the record of task %d: %w", id, classify(err))
	}
	return decodeRecord(attrs)
}

func decodeRecord(attrs *storage.ObjectAttrs) (Record, error) {
	var r Record
	if err := json.Unmarshal([]byte(attrs.Metadata[metaRecord]), &r); err != nil {
		return Record{}, fmt.Errorf("decode record gs://%s/%s: %w", attrs.Bucket, attrs.Name, err)
	}
	if r.V > RecordVersion {
		return Record{}, fmt.Errorf("%w: gs://%s/%s has version %d; this release reads up to %d", ErrRecord, attrs.Bucket, attrs.Name, r.V, RecordVersion)
	}
	r.generation = attrs.Generation
	return r, nil
}

// List calls fn with every stored record, about a thousand per list call.
// An unreadable record is skipped and logged, not fatal to the listing.
func (s *Records) List(ctx context.Context, fn func(Record) error) error {
	q := &storage.Query{Prefix: s.taskPrefix()}
	if err := q.SetAttrSelection([]string{"Name", "Bucket", "Generation", "Metadata"}); err != nil {
		return err
	}
	it := s.client.Bucket(s.bucket).Objects(ctx, q)
	for {
		attrs, err := it.Next()
		if errors.Is(err, iterator.Done) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("list the records under %s: %w", s.URI(), classify(err))
		}
		r, err := decodeRecord(attrs)
		if err != nil {
			s.log.Warn("unreadable record skipped", "object", attrs.Name, "error", err.Error())
			continue
		}
		if err := fn(r); err != nil {
			return err
		}
	}
}

// Put stores r if the stored record is still the one r was read as (or
// none, for a new record), and returns it as stored. A concurrent change is
// ErrConflict.
func (s *Records) Put(ctx context.Context, r Record) (Record, error) {
	r.V = RecordVersion
	b, err := encodeBounded(&r)
	if err != nil {
		return Record{}, err
	}
	obj := s.client.Bucket(s.bucket).Object(s.name(r.TaskID))
	cond := storage.Conditions{DoesNotExist: true}
	if r.generation != 0 {
		cond = storage.Conditions{GenerationMatch: r.generation}
	}
	w := obj.If(cond).NewWriter(ctx)
	w.ContentType = "application/json"
	w.Metadata = map[string]string{metaRecord: string(b)}
	w.ChunkSize = 0 // one request: a record is small
	if _, err := w.Write(append(b, '\n')); err != nil {
		_ = w.Close()
		return Record{}, s.putErr(r.TaskID, err)
	}
	if err := w.Close(); err != nil {
		return Record{}, s.putErr(r.TaskID, err)
	}
	r.generation = w.Attrs().Generation
	return r, nil
}

func (s *Records) putErr(id int64, err error) error {
	if isPreconditionFailed(err) {
		return fmt.Errorf("write the record of task %d: %w", id, ErrConflict)
	}
	return fmt.Errorf("write the record of task %d: %w", id, classify(err))
}

// encodeBounded encodes r, shortening its failure text so the record fits
// in GCS's custom metadata.
func encodeBounded(r *Record) ([]byte, error) {
	for {
		b, err := json.Marshal(r)
		if err != nil {
			return nil, fmt.Errorf("encode the record of task %d: %w", r.TaskID, err)
		}
		if len(b) <= maxRecordBytes {
			return b, nil
		}
		switch {
		case r.Failure != nil && len(r.Failure.Error) > 64:
			r.Failure.Error = truncate(r.Failure.Error, len(r.Failure.Error)/2)
		case len(r.Task.Name) > 64:
			r.Task.Name = truncate(r.Task.Name, 64)
		default:
			return nil, fmt.Errorf("%w: task %d's needs %d bytes, more than the %d GCS metadata allows (too many formats?)", ErrRecord, r.TaskID, len(b), maxRecordBytes)
		}
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}

// Update reads task id's record, lets mutate change it, and stores it,
// reading again and retrying when another replica wrote it meanwhile.
// mutate returning false stores nothing.
func (s *Records) Update(ctx context.Context, id int64, mutate func(*Record) (bool, error)) (Record, error) {
	for attempt := 0; ; attempt++ {
		r, err := s.Get(ctx, id)
		if err != nil {
			return Record{}, err
		}
		changed, err := mutate(&r)
		if err != nil || !changed {
			return r, err
		}
		stored, err := s.Put(ctx, r)
		if !errors.Is(err, ErrConflict) || attempt >= 8 {
			return stored, err
		}
	}
}

// Cursor is the converger's persisted progress.
type Cursor struct {
	V int `json:"v"`
	// Since is the start of the converger's scope: tasks last changed before
	// it are not exported unless backfilled. Fixed at the first start.
	Since time.Time `json:"since,omitzero"`
	// SinceSetting is the setting Since was resolved from ("first-start",
	// "all", a time): a changed setting resolves Since again.
	SinceSetting string `json:"since_setting"`
	// Watermark is CVAT's time at the start of the last successful pass:
	// the next incremental pass lists the changes since (minus a margin).
	Watermark time.Time `json:"watermark,omitzero"`
	// LastFull is CVAT's time at the start of the last successful full pass.
	LastFull time.Time `json:"last_full,omitzero"`

	generation int64
}

func (s *Records) cursorName() string { return s.prefix + "/cursor.json" }

// Cursor reads the converger's progress; zero when none is stored.
func (s *Records) Cursor(ctx context.Context) (Cursor, error) {
	r, err := s.client.Bucket(s.bucket).Object(s.cursorName()).NewReader(ctx)
	if errors.Is(err, storage.ErrObjectNotExist) {
		return Cursor{V: RecordVersion}, nil
	}
	if err != nil {
		return Cursor{}, fmt.Errorf("read the cursor %s: %w", s.cursorName(), classify(err))
	}
	defer r.Close()
	b, err := io.ReadAll(io.LimitReader(r, 64<<10))
	if err != nil {
		return Cursor{}, fmt.Errorf("read the cursor %s: %w", s.cursorName(), classify(err))
	}
	var c Cursor
	if err := json.Unmarshal(b, &c); err != nil {
		return Cursor{}, fmt.Errorf("decode the cursor %s: %w", s.cursorName(), err)
	}
	c.generation = r.Attrs.Generation
	return c, nil
}

// SaveCursor stores c if the stored cursor is still the one c was read as.
func (s *Records) SaveCursor(ctx context.Context, c Cursor) (Cursor, error) {
	c.V = RecordVersion
	b, err := json.Marshal(c)
	if err != nil {
		return Cursor{}, err
	}
	cond := storage.Conditions{DoesNotExist: true}
	if c.generation != 0 {
		cond = storage.Conditions{GenerationMatch: c.generation}
	}
	w := s.client.Bucket(s.bucket).Object(s.cursorName()).If(cond).NewWriter(ctx)
	w.ContentType = "application/json"
	w.ChunkSize = 0
	if _, err := io.Copy(w, bytes.NewReader(append(b, '\n'))); err != nil {
		_ = w.Close()
		return Cursor{}, s.cursorErr(err)
	}
	if err := w.Close(); err != nil {
		return Cursor{}, s.cursorErr(err)
	}
	c.generation = w.Attrs().Generation
	return c, nil
}

func (s *Records) cursorErr(err error) error {
	if isPreconditionFailed(err) {
		return fmt.Errorf("write the cursor %s: %w", s.cursorName(), ErrConflict)
	}
	return fmt.Errorf("write the cursor %s: %w", s.cursorName(), classify(err))
}

// SortedFormats returns the formats a record holds, sorted (for logs and
// tests).
func (r Record) SortedFormats() []string {
	out := make([]string, 0, len(r.Formats))
	for f := range r.Formats {
		out = append(out, f)
	}
	slices.Sort(out)
	return out
}
