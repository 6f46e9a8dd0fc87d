package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
	"github.com/cvat-sync/cvat-sync/internal/sink"
	"github.com/cvat-sync/cvat-sync/internal/task"
)

// CVAT is what the pipeline needs of the CVAT client.
type CVAT interface {
	About(ctx context.Context) (cvatapi.About, error)
	Clock(ctx context.Context) (time.Time, error)
	Task(ctx context.Context, id int64) (cvatapi.Task, error)
	Project(ctx context.Context, id int64) (cvatapi.Project, error)
	TaskJobs(ctx context.Context, taskID int64) ([]cvatapi.Job, error)
	ListTasks(ctx context.Context, f cvatapi.TaskFilter, fn func(cvatapi.Task) error) error
	ExportTask(ctx context.Context, taskID int64, format string, o cvatapi.ExportOptions) (*cvatapi.Export, error)
	BaseURL() string
}

// Archives is what the pipeline needs of the archive store.
type Archives interface {
	Put(ctx context.Context, k sink.Key, m sink.Metadata, r io.Reader, commit func(context.Context) error) (sink.Object, error)
	Stat(ctx context.Context, k sink.Key) (sink.Object, bool, error)
	HasAny(ctx context.Context, id int64) (bool, error)
	IsArchive(ctx context.Context, o sink.Object) (bool, error)
	Discard(ctx context.Context, o sink.Object) error
}

// Records is what the pipeline needs of the bucket's record.
type Records interface {
	Get(ctx context.Context, id int64) (sink.Record, error)
	Update(ctx context.Context, id int64, mutate func(*sink.Record) (bool, error)) (sink.Record, error)
	List(ctx context.Context, fn func(sink.Record) error) error
	Cursor(ctx context.Context) (sink.Cursor, error)
	SaveCursor(ctx context.Context, c sink.Cursor) (sink.Cursor, error)
}

// Outbox is what the pipeline needs of the outbox publisher.
type Outbox interface {
	Publish(ctx context.Context, n sink.Notice) (string, error)
}

// Outcome of one task's sync, or of one format of it.
type Outcome string

// The outcomes, also the values of the "outcome" metric label.
const (
	OutcomeExported  Outcome = "exported"  // a new archive was written and announced
	OutcomeAnnounced Outcome = "announced" // the archive existed but its notice had not been recorded
	OutcomeUnchanged Outcome = "unchanged" // the current state was already announced
	OutcomeDeleted   Outcome = "deleted"   // the task is gone: its deletion is announced
	OutcomeGone      Outcome = "gone"      // the task is gone and was never exported: nothing to announce
	OutcomeHidden    Outcome = "hidden"    // CVAT refuses to show the task (403): not taken as deleted
	OutcomeSkipped   Outcome = "skipped"   // the policy does not export this state
	OutcomeFailed    Outcome = "failed"
)

// Result is what one sync did.
type Result struct {
	State   task.State
	Outcome Outcome
	Formats map[string]Outcome
}

// SyncerConfig configures a Syncer.
type SyncerConfig struct {
	CVAT       CVAT
	Archives   Archives
	Records    Records
	Outbox     Outbox
	Formats    []string
	SaveImages bool
	Policy     task.Policy // default task.PolicyUpdate
	// ConfirmDelay separates the two reads that confirm a task is gone (a
	// CVAT 404 that stays a 404); default 2s.
	ConfirmDelay time.Duration
	Metrics      *Metrics // nil: metrics registered nowhere
	Logger       *slog.Logger
	Now          func() time.Time
	// CVATNow is CVAT's clock, against which its updated_date is read for
	// the debounce; default Now (the pipeline passes the converger's
	// estimate, measured from CVAT's Date header at every pass).
	CVATNow func() time.Time
}

// Syncer makes one task's export match its state in CVAT: it reads the
// task, compares it with the bucket's record, and exports, announces or
// announces the deletion of what is behind. It holds no state between calls:
// every stage may run twice, concurrently in two replicas, and gives the same
// result (deterministic archive names written if absent, records updated
// with preconditions, notices with stable export ids).
type Syncer struct {
	cfg SyncerConfig
	m   *Metrics
}

// NewSyncer validates cfg.
func NewSyncer(cfg SyncerConfig) (*Syncer, error) {
	if err := missing("syncer", map[string]bool{"CVAT": cfg.CVAT == nil, "Archives": cfg.Archives == nil,
		"Records": cfg.Records == nil, "Outbox": cfg.Outbox == nil}); err != nil {
		return nil, err
	}
	if len(cfg.Formats) == 0 {
		return nil, errors.New("pipeline: syncer needs at least one format")
	}
	if cfg.Policy == "" {
		cfg.Policy = task.PolicyUpdate
	}
	if _, err := task.ParsePolicy(string(cfg.Policy)); err != nil {
		return nil, err
	}
	if cfg.ConfirmDelay <= 0 {
		cfg.ConfirmDelay = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.CVATNow == nil {
		cfg.CVATNow = cfg.Now
	}
	m := cfg.Metrics
	if m == nil {
		var err error
		if m, err = NewMetrics(nil); err != nil {
			return nil, err
		}
	}
	return &Syncer{cfg: cfg, m: m}, nil
}

// Request is one sync to do.
type Request struct {
	Event   task.Event // what made us look (its TaskID is the task)
	Trigger task.Trigger
	// Quiet, if set, postpones the export until the task has not changed in
	// CVAT for this long (by CVAT's updated_date), or until Deadline.
	Quiet    time.Duration
	Deadline time.Time
}

// busyError postpones work on a task that is still being changed in CVAT.
type busyError struct {
	until  time.Time
	reason string
}

func (e *busyError) Error() string { return e.reason + " until " + e.until.UTC().Format(time.RFC3339) }

// stateMovedError reports that the task changed while its export was being
// made: the archive was not committed, and the new state is exported next.
type stateMovedError struct {
	id       int64
	from, to time.Time
}

func (e *stateMovedError) Error() string {
	return fmt.Sprintf("task %d changed during its export (updated_date %s, now %s): archive not stored", e.id,
		e.from.UTC().Format(time.RFC3339Nano), e.to.UTC().Format(time.RFC3339Nano))
}

// Sync brings the export of the task of r.Event in line with CVAT.
func (s *Syncer) Sync(ctx context.Context, r Request) (Result, error) {
	id := r.Event.TaskID
	if id <= 0 {
		return Result{}, fmt.Errorf("sync: event %q names no task", r.Event.Name)
	}
	ct, err := s.readTask(ctx, id)
	switch {
	case errors.Is(err, errTaskGone):
		return s.announceDeletion(ctx, r)
	case errors.Is(err, cvatapi.ErrForbidden):
		// Listing no longer shows it, or a moved organization: hidden from
		// our credentials is not deleted.
		s.m.syncs.WithLabelValues(string(OutcomeHidden)).Inc()
		s.cfg.Logger.Warn("task not visible to cvat-sync's CVAT user (403); not taken as deleted", "task_id", id)
		return Result{State: task.State{ID: id}, Outcome: OutcomeHidden}, nil
	case err != nil:
		return Result{}, err
	}
	st := stateOf(ct)
	if r.Quiet > 0 {
		// Quiet by CVAT's account (its updated_date on its clock); the
		// deadline is ours.
		now := s.cfg.Now()
		if wait := st.UpdatedDate.Add(r.Quiet).Sub(s.cfg.CVATNow()); wait > 0 && (r.Deadline.IsZero() || now.Before(r.Deadline)) {
			until := now.Add(wait)
			if !r.Deadline.IsZero() && r.Deadline.Before(until) {
				until = r.Deadline
			}
			return Result{State: st}, &busyError{until: until, reason: "task still changing"}
		}
	}
	rec, err := s.cfg.Records.Get(ctx, id)
	if err != nil {
		return Result{State: st}, err
	}
	completedJobs, due, err := s.due(ctx, st, rec)
	if err != nil {
		return Result{State: st}, err
	}
	if !due {
		// Recorded, so passes do not check this state again.
		if !rec.Checked.Equal(st.UpdatedDate) {
			if _, err := s.cfg.Records.Update(ctx, id, func(r *sink.Record) (bool, error) {
				r.Checked = st.UpdatedDate.UTC()
				r.Failure = nil
				if r.Task.UpdatedDate.IsZero() || !st.UpdatedDate.Before(r.Task.UpdatedDate) {
					r.SetState(st)
				}
				return true, nil
			}); err != nil {
				return Result{State: st}, err
			}
		}
		s.m.syncs.WithLabelValues(string(OutcomeSkipped)).Inc()
		return Result{State: st, Outcome: OutcomeSkipped}, nil
	}
	if rec.Current(s.cfg.Formats, st.UpdatedDate) && rec.Deleted == nil {
		if rec.Failure != nil {
			if _, err := s.cfg.Records.Update(ctx, id, func(r *sink.Record) (bool, error) {
				changed := r.Failure != nil
				r.Failure = nil
				return changed, nil
			}); err != nil {
				return Result{State: st}, err
			}
		}
		s.m.syncs.WithLabelValues(string(OutcomeUnchanged)).Inc()
		return Result{State: st, Outcome: OutcomeUnchanged}, nil
	}

	info := s.cvatInfo(ctx)
	res := Result{State: st, Outcome: OutcomeUnchanged, Formats: map[string]Outcome{}}
	var errs []error
	for _, f := range s.cfg.Formats {
		if a, ok := rec.Formats[f]; ok && a.UpdatedDate.Equal(st.UpdatedDate) && rec.Deleted == nil {
			res.Formats[f] = OutcomeUnchanged
			continue
		}
		start := s.cfg.Now()
		o, err := s.exportFormat(ctx, st, f, r.Trigger, info, completedJobs)
		if err != nil {
			o = OutcomeFailed
			errs = append(errs, err)
		}
		s.m.observeExport(f, o, s.cfg.Now().Sub(start))
		res.Formats[f] = o
		if o == OutcomeExported || (o == OutcomeAnnounced && res.Outcome != OutcomeExported) {
			res.Outcome = o
		}
	}
	if err := errors.Join(errs...); err != nil {
		res.Outcome = OutcomeFailed
		s.m.syncs.WithLabelValues(string(OutcomeFailed)).Inc()
		return res, err
	}
	s.m.syncs.WithLabelValues(string(res.Outcome)).Inc()
	s.m.lastSuccess.SetToCurrentTime()
	return res, nil
}

// errTaskGone means CVAT confirmed twice that the task does not exist.
var errTaskGone = errors.New("task no longer exists in CVAT")

// readTask reads a task; a CVAT 404 is read again after ConfirmDelay and
// only a second 404 is errTaskGone: one transient 404 (a backend replica
// behind, a proxy's page, which cvatapi already tells apart) does not drop a
// state.
func (s *Syncer) readTask(ctx context.Context, id int64) (cvatapi.Task, error) {
	t, err := s.cfg.CVAT.Task(ctx, id)
	if !errors.Is(err, cvatapi.ErrNotFound) {
		return t, err
	}
	if err := sleepCtx(ctx, s.cfg.ConfirmDelay); err != nil {
		return t, err
	}
	t, err = s.cfg.CVAT.Task(ctx, id)
	if errors.Is(err, cvatapi.ErrNotFound) {
		return t, fmt.Errorf("task %d: %w", id, errTaskGone)
	}
	return t, err
}

// due applies the policy to the task's current state. Under the completed
// policy a state is due when the task is completed, or when its set of
// completed jobs is not the one of the last export (a job reached
// completed); it returns the completed jobs to record with the export.
func (s *Syncer) due(ctx context.Context, st task.State, rec sink.Record) (*sink.CompletedJobs, bool, error) {
	if s.cfg.Policy != task.PolicyCompleted {
		return nil, true, nil
	}
	jobs, err := s.cfg.CVAT.TaskJobs(ctx, st.ID)
	if err != nil {
		return nil, false, err
	}
	var ids []int64
	for _, j := range jobs {
		if j.State == task.StatusCompleted {
			ids = append(ids, j.ID)
		}
	}
	completed := completedJobs(ids)
	if st.Status == task.StatusCompleted {
		return completed, true, nil
	}
	if completed == nil || (rec.Completed != nil && *rec.Completed == *completed) {
		return completed, false, nil
	}
	return completed, true, nil
}

// completedJobs is the count and digest of a set of job ids (nil: none).
func completedJobs(ids []int64) *sink.CompletedJobs {
	if len(ids) == 0 {
		return nil
	}
	slices.Sort(ids)
	h := sha256.New()
	for _, id := range ids {
		fmt.Fprintf(h, "%d,", id)
	}
	return &sink.CompletedJobs{Count: len(ids), Digest: hex.EncodeToString(h.Sum(nil)[:12])}
}

// exportFormat makes one format of state st current: the archive (written
// unless it exists), its notice, and the record of the notice.
func (s *Syncer) exportFormat(ctx context.Context, st task.State, format string, trig task.Trigger, info sink.CVAT, completed *sink.CompletedJobs) (Outcome, error) {
	key := sink.Key{TaskID: st.ID, Format: format, UpdatedDate: st.UpdatedDate}
	obj, exists, err := s.cfg.Archives.Stat(ctx, key)
	if err != nil {
		return OutcomeFailed, err
	}
	outcome := OutcomeAnnounced
	if exists {
		// Written but not recorded as announced: a crash between the two, or
		// an archive of a release that kept no record (which stored what a
		// proxy answered, an HTML page, as the archive). Announce it only if
		// it is one.
		ok, err := s.cfg.Archives.IsArchive(ctx, obj)
		if err != nil {
			return OutcomeFailed, err
		}
		if !ok {
			s.cfg.Logger.Warn("the stored object of this state is not an archive; exporting it again", "object", obj.URI)
			if err := s.cfg.Archives.Discard(ctx, obj); err != nil {
				return OutcomeFailed, err
			}
			exists = false
		}
	}
	if !exists {
		if obj, err = s.download(ctx, st, format, key, info); err != nil {
			return OutcomeFailed, err
		}
		outcome = OutcomeExported
		if !obj.Created {
			outcome = OutcomeAnnounced // another worker wrote the same state meanwhile
		}
	}
	notice := sink.NewExportNotice(obj, format, info, st, trig, s.cfg.Now())
	msgID, err := s.cfg.Outbox.Publish(ctx, notice)
	if err != nil {
		return OutcomeFailed, err
	}
	// The notice is out: record it even if the work is being cancelled
	// (shutdown), or the next sync would announce the state again.
	rctx, cancel := afterWork(ctx)
	defer cancel()
	now := s.cfg.Now().UTC()
	_, err = s.cfg.Records.Update(rctx, st.ID, func(r *sink.Record) (bool, error) {
		if a, ok := r.Formats[format]; ok && a.UpdatedDate.After(st.UpdatedDate) {
			return false, nil // a newer state was announced meanwhile
		}
		if r.Formats == nil {
			r.Formats = map[string]sink.Announced{}
		}
		r.Formats[format] = sink.Announced{UpdatedDate: st.UpdatedDate.UTC(), Generation: obj.Generation, At: now}
		if newer := r.Task.UpdatedDate.IsZero() || st.UpdatedDate.After(r.Task.UpdatedDate); newer || r.Task.UpdatedDate.Equal(st.UpdatedDate) {
			r.SetState(st)
			if newer {
				r.Deleted = nil // a task seen again after its deletion (moved back, restored)
			}
		}
		if r.Current(s.cfg.Formats, st.UpdatedDate) {
			r.Failure = nil
			r.Completed = completed
		}
		return true, nil
	})
	if err != nil {
		// The notice is out; a later sync announces the same export_id
		// again, which consumers de-duplicate.
		return OutcomeFailed, err
	}
	s.cfg.Logger.Info("task exported", "task_id", st.ID, "format", format, "outcome", string(outcome),
		"object", obj.URI, "generation", obj.Generation, "size", obj.Size, "updated_date", st.UpdatedDate,
		"message_id", msgID, "trigger", trig.Event, "coalesced_events", trig.Coalesced)
	return outcome, nil
}

// download streams the export from CVAT into the bucket. The archive is
// committed only if the task is still in state st once the last byte is
// read: CVAT exports the state as of when its job runs, so an unchanged
// updated_date after the download proves the archive holds st.
func (s *Syncer) download(ctx context.Context, st task.State, format string, key sink.Key, info sink.CVAT) (sink.Object, error) {
	start := s.cfg.Now()
	s.cfg.Logger.Info("export started", "task_id", st.ID, "format", format, "updated_date", st.UpdatedDate)
	ex, err := s.cfg.CVAT.ExportTask(ctx, st.ID, format, cvatapi.ExportOptions{SaveImages: s.cfg.SaveImages, UpdatedDate: st.UpdatedDate})
	if err != nil {
		if errors.Is(err, cvatapi.ErrNotFound) {
			return sink.Object{}, &busyError{until: s.cfg.Now().Add(s.cfg.ConfirmDelay), reason: "task not found during its export; checking again"}
		}
		return sink.Object{}, err
	}
	defer ex.Body.Close()
	counted := &countingReader{r: ex.Body}
	obj, err := s.cfg.Archives.Put(ctx, key, sink.Metadata{
		ProjectID: st.ProjectID, TaskName: st.Name, CVATURL: info.BaseURL, CVATVersion: info.Version,
	}, counted, func(ctx context.Context) error {
		now, err := s.cfg.CVAT.Task(ctx, st.ID)
		if err != nil {
			return err
		}
		if !now.UpdatedDate.Equal(st.UpdatedDate) {
			return &stateMovedError{id: st.ID, from: st.UpdatedDate, to: now.UpdatedDate}
		}
		return nil
	})
	s.m.bytes.WithLabelValues(format).Add(float64(counted.n))
	if err != nil {
		return sink.Object{}, err
	}
	s.cfg.Logger.Info("export stored", "task_id", st.ID, "format", format, "object", obj.URI, "size", obj.Size,
		"took", s.cfg.Now().Sub(start).String(), "api", ex.API)
	return obj, nil
}

// announceDeletion announces that the task of r is gone, once, if it was
// ever exported.
func (s *Syncer) announceDeletion(ctx context.Context, r Request) (Result, error) {
	id := r.Event.TaskID
	rec, err := s.cfg.Records.Get(ctx, id)
	if err != nil {
		return Result{}, err
	}
	if rec.Deleted != nil {
		s.m.syncs.WithLabelValues(string(OutcomeDeleted)).Inc()
		return Result{State: rec.State(), Outcome: OutcomeDeleted}, nil
	}
	st := rec.State()
	if !rec.Exported() {
		// Nothing announced on record: exported by a release that kept no
		// record, or never (a record may hold only a failure).
		known, err := s.cfg.Archives.HasAny(ctx, id)
		if err != nil {
			return Result{}, err
		}
		if !known {
			s.m.syncs.WithLabelValues(string(OutcomeGone)).Inc()
			s.cfg.Logger.Info("task gone before it was exported; nothing to announce", "task_id", id)
			return Result{State: task.State{ID: id}, Outcome: OutcomeGone}, nil
		}
		if st.UpdatedDate.IsZero() {
			st = task.State{ID: id, Name: r.Event.TaskName, ProjectID: r.Event.ProjectID, OrganizationID: r.Event.OrganizationID,
				Status: r.Event.Status, UpdatedDate: r.Event.UpdatedDate}
		}
		if st.UpdatedDate.IsZero() {
			st.UpdatedDate = s.cfg.Now().UTC()
		}
	}
	n := sink.NewDeletionNotice(s.cvatInfo(ctx), st, r.Trigger, s.cfg.Now())
	if _, err := s.cfg.Outbox.Publish(ctx, n); err != nil {
		s.m.exports.WithLabelValues("deleted", string(OutcomeFailed)).Inc()
		return Result{State: st}, err
	}
	rctx, cancel := afterWork(ctx)
	defer cancel()
	now := s.cfg.Now().UTC()
	if _, err := s.cfg.Records.Update(rctx, id, func(rec *sink.Record) (bool, error) {
		if rec.Deleted != nil {
			return false, nil
		}
		if !rec.Exists() {
			rec.SetState(st)
		}
		rec.Deleted = &sink.Deletion{ExportID: n.ExportID, At: now}
		rec.Failure = nil
		return true, nil
	}); err != nil {
		return Result{State: st}, err
	}
	s.m.exports.WithLabelValues("deleted", string(OutcomeExported)).Inc()
	s.m.syncs.WithLabelValues(string(OutcomeDeleted)).Inc()
	s.m.lastSuccess.SetToCurrentTime()
	s.cfg.Logger.Info("task deletion announced", "task_id", id, "export_id", n.ExportID, "trigger", r.Trigger.Event)
	return Result{State: st, Outcome: OutcomeDeleted}, nil
}

// RecordFailure records that the state of task id kept failing, so
// convergence retries it after a backoff of its own (growing with each
// failure, up to RetryCap), whatever happens to inbox messages.
func (s *Syncer) RecordFailure(ctx context.Context, st task.State, cause error) (sink.Failure, error) {
	now := s.cfg.Now().UTC()
	var f sink.Failure
	_, err := s.cfg.Records.Update(ctx, st.ID, func(r *sink.Record) (bool, error) {
		count := 1
		since := now
		if r.Failure != nil {
			count, since = r.Failure.Count+1, r.Failure.Since
		}
		f = sink.Failure{UpdatedDate: st.UpdatedDate.UTC(), Count: count, Since: since, Next: now.Add(retryBackoff(count)), Error: cause.Error()}
		r.Failure = &f
		if r.Task.UpdatedDate.IsZero() || st.UpdatedDate.After(r.Task.UpdatedDate) {
			r.SetState(st)
		}
		return true, nil
	})
	return f, err
}

// Per-task retry backoff of convergence: RetryBase doubling per failure,
// capped at RetryCap.
const (
	RetryBase = time.Minute
	RetryCap  = time.Hour
)

func retryBackoff(failures int) time.Duration {
	d := RetryBase << min(max(failures-1, 0), 20)
	if d <= 0 || d > RetryCap {
		d = RetryCap
	}
	return d
}

func (s *Syncer) cvatInfo(ctx context.Context) sink.CVAT {
	info := sink.CVAT{BaseURL: s.cfg.CVAT.BaseURL()}
	if a, err := s.cfg.CVAT.About(ctx); err == nil {
		info.Version = a.Version
	}
	return info
}

// Formats are the formats the syncer exports.
func (s *Syncer) Formats() []string { return slices.Clone(s.cfg.Formats) }

// Policy is the syncer's trigger policy.
func (s *Syncer) Policy() task.Policy { return s.cfg.Policy }

func stateOf(t cvatapi.Task) task.State {
	return task.State{ID: t.ID, Name: t.Name, ProjectID: t.ProjectID, OrganizationID: t.OrganizationID,
		Status: t.Status, UpdatedDate: t.UpdatedDate.UTC()}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// afterWork is the context of a write that must follow work already done
// (a record after its notice went out): not cancelled with ctx, but bounded
// by ctx's deadline (plus a little) and by ten seconds.
func afterWork(ctx context.Context) (context.Context, context.CancelFunc) {
	d := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		d = min(d, max(time.Until(dl)+2*time.Second, time.Second))
	}
	return context.WithTimeout(context.WithoutCancel(ctx), d)
}

// missing names the fields of a component's Config that are required and
// not set.
func missing(component string, unset map[string]bool) error {
	var names []string
	for name, isMissing := range unset {
		if isMissing {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return nil
	}
	slices.Sort(names)
	return fmt.Errorf("pipeline: %s: missing %s", component, strings.Join(names, ", "))
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
