package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
)

// Reconciler is the safety net for missed webhooks and for tasks in personal
// workspaces, which fire none: it periodically lists the tasks CVAT changed
// since its last pass and enqueues those whose current state is not in the
// bucket. The bucket is the record of what was exported; there is no other
// database.
type Reconciler struct {
	Exporter *Exporter
	Queue    Enqueuer
	Interval time.Duration
	// Slack widens each pass's window backwards, for clock skew between
	// CVAT and us and for tasks saved while the previous pass listed.
	Slack time.Duration
	// OnlyCompleted restricts the pass to completed tasks (trigger policy
	// "completed").
	OnlyCompleted bool
	Metrics       *Metrics
	Log           *slog.Logger
	Now           func() time.Time

	last time.Time // start of the last successful pass; zero: none yet
}

// Run makes a pass at once and then every Interval until ctx is done.
func (r *Reconciler) Run(ctx context.Context) {
	if r.Interval <= 0 {
		return
	}
	t := time.NewTicker(r.Interval)
	defer t.Stop()
	for {
		if _, err := r.Pass(ctx); err != nil && ctx.Err() == nil {
			r.Log.Warn("reconcile pass failed; next pass retries", "error", err.Error())
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Pass lists the tasks changed since the last successful pass (all tasks on
// the first) and enqueues the ones not exported in their current state. It
// returns how many it enqueued.
func (r *Reconciler) Pass(ctx context.Context) (int, error) {
	start := r.now()
	f := cvatapi.TaskFilter{}
	if !r.last.IsZero() {
		f.UpdatedSince = r.last.Add(-r.slack())
	}
	n, err := enqueueMissing(ctx, r.Exporter, r.Queue, f, "reconcile", r.OnlyCompleted, r.now)
	if n > 0 {
		r.Metrics.enqueued.WithLabelValues("reconcile").Add(float64(n))
	}
	if err != nil {
		r.Metrics.reconciles.WithLabelValues("failed").Inc()
		return n, fmt.Errorf("reconcile: %w", err)
	}
	r.Metrics.reconciles.WithLabelValues("ok").Inc()
	r.Log.Info("reconcile pass", "since", f.UpdatedSince, "enqueued", n, "took", r.now().Sub(start).String())
	r.last = start
	return n, nil
}

func (r *Reconciler) slack() time.Duration {
	if r.Slack > 0 {
		return r.Slack
	}
	return 5 * time.Minute
}

func (r *Reconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// BackfillOptions select what Backfill exports.
type BackfillOptions struct {
	Filter cvatapi.TaskFilter
	DryRun bool
	// Progress is called once the task list is known (done = 0) and after
	// each task.
	Progress func(done, total int, task cvatapi.Task, outcome string)
}

// BackfillSummary counts what Backfill did.
type BackfillSummary struct {
	Tasks     int
	Exported  int // tasks with at least one new archive or notice
	Unchanged int // tasks already exported in their current state
	Missing   int // dry run: tasks that would be exported
	Gone      int // deleted while the backfill ran
	Failed    int
	Errors    []error
}

// Backfill exports the current state of every task f selects through the
// exporter, one task after the other, and returns what happened. An error is
// returned only when the task list could not be read.
func Backfill(ctx context.Context, e *Exporter, o BackfillOptions) (BackfillSummary, error) {
	var tasks []cvatapi.Task
	if err := e.CVAT.ListTasks(ctx, o.Filter, func(t cvatapi.Task) error {
		tasks = append(tasks, t)
		return nil
	}); err != nil {
		return BackfillSummary{}, fmt.Errorf("backfill: list tasks: %w", err)
	}
	s := BackfillSummary{Tasks: len(tasks)}
	progress := o.Progress
	if progress == nil {
		progress = func(int, int, cvatapi.Task, string) {}
	}
	progress(0, len(tasks), cvatapi.Task{}, "")
	for i, t := range tasks {
		if ctx.Err() != nil {
			s.Failed += len(tasks) - i
			s.Errors = append(s.Errors, ctx.Err())
			break
		}
		outcome := backfillOne(ctx, e, t, o.DryRun, &s)
		progress(i+1, len(tasks), t, outcome)
	}
	return s, nil
}

func backfillOne(ctx context.Context, e *Exporter, t cvatapi.Task, dryRun bool, s *BackfillSummary) string {
	if dryRun {
		missing, err := e.Missing(ctx, t)
		switch {
		case err != nil:
			s.Failed++
			s.Errors = append(s.Errors, err)
			return "failed"
		case len(missing) > 0:
			s.Missing++
			return "missing"
		}
		s.Unchanged++
		return "unchanged"
	}
	results, err := e.Export(ctx, t.ID, Trigger{Event: "backfill"})
	switch {
	case errors.Is(err, ErrGone):
		s.Gone++
		return "gone"
	case err != nil:
		s.Failed++
		s.Errors = append(s.Errors, err)
		return "failed"
	}
	for _, r := range results {
		if r.Outcome == OutcomeExported || r.Outcome == OutcomeAnnounced {
			s.Exported++
			return "exported"
		}
	}
	s.Unchanged++
	return "unchanged"
}
