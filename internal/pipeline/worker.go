package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"cloud.google.com/go/pubsub/v2"

	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
	"github.com/cvat-sync/cvat-sync/internal/event"
	"github.com/cvat-sync/cvat-sync/internal/inbox"
	"github.com/cvat-sync/cvat-sync/internal/sink"
)

// Enqueuer stores a work item in the inbox.
type Enqueuer interface {
	Enqueue(ctx context.Context, it inbox.Item) error
}

// DeadLetters receives work given up on, with the reason.
type DeadLetters interface {
	Send(ctx context.Context, it inbox.Item, reason string, attempts int) error
	SendRaw(ctx context.Context, data []byte, attrs map[string]string, reason string) error
}

// Trigger policies.
const (
	TriggerUpdate    = "update"    // any change to a task, its jobs or annotations
	TriggerCompleted = "completed" // a job or the task reaches "completed"
)

// WorkerConfig configures a Worker.
type WorkerConfig struct {
	Subscriber  *pubsub.Subscriber
	Exporter    *Exporter
	Queue       Enqueuer // for a project's tasks found behind a project-level event
	DeadLetters DeadLetters
	Trigger     string
	Debounce    time.Duration
	MaxWait     time.Duration
	MaxAttempts int           // export attempts before the work is dead-lettered
	Concurrency int           // exports at once; default 4
	Tick        time.Duration // how often due batches are looked for; default debounce/4 within [10ms, 1s]
	RetryMin    time.Duration // first retry backoff; default 2s
	RetryMax    time.Duration // backoff cap; default 5m
	Now         func() time.Time
	Log         *slog.Logger
}

// Worker receives the inbox and exports coalesced batches.
type Worker struct {
	cfg      WorkerConfig
	m        *Metrics
	mu       sync.Mutex
	c        *coalescer
	running  sync.WaitGroup
	slots    chan struct{}
	draining atomic.Bool
}

// NewWorker builds a Worker and registers its metrics through newMetrics,
// which receives the pending-task and oldest-age readers.
func NewWorker(cfg WorkerConfig, newMetrics func(pending, oldest func() float64) (*Metrics, error)) (*Worker, error) {
	if cfg.Subscriber == nil || cfg.Exporter == nil || cfg.Queue == nil || cfg.DeadLetters == nil || cfg.Log == nil {
		return nil, errors.New("pipeline: worker needs Subscriber, Exporter, Queue, DeadLetters and Log")
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 4
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 5
	}
	if cfg.Tick <= 0 {
		cfg.Tick = min(max(cfg.Debounce/4, 10*time.Millisecond), time.Second)
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = 2 * time.Second
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = 5 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	w := &Worker{cfg: cfg, c: newCoalescer(cfg.Debounce, cfg.MaxWait), slots: make(chan struct{}, cfg.Concurrency)}
	m, err := newMetrics(w.pendingCount, w.oldestAge)
	if err != nil {
		return nil, err
	}
	w.m = m
	cfg.Exporter.Metrics = m

	rs := &cfg.Subscriber.ReceiveSettings
	// Held messages wait for their export: allow bursts far larger than the
	// default 1000 outstanding messages.
	rs.MaxOutstandingMessages = 50000
	rs.MaxOutstandingBytes = 256 << 20
	// A replica that dies must not hide its work for long: no single lease
	// extension beyond a minute.
	rs.MaxDurationPerAckExtension = time.Minute
	rs.MinDurationPerAckExtension = 10 * time.Second
	rs.MaxExtension = cfg.MaxWait + time.Duration(cfg.MaxAttempts)*cfg.RetryMax + 30*time.Minute
	return w, nil
}

func (w *Worker) pendingCount() float64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, _ := w.c.pending()
	return float64(n)
}

func (w *Worker) oldestAge() float64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, oldest := w.c.pending()
	if oldest.IsZero() {
		return 0
	}
	return w.cfg.Now().Sub(oldest).Seconds()
}

// Run receives and exports until ctx is done, then drains: pending batches
// are nacked at once (another replica takes them), running exports get until
// drainCtx is done to finish, and are nacked if they cannot.
func (w *Worker) Run(ctx context.Context, drainCtx func() (context.Context, context.CancelFunc)) error {
	recvCtx, stopRecv := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRecv()
	exportCtx, stopExports := context.WithCancel(context.WithoutCancel(ctx))
	defer stopExports()
	recvDone := make(chan error, 1)
	go func() { recvDone <- w.cfg.Subscriber.Receive(recvCtx, w.receive) }()

	ticker := time.NewTicker(w.cfg.Tick)
	defer ticker.Stop()
	var recvErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case recvErr = <-recvDone:
			recvDone = nil
			break loop
		case <-ticker.C:
			w.dispatch(exportCtx)
		}
	}

	// Stop pulling before nacking: a nacked message must go to another
	// replica, not back to this draining one (each round trip would spend a
	// delivery attempt and could dead-letter it). The client flushes the
	// nacks and acks below before Receive returns.
	w.mu.Lock()
	w.draining.Store(true)
	w.mu.Unlock()
	stopRecv()
	w.mu.Lock()
	nacked := w.c.nackIdle()
	w.mu.Unlock()
	dctx, cancel := drainCtx()
	defer cancel()
	finished := make(chan struct{})
	go func() { w.running.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-dctx.Done():
		stopExports()
		<-finished
	}
	w.mu.Lock()
	nacked += w.c.nackIdle()
	w.mu.Unlock()
	w.cfg.Log.Info("worker drained", "nacked", nacked)
	if recvDone != nil {
		recvErr = <-recvDone
	}
	if recvErr != nil && !errors.Is(recvErr, context.Canceled) {
		return fmt.Errorf("receive inbox: %w", recvErr)
	}
	return nil
}

// receive folds one inbox message into its task's batch.
func (w *Worker) receive(ctx context.Context, m *pubsub.Message) {
	it, err := inbox.Decode(m)
	if err != nil {
		w.unreadable(ctx, m, err)
		return
	}
	if !w.triggers(it) {
		w.m.items.WithLabelValues("skipped").Inc()
		m.Ack()
		return
	}
	switch {
	case it.Resource == event.ResourceTask && it.Action == "delete":
		w.m.items.WithLabelValues("delete").Inc()
	case it.TaskID != 0:
		w.m.items.WithLabelValues("task").Inc()
	default:
		w.m.items.WithLabelValues("project").Inc()
	}
	w.mu.Lock()
	// Checked under the lock that Run's drain takes, so no message is added
	// after the drain has nacked what it holds.
	if w.draining.Load() {
		w.mu.Unlock()
		m.Nack()
		return
	}
	held := w.c.add(it, m, w.cfg.Now())
	w.mu.Unlock()
	if !held {
		w.m.coalesced.Inc()
	}
}

// unreadable handles an inbox message this version cannot decode. One of
// another wire version (a rolling upgrade) is nacked for a replica that reads
// it; anything else goes to the dead-letter topic whole, with the reason.
func (w *Worker) unreadable(ctx context.Context, m *pubsub.Message, cause error) {
	if v := m.Attributes["v"]; v != "" && v != inbox.Version {
		w.m.items.WithLabelValues("other_version").Inc()
		m.Nack()
		return
	}
	w.m.items.WithLabelValues("invalid").Inc()
	w.cfg.Log.Error("unreadable inbox message", "message_id", m.ID, "error", cause.Error())
	if err := w.cfg.DeadLetters.SendRaw(ctx, m.Data, m.Attributes, cause.Error()); err != nil {
		m.Nack()
		return
	}
	w.m.deadLettered.WithLabelValues("invalid").Inc()
	m.Ack()
}

// triggers applies the trigger policy to an item.
func (w *Worker) triggers(it inbox.Item) bool {
	if it.TaskID == 0 && it.ProjectID == 0 {
		return false
	}
	if it.Source != "webhook" || it.Action == "delete" {
		return it.Action != "delete" || it.Resource == event.ResourceTask
	}
	switch it.Resource {
	case event.ResourceTask, event.ResourceJob:
		if w.cfg.Trigger == TriggerCompleted {
			// Reaching completed: the status changed, to completed. Later
			// saves of a completed job do not export again.
			return it.Status == "completed" && it.PreviousStatus != "" && it.PreviousStatus != "completed"
		}
		return it.Action == "update" || it.Action == "create"
	case event.ResourceProject:
		return w.cfg.Trigger != TriggerCompleted && it.Action == "update"
	}
	return false
}

// dispatch starts the due batches, as many as there are free slots.
func (w *Worker) dispatch(ctx context.Context) {
	w.mu.Lock()
	due := w.c.due(w.cfg.Now(), cap(w.slots)-len(w.slots))
	w.mu.Unlock()
	for _, b := range due {
		w.slots <- struct{}{}
		w.running.Add(1)
		go func() {
			defer func() { <-w.slots; w.running.Done() }()
			w.process(ctx, b)
		}()
	}
}

// busyError postpones a batch whose task is still being changed in CVAT.
type busyError struct{ until time.Time }

func (e busyError) Error() string { return "task still busy until " + e.until.String() }

// process runs one batch and settles its messages.
func (w *Worker) process(ctx context.Context, b *batch) {
	started, err := w.runBatch(ctx, b)
	now := w.cfg.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	var busy busyError
	switch {
	case err == nil:
		w.m.coalesced.Add(float64(max(b.events-1, 0)))
		w.m.latency.Observe(now.Sub(b.first).Seconds())
		w.c.finish(b, true, time.Time{}, started)
		w.c.prune(now.Add(-w.cfg.MaxWait - time.Hour))
	case errors.As(err, &busy):
		w.c.postpone(b, busy.until)
	case w.draining.Load():
		w.c.finish(b, false, now, time.Time{})
	case b.attempts >= w.cfg.MaxAttempts:
		w.mu.Unlock()
		dlErr := w.deadLetter(ctx, b, err)
		w.mu.Lock()
		if dlErr != nil {
			w.cfg.Log.Error("dead-lettering failed; will retry", "key", b.key, "error", dlErr.Error())
			w.c.finish(b, false, now.Add(w.cfg.RetryMax), time.Time{})
			return
		}
		w.c.drop(b)
	default:
		wait := w.backoff(b.attempts)
		w.m.retries.Inc()
		w.cfg.Log.Warn("export failed; will retry", "key", b.key, "attempt", b.attempts,
			"max_attempts", w.cfg.MaxAttempts, "retry_in", wait.String(), "error", err.Error())
		w.c.finish(b, false, now.Add(wait), time.Time{})
	}
}

// runBatch does a batch's work and returns when it started looking at the
// state it acted on.
func (w *Worker) runBatch(ctx context.Context, b *batch) (time.Time, error) {
	e := w.cfg.Exporter
	started := w.cfg.Now()
	switch {
	case b.deleted != nil:
		d := b.deleted
		t := sink.Task{ID: d.TaskID, Name: d.TaskName, ProjectID: sink.NullID(d.ProjectID), Status: d.Status, UpdatedDate: d.UpdatedDate}
		if d.OrganizationID != 0 {
			t.Organization = &sink.Organization{ID: d.OrganizationID}
		}
		return started, e.Delete(ctx, t, b.trig)
	case b.taskID != 0:
		task, err := e.ReadTask(ctx, b.taskID)
		if errors.Is(err, ErrGone) {
			// Also what a wrong X-Organization or missing rights look like.
			w.cfg.Log.Warn("task not found in CVAT; nothing to export (deleted, or not visible to cvat-sync's CVAT user and organization)", "task_id", b.taskID)
			return started, nil
		}
		if err != nil {
			return started, err
		}
		// Export once the task has been quiet for the debounce window, by
		// CVAT's own account, or when the max-wait is up.
		if quietAt := task.UpdatedDate.Add(w.cfg.Debounce); started.Before(quietAt) && started.Sub(b.first) < w.cfg.MaxWait {
			return started, busyError{until: minTime(quietAt, b.first.Add(w.cfg.MaxWait))}
		}
		_, err = e.ExportState(ctx, task, b.trig)
		return started, err
	case b.projectID != 0:
		w.mu.Lock()
		covered := w.c.tasksSeenSince(b.projectID, b.first.Add(-w.cfg.Debounce))
		w.mu.Unlock()
		if covered {
			return started, nil
		}
		n, err := enqueueMissing(ctx, e, w.cfg.Queue, cvatapi.TaskFilter{ProjectID: b.projectID}, "project", false, w.cfg.Now)
		if n > 0 {
			w.m.enqueued.WithLabelValues("project").Add(float64(n))
		}
		return started, err
	}
	return started, nil
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func (w *Worker) deadLetter(ctx context.Context, b *batch, cause error) error {
	it := inbox.Item{Event: b.trig.Event, TaskID: b.taskID, ProjectID: b.projectID, Source: "worker", ReceivedAt: b.first}
	if b.deleted != nil {
		it = *b.deleted
	}
	if err := w.cfg.DeadLetters.Send(ctx, it, cause.Error(), b.attempts); err != nil {
		return err
	}
	w.m.deadLettered.WithLabelValues(reasonClass(cause)).Inc()
	w.cfg.Log.Error("work dead-lettered", "key", b.key, "attempts", b.attempts, "events", b.events, "reason", cause.Error())
	return nil
}

func (w *Worker) backoff(attempt int) time.Duration {
	d := w.cfg.RetryMin << min(attempt-1, 20)
	if d > w.cfg.RetryMax || d <= 0 {
		d = w.cfg.RetryMax
	}
	// ±20% jitter so replicas retrying the same outage spread out.
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// reasonClass maps an error to a small fixed set for a metric label.
func reasonClass(err error) string {
	var se *cvatapi.StatusError
	var ne *cvatapi.NetError
	switch {
	case errors.Is(err, cvatapi.ErrExportFailed):
		return "cvat_export_failed"
	case errors.As(err, &se):
		return "cvat_status"
	case errors.As(err, &ne):
		return "cvat_unreachable"
	case errors.Is(err, sink.ErrChecksumMismatch):
		return "checksum"
	}
	return "other"
}

// enqueueMissing lists the tasks f selects (only completed ones if
// onlyCompleted) and enqueues those whose current state is not exported in
// every format. It returns how many it enqueued.
func enqueueMissing(ctx context.Context, e *Exporter, q Enqueuer, f cvatapi.TaskFilter, source string, onlyCompleted bool, now func() time.Time) (int, error) {
	n := 0
	err := e.CVAT.ListTasks(ctx, f, func(t cvatapi.Task) error {
		if onlyCompleted && t.Status != "completed" {
			return nil
		}
		missing, err := e.Missing(ctx, t)
		if err != nil || len(missing) == 0 {
			return err
		}
		it := inbox.Item{
			Event: source, Resource: event.ResourceTask, Action: "update", TaskID: t.ID, ProjectID: t.ProjectID,
			OrganizationID: t.OrganizationID, Status: t.Status, UpdatedDate: t.UpdatedDate,
			ReceivedAt: now().UTC(), Source: source,
		}
		if err := q.Enqueue(ctx, it); err != nil {
			return err
		}
		n++
		return nil
	})
	return n, err
}
