// Package pipeline is cvat-sync's main job: it turns the work items of the
// inbox into archives in Cloud Storage and notices on the outbox, once per
// task state and format, whatever CVAT, GCS or Pub/Sub do meanwhile.
//
//   - Exporter: one task state to one object and one notice per format. The
//     bucket is the record of what was exported: an object named after the
//     task's updated_date (as read from CVAT right before the export) that is
//     marked published needs nothing more.
//   - Worker: receives the inbox, keeps one pending batch per task, and
//     exports it when the task has been quiet for the debounce window or the
//     max-wait has passed; acks only after the export was delivered.
//   - Reconciler: lists tasks CVAT changed and enqueues the ones whose
//     current state is not in the bucket.
//   - Backfill: exports existing tasks through the same Exporter.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
	"github.com/cvat-sync/cvat-sync/internal/sink"
)

// CVAT is what the pipeline needs of the CVAT client.
type CVAT interface {
	About(ctx context.Context) (cvatapi.About, error)
	Task(ctx context.Context, id int64) (cvatapi.Task, error)
	ListTasks(ctx context.Context, f cvatapi.TaskFilter, fn func(cvatapi.Task) error) error
	ExportTask(ctx context.Context, taskID int64, format string, o cvatapi.ExportOptions) (*cvatapi.Export, error)
	BaseURL() string
}

// Archives is what the pipeline needs of the GCS sink.
type Archives interface {
	Put(ctx context.Context, k sink.Key, m sink.Metadata, r io.Reader) (sink.Object, error)
	Stat(ctx context.Context, k sink.Key) (sink.Object, bool, error)
	MarkPublished(ctx context.Context, o sink.Object, messageID string) error
}

// Outbox is what the pipeline needs of the outbox publisher.
type Outbox interface {
	Publish(ctx context.Context, n sink.Notice) (string, error)
}

// Trigger says what caused an export; it ends up in the notice.
type Trigger = sink.Trigger

// Outcome of exporting one task state in one format.
type Outcome string

// The outcomes, also the values of the "outcome" metric label.
const (
	OutcomeExported  Outcome = "exported"  // a new object was written and announced
	OutcomeAnnounced Outcome = "announced" // the object existed but its notice had not been published
	OutcomeUnchanged Outcome = "unchanged" // object and notice existed: nothing to do
	OutcomeGone      Outcome = "gone"      // the task no longer exists in CVAT
	OutcomeFailed    Outcome = "failed"
)

// Result reports one format of one export.
type Result struct {
	Format  string
	Outcome Outcome
	Object  sink.Object
	Err     error
}

// Exporter exports task states.
type Exporter struct {
	CVAT       CVAT
	Archives   Archives
	Outbox     Outbox
	Formats    []string
	SaveImages bool
	Metrics    *Metrics
	Log        *slog.Logger
	Now        func() time.Time
}

// ErrGone means the task no longer exists in CVAT; its work ends cleanly.
var ErrGone = errors.New("task no longer exists in CVAT")

// Export exports the current state of task id in every configured format. It
// returns one Result per format and an error if any format failed (ErrGone,
// wrapped, if the task is gone).
func (e *Exporter) Export(ctx context.Context, id int64, trig Trigger) ([]Result, error) {
	task, err := e.ReadTask(ctx, id)
	if err != nil {
		return nil, err
	}
	return e.ExportState(ctx, task, trig)
}

// ReadTask reads a task's current state from CVAT; ErrGone (wrapped) when it
// no longer exists.
func (e *Exporter) ReadTask(ctx context.Context, id int64) (cvatapi.Task, error) {
	task, err := e.CVAT.Task(ctx, id)
	if errors.Is(err, cvatapi.ErrNotFound) {
		e.Metrics.exports.WithLabelValues("all", string(OutcomeGone)).Inc()
		return task, fmt.Errorf("export task %d: %w", id, ErrGone)
	}
	if err != nil {
		e.Metrics.exports.WithLabelValues("all", string(OutcomeFailed)).Inc()
		return task, fmt.Errorf("export task %d: %w", id, err)
	}
	return task, nil
}

// ExportState exports task, as just read from CVAT, in every configured
// format.
func (e *Exporter) ExportState(ctx context.Context, task cvatapi.Task, trig Trigger) ([]Result, error) {
	info := e.cvatInfo(ctx)
	var errs []error
	results := make([]Result, 0, len(e.Formats))
	for _, f := range e.Formats {
		start := e.now()
		r := e.exportFormat(ctx, task, f, trig, info)
		e.Metrics.observeExport(f, r, e.now().Sub(start))
		if r.Err != nil {
			errs = append(errs, r.Err)
		}
		results = append(results, r)
	}
	return results, errors.Join(errs...)
}

func (e *Exporter) exportFormat(ctx context.Context, task cvatapi.Task, format string, trig Trigger, info sink.CVAT) Result {
	key := sink.Key{TaskID: task.ID, Format: format, UpdatedDate: task.UpdatedDate}
	r := Result{Format: format}
	obj, exists, err := e.Archives.Stat(ctx, key)
	if err != nil {
		r.Outcome, r.Err = OutcomeFailed, fmt.Errorf("export task %d as %q: check the bucket: %w", task.ID, format, err)
		return r
	}
	r.Outcome = OutcomeAnnounced
	if exists && obj.Published {
		r.Outcome, r.Object = OutcomeUnchanged, obj
		return r
	}
	if !exists {
		obj, err = e.download(ctx, task, format, key, info)
		if errors.Is(err, cvatapi.ErrNotFound) {
			r.Outcome, r.Err = OutcomeGone, fmt.Errorf("export task %d as %q: %w", task.ID, format, ErrGone)
			return r
		}
		if err != nil {
			r.Outcome, r.Err = OutcomeFailed, err
			return r
		}
		r.Outcome = OutcomeExported
		if !obj.Created && obj.Published {
			// Another worker finished the same state meanwhile.
			r.Outcome, r.Object = OutcomeUnchanged, obj
			return r
		}
	}
	r.Object = obj
	notice := sink.NewExportNotice(obj, format, info, noticeTask(task), trig, e.now())
	msgID, err := e.Outbox.Publish(ctx, notice)
	if err != nil {
		r.Outcome, r.Err = OutcomeFailed, fmt.Errorf("export task %d as %q: publish notice for %s: %w", task.ID, format, obj.URI, err)
		return r
	}
	// The notice is out: record it even if the export is being cancelled
	// (shutdown), or the next run would announce the object again.
	mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := e.Archives.MarkPublished(mctx, obj, msgID); err != nil {
		// The notice is out; a replay republishes the same export_id, which
		// consumers de-duplicate. Not worth failing the export for.
		e.Log.Warn("could not mark archive published", "task_id", task.ID, "format", format, "object", obj.Name, "error", err.Error())
	}
	e.Log.Info("task exported", "task_id", task.ID, "format", format, "outcome", string(r.Outcome),
		"object", obj.URI, "size", obj.Size, "updated_date", task.UpdatedDate, "message_id", msgID,
		"trigger", trig.Event, "coalesced_events", trig.Coalesced)
	return r
}

// download streams the export from CVAT into the bucket.
func (e *Exporter) download(ctx context.Context, task cvatapi.Task, format string, key sink.Key, info sink.CVAT) (sink.Object, error) {
	ex, err := e.CVAT.ExportTask(ctx, task.ID, format, cvatapi.ExportOptions{SaveImages: e.SaveImages})
	if err != nil {
		return sink.Object{}, fmt.Errorf("export task %d as %q: %w", task.ID, format, err)
	}
	defer ex.Body.Close()
	counted := &countingReader{r: ex.Body}
	obj, err := e.Archives.Put(ctx, key, sink.Metadata{
		ProjectID: task.ProjectID, TaskName: task.Name, CVATURL: info.BaseURL, CVATVersion: info.Version,
	}, counted)
	e.Metrics.bytes.WithLabelValues(format).Add(float64(counted.n))
	if err != nil {
		return sink.Object{}, fmt.Errorf("export task %d as %q: store archive: %w", task.ID, format, err)
	}
	return obj, nil
}

// Delete publishes the task.deleted notice of a task; CVAT is not asked.
func (e *Exporter) Delete(ctx context.Context, t sink.Task, trig Trigger) error {
	n := sink.NewDeletionNotice(e.cvatInfo(ctx), t, trig, e.now())
	if _, err := e.Outbox.Publish(ctx, n); err != nil {
		e.Metrics.exports.WithLabelValues("deleted", string(OutcomeFailed)).Inc()
		return fmt.Errorf("publish deletion of task %d: %w", t.ID, err)
	}
	e.Metrics.exports.WithLabelValues("deleted", string(OutcomeExported)).Inc()
	e.Log.Info("task deletion announced", "task_id", t.ID, "export_id", n.ExportID)
	return nil
}

// Missing reports the formats whose export of task's current state is not
// in the bucket or not yet announced.
func (e *Exporter) Missing(ctx context.Context, task cvatapi.Task) ([]string, error) {
	var missing []string
	for _, f := range e.Formats {
		obj, ok, err := e.Archives.Stat(ctx, sink.Key{TaskID: task.ID, Format: f, UpdatedDate: task.UpdatedDate})
		if err != nil {
			return nil, fmt.Errorf("check export of task %d as %q: %w", task.ID, f, err)
		}
		if !ok || !obj.Published {
			missing = append(missing, f)
		}
	}
	return missing, nil
}

func (e *Exporter) cvatInfo(ctx context.Context) sink.CVAT {
	info := sink.CVAT{BaseURL: e.CVAT.BaseURL()}
	if a, err := e.CVAT.About(ctx); err == nil {
		info.Version = a.Version
	}
	return info
}

func (e *Exporter) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

func noticeTask(t cvatapi.Task) sink.Task {
	nt := sink.Task{ID: t.ID, Name: t.Name, ProjectID: sink.NullID(t.ProjectID), Status: t.Status, UpdatedDate: t.UpdatedDate}
	if t.OrganizationID != 0 {
		nt.Organization = &sink.Organization{ID: t.OrganizationID}
	}
	return nt
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
