package pipeline

import (
	"context"
	"errors"
	"fmt"

	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
	"github.com/cvat-sync/cvat-sync/internal/task"
)

// BackfillOptions select what Backfill exports.
type BackfillOptions struct {
	Filter cvatapi.TaskFilter
	DryRun bool
	// Progress is called once the task list is known (done = 0) and after
	// each task.
	Progress func(done, total int, t cvatapi.Task, outcome string)
}

// BackfillSummary counts what Backfill did.
type BackfillSummary struct {
	// Listing, if not nil, says the task list is incomplete (pages that
	// kept failing were skipped): the tasks of the other pages were done.
	Listing   error
	Tasks     int
	Exported  int // tasks with a new archive or notice
	Unchanged int // tasks already exported in their current state
	Missing   int // dry run: tasks that would be exported
	Gone      int // deleted while the backfill ran (CVAT confirmed it)
	Failed    int
	Errors    []error
}

// Backfill syncs every task f selects, one after the other, through the
// same Syncer as the service (so it may run beside a running serve: every
// stage is idempotent), whatever the convergence scope. An error is returned
// only when the task list could not be read.
func Backfill(ctx context.Context, s *Syncer, o BackfillOptions) (BackfillSummary, error) {
	var tasks []cvatapi.Task
	err := s.cfg.CVAT.ListTasks(ctx, o.Filter, func(t cvatapi.Task) error {
		tasks = append(tasks, t)
		return nil
	})
	if err != nil && !errors.Is(err, cvatapi.ErrIncompleteListing) {
		return BackfillSummary{}, err
	}
	sum := BackfillSummary{Tasks: len(tasks), Listing: err}
	progress := o.Progress
	if progress == nil {
		progress = func(int, int, cvatapi.Task, string) {}
	}
	progress(0, len(tasks), cvatapi.Task{}, "")
	for i, t := range tasks {
		if ctx.Err() != nil {
			sum.Failed += len(tasks) - i
			sum.Errors = append(sum.Errors, ctx.Err())
			break
		}
		progress(i+1, len(tasks), t, backfillOne(ctx, s, t, o.DryRun, &sum))
	}
	return sum, nil
}

func backfillOne(ctx context.Context, s *Syncer, t cvatapi.Task, dryRun bool, sum *BackfillSummary) string {
	fail := func(err error) string {
		sum.Failed++
		sum.Errors = append(sum.Errors, err)
		return "failed"
	}
	if dryRun {
		rec, err := s.cfg.Records.Get(ctx, t.ID)
		if err != nil {
			return fail(err)
		}
		if rec.Current(s.cfg.Formats, t.UpdatedDate.UTC()) && rec.Deleted == nil {
			sum.Unchanged++
			return "unchanged"
		}
		sum.Missing++
		return "missing"
	}
	ev := task.Event{Name: string(task.SourceBackfill), Resource: task.ResourceTask, Action: task.ActionUpdate,
		TaskID: t.ID, ProjectID: t.ProjectID, Source: task.SourceBackfill}
	var res Result
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		res, err = s.Sync(ctx, Request{Event: ev, Trigger: task.Trigger{Event: string(task.SourceBackfill), Coalesced: 1}})
		if _, isBusy := busy(err); !isBusy {
			break // a task changing under the export is exported again at once
		}
	}
	switch {
	case err != nil:
		return fail(err)
	case res.Outcome == OutcomeDeleted || res.Outcome == OutcomeGone:
		sum.Gone++
		return "gone"
	case res.Outcome == OutcomeExported || res.Outcome == OutcomeAnnounced:
		sum.Exported++
		return "exported"
	case res.Outcome == OutcomeHidden:
		return fail(fmt.Errorf("task %d: CVAT refuses to show it to these credentials (403)", t.ID))
	}
	sum.Unchanged++
	return "unchanged"
}
