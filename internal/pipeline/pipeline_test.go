package pipeline

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cvat-sync/cvat-sync/internal/cvatfake"
	"github.com/cvat-sync/cvat-sync/internal/eventually"
	"github.com/cvat-sync/cvat-sync/internal/sink"
	"github.com/cvat-sync/cvat-sync/internal/task"
)

// TestSyncExportsOnceAndRecords: a task's state becomes one archive with
// CVAT's bytes, one notice and a record; a second event for the same state
// exports nothing.
func TestSyncExportsOnceAndRecords(t *testing.T) {
	r := newRig(t, rigOptions{})
	p := r.fake.AddProject(cvatfake.Project{Name: "p"})
	tk := r.fake.AddTask(cvatfake.Task{ProjectID: p.ID, Name: "litter"})
	r.enqueue(update("update:task", tk))
	eventually.Within(t, rigWithin, "the notice", func() bool { return len(r.noticesOf(sink.KindExported, tk.ID)) == 1 })
	n := r.noticesOf(sink.KindExported, tk.ID)[0]
	if !n.Task.UpdatedDate.Equal(tk.UpdatedDate) || n.Format != rigFormat || n.Object == nil {
		t.Fatalf("notice %+v", n)
	}
	want, _, err := r.fake.ExpectedArchive(tk.ID, rigFormat)
	if err != nil {
		t.Fatal(err)
	}
	assertObject(t, r, n.Object.Name, want)
	rec := r.record(tk.ID)
	if !rec.Current([]string{rigFormat}, tk.UpdatedDate) || rec.Formats[rigFormat].Generation != n.Object.Generation {
		t.Fatalf("record %+v", rec)
	}

	calls := r.exportCalls()
	r.enqueue(update("update:job", tk))
	eventually.Within(t, rigWithin, "the second event settled", func() bool {
		return testutil.ToFloat64(r.p.m.syncs.WithLabelValues(string(OutcomeUnchanged))) >= 1 ||
			testutil.ToFloat64(r.p.m.coalesced) >= 1
	})
	if got := r.exportCalls(); got != calls {
		t.Errorf("%d more CVAT exports for an unchanged state", got-calls)
	}
	if got := len(r.noticesOf(sink.KindExported, tk.ID)); got != 1 {
		t.Errorf("%d notices, want 1", got)
	}
}

func assertObject(t *testing.T, r *rig, name string, want io.Reader) {
	t.Helper()
	rd, err := r.archives.Reader(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	got, err := io.ReadAll(rd)
	if err != nil {
		t.Fatal(err)
	}
	exp, _ := io.ReadAll(want)
	if string(got) != string(exp) {
		t.Fatalf("object %s: %d bytes, not the %d bytes CVAT served", name, len(got), len(exp))
	}
}

// TestOutageHeldWithoutAttempts: while CVAT does not answer, the worker
// holds the work without spending attempts (no dead letter however long it
// lasts, here many times the attempts' backoff); when CVAT returns, the
// state is exported exactly once. Before convergence, the first dead
// letter came 54 s into a one-minute outage.
func TestOutageHeldWithoutAttempts(t *testing.T) {
	r := newRig(t, rigOptions{maxAttempts: 2})
	tk := r.fake.AddTask(cvatfake.Task{Name: "t"})
	r.fake.Inject(cvatfake.Fault{Status: http.StatusServiceUnavailable})
	r.enqueue(update("update:task", tk))
	eventually.Within(t, rigWithin, "the outage to be met", func() bool {
		return testutil.ToFloat64(r.p.m.postponed.WithLabelValues(postponeUnavailable)) >= 20
	})
	if len(r.dead()) != 0 || testutil.ToFloat64(r.p.m.retries) != 0 {
		t.Fatalf("an outage spent attempts: %d dead letters, %v retries", len(r.dead()), testutil.ToFloat64(r.p.m.retries))
	}
	r.fake.ClearFaults()
	eventually.Within(t, rigWithin, "the export after the outage", func() bool { return len(r.noticesOf(sink.KindExported, tk.ID)) == 1 })
	if got := r.exportCalls(); got != 1 {
		t.Errorf("%d exports, want 1", got)
	}
	if len(r.dead()) != 0 {
		t.Error("dead letter after an outage")
	}
}

// TestGCSOutageHeld: the same for Cloud Storage (whose client also retries
// on its own).
func TestGCSOutageHeld(t *testing.T) {
	r := newRig(t, rigOptions{maxAttempts: 2})
	tk := r.fake.AddTask(cvatfake.Task{Name: "t"})
	r.em.SetGCSFault(func(*http.Request) int { return http.StatusServiceUnavailable })
	r.enqueue(update("update:task", tk))
	eventually.Within(t, rigWithin, "the outage to be met", func() bool { return r.em.GCSFaults() >= 3 })
	r.em.SetGCSFault(nil)
	eventually.Within(t, rigWithin, "the export after the outage", func() bool { return len(r.noticesOf(sink.KindExported, tk.ID)) == 1 })
	if len(r.dead()) != 0 {
		t.Error("dead letter after a GCS outage")
	}
}

// TestFailingTaskLeftToConvergence: a task whose export always fails does
// not hold up others; after the worker's attempts it is recorded as
// failing (with a dead-letter copy for visibility), shown as behind, and
// retried by convergence once its backoff ends: when CVAT stops failing it
// is exported without any new webhook.
func TestFailingTaskLeftToConvergence(t *testing.T) {
	r := newRig(t, rigOptions{maxAttempts: 2})
	bad := r.fake.AddTask(cvatfake.Task{Name: "bad"})
	good := r.fake.AddTask(cvatfake.Task{Name: "good"})
	for range 2 {
		r.fake.FailNextExport(bad.ID, "worker crashed: out of memory")
	}
	r.enqueue(update("update:task", bad))
	r.enqueue(update("update:task", good))
	eventually.Within(t, rigWithin, "the good task", func() bool { return len(r.noticesOf(sink.KindExported, good.ID)) == 1 })
	eventually.Within(t, rigWithin, "the dead-letter copy", func() bool { return len(r.dead()) == 1 })
	if m := r.dead()[0]; !strings.Contains(m.Attributes["reason"], "out of memory") {
		t.Errorf("dead letter %v", m.Attributes)
	}
	rec := r.record(bad.ID)
	if rec.Failure == nil || rec.Failure.Count != 1 || !rec.Failure.UpdatedDate.Equal(bad.UpdatedDate) {
		t.Fatalf("failure not recorded: %+v", rec.Failure)
	}
	if d := rec.Failure.Next.Sub(rec.Failure.Since); d < RetryBase/2 || d > 2*RetryBase {
		t.Errorf("first convergence retry in %s, want about %s", d, RetryBase)
	}

	// A pass before the backoff ends leaves it alone but shows it behind.
	res := r.pass(true)
	if res.Behind != 1 || res.Failing != 1 || res.Enqueued != 0 {
		t.Fatalf("pass before the backoff: %+v", res)
	}
	if n, _ := r.p.conv.behindStats(); n != 1 {
		t.Errorf("tasks_behind %d, want 1", n)
	}
	// CVAT stops failing; once the backoff is over, a pass retries it.
	r.offset.Store(int64(2 * RetryBase))
	res = r.pass(false)
	if res.Enqueued != 1 {
		t.Fatalf("pass after the backoff: %+v", res)
	}
	eventually.Within(t, rigWithin, "the retried export", func() bool { return len(r.noticesOf(sink.KindExported, bad.ID)) == 1 })
	if rec := r.record(bad.ID); rec.Failure != nil {
		t.Errorf("failure kept after success: %+v", rec.Failure)
	}
	eventually.Within(t, rigWithin, "nothing behind", func() bool { n, _ := r.p.conv.behindStats(); return n == 0 })
}

// TestRetryBackoffGrows: each give-up doubles the state's convergence
// backoff, up to RetryCap.
func TestRetryBackoffGrows(t *testing.T) {
	var last time.Duration
	for i := 1; i <= 10; i++ {
		d := retryBackoff(i)
		if d < last || d > RetryCap {
			t.Fatalf("failure %d: backoff %s after %s", i, d, last)
		}
		last = d
	}
	if last != RetryCap {
		t.Errorf("backoff tops out at %s, want %s", last, RetryCap)
	}
}

// TestDeletedWhileStopped: a task exported, then deleted in CVAT while the
// service was not running (no webhook reaches it): the first full pass
// announces one task.deleted; another pass announces nothing more.
func TestDeletedWhileStopped(t *testing.T) {
	r := newRig(t, rigOptions{})
	tk := r.fake.AddTask(cvatfake.Task{Name: "doomed"})
	keep := r.fake.AddTask(cvatfake.Task{Name: "kept"})
	r.enqueue(update("update:task", tk))
	r.enqueue(update("update:task", keep))
	eventually.Within(t, rigWithin, "the exports", func() bool {
		return len(r.noticesOf(sink.KindExported, tk.ID)) == 1 && len(r.noticesOf(sink.KindExported, keep.ID)) == 1
	})
	if _, err := r.fake.DeleteTask(tk.ID); err != nil {
		t.Fatal(err)
	}
	if res := r.pass(true); res.Deleted != 1 {
		t.Fatalf("pass: %+v", res)
	}
	eventually.Within(t, rigWithin, "the deletion notice", func() bool { return len(r.noticesOf(sink.KindDeleted, tk.ID)) == 1 })
	n := r.noticesOf(sink.KindDeleted, tk.ID)[0]
	if n.Task.Name != "doomed" || n.ExportID == "" {
		t.Errorf("deletion notice %+v", n)
	}
	if res := r.pass(true); res.Deleted != 0 {
		t.Errorf("second pass enqueued %d deletions", res.Deleted)
	}
	if got := len(r.noticesOf(sink.KindDeleted, keep.ID)); got != 0 {
		t.Errorf("the kept task was announced deleted")
	}
}

// TestHiddenIsNotDeleted: a task the credentials can no longer see (the
// listing omits it, a direct read answers 403) is not announced deleted.
func TestHiddenIsNotDeleted(t *testing.T) {
	r := newRig(t, rigOptions{})
	tk := r.fake.AddTask(cvatfake.Task{Name: "hidden"})
	r.enqueue(update("update:task", tk))
	eventually.Within(t, rigWithin, "the export", func() bool { return len(r.noticesOf(sink.KindExported, tk.ID)) == 1 })
	r.fake.HideTask(tk.ID, true)
	if res := r.pass(true); res.Deleted != 1 {
		t.Fatalf("pass: %+v (the hidden task is a deletion candidate)", res)
	}
	eventually.Within(t, rigWithin, "the check", func() bool { return testutil.ToFloat64(r.p.m.syncs.WithLabelValues(string(OutcomeHidden))) == 1 })
	if got := len(r.noticesOf(sink.KindDeleted, tk.ID)); got != 0 {
		t.Errorf("a hidden task was announced deleted")
	}
}

// TestDeletionGuard: a pass that would announce most of the record as
// deleted (a wrong organization, a revoked role) announces none and says so
// in a gauge; the setting at 1 lifts the guard.
func TestDeletionGuard(t *testing.T) {
	for _, tc := range []struct {
		name     string
		fraction float64
		blocked  bool
	}{{"guarded", 0.5, true}, {"lifted", 1, false}} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, rigOptions{maxDelete: tc.fraction})
			var tasks []cvatfake.Task
			for range 16 {
				tk := r.fake.AddTask(cvatfake.Task{Name: "t"})
				tasks = append(tasks, tk)
				r.enqueue(update("update:task", tk))
			}
			eventually.Within(t, rigWithin, "the exports", func() bool { return len(r.notices()) == 16 })
			for _, tk := range tasks[:12] {
				if _, err := r.fake.DeleteTask(tk.ID); err != nil {
					t.Fatal(err)
				}
			}
			res := r.pass(true)
			if res.Blocked != tc.blocked || testutil.ToFloat64(r.p.m.blocked) != map[bool]float64{true: 1, false: 0}[tc.blocked] {
				t.Fatalf("pass %+v, blocked gauge %v", res, testutil.ToFloat64(r.p.m.blocked))
			}
			want := 12
			if tc.blocked {
				want = 0
			}
			if res.Deleted != want {
				t.Errorf("%d deletions enqueued, want %d", res.Deleted, want)
			}
			if !tc.blocked {
				eventually.Within(t, rigWithin, "the deletion notices", func() bool { return len(r.notices()) == 16+12 })
			}
		})
	}
}

// TestTransient404: one CVAT 404 on the task read (a backend replica behind)
// is read again: the change is still exported, nothing announced deleted.
func TestTransient404(t *testing.T) {
	r := newRig(t, rigOptions{})
	tk := r.fake.AddTask(cvatfake.Task{Name: "t"})
	r.fake.Inject(cvatfake.Fault{Method: http.MethodGet, Route: "/api/tasks/{id}", Status: http.StatusNotFound,
		Body: `{"detail": "No Task matches the given query."}`, Times: 1})
	r.enqueue(update("update:task", tk))
	eventually.Within(t, rigWithin, "the export", func() bool { return len(r.noticesOf(sink.KindExported, tk.ID)) == 1 })
	if got := len(r.noticesOf(sink.KindDeleted, tk.ID)); got != 0 {
		t.Error("a transient 404 was announced as a deletion")
	}
}

// TestArchiveNamedForItsState: the task changes while its export is being
// downloaded. The archive of the earlier request is not stored under the
// earlier state's name (it may hold either); the newer state is exported
// and announced.
func TestArchiveNamedForItsState(t *testing.T) {
	r := newRig(t, rigOptions{})
	tk := r.fake.AddTask(cvatfake.Task{Name: "t"})
	r.fake.Inject(cvatfake.Fault{Method: http.MethodGet, Route: "/api/tasks/{id}/dataset/download", Delay: 300 * time.Millisecond, Times: 1})
	r.enqueue(update("update:task", tk))
	eventually.Within(t, rigWithin, "the download to start", func() bool {
		return len(r.fake.CallsTo(http.MethodGet, "/api/requests/{rq_id}")) > 0
	})
	ev, err := r.fake.TouchTask(tk.ID)
	if err != nil {
		t.Fatal(err)
	}
	_ = ev
	newer, _ := r.fake.Task(tk.ID)
	eventually.Within(t, rigWithin, "the newer state's notice", func() bool {
		for _, n := range r.noticesOf(sink.KindExported, tk.ID) {
			if n.Task.UpdatedDate.Equal(newer.UpdatedDate) {
				return true
			}
		}
		return false
	})
	for _, n := range r.noticesOf(sink.KindExported, tk.ID) {
		want, _, _ := r.fake.ExpectedArchive(tk.ID, rigFormat)
		if n.Task.UpdatedDate.Equal(newer.UpdatedDate) {
			assertObject(t, r, n.Object.Name, want)
		}
	}
}

// TestProjectDeletionAnnouncesItsTasks: a project webhook hears
// delete:project but none of the cascade's delete:task; every exported task
// of the project is announced deleted, the other project's are not.
func TestProjectDeletionAnnouncesItsTasks(t *testing.T) {
	r := newRig(t, rigOptions{})
	p := r.fake.AddProject(cvatfake.Project{Name: "gone"})
	other := r.fake.AddProject(cvatfake.Project{Name: "kept"})
	a := r.fake.AddTask(cvatfake.Task{ProjectID: p.ID, Name: "a"})
	b := r.fake.AddTask(cvatfake.Task{ProjectID: p.ID, Name: "b"})
	c := r.fake.AddTask(cvatfake.Task{ProjectID: other.ID, Name: "c"})
	for _, tk := range []cvatfake.Task{a, b, c} {
		r.enqueue(update("update:task", tk))
	}
	eventually.Within(t, rigWithin, "the exports", func() bool { return len(r.notices()) == 3 })
	if _, err := r.fake.DeleteProject(p.ID); err != nil {
		t.Fatal(err)
	}
	r.enqueue(task.Event{Name: "delete:project", Resource: task.ResourceProject, Action: task.ActionDelete, ProjectID: p.ID})
	eventually.Within(t, rigWithin, "two deletions", func() bool {
		return len(r.noticesOf(sink.KindDeleted, a.ID)) == 1 && len(r.noticesOf(sink.KindDeleted, b.ID)) == 1
	})
	if len(r.noticesOf(sink.KindDeleted, c.ID)) != 0 {
		t.Error("a task of another project was announced deleted")
	}
}

// TestMovedTaskIsNotDeleted: CVAT 2.44+ sends delete:task to the old
// organization's webhooks when a task moves; the task still exists, so no
// deletion is announced, and its new state is exported.
func TestMovedTaskIsNotDeleted(t *testing.T) {
	r := newRig(t, rigOptions{})
	tk := r.fake.AddTask(cvatfake.Task{Name: "moved"})
	r.enqueue(update("update:task", tk))
	eventually.Within(t, rigWithin, "the export", func() bool { return len(r.noticesOf(sink.KindExported, tk.ID)) == 1 })
	if _, err := r.fake.TouchTask(tk.ID); err != nil { // the move saves the task
		t.Fatal(err)
	}
	r.enqueue(deletion(tk))
	eventually.Within(t, rigWithin, "the new state", func() bool { return len(r.noticesOf(sink.KindExported, tk.ID)) == 2 })
	if got := len(r.noticesOf(sink.KindDeleted, tk.ID)); got != 0 {
		t.Error("a moved task was announced deleted")
	}
}

// TestWebhookDeletion: delete:task for a task that is gone announces one
// task.deleted; again for the same task, nothing more.
func TestWebhookDeletion(t *testing.T) {
	r := newRig(t, rigOptions{})
	tk := r.fake.AddTask(cvatfake.Task{Name: "t"})
	r.enqueue(update("update:task", tk))
	eventually.Within(t, rigWithin, "the export", func() bool { return len(r.noticesOf(sink.KindExported, tk.ID)) == 1 })
	if _, err := r.fake.DeleteTask(tk.ID); err != nil {
		t.Fatal(err)
	}
	r.enqueue(deletion(tk))
	eventually.Within(t, rigWithin, "the deletion", func() bool { return len(r.noticesOf(sink.KindDeleted, tk.ID)) == 1 })
	r.enqueue(deletion(tk))
	eventually.Within(t, rigWithin, "the second event settled", func() bool {
		return testutil.ToFloat64(r.p.m.syncs.WithLabelValues(string(OutcomeDeleted))) >= 2 || testutil.ToFloat64(r.p.m.coalesced) >= 1
	})
	if got := len(r.noticesOf(sink.KindDeleted, tk.ID)); got != 1 {
		t.Errorf("%d deletion notices, want 1", got)
	}
}

// TestNeverExportedDeletion: a task deleted before it was ever exported
// announces nothing (consumers never saw it).
func TestNeverExportedDeletion(t *testing.T) {
	r := newRig(t, rigOptions{})
	tk := r.fake.AddTask(cvatfake.Task{Name: "t"})
	if _, err := r.fake.DeleteTask(tk.ID); err != nil {
		t.Fatal(err)
	}
	r.enqueue(deletion(tk))
	eventually.Within(t, rigWithin, "the check", func() bool { return testutil.ToFloat64(r.p.m.syncs.WithLabelValues(string(OutcomeGone))) == 1 })
	if len(r.notices()) != 0 {
		t.Error("a never-exported task's deletion was announced")
	}
}

// TestSinceFirstStart: the first start fixes the scope at CVAT's time then:
// tasks untouched since are not exported unasked; a task changed after is,
// by a pass, without a webhook; a restart keeps the scope.
func TestSinceFirstStart(t *testing.T) {
	r := newRig(t, rigOptions{since: SinceFirstStart})
	old := r.fake.AddTask(cvatfake.Task{Name: "history", UpdatedDate: time.Now().Add(-48 * time.Hour)})
	if res := r.pass(true); res.Behind != 0 || res.Enqueued != 0 {
		t.Fatalf("first pass exported history: %+v", res)
	}
	cur, err := r.records.Cursor(context.Background())
	if err != nil || cur.Since.IsZero() || cur.SinceSetting != SinceFirstStart {
		t.Fatalf("cursor %+v, %v", cur, err)
	}
	if _, err := r.fake.TouchTask(old.ID); err != nil {
		t.Fatal(err)
	}
	if res := r.pass(false); res.Enqueued != 1 {
		t.Fatalf("pass after the change: %+v", res)
	}
	eventually.Within(t, rigWithin, "the export", func() bool { return len(r.noticesOf(sink.KindExported, old.ID)) == 1 })
	again, err := r.records.Cursor(context.Background())
	if err != nil || !again.Since.Equal(cur.Since) {
		t.Errorf("scope moved: %v -> %v (%v)", cur.Since, again.Since, err)
	}
}

// TestCompletedPolicy: with the completed policy a state is exported when a
// job reached completed that was not completed at the last export (decided
// from CVAT's state, not from before_update, which newer CVATs no longer
// send), or when the task is completed; other saves export nothing.
func TestCompletedPolicy(t *testing.T) {
	r := newRig(t, rigOptions{policy: task.PolicyCompleted})
	tk := r.fake.AddTask(cvatfake.Task{Name: "t"})
	j1 := r.fake.AddJob(cvatfake.Job{TaskID: tk.ID})
	j2 := r.fake.AddJob(cvatfake.Job{TaskID: tk.ID})
	r.enqueue(update("update:task", tk))
	eventually.Within(t, rigWithin, "the skip", func() bool { return testutil.ToFloat64(r.p.m.syncs.WithLabelValues(string(OutcomeSkipped))) >= 1 })
	if r.exportCalls() != 0 {
		t.Fatal("exported without a completion")
	}
	if _, err := r.fake.CompleteJob(j1.ID); err != nil {
		t.Fatal(err)
	}
	ev := update("update:job", tk)
	ev.JobID = j1.ID
	r.enqueue(ev)
	eventually.Within(t, rigWithin, "the export on completion", func() bool { return len(r.noticesOf(sink.KindExported, tk.ID)) == 1 })
	// Another save in the completed job: no export.
	if _, err := r.fake.SaveAnnotations(j1.ID); err != nil {
		t.Fatal(err)
	}
	skipped := testutil.ToFloat64(r.p.m.syncs.WithLabelValues(string(OutcomeSkipped)))
	r.enqueue(ev)
	eventually.Within(t, rigWithin, "the skip", func() bool {
		return testutil.ToFloat64(r.p.m.syncs.WithLabelValues(string(OutcomeSkipped))) > skipped
	})
	if got := len(r.noticesOf(sink.KindExported, tk.ID)); got != 1 {
		t.Fatalf("%d exports after a save in a completed job, want 1", got)
	}
	// The second job completes: export again.
	if _, err := r.fake.CompleteJob(j2.ID); err != nil {
		t.Fatal(err)
	}
	ev.JobID = j2.ID
	r.enqueue(ev)
	eventually.Within(t, rigWithin, "the second completion", func() bool { return len(r.noticesOf(sink.KindExported, tk.ID)) == 2 })
}

// TestHeldUntilSynced: a held event stays unacked on the Pub/Sub server
// until its sync, so a replica that dies holding it loses nothing.
func TestHeldUntilSynced(t *testing.T) {
	r := newRig(t, rigOptions{debounce: 2 * time.Second})
	tk := r.fake.AddTask(cvatfake.Task{Name: "t"})
	r.enqueue(update("update:task", tk))
	inboxAcks := func() int {
		n := 0
		for _, m := range r.em.PubSub().Messages() {
			if m.Attributes["v"] == "1" {
				n += m.Acks
			}
		}
		return n
	}
	eventually.Within(t, rigWithin, "the event held", func() bool {
		n, _ := r.p.worker.pendingStats()
		return n == 1
	})
	deadline := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if inboxAcks() != 0 {
			t.Fatal("the held event was acked before its sync")
		}
		time.Sleep(20 * time.Millisecond) // sampling the server's ack count
	}
	eventually.Within(t, rigWithin, "the export", func() bool { return len(r.noticesOf(sink.KindExported, tk.ID)) == 1 })
	eventually.Within(t, rigWithin, "the ack after the export", func() bool { return inboxAcks() == 1 })
}

// TestHTMLDownloadNotAnnounced: a download that is not an archive (a
// proxy's sign-in page answered 200 text/html) is a failed export: nothing
// stored, nothing announced, until CVAT serves the real archive, which is
// then announced once.
func TestHTMLDownloadNotAnnounced(t *testing.T) {
	r := newRig(t, rigOptions{maxAttempts: 5})
	tk := r.fake.AddTask(cvatfake.Task{Name: "t"})
	r.fake.Inject(cvatfake.Fault{Method: http.MethodGet, Route: "/api/tasks/{id}/dataset/download", Status: http.StatusOK,
		ContentType: "text/html; charset=utf-8", Body: "<!DOCTYPE html><title>Sign in</title>", Times: 2})
	r.enqueue(update("update:task", tk))
	eventually.Within(t, rigWithin, "the export", func() bool { return len(r.noticesOf(sink.KindExported, tk.ID)) == 1 })
	if got := testutil.ToFloat64(r.p.m.retries); got != 2 {
		t.Errorf("%v failed attempts, want the 2 HTML pages", got)
	}
	n := r.noticesOf(sink.KindExported, tk.ID)[0]
	want, _, _ := r.fake.ExpectedArchive(tk.ID, rigFormat)
	assertObject(t, r, n.Object.Name, want)
}

// TestClockBehind: with CVAT's clock 10 minutes behind ours, an incremental
// pass still finds a change made without a webhook: its window comes from
// CVAT's clock (its Date header), not ours.
func TestClockBehind(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.fake.SetClockOffset(-10 * time.Minute)
	tk := r.fake.AddTask(cvatfake.Task{Name: "t"})
	r.pass(true)
	eventually.Within(t, rigWithin, "the first export", func() bool { return len(r.noticesOf(sink.KindExported, tk.ID)) == 1 })
	if _, err := r.fake.TouchTask(tk.ID); err != nil { // no webhook
		t.Fatal(err)
	}
	if res := r.pass(false); res.Enqueued != 1 || res.Kind != passIncremental {
		t.Fatalf("incremental pass: %+v", res)
	}
	eventually.Within(t, rigWithin, "the change exported", func() bool { return len(r.noticesOf(sink.KindExported, tk.ID)) == 2 })
}

// TestPoisonPage: one task-list page that always answers 500 does not stop
// the others: every task on the other pages converges, and no deletion is
// decided from the incomplete listing.
func TestPoisonPage(t *testing.T) {
	r := newRig(t, rigOptions{})
	var tasks []cvatfake.Task
	for range 6 { // three pages of two
		tasks = append(tasks, r.fake.AddTask(cvatfake.Task{Name: "t"}))
	}
	r.fake.Inject(cvatfake.Fault{Method: http.MethodGet, Route: "/api/tasks", Query: map[string][]string{"page": {"2"}}, Status: http.StatusInternalServerError})
	res := r.pass(true)
	if !res.Partial || res.Enqueued != 4 || res.Deleted != 0 {
		t.Fatalf("pass: %+v", res)
	}
	eventually.Within(t, rigWithin, "the other pages exported", func() bool { return len(r.notices()) == 4 })
	for _, tk := range []cvatfake.Task{tasks[0], tasks[1], tasks[4], tasks[5]} {
		if len(r.noticesOf(sink.KindExported, tk.ID)) != 1 {
			t.Errorf("task %d not exported", tk.ID)
		}
	}
	if got := testutil.ToFloat64(r.p.m.passes.WithLabelValues(passFull, "partial")); got != 1 {
		t.Errorf("partial passes %v", got)
	}
}

// TestCVATUpgradedWhileRunning: CVAT goes from 2.15 (legacy export API) to
// 2.40 (the legacy API answers 410) while the service runs: exports go on.
func TestCVATUpgradedWhileRunning(t *testing.T) {
	r := newRig(t, rigOptions{fake: cvatfake.Options{Version: "2.15.0"}})
	tk := r.fake.AddTask(cvatfake.Task{Name: "t"})
	r.enqueue(update("update:task", tk))
	eventually.Within(t, rigWithin, "the export on 2.15", func() bool { return len(r.noticesOf(sink.KindExported, tk.ID)) == 1 })
	if err := r.fake.SetVersion("2.40.0"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.fake.TouchTask(tk.ID); err != nil {
		t.Fatal(err)
	}
	r.enqueue(update("update:task", tk))
	eventually.Within(t, rigWithin, "the export on 2.40", func() bool { return len(r.noticesOf(sink.KindExported, tk.ID)) == 2 })
	if len(r.dead()) != 0 {
		t.Error("dead letters across the upgrade")
	}
}

// TestDeletedProjectPassesTheGuard: with only a project webhook, deleting
// the project delivers nothing (2.65+); the full pass finds every task of it
// gone, most of the record, but CVAT confirms the project itself gone, so
// the guard does not hold their deletion back. A lost listing (the same
// tasks unlisted, their project still there) stays blocked.
func TestDeletedProjectPassesTheGuard(t *testing.T) {
	r := newRig(t, rigOptions{})
	p := r.fake.AddProject(cvatfake.Project{Name: "the only project"})
	for range 12 {
		tk := r.fake.AddTask(cvatfake.Task{ProjectID: p.ID, Name: "t"})
		r.enqueue(update("update:task", tk))
	}
	eventually.Within(t, rigWithin, "the exports", func() bool { return len(r.notices()) == 12 })
	if _, err := r.fake.DeleteProject(p.ID); err != nil {
		t.Fatal(err)
	}
	res := r.pass(true)
	if res.Blocked || res.Deleted != 12 {
		t.Fatalf("pass after the project's deletion: %+v", res)
	}
	eventually.Within(t, rigWithin, "the deletion notices", func() bool { return len(r.notices()) == 24 })
}
