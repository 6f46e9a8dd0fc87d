package pipeline

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cvat-sync/cvat-sync/internal/task"
)

// msg records how a held message was settled.
type msg struct{ acked, nacked int }

func (m *msg) Ack()  { m.acked++ }
func (m *msg) Nack() { m.nacked++ }

var t0 = time.Date(2026, 5, 4, 9, 0, 0, 0, time.UTC)

func item(event string, taskID, job, project int64) task.Event {
	res, act := task.ResourceTask, task.ActionUpdate
	switch event {
	case "update:job":
		res = task.ResourceJob
	case "update:project":
		res = task.ResourceProject
	case "delete:task":
		act = task.ActionDelete
	case "delete:project":
		res, act = task.ResourceProject, task.ActionDelete
	}
	return task.Event{Name: event, Resource: res, Action: act, TaskID: taskID, JobID: job, ProjectID: project,
		Source: task.SourceWebhook, Sender: "user7", WebhookID: 2}
}

func keys(bs []*batch) []string {
	var out []string
	for _, b := range bs {
		out = append(out, b.key)
	}
	return out
}

func TestCoalesceOneSave(t *testing.T) {
	c := newCoalescer(30*time.Second, 10*time.Minute)
	ms := []*msg{{}, {}, {}}
	// One annotation save: update:job, update:task, update:project.
	c.add(item("update:project", 0, 0, 1), ms[0], t0)
	c.add(item("update:job", 9, 14, 1), ms[1], t0)
	c.add(item("update:task", 9, 0, 1), ms[2], t0.Add(time.Millisecond))

	if got := c.due(t0.Add(29*time.Second), 10); len(got) != 0 {
		t.Fatalf("due before the debounce: %v", keys(got))
	}
	due := c.due(t0.Add(31*time.Second), 10)
	if diff := cmp.Diff([]string{"project-1", "task-9"}, keys(due)); diff != "" {
		t.Fatalf("due (-want +got):\n%s", diff)
	}
	tb := due[1]
	if tb.events != 2 || tb.trig.Event != "update:task" || tb.trig.Coalesced != 2 || tb.trig.JobID != 0 {
		t.Errorf("task batch: events %d trigger %+v", tb.events, tb.trig)
	}
	if !c.tasksSeenSince(1, t0) {
		t.Error("project 1 not told its task's events cover it")
	}
	c.finish(tb, true, time.Time{}, time.Time{})
	c.finish(due[0], true, time.Time{}, time.Time{})
	for i, m := range ms {
		if m.acked != 1 || m.nacked != 0 {
			t.Errorf("message %d: acked %d nacked %d", i, m.acked, m.nacked)
		}
	}
	if n, _ := c.pending(); n != 0 {
		t.Errorf("%d batches left", n)
	}
}

func TestCoalesceBurstAndMaxWait(t *testing.T) {
	c := newCoalescer(30*time.Second, 10*time.Minute)
	var ms []*msg
	// A save every 5 s for 20 minutes: never quiet, so max-wait fires.
	now := t0
	var fired []time.Time
	for now.Before(t0.Add(20 * time.Minute)) {
		m := &msg{}
		ms = append(ms, m)
		c.add(item("update:job", 9, 14, 1), m, now)
		for _, b := range c.due(now, 10) {
			fired = append(fired, now)
			c.finish(b, true, time.Time{}, time.Time{})
		}
		now = now.Add(5 * time.Second)
	}
	if want := t0.Add(10 * time.Minute); len(fired) != 1 || !fired[0].Equal(want) {
		t.Errorf("exports at %v, want one at %v", fired, want)
	}
	// Then the burst goes quiet: one more export for the rest.
	for _, b := range c.due(now.Add(30*time.Second), 10) {
		fired = append(fired, now)
		c.finish(b, true, time.Time{}, time.Time{})
	}
	if len(fired) != 2 {
		t.Errorf("exports %d, want 2 (max-wait, then quiet)", len(fired))
	}
	for i, m := range ms {
		if m.acked != 1 {
			t.Fatalf("message %d acked %d times", i, m.acked)
		}
	}
}

func TestCoalesceEventsDuringExportAndRetry(t *testing.T) {
	c := newCoalescer(time.Second, time.Minute)
	a, b, d := &msg{}, &msg{}, &msg{}
	c.add(item("update:task", 9, 0, 1), a, t0)
	run := c.due(t0.Add(2*time.Second), 10)
	if len(run) != 1 {
		t.Fatal("not due")
	}
	// Events while it runs wait behind it, not in it.
	c.add(item("update:job", 9, 14, 1), b, t0.Add(3*time.Second))
	if got := c.due(t0.Add(10*time.Second), 10); len(got) != 0 {
		t.Fatal("a second export of a running task")
	}
	// It fails: it waits for its retry and absorbs the newer events.
	c.finish(run[0], false, t0.Add(20*time.Second), time.Time{})
	if got := c.due(t0.Add(15*time.Second), 10); len(got) != 0 {
		t.Fatal("retried before its backoff")
	}
	c.add(item("delete:task", 9, 0, 1), d, t0.Add(16*time.Second))
	run = c.due(t0.Add(21*time.Second), 10)
	if len(run) != 1 || run[0].attempts != 2 || !run[0].deletion || run[0].events != 3 {
		t.Fatalf("retry batch: %+v", run)
	}
	c.finish(run[0], true, time.Time{}, time.Time{})
	for i, m := range []*msg{a, b, d} {
		if m.acked != 1 || m.nacked != 0 {
			t.Errorf("message %d: acked %d nacked %d", i, m.acked, m.nacked)
		}
	}
}

func TestCoalesceShutdownNacks(t *testing.T) {
	c := newCoalescer(time.Second, time.Minute)
	running, waiting, idle := &msg{}, &msg{}, &msg{}
	c.add(item("update:task", 1, 0, 0), running, t0)
	run := c.due(t0.Add(2*time.Second), 10)
	c.add(item("update:task", 1, 0, 0), waiting, t0.Add(3*time.Second))
	c.add(item("update:task", 2, 0, 0), idle, t0.Add(3*time.Second))
	if n := c.nackIdle(); n != 2 {
		t.Errorf("nacked %d, want 2", n)
	}
	if waiting.nacked != 1 || idle.nacked != 1 || running.nacked != 0 {
		t.Errorf("nacks: waiting %d idle %d running %d", waiting.nacked, idle.nacked, running.nacked)
	}
	c.finish(run[0], true, time.Time{}, time.Time{})
	if running.acked != 1 {
		t.Error("running batch not acked when done")
	}
}

func TestDueRespectsLimit(t *testing.T) {
	c := newCoalescer(time.Second, time.Minute)
	for i := int64(1); i <= 5; i++ {
		c.add(item("update:task", i, 0, 0), &msg{}, t0.Add(time.Duration(i)*time.Millisecond))
	}
	got := c.due(t0.Add(time.Hour), 2)
	if diff := cmp.Diff([]string{"task-1", "task-2"}, keys(got)); diff != "" {
		t.Errorf("oldest first, limited (-want +got):\n%s", diff)
	}
	if rest := c.due(t0.Add(time.Hour), 10); len(rest) != 3 {
		t.Errorf("then %d more, want 3", len(rest))
	}
}

// TestCovered: with ordered delivery the events behind a held one arrive only
// after its run; those received before that run started are acked at once.
func TestCovered(t *testing.T) {
	c := newCoalescer(time.Second, time.Minute)
	first := &msg{}
	it := item("update:job", 9, 14, 1)
	it.ReceivedAt = t0
	c.add(it, first, t0)
	run := c.due(t0.Add(2*time.Second), 10)
	c.finish(run[0], true, time.Time{}, t0.Add(5*time.Second))

	tests := []struct {
		name     string
		event    string
		received time.Time
		held     bool
	}{
		{"received long before the run", "update:task", t0.Add(time.Second), false},
		{"received within the margin", "update:task", t0.Add(4900 * time.Millisecond), true},
		{"received after the run started", "update:job", t0.Add(6 * time.Second), true},
		{"a task's deletion is covered too: the sync read CVAT", "delete:task", t0.Add(time.Second), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &msg{}
			it := item(tt.event, 9, 0, 1)
			it.ReceivedAt = tt.received
			if held := c.add(it, m, t0.Add(7*time.Second)); held != tt.held {
				t.Errorf("held = %v, want %v", held, tt.held)
			}
			if !tt.held && m.acked != 1 {
				t.Error("covered item not acked")
			}
			delete(c.batches, "task-9")
		})
	}
	// A project's deletion is checked by a run of its own, whatever ran.
	pd := item("delete:project", 0, 0, 1)
	pd.ReceivedAt = t0
	c.covered["project-1"] = t0.Add(5 * time.Second)
	if !c.add(pd, &msg{}, t0.Add(7*time.Second)) {
		t.Error("a project deletion was taken as covered")
	}
	c.prune(t0.Add(time.Hour))
	if len(c.covered) != 0 {
		t.Error("prune kept old coverage")
	}
}

func TestPostponeKeepsAttempts(t *testing.T) {
	c := newCoalescer(time.Second, time.Minute)
	c.add(item("update:task", 1, 0, 0), &msg{}, t0)
	b := c.due(t0.Add(2*time.Second), 1)[0]
	c.postpone(b, t0.Add(10*time.Second))
	if got := c.due(t0.Add(5*time.Second), 1); len(got) != 0 {
		t.Fatal("due before the postponement ends")
	}
	if got := c.due(t0.Add(11*time.Second), 1); len(got) != 1 || got[0].attempts != 1 {
		t.Fatalf("after postponement: %v", got)
	}
}
