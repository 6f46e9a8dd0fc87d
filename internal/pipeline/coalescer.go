package pipeline

import (
	"sort"
	"time"

	"github.com/cvat-sync/cvat-sync/internal/event"
	"github.com/cvat-sync/cvat-sync/internal/inbox"
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
	trig      Trigger
	deleted   *inbox.Item // a delete:task seen
	// sawTasks is set on a project batch when events of its tasks arrived
	// meanwhile: their own batches cover the change.
	sawTasks bool

	running   bool
	attempts  int
	notBefore time.Time // retry backoff
	next      *batch    // events that arrived while running
}

// coalescer keeps one pending batch per key and says which are due. It holds
// no lock and reads no clock: the worker serialises calls and passes the time.
type coalescer struct {
	debounce time.Duration
	maxWait  time.Duration
	batches  map[string]*batch
}

func newCoalescer(debounce, maxWait time.Duration) *coalescer {
	return &coalescer{debounce: debounce, maxWait: maxWait, batches: map[string]*batch{}}
}

// add folds an item (and its message) into the batch of its key.
func (c *coalescer) add(it inbox.Item, m Ackable, now time.Time) {
	key := it.OrderingKey()
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
	// A task's events tell a pending batch of its project that the change
	// is covered.
	if it.TaskID != 0 && it.ProjectID != 0 {
		if pb := c.batches["project-"+itoa(it.ProjectID)]; pb != nil {
			pb.sawTasks = true
			if pb.next != nil {
				pb.next.sawTasks = true
			}
		}
	}
}

func (b *batch) fold(it inbox.Item, m Ackable, now time.Time) {
	if m != nil {
		b.msgs = append(b.msgs, m)
	}
	b.events++
	b.last = now
	if b.projectID == 0 {
		b.projectID = it.ProjectID
	}
	if it.Resource == event.ResourceTask && it.Action == "delete" {
		d := it
		b.deleted = &d
	}
	// The notice names the latest task-level cause; a project event only
	// when nothing more specific came.
	if b.trig.Event == "" || it.Resource != event.ResourceProject {
		b.trig = Trigger{Event: it.Event, Sender: it.Sender}
		b.trig.WebhookID = nullID(it.WebhookID)
		b.trig.JobID = nullID(it.JobID)
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

// finish ends a run of b: on success its messages are acked and the events
// that arrived meanwhile become the pending batch; on failure b waits until
// retryAt and absorbs them.
func (c *coalescer) finish(b *batch, ok bool, retryAt time.Time) {
	b.running = false
	if ok {
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
		if n.deleted != nil {
			b.deleted = n.deleted
		}
		b.trig = n.trig
		b.trig.Coalesced = b.events
		b.sawTasks = b.sawTasks || n.sawTasks
		b.next = nil
	}
}

// drop removes b (given up, or handed to the dead-letter topic) and acks its
// messages; the events that arrived meanwhile stay pending.
func (c *coalescer) drop(b *batch) {
	c.finish(b, true, time.Time{})
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
