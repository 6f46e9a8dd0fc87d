package pipeline

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
	"github.com/cvat-sync/cvat-sync/internal/cvatfake"
	"github.com/cvat-sync/cvat-sync/internal/eventually"
	"github.com/cvat-sync/cvat-sync/internal/inbox"
	"github.com/cvat-sync/cvat-sync/internal/sink"
	"github.com/cvat-sync/cvat-sync/internal/task"
)

// The tests in this file each failed on the first version of the converging
// pipeline (found in review) and pass now.

// TestDeletedTaskNotBehind: after a task's deletion is announced, passes
// neither count it behind nor enqueue it again.
func TestDeletedTaskNotBehind(t *testing.T) {
	r := newRig(t, rigOptions{})
	tk := r.fake.AddTask(cvatfake.Task{Name: "doomed", UpdatedDate: time.Now().Add(-72 * time.Hour)})
	keep := r.fake.AddTask(cvatfake.Task{Name: "keep"})
	r.pass(true)
	eventually.Within(t, rigWithin, "the exports", func() bool {
		return len(r.noticesOf(sink.KindExported, tk.ID)) == 1 && len(r.noticesOf(sink.KindExported, keep.ID)) == 1
	})
	if _, err := r.fake.DeleteTask(tk.ID); err != nil {
		t.Fatal(err)
	}
	r.enqueue(deletion(tk))
	eventually.Within(t, rigWithin, "the deletion and its sync settled", func() bool {
		n, _ := r.p.conv.behindStats()
		return len(r.noticesOf(sink.KindDeleted, tk.ID)) == 1 && n == 0
	})
	if res := r.pass(false); res.Behind != 0 || res.Enqueued != 0 {
		t.Errorf("a deleted task is counted behind or enqueued: %+v", res)
	}
}

// TestFailureOnlyRecordIsNotExported: a task whose first export failed (its
// record holds only the failure) and which is then deleted announces no
// deletion and is no deletion candidate of later passes.
func TestFailureOnlyRecordIsNotExported(t *testing.T) {
	r := newRig(t, rigOptions{maxAttempts: 1})
	tk := r.fake.AddTask(cvatfake.Task{Name: "never"})
	r.fake.FailNextExport(tk.ID, "boom")
	r.enqueue(update("update:task", tk))
	eventually.Within(t, rigWithin, "the give-up", func() bool { return len(r.dead()) == 1 })
	if rec := r.record(tk.ID); rec.Failure == nil || rec.Exported() {
		t.Fatalf("record %+v", rec)
	}
	if _, err := r.fake.DeleteTask(tk.ID); err != nil {
		t.Fatal(err)
	}
	if res := r.pass(true); res.Deleted != 0 {
		t.Errorf("a never-exported task is a deletion candidate: %+v", res)
	}
	r.enqueue(deletion(tk))
	eventually.Within(t, rigWithin, "the deletion checked", func() bool {
		return counter(r.p.m.syncs.WithLabelValues(string(OutcomeGone))) == 1
	})
	if n := len(r.noticesOf(sink.KindDeleted, tk.ID)); n != 0 || len(r.dead()) != 1 {
		t.Errorf("%d deletion notices, %d dead letters", n, len(r.dead()))
	}
}

// TestCompletedPolicyFailureRetried: under the completed policy a job's
// completion whose export failed is retried by convergence after its
// backoff, though the task itself is not completed.
func TestCompletedPolicyFailureRetried(t *testing.T) {
	r := newRig(t, rigOptions{policy: task.PolicyCompleted, maxAttempts: 1})
	tk := r.fake.AddTask(cvatfake.Task{Name: "t"})
	j1 := r.fake.AddJob(cvatfake.Job{TaskID: tk.ID})
	r.fake.AddJob(cvatfake.Job{TaskID: tk.ID})
	if _, err := r.fake.CompleteJob(j1.ID); err != nil {
		t.Fatal(err)
	}
	r.fake.FailNextExport(tk.ID, "boom")
	ev := update("update:job", tk)
	ev.JobID = j1.ID
	r.enqueue(ev)
	eventually.Within(t, rigWithin, "the give-up", func() bool { return len(r.dead()) == 1 })
	r.offset.Store(int64(2 * RetryBase))
	if res := r.pass(true); res.Enqueued != 1 {
		t.Fatalf("pass after the backoff: %+v", res)
	}
	eventually.Within(t, rigWithin, "the export", func() bool { return len(r.noticesOf(sink.KindExported, tk.ID)) == 1 })
}

// TestCompletedPolicyMissedWebhook: under the completed policy a job's
// completion whose webhook never came is found by a pass, and a change that
// completes nothing is checked once, not at every pass.
func TestCompletedPolicyMissedWebhook(t *testing.T) {
	r := newRig(t, rigOptions{policy: task.PolicyCompleted})
	tk := r.fake.AddTask(cvatfake.Task{Name: "t"})
	j1 := r.fake.AddJob(cvatfake.Job{TaskID: tk.ID})
	other := r.fake.AddTask(cvatfake.Task{Name: "saved, nothing completed"})
	if _, err := r.fake.CompleteJob(j1.ID); err != nil { // no webhook
		t.Fatal(err)
	}
	if res := r.pass(true); res.Enqueued != 2 {
		t.Fatalf("first pass: %+v", res)
	}
	eventually.Within(t, rigWithin, "the export", func() bool { return len(r.noticesOf(sink.KindExported, tk.ID)) == 1 })
	eventually.Within(t, rigWithin, "the other checked", func() bool { return r.record(other.ID).Checked.Equal(other.UpdatedDate) })
	if res := r.pass(true); res.Enqueued != 0 || res.Behind != 0 {
		t.Errorf("second pass: %+v", res)
	}
}

// TestUnknownOrganizationIsNoDeletion: with an organization that does not
// exist (a typo in CVAT_SYNC_CVAT_ORG), CVAT answers every read 404 "...
// organization does not exist."; that is not the task's deletion.
func TestUnknownOrganizationIsNoDeletion(t *testing.T) {
	r := newRig(t, rigOptions{})
	tk := r.fake.AddTask(cvatfake.Task{Name: "alive"})
	r.enqueue(update("update:task", tk))
	eventually.Within(t, rigWithin, "the export", func() bool { return len(r.noticesOf(sink.KindExported, tk.ID)) == 1 })
	bad, err := cvatapi.New(cvatapi.Config{BaseURL: r.fake.URL(), Token: r.fake.Token(), AuthScheme: "token", Org: "typo-org", MaxRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	cfg := r.p.syncer.cfg
	cfg.CVAT, cfg.Metrics = bad, nil
	s, err := NewSyncer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.Sync(context.Background(), Request{Event: update("update:task", tk), Trigger: task.Trigger{Event: "update:task", Coalesced: 1}})
	if !errors.Is(err, cvatapi.ErrUnknownOrganization) || !unavailable(err) || res.Outcome == OutcomeDeleted {
		t.Errorf("sync in an unknown organization: %v, %v; want the work held", res.Outcome, err)
	}
	if n := len(r.noticesOf(sink.KindDeleted, tk.ID)); n != 0 {
		t.Errorf("%d task.deleted for a task that exists", n)
	}
}

// TestStopHonoursDeadlineAfterReceiveFails: the worker's receive fails while
// a sync runs; Stop still ends within its deadline.
func TestStopHonoursDeadlineAfterReceiveFails(t *testing.T) {
	cv := &blockingCVAT{started: make(chan struct{}), release: make(chan struct{})}
	defer close(cv.release)
	s, err := NewSyncer(SyncerConfig{CVAT: cv, Archives: nopArchives{}, Records: nopRecords{}, Outbox: nopOutbox{}, Formats: []string{"f"}})
	if err != nil {
		t.Fatal(err)
	}
	in := &failingInbox{handed: make(chan struct{})}
	failed := make(chan error, 1)
	w, err := NewWorker(WorkerConfig{Inbox: in, Syncer: s, Fanout: nopFanout{}, DeadLetters: nopDead{}, MaxWait: time.Second,
		Tick: 5 * time.Millisecond, OnFailed: func(err error) { failed <- err }})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan context.Context, 1)
	done := make(chan error, 1)
	go func() { done <- w.run(context.Background(), stop) }()
	<-cv.started     // a sync runs
	close(in.handed) // then receiving fails
	if err := <-failed; err == nil {
		t.Fatal("no failure reported")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	stop <- ctx
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the worker still drains 5 s after a Stop whose deadline was 200 ms")
	}
}

// TestQuietOnCVATsClock: with CVAT's clock 10 minutes ahead of ours, the
// debounce still counts from CVAT's updated_date on CVAT's clock (not the
// max-wait).
func TestQuietOnCVATsClock(t *testing.T) {
	r := newRig(t, rigOptions{debounce: 200 * time.Millisecond, maxWait: 20 * time.Second})
	r.fake.SetClockOffset(10 * time.Minute)
	r.pass(true) // measures CVAT's clock
	tk := r.fake.AddTask(cvatfake.Task{Name: "t"})
	start := time.Now()
	r.enqueue(update("update:task", tk))
	eventually.Within(t, rigWithin, "the export", func() bool { return len(r.noticesOf(sink.KindExported, tk.ID)) == 1 })
	if took := time.Since(start); took > 15*time.Second {
		t.Errorf("with CVAT's clock ahead the export waited %s, for the max-wait", took)
	}
}

// TestBackfillPoisonPage: one task-list page that keeps failing does not
// stop a backfill: the other pages' tasks are exported and the summary says
// the list was incomplete.
func TestBackfillPoisonPage(t *testing.T) {
	r := newRig(t, rigOptions{noStart: true})
	for range 6 {
		r.fake.AddTask(cvatfake.Task{Name: "t"})
	}
	r.fake.Inject(cvatfake.Fault{Method: "GET", Route: "/api/tasks", Query: map[string][]string{"page": {"2"}}, Status: 500})
	sum, err := Backfill(context.Background(), r.p.syncer, BackfillOptions{Filter: cvatapi.TaskFilter{PageSize: 2}})
	if err != nil || sum.Exported != 4 || !errors.Is(sum.Listing, cvatapi.ErrIncompleteListing) {
		t.Errorf("backfill: %+v, %v", sum, err)
	}
}

// TestProjectChangeKeepsScope: an update:project alone does not export the
// project's tasks from before the scope (CVAT_SYNC_SYNC_SINCE), even before
// any pass ran.
func TestProjectChangeKeepsScope(t *testing.T) {
	r := newRig(t, rigOptions{since: SinceFirstStart, noStart: true})
	p := r.fake.AddProject(cvatfake.Project{Name: "p"})
	old := r.fake.AddTask(cvatfake.Task{ProjectID: p.ID, Name: "history", UpdatedDate: time.Now().Add(-48 * time.Hour)})
	n, err := r.p.conv.ProjectChanged(context.Background(), p.ID, task.Trigger{Event: "update:project"})
	if err != nil || n != 0 {
		t.Errorf("project change enqueued %d tasks (%v); the task %d is history", n, err, old.ID)
	}
}

type failingInbox struct{ handed chan struct{} }

func (f *failingInbox) Receive(ctx context.Context, handle func(context.Context, *inbox.Delivery)) error {
	handle(ctx, inbox.NewDelivery(task.Event{Name: "update:task", Resource: task.ResourceTask, Action: task.ActionUpdate, TaskID: 1, ReceivedAt: time.Now()}))
	<-f.handed
	return errors.New("subscription gone")
}

// blockingCVAT's first task read blocks until released: a long CVAT call.
type blockingCVAT struct {
	CVAT
	started chan struct{}
	release chan struct{}
	once    sync.Once
}

func (b *blockingCVAT) Task(ctx context.Context, id int64) (cvatapi.Task, error) {
	first := false
	b.once.Do(func() { close(b.started); first = true })
	if first {
		select { // a CVAT call honours its context, as the client's do
		case <-b.release:
		case <-ctx.Done():
			return cvatapi.Task{}, ctx.Err()
		}
	}
	return cvatapi.Task{}, errors.New("late")
}

func (b *blockingCVAT) BaseURL() string { return "http://cvat.invalid" }

type nopArchives struct{}

func (nopArchives) Put(context.Context, sink.Key, sink.Metadata, io.Reader, func(context.Context) error) (sink.Object, error) {
	return sink.Object{}, nil
}
func (nopArchives) Stat(context.Context, sink.Key) (sink.Object, bool, error) {
	return sink.Object{}, false, nil
}
func (nopArchives) HasAny(context.Context, int64) (bool, error)          { return false, nil }
func (nopArchives) IsArchive(context.Context, sink.Object) (bool, error) { return true, nil }
func (nopArchives) Discard(context.Context, sink.Object) error           { return nil }

type nopRecords struct{ Records }
type nopOutbox struct{}

func (nopOutbox) Publish(context.Context, sink.Notice) (string, error) { return "", nil }

type nopFanout struct{}

func (nopFanout) ProjectChanged(context.Context, int64, task.Trigger) (int, error) { return 0, nil }
func (nopFanout) ProjectDeleted(context.Context, int64, task.Trigger) (int, error) { return 0, nil }

type nopDead struct{}

func (nopDead) Send(context.Context, inbox.Item, string, int) error { return nil }
