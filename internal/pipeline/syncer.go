package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
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
	if cfg.CVAT == nil || cfg.Archives == nil || cfg.Records == nil || cfg.Outbox == nil {
		return nil, errors.New("pipeline: syncer needs CVAT, Archives, Records and Outbox")
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
		return Result{Outcome: OutcomeHidden}, nil
	case err != nil:
		return Result{}, err
	}
	st := stateOf(ct)
	if r.Quiet > 0 {
		if quietAt := st.UpdatedDate.Add(r.Quiet); s.cfg.Now().Before(quietAt) && (r.Deadline.IsZero() || s.cfg.Now().Before(r.Deadline)) {
			until := quietAt
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
// policy a state is due when the task is completed, or when a job reached
// completed that had not been completed at the last export; it returns the
// completed jobs to record with the export.
func (s *Syncer) due(ctx context.Context, st task.State, rec sink.Record) ([]int64, bool, error) {
	if s.cfg.Policy != task.PolicyCompleted {
		return nil, true, nil
	}
	jobs, err := s.cfg.CVAT.TaskJobs(ctx, st.ID)
	if err != nil {
		return nil, false, err
	}
	var completed []int64
	for _, j := range jobs {
		if j.State == "completed" {
			completed = append(completed, j.ID)
		}
	}
	slices.Sort(completed)
	if st.Status == "completed" {
		return completed, true, nil
	}
	for _, j := range completed {
		if !slices.Contains(rec.CompletedJobs, j) {
			return completed, true, nil
		}
	}
	return completed, false, nil
}

// exportFormat makes one format of state st current: the archive (written
// unless it exists), its notice, and the record of the notice.
func (s *Syncer) exportFormat(ctx context.Context, st task.State, format string, trig task.Trigger, info sink.CVAT, completedJobs []int64) (Outcome, error) {
	key := sink.Key{TaskID: st.ID, Format: format, UpdatedDate: st.UpdatedDate}
	obj, exists, err := s.cfg.Archives.Stat(ctx, key)
	if err != nil {
		return OutcomeFailed, err
	}
	outcome := OutcomeAnnounced
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
		return OutcomeFailed, fmt.Errorf("announce %s: %w", obj.URI, err)
	}
	// The notice is out: record it even if the work is being cancelled
	// (shutdown), or the next sync would announce the state again.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
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
		r.SetState(st)
		r.Deleted = nil
		if r.Current(s.cfg.Formats, st.UpdatedDate) {
			r.Failure = nil
			r.CompletedJobs = completedJobs
		}
		return true, nil
	})
	if err != nil {
		// The notice is out; a later sync announces the same export_id
		// again, which consumers de-duplicate.
		return OutcomeFailed, fmt.Errorf("record the notice of %s: %w", obj.URI, err)
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
			return fmt.Errorf("check task %d is unchanged: %w", st.ID, err)
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
	if !rec.Exists() {
		// No record: exported by a release that kept none, or never.
		known, err := s.cfg.Archives.HasAny(ctx, id)
		if err != nil {
			return Result{}, err
		}
		if !known {
			s.m.syncs.WithLabelValues(string(OutcomeGone)).Inc()
			s.cfg.Logger.Info("task gone before it was exported; nothing to announce", "task_id", id)
			return Result{Outcome: OutcomeGone}, nil
		}
		st = task.State{ID: id, Name: r.Event.TaskName, ProjectID: r.Event.ProjectID, OrganizationID: r.Event.OrganizationID,
			Status: r.Event.Status, UpdatedDate: r.Event.UpdatedDate}
		if st.UpdatedDate.IsZero() {
			st.UpdatedDate = s.cfg.Now().UTC()
		}
	}
	n := sink.NewDeletionNotice(s.cvatInfo(ctx), st, r.Trigger, s.cfg.Now())
	if _, err := s.cfg.Outbox.Publish(ctx, n); err != nil {
		s.m.exports.WithLabelValues("deleted", string(OutcomeFailed)).Inc()
		return Result{State: st}, fmt.Errorf("announce the deletion of task %d: %w", id, err)
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
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
		return Result{State: st}, fmt.Errorf("record the deletion of task %d: %w", id, err)
	}
	s.m.exports.WithLabelValues("deleted", string(OutcomeExported)).Inc()
	s.m.syncs.WithLabelValues(string(OutcomeDeleted)).Inc()
	s.cfg.Logger.Info("task deletion announced", "task_id", id, "export_id", n.ExportID, "trigger", r.Trigger.Event)
	return Result{State: st, Outcome: OutcomeDeleted}, nil
}

// RecordFailure records that the state of task id kept failing, so
// convergence retries it after a backoff of its own (growing with each
// failure, up to RetryCap), whatever happens to inbox messages.
func (s *Syncer) RecordFailure(ctx context.Context, id int64, updated time.Time, cause error) (sink.Failure, error) {
	now := s.cfg.Now().UTC()
	var f sink.Failure
	_, err := s.cfg.Records.Update(ctx, id, func(r *sink.Record) (bool, error) {
		count := 1
		since := now
		if r.Failure != nil {
			count, since = r.Failure.Count+1, r.Failure.Since
		}
		f = sink.Failure{UpdatedDate: updated.UTC(), Count: count, Since: since, Next: now.Add(retryBackoff(count)), Error: cause.Error()}
		r.Failure = &f
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
