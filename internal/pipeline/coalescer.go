package pipeline

import (
	"sort"
	"time"

	"github.com/cvat-sync/cvat-sync/internal/task"
)

// Ackable is an inbox message the coalescer holds until its work is done.
type Ackable interface {
	Ack()
	Nack()
}

// batch is the pending work of one task (key "task-<id>") or of one project
// whose event named no task (key "project-<id>").
type batch struct {
	key       string
	taskID    int64
	projectID int64
	first     time.Time // when the first event of the batch arrived
	last      time.Time // when the latest arrived
	msgs      []Ackable
	events    int
	trig      task.Trigger
	latest    task.Event // the latest event of the batch (the most specific cause)
	deletion  bool       // a delete event came: the sync checks whether the task (project) is gone
	running   bool
	attempts  int       // attempts spent (failures that were not outages)
	heldSince time.Time // first postponement for an outage of the current run; zero when none
	notBefore time.Time // retry backoff
	next      *batch    // events that arrived while running
}

// coveredMargin is how much earlier than a completed run's start an item
// must have been received to count as covered by it: slack for the clock
// skew between the replica that received it and the one exporting (NTP keeps
// GKE nodes within milliseconds), and for CVATs before 2.11, which sent
// webhooks just before committing. An item inside the margin is not lost: it
// gets a run of its own, which finds the state exported.
const coveredMargin = 200 * time.Millisecond

// coalescer keeps one pending batch per key and says which are due. It holds
// no lock and reads no clock: the worker serialises calls and passes the time.
//
// The inbox delivers a key's messages in order and the next one only once
// the previous is acked (Pub/Sub ordered delivery). So a batch usually holds
// one message while its task is busy, and the events behind it are settled
// by covered: when a run of the key that started after an item was received
// has completed, that run saw the item's change, and the item is acked at
// once.
type coalescer struct {
	debounce time.Duration
	maxWait  time.Duration
	batches  map[string]*batch
	// covered holds, per key, when the last successful run started (for a
	// task: when it read the task's state from CVAT).
	covered map[string]time.Time
	// taskSeen holds, per project, when an event of one of its tasks came.
	taskSeen map[int64]time.Time
}

func newCoalescer(debounce, maxWait time.Duration) *coalescer {
	return &coalescer{debounce: debounce, maxWait: maxWait, batches: map[string]*batch{},
		covered: map[string]time.Time{}, taskSeen: map[int64]time.Time{}}
}

// add folds an item (and its message) into the batch of its key. It returns
// false, having acked m, when a completed run already covers the item.
func (c *coalescer) add(it task.Event, m Ackable, now time.Time) bool {
	key := it.Key()
	if it.TaskID != 0 && it.ProjectID != 0 {
		c.taskSeen[it.ProjectID] = now
	}
	// A task's sync reads CVAT's current state, so one that started after
	// an event was received saw its change, deletions included. A project's
	// deletion is checked by a run of its own.
	isProjectDelete := it.IsDeletion() && it.TaskID == 0
	if at, ok := c.covered[key]; ok && !isProjectDelete && !it.ReceivedAt.IsZero() && it.ReceivedAt.Add(coveredMargin).Before(at) {
		if m != nil {
			m.Ack()
		}
		return false
	}
	b := c.batches[key]
	if b == nil {
		b = &batch{key: key, taskID: it.TaskID, projectID: it.ProjectID, first: now}
		c.batches[key] = b
	}
	if b.running {
		if b.next == nil {
			b.next = &batch{key: key, taskID: it.TaskID, projectID: it.ProjectID, first: now}
		}
		b = b.next
	}
	b.fold(it, m, now)
	return true
}

// tasksSeenSince reports whether an event of a task of project came at or
// after t: a project batch then needs no scan, its tasks' batches cover it.
func (c *coalescer) tasksSeenSince(project int64, t time.Time) bool {
	seen, ok := c.taskSeen[project]
	return ok && !seen.Before(t)
}

func (b *batch) fold(it task.Event, m Ackable, now time.Time) {
	if m != nil {
		b.msgs = append(b.msgs, m)
	}
	b.events++
	b.last = now
	if b.projectID == 0 {
		b.projectID = it.ProjectID
	}
	if it.IsDeletion() {
		b.deletion = true
	}
	// The notice names the latest task-level cause; a project event only
	// when nothing more specific came.
	if b.trig.Event == "" || it.Resource != task.ResourceProject {
		b.trig = task.TriggerOf(it)
		b.latest = it
	}
	b.trig.Coalesced = b.events
}

// due returns up to limit batches whose quiet or max-wait window has
// passed, oldest first, and marks them running.
func (c *coalescer) due(now time.Time, limit int) []*batch {
	var ready []*batch
	for _, b := range c.batches {
		if b.running || now.Before(b.notBefore) {
			continue
		}
		if now.Sub(b.last) >= c.debounce || now.Sub(b.first) >= c.maxWait {
			ready = append(ready, b)
		}
	}
	sort.Slice(ready, func(i, j int) bool {
		if !ready[i].first.Equal(ready[j].first) {
			return ready[i].first.Before(ready[j].first)
		}
		return ready[i].key < ready[j].key
	})
	if len(ready) > limit {
		ready = ready[:max(limit, 0)]
	}
	for _, b := range ready {
		b.running = true
		b.attempts++
	}
	return ready
}

// The transitions of a batch after a run. Each is called with the batch
// running; the worker serialises them.

// succeeded ends a run that started at started: b's messages are acked,
// later items received before started are covered, and the events that
// arrived meanwhile become the pending batch.
func (c *coalescer) succeeded(b *batch, started time.Time) { c.finish(b, true, time.Time{}, started) }

// retry puts b back to run again at t, the attempt spent.
func (c *coalescer) retry(b *batch, t time.Time) {
	b.heldSince = time.Time{}
	c.finish(b, false, t, time.Time{})
}

// postpone puts b back to run again at t without spending an attempt: its
// task is still changing, or a dependency did not answer.
func (c *coalescer) postpone(b *batch, t time.Time) {
	b.attempts--
	c.finish(b, false, t, time.Time{})
}

// giveUp drops b and acks its messages: the worker stops trying, and
// convergence takes the state over (it is recorded as failing, or found
// behind by the next pass). The events that arrived meanwhile stay pending.
func (c *coalescer) giveUp(b *batch) { c.finish(b, true, time.Time{}, time.Time{}) }

// finish ends a run of b: on success its messages are acked and the events
// that arrived meanwhile become the pending batch; otherwise b waits until
// retryAt and absorbs them.
func (c *coalescer) finish(b *batch, ok bool, retryAt, started time.Time) {
	b.running = false
	if ok {
		if !started.IsZero() && started.After(c.covered[b.key]) {
			c.covered[b.key] = started
		}
		for _, m := range b.msgs {
			m.Ack()
		}
		if b.next != nil {
			c.batches[b.key] = b.next
		} else {
			delete(c.batches, b.key)
		}
		return
	}
	b.notBefore = retryAt
	if n := b.next; n != nil {
		b.msgs = append(b.msgs, n.msgs...)
		b.events += n.events
		b.last = n.last
		b.deletion = b.deletion || n.deletion
		b.trig, b.latest = n.trig, n.latest
		b.trig.Coalesced = b.events
		b.next = nil
	}
}

// prune forgets coverage and task sightings older than horizon.
func (c *coalescer) prune(horizon time.Time) {
	for k, t := range c.covered {
		if t.Before(horizon) {
			delete(c.covered, k)
		}
	}
	for k, t := range c.taskSeen {
		if t.Before(horizon) {
			delete(c.taskSeen, k)
		}
	}
}

// nackIdle nacks and forgets every batch that is not running (shutdown), and
// the events waiting behind running ones.
func (c *coalescer) nackIdle() int {
	n := 0
	for key, b := range c.batches {
		if b.next != nil {
			for _, m := range b.next.msgs {
				m.Nack()
				n++
			}
			b.next = nil
		}
		if b.running {
			continue
		}
		for _, m := range b.msgs {
			m.Nack()
			n++
		}
		delete(c.batches, key)
	}
	return n
}

// pending returns the number of batches and the time of the oldest event.
func (c *coalescer) pending() (int, time.Time) {
	var oldest time.Time
	for _, b := range c.batches {
		if oldest.IsZero() || b.first.Before(oldest) {
			oldest = b.first
		}
	}
	return len(c.batches), oldest
}
