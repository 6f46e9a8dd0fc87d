package reliability

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cvat-sync/cvat-sync/internal/cvatfake"
	"github.com/cvat-sync/cvat-sync/internal/eventually"
)

// TestCVATOutageThreeMinutes: CVAT stops answering (every connection dropped)
// for three minutes while saves are pending, then comes back. Every pending
// state is exported exactly once, no attempt is spent on the outage and
// nothing is dead-lettered. Convergence is off: the worker holds the work
// itself. (Before convergence, the first dead letter came 54 s into a
// one-minute outage.)
func TestCVATOutageThreeMinutes(t *testing.T) {
	t.Parallel()
	outage := 3 * time.Minute
	e := newEmulators(t)
	cv := cvatfake.New(t, cvatfake.Options{Token: pipeToken, ExportPolls: 1})
	env := pipelineEnv(e, cv, t.TempDir())
	r := startReceiver(t, env)
	f := newFleet(cv, 2, 10)
	evs := f.saves(t, cv, 0, 3)
	cv.Inject(cvatfake.Fault{Drop: true})
	if failed := deliverAll(cv, r.webhookURL(), evs, 4, nil); len(failed) > 0 {
		t.Fatalf("%d deliveries got no 2xx", len(failed))
	}
	eventually.Within(t, time.Minute, "the outage to be met", func() bool {
		return r.metric(t, "cvat_sync_work_postponed_total", `reason="unavailable"`) >= 1
	})
	time.Sleep(outage) // the outage itself: the time is what is tested
	if n := r.metric(t, "cvat_sync_export_retries_total"); n != 0 {
		t.Errorf("the outage spent %v attempts", n)
	}
	cv.ClearFaults()
	checkEveryTaskOnce(t, e, cv, r, f, 3*time.Minute, false)
	if n := len(e.Messages(deadLetterTopic)); n != 0 {
		t.Errorf("%d dead letters after an outage", n)
	}
	if n := r.metric(t, "cvat_sync_dead_lettered_total"); n != 0 {
		t.Errorf("cvat_sync_dead_lettered_total = %v", n)
	}
}

// TestEmbeddedKillLosesNothing: on the embedded default (its inbox lives in
// memory), updates and a deletion answered 2xx just before a SIGKILL are
// all announced after the restart: convergence finds them from CVAT's state
// and the bucket's record. Under the archive prefix the bucket holds only
// archives.
func TestEmbeddedKillLosesNothing(t *testing.T) {
	t.Parallel()
	cv := cvatfake.New(t, cvatfake.Options{Token: pipeToken, ExportPolls: 1})
	data := t.TempDir()
	env := map[string]string{
		"CVAT_SYNC_WEBHOOK_SECRET":     pipeSecret,
		"CVAT_SYNC_CVAT_URL":           cv.URL(),
		"CVAT_SYNC_CVAT_TOKEN":         pipeToken,
		"CVAT_SYNC_DEBOUNCE":           "200ms",
		"CVAT_SYNC_MAX_WAIT":           "5s",
		"CVAT_SYNC_RECONCILE_INTERVAL": "0",
		"CVAT_SYNC_SHUTDOWN_GRACE":     "5s",
		"CVAT_SYNC_DATA_DIR":           data,
	}
	p := cv.AddProject(cvatfake.Project{Name: "p"})
	var tasks []cvatfake.Task
	var jobs []cvatfake.Job
	for i := range 3 {
		tk := cv.AddTask(cvatfake.Task{ProjectID: p.ID, Name: "t" + strconv.Itoa(i)})
		tasks = append(tasks, tk)
		jobs = append(jobs, cv.AddJob(cvatfake.Job{TaskID: tk.ID}))
	}
	first := startReceiver(t, env)
	// The doomed task is exported first, so its deletion has something to
	// announce.
	doomed := tasks[2]
	evs, err := cv.SaveAnnotations(jobs[2].ID)
	if err != nil {
		t.Fatal(err)
	}
	if failed := deliverAll(cv, first.webhookURL(), evs, 1, nil); len(failed) > 0 {
		t.Fatal("delivery failed")
	}
	eventually.Within(t, time.Minute, "the doomed task's export", func() bool { return recordOf(t, data, doomed.ID).current(cv, doomed.ID) })
	first.kill()

	// Saves and a deletion, answered 2xx, then a SIGKILL before they can be
	// exported (a long debounce holds them).
	env["CVAT_SYNC_DEBOUNCE"] = "1m"
	env["CVAT_SYNC_MAX_WAIT"] = "2m"
	second := startReceiver(t, env)
	var pending []cvatfake.Event
	for _, j := range jobs[:2] {
		evs, err := cv.SaveAnnotations(j.ID)
		if err != nil {
			t.Fatal(err)
		}
		pending = append(pending, evs...)
	}
	del, err := cv.DeleteTask(doomed.ID)
	if err != nil {
		t.Fatal(err)
	}
	pending = append(pending, del)
	if failed := deliverAll(cv, second.webhookURL(), pending, 2, nil); len(failed) > 0 {
		t.Fatalf("%d deliveries got no 2xx", len(failed))
	}
	_ = second.cmd.Process.Signal(syscall.SIGKILL)
	<-second.done
	for _, tk := range tasks[:2] {
		if recordOf(t, data, tk.ID).current(cv, tk.ID) {
			t.Fatalf("task %d was exported before the kill: the test proves nothing", tk.ID)
		}
	}

	env["CVAT_SYNC_DEBOUNCE"] = "200ms"
	env["CVAT_SYNC_MAX_WAIT"] = "5s"
	env["CVAT_SYNC_RECONCILE_INTERVAL"] = "1s"
	third := startReceiver(t, env)
	eventually.Within(t, 2*time.Minute, "every update and the deletion announced", func() bool {
		return recordOf(t, data, tasks[0].ID).current(cv, tasks[0].ID) && recordOf(t, data, tasks[1].ID).current(cv, tasks[1].ID) &&
			recordOf(t, data, doomed.ID).Deleted != nil
	})
	_ = third

	// Under the archive prefix: archives only.
	root := filepath.Join(data, "gcs", "cvat-sync", "tasks")
	if err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && !strings.HasSuffix(path, ".zip") {
			t.Errorf("not an archive under the prefix: %s", strings.TrimPrefix(path, root))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// record is the part of a bucket record the tests read.
type record struct {
	Task struct {
		UpdatedDate time.Time `json:"updated_date"`
	} `json:"task"`
	Formats map[string]struct {
		UpdatedDate time.Time `json:"updated_date"`
	} `json:"formats"`
	Deleted *struct {
		ExportID string `json:"export_id"`
	} `json:"deleted"`
}

// current reports whether the record announces CVAT's state of task id.
func (r record) current(cv *cvatfake.Server, id int64) bool {
	tk, ok := cv.Task(id)
	a, has := r.Formats["CVAT for images 1.1"]
	return ok && has && a.UpdatedDate.Equal(tk.UpdatedDate)
}

// recordOf reads task id's record from the embedded default's bucket on
// disk (zero when there is none yet).
func recordOf(t *testing.T, data string, id int64) record {
	t.Helper()
	var r record
	b, err := os.ReadFile(filepath.Join(data, "gcs", "cvat-sync", "_cvat-sync", "tasks", strconv.FormatInt(id, 10)+".json"))
	if err != nil {
		return r
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("record of task %d: %v", id, err)
	}
	return r
}
