package reliability

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"

	"github.com/cvat-sync/cvat-sync/internal/cloud/cloudtest"
	"github.com/cvat-sync/cvat-sync/internal/cvatfake"
	"github.com/cvat-sync/cvat-sync/internal/eventually"
)

// fleet is many tasks with one job each.
type fleet struct {
	tasks []cvatfake.Task
	jobs  []cvatfake.Job
}

func newFleet(cv *cvatfake.Server, projects, tasks int) fleet {
	var f fleet
	var ps []cvatfake.Project
	for i := range projects {
		ps = append(ps, cv.AddProject(cvatfake.Project{Name: "p" + strconv.Itoa(i)}))
	}
	for i := range tasks {
		tk := cv.AddTask(cvatfake.Task{Name: "t" + strconv.Itoa(i), ProjectID: ps[i%len(ps)].ID})
		f.tasks = append(f.tasks, tk)
		f.jobs = append(f.jobs, cv.AddJob(cvatfake.Job{TaskID: tk.ID}))
	}
	return f
}

// saves makes n annotation saves (one on every job, the rest on random jobs
// with a fixed seed) and returns their webhook bodies, in CVAT's order per
// save. A task never saved has nothing to export.
func (f fleet) saves(t testing.TB, cv *cvatfake.Server, n int, seed uint64) []cvatfake.Event {
	t.Helper()
	rnd := rand.New(rand.NewPCG(seed, 1))
	var evs []cvatfake.Event
	for i := range max(n, len(f.jobs)) {
		j := f.jobs[rnd.IntN(len(f.jobs))]
		if i < len(f.jobs) {
			j = f.jobs[i]
		}
		s, err := cv.SaveAnnotations(j.ID)
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, s...)
	}
	return evs
}

// deliverAll delivers evs with workers at once and returns the events whose
// delivery got no 2xx.
func deliverAll(cv *cvatfake.Server, url string, evs []cvatfake.Event, workers int, after func(done int)) []cvatfake.Event {
	var mu sync.Mutex
	var failed []cvatfake.Event
	done := 0
	work := make(chan cvatfake.Event)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ev := range work {
				res, err := cv.Deliver(context.Background(), url, pipeSecret, ev.Body)
				mu.Lock()
				if err != nil || res.StatusCode/100 != 2 {
					failed = append(failed, ev)
				}
				done++
				n := done
				mu.Unlock()
				if after != nil {
					after(n)
				}
			}
		}()
	}
	for _, ev := range evs {
		work <- ev
	}
	close(work)
	wg.Wait()
	return failed
}

type noticeData struct {
	ExportID string `json:"export_id"`
	Task     struct {
		ID          int64  `json:"id"`
		UpdatedDate string `json:"updated_date"`
	} `json:"task"`
}

// checkEveryTaskOnce waits until every task of f has a notice for its
// current updated_date and nothing is pending, then checks that no task
// state was announced twice and that each current state has exactly one
// archive. After a crash (crashed), a state may be announced again, but
// only as the same export (one export_id): a kill between the publish and
// the published marker re-announces it, which consumers de-duplicate.
func checkEveryTaskOnce(t *testing.T, em *cloudtest.Emulators, cv *cvatfake.Server, r *receiver, f fleet, within time.Duration, crashed bool) {
	t.Helper()
	current := func() map[int64]string {
		m := map[int64]string{}
		for _, tk := range f.tasks {
			cur, _ := cv.Task(tk.ID)
			m[tk.ID] = cur.UpdatedDate.UTC().Format("2006-01-02T15:04:05.000000Z")
		}
		return m
	}()
	exportIDs := map[string]map[string]bool{}
	announced := func() map[string]int {
		m := map[string]int{}
		for _, msg := range em.Messages(outboxTopic) {
			var d noticeData
			if err := json.Unmarshal(msg.Data, &d); err != nil {
				t.Fatalf("notice %s: %v", msg.ID, err)
			}
			ts, err := time.Parse(time.RFC3339Nano, d.Task.UpdatedDate)
			if err != nil {
				t.Fatalf("notice %s: updated_date %q: %v", msg.ID, d.Task.UpdatedDate, err)
			}
			key := fmt.Sprintf("%d@%s", d.Task.ID, ts.UTC().Format("2006-01-02T15:04:05.000000Z"))
			m[key]++
			if exportIDs[key] == nil {
				exportIDs[key] = map[string]bool{}
			}
			exportIDs[key][d.ExportID] = true
		}
		return m
	}
	missing := func() []string {
		a := announced()
		var out []string
		for id, ud := range current {
			if a[fmt.Sprintf("%d@%s", id, ud)] == 0 {
				out = append(out, fmt.Sprintf("%d@%s", id, ud))
			}
		}
		sort.Strings(out)
		return out
	}
	// Each check parses every notice: every 100 ms, not eventually's 10 ms,
	// to leave the receiver its CPU.
	var m []string
	if !eventually.PollEvery(within, 100*time.Millisecond, func() bool {
		m = missing()
		return len(m) == 0 && r.metric(t, "cvat_sync_pending_tasks") == 0
	}) {
		for _, k := range m[:min(len(m), 2)] {
			id, _, _ := strings.Cut(k, "@")
			for _, msg := range em.Messages(inboxTopic) {
				if msg.Attributes["task_id"] == id {
					t.Logf("task %s inbox message %s: %s deliveries=%d acks=%d", id, msg.ID, msg.Attributes["event"], msg.Deliveries, msg.Acks)
				}
			}
			t.Logf("pending tasks: %v", r.metric(t, "cvat_sync_pending_tasks"))
			for key, n := range announced() {
				if strings.HasPrefix(key, id+"@") {
					t.Logf("task %s: announced state %s (%d notices)", id, key, n)
				}
			}
			for _, l := range r.out.Records() {
				if v, ok := l["task_id"].(float64); ok && strconv.FormatFloat(v, 'f', -1, 64) == id && l["message"] != "webhook stored" {
					t.Logf("task %s log: %v", id, l)
				}
			}
		}
		t.Fatalf("after %v, %d of %d tasks have no notice of their current state, e.g. %v", within, len(m), len(f.tasks), m[:min(len(m), 5)])
	}
	for k, n := range announced() {
		switch {
		case len(exportIDs[k]) != 1:
			t.Errorf("task state %s announced as %d different exports", k, len(exportIDs[k]))
		case n != 1 && !crashed:
			t.Errorf("task state %s announced %d times", k, n)
		}
	}
	for id := range current {
		cur, _ := cv.Task(id)
		want := cur.UpdatedDate.UTC().Format("20060102T150405.000000Z")
		n := 0
		for _, o := range archives(em, id) {
			if containsState(o, want) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("task %d: %d archives of its current state, want 1", id, n)
		}
	}
}

func containsState(name, state string) bool { return strings.Contains(name, "/"+state+"/") }

// TestLoadLosesNothing delivers thousands of signed events across hundreds
// of tasks while the worker exports, then accounts for every task.
func TestLoadLosesNothing(t *testing.T) {
	t.Parallel()
	tasks, saves := 150, 800 // 2400 deliveries
	if longTests() {
		tasks, saves = 1000, 10000
	}
	s := newStack(t)
	f := newFleet(s.cv, 10, tasks)
	evs := f.saves(t, s.cv, saves, 42)
	if failed := deliverAll(s.cv, s.r.webhookURL(), evs, 16, nil); len(failed) > 0 {
		t.Fatalf("%d of %d deliveries got no 2xx", len(failed), len(evs))
	}
	stored := s.r.metric(t, "cvat_sync_webhook_deliveries_total", `outcome="stored"`)
	// Webhook items only: the worker also enqueues the tasks a project scan
	// finds (event "project").
	n := 0
	for _, m := range s.em.Messages(inboxTopic) {
		if strings.Contains(m.Attributes["event"], ":") {
			n++
		}
	}
	if float64(n) != stored || n < len(evs)*2/3 {
		t.Errorf("inbox holds %d messages, %v deliveries were answered stored, %d were task events", n, stored, len(evs)*2/3)
	}
	checkEveryTaskOnce(t, s.em, s.cv, s.r, f, time.Minute, false)
}

// TestCrashLosesNothing SIGKILLs the real binary in the middle of a burst,
// starts it again on the same emulators and data dir, has CVAT redeliver
// what got no 2xx, and checks that every task's current state is exported
// exactly once.
func TestCrashLosesNothing(t *testing.T) {
	t.Parallel()
	tasks, saves := 50, 300
	if longTests() {
		tasks, saves = 300, 3000
	}
	e := newEmulators(t)
	// A short ack deadline, so the killed process's leases run out soon.
	ctx := context.Background()
	if _, err := e.PubSub().GServer.CreateTopic(ctx, &pubsubpb.Topic{Name: "projects/cvat-sync-local/topics/" + inboxTopic}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.PubSub().GServer.CreateSubscription(ctx, &pubsubpb.Subscription{
		Name: "projects/cvat-sync-local/subscriptions/" + inboxTopic, Topic: "projects/cvat-sync-local/topics/" + inboxTopic,
		AckDeadlineSeconds: 10, EnableMessageOrdering: true,
	}); err != nil {
		t.Fatal(err)
	}
	cv := cvatfake.New(t, cvatfake.Options{Token: pipeToken, ExportPolls: 1})
	data := t.TempDir()
	env := pipelineEnv(e, cv, data)
	env["CVAT_SYNC_DEBOUNCE"] = "300ms"
	first := startReceiver(t, env)
	f := newFleet(cv, 5, tasks)
	evs := f.saves(t, cv, saves, 7)
	// Tasks whose every event is stored (2xx) just before the kill and never
	// delivered again: only the inbox still holds their work, so they are
	// lost if anything acked it before its export.
	quiet := newFleet(cv, 1, 10)
	quietEvs := quiet.saves(t, cv, 0, 11)

	var once sync.Once
	var quietFailed []cvatfake.Event
	failed := deliverAll(cv, first.webhookURL(), evs, 8, func(done int) {
		if done == len(evs)/2 {
			once.Do(func() {
				quietFailed = deliverAll(cv, first.webhookURL(), quietEvs, 4, nil)
				_ = first.cmd.Process.Signal(syscall.SIGKILL)
			})
		}
	})
	<-first.done
	if len(failed) == 0 {
		t.Fatalf("the kill came too late: every delivery was answered")
	}
	if len(quietFailed) > 0 {
		t.Fatalf("%d deliveries of the quiet tasks got no 2xx before the kill", len(quietFailed))
	}
	t.Logf("killed after %d deliveries; %d got no 2xx", len(evs)-len(failed), len(failed))

	second := startReceiver(t, env)
	// CVAT (after 2.64) retries deliveries that got no answer; an operator
	// redelivers them on older ones.
	if again := deliverAll(cv, second.webhookURL(), failed, 8, nil); len(again) > 0 {
		t.Fatalf("%d redeliveries got no 2xx", len(again))
	}
	checkEveryTaskOnce(t, e, cv, second, f, 3*time.Minute, true)
	checkEveryTaskOnce(t, e, cv, second, quiet, time.Minute, true)
}
