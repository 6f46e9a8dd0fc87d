package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/cvat-sync/cvat-sync/internal/inbox"
	"github.com/cvat-sync/cvat-sync/internal/task"
)

// Inbox is what the worker needs of the inbox: its deliveries.
type Inbox interface {
	Receive(ctx context.Context, handle func(context.Context, *inbox.Delivery)) error
}

// DeadLetterer copies work given up on to the dead-letter topic.
type DeadLetterer interface {
	Send(ctx context.Context, it inbox.Item, reason string, attempts int) error
}

// Fanout turns a project-level event into the work of the project's tasks.
type Fanout interface {
	ProjectChanged(ctx context.Context, projectID int64, trig task.Trigger) (int, error)
	ProjectDeleted(ctx context.Context, projectID int64, trig task.Trigger) (int, error)
}

// WorkerConfig configures a Worker.
type WorkerConfig struct {
	Inbox       Inbox
	Syncer      *Syncer
	Fanout      Fanout
	DeadLetters DeadLetterer
	Debounce    time.Duration
	MaxWait     time.Duration
	// MaxAttempts is how many failed syncs of a state the worker makes
	// before it gives the state up to convergence (which retries it with a
	// per-task backoff of up to an hour). Outages spend no attempts.
	MaxAttempts int
	Concurrency int           // syncs at once; default 4
	Tick        time.Duration // how often due batches are looked for; default debounce/4 within [10ms, 1s]
	RetryMin    time.Duration // first retry backoff; default 2s
	RetryMax    time.Duration // retry backoff cap; default 1m
	// HoldMax is the longest the worker holds a batch through an outage of
	// CVAT, GCS or Pub/Sub before it leaves the state to convergence;
	// default 1h. It must be below the inbox's lease hold.
	HoldMax time.Duration
	// OnSynced, if set, is told of each sync that ended.
	OnSynced func(Result)
	// OnFailed, if set, is told at once when receiving the inbox fails for
	// good (the worker then waits for its drain).
	OnFailed func(error)
	Metrics  *Metrics
	Logger   *slog.Logger
	Now      func() time.Time
}

// Worker receives the inbox, keeps one pending batch per task, and syncs it
// when the task has been quiet for the debounce window or the max-wait has
// passed; it acks a batch's messages only once its sync is done.
type Worker struct {
	cfg     WorkerConfig
	m       *Metrics
	mu      sync.Mutex
	c       *coalescer
	drain   bool // under mu: no message is added once the drain began
	running sync.WaitGroup
	slots   chan struct{}
}

// NewWorker validates cfg.
func NewWorker(cfg WorkerConfig) (*Worker, error) {
	if err := missing("worker", map[string]bool{"Inbox": cfg.Inbox == nil, "Syncer": cfg.Syncer == nil,
		"Fanout": cfg.Fanout == nil, "DeadLetters": cfg.DeadLetters == nil}); err != nil {
		return nil, err
	}
	if cfg.MaxWait < cfg.Debounce {
		return nil, fmt.Errorf("pipeline: MaxWait %s is shorter than Debounce %s", cfg.MaxWait, cfg.Debounce)
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
		cfg.RetryMax = time.Minute
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = cfg.RetryMin
	}
	if cfg.HoldMax <= 0 {
		cfg.HoldMax = time.Hour
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.OnSynced == nil {
		cfg.OnSynced = func(Result) {}
	}
	if cfg.OnFailed == nil {
		cfg.OnFailed = func(error) {}
	}
	m := cfg.Metrics
	if m == nil {
		m = cfg.Syncer.m
	}
	w := &Worker{cfg: cfg, m: m, c: newCoalescer(cfg.Debounce, cfg.MaxWait), slots: make(chan struct{}, cfg.Concurrency)}
	pending := w.pendingStats
	m.pendingCount.Store(&pending)
	return w, nil
}

// pendingStats are the batches pending and the age of the oldest event.
func (w *Worker) pendingStats() (int, float64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, oldest := w.c.pending()
	if oldest.IsZero() {
		return n, 0
	}
	return n, w.cfg.Now().Sub(oldest).Seconds()
}

// runBound is the longest one run of a batch takes: CVAT preparing an
// export (cvatapi's ExportTimeout, an hour) and the download.
const runBound = time.Hour + 10*time.Minute

// LeaseHold is how long the inbox must hold a message for this worker: its
// longest wait (max-wait, every attempt's run and backoff, an outage), with
// margin. Past it Pub/Sub would hand the message to another replica while
// this one still works on it.
func (cfg WorkerConfig) LeaseHold() time.Duration {
	return cfg.MaxWait + time.Duration(max(cfg.MaxAttempts, 1))*(max(cfg.RetryMax, time.Minute)+runBound) + max(cfg.HoldMax, time.Hour) + 10*time.Minute
}

// run receives and syncs until a drain context arrives on stop, then drains
// with it: it stops pulling, nacks held work at once (another replica takes
// it), lets running syncs finish until the drain context is done, then
// cancels them. work is the context of the syncs: not cancelled by the
// process's signal, so a SIGTERM does not cut a running export short.
func (w *Worker) run(work context.Context, stop <-chan context.Context) error {
	recvCtx, stopRecv := context.WithCancel(work)
	defer stopRecv()
	syncCtx, stopSyncs := context.WithCancel(work)
	defer stopSyncs()
	recvDone := make(chan error, 1)
	go func() { recvDone <- w.cfg.Inbox.Receive(recvCtx, w.receive) }()

	ticker := time.NewTicker(w.cfg.Tick)
	defer ticker.Stop()
	var recvErr error
	var drainCtx context.Context
loop:
	for {
		select {
		case drainCtx = <-stop:
			break loop
		case recvErr = <-recvDone:
			// Receiving failed for good (the subscription is gone, access
			// revoked): say so at once, take no more work, and drain when
			// the owner stops the worker, within its deadline.
			recvDone = nil
			if recvErr == nil {
				recvErr = errors.New("receiving the inbox stopped")
			}
			w.cfg.OnFailed(recvErr)
			drainCtx = <-stop
			break loop
		case <-ticker.C:
			w.dispatch(syncCtx)
		}
	}

	// Stop pulling before nacking: a nacked message must go to another
	// replica, not back to this draining one (each round trip would spend a
	// delivery attempt). The client flushes the nacks and acks before
	// Receive returns.
	w.mu.Lock()
	w.drain = true
	nacked := w.c.nackIdle()
	w.mu.Unlock()
	stopRecv()
	finished := make(chan struct{})
	go func() { w.running.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-drainCtx.Done():
		stopSyncs()
		<-finished
	}
	w.mu.Lock()
	nacked += w.c.nackIdle()
	w.mu.Unlock()
	w.cfg.Logger.Info("worker drained", "nacked", nacked)
	if recvDone != nil {
		if err := <-recvDone; err != nil {
			recvErr = err
		}
	}
	return recvErr
}

// receive folds one delivery into its task's batch.
func (w *Worker) receive(_ context.Context, d *inbox.Delivery) {
	e := d.Event
	if e.TaskID == 0 && e.ProjectID == 0 {
		w.m.items.WithLabelValues("invalid").Inc()
		d.Ack()
		return
	}
	switch {
	case e.IsDeletion():
		w.m.items.WithLabelValues("delete").Inc()
	case e.TaskID != 0:
		w.m.items.WithLabelValues("task").Inc()
	default:
		w.m.items.WithLabelValues("project").Inc()
	}
	w.mu.Lock()
	if w.drain {
		w.mu.Unlock()
		d.Nack()
		return
	}
	held := w.c.add(e, d, w.cfg.Now())
	w.mu.Unlock()
	if !held {
		w.m.coalesced.Inc()
	}
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

// process runs one batch and applies its transition.
func (w *Worker) process(ctx context.Context, b *batch) {
	started := w.cfg.Now()
	res, err := w.runBatch(ctx, b)
	now := w.cfg.Now()
	bz, isBusy := busy(err)
	switch {
	case err == nil:
		w.m.coalesced.Add(float64(max(b.events-1, 0)))
		if res.Outcome == OutcomeExported || res.Outcome == OutcomeAnnounced || res.Outcome == OutcomeDeleted {
			w.m.latency.Observe(now.Sub(b.first).Seconds())
		}
		w.cfg.OnSynced(res)
		w.transition(func() { w.c.succeeded(b, started); w.c.prune(now.Add(-w.cfg.MaxWait - time.Hour)) })
	case w.draining():
		w.transition(func() { w.c.postpone(b, now) }) // nacked by the drain
	case isBusy:
		w.m.postponed.WithLabelValues(postponeBusy).Inc()
		until := bz.until
		if until.Before(now) {
			until = now.Add(w.cfg.RetryMin)
		}
		w.transition(func() { w.c.postpone(b, until) })
	case unavailable(err):
		if b.heldSince.IsZero() {
			b.heldSince = now
		}
		if now.Sub(b.heldSince) >= w.cfg.HoldMax {
			w.cfg.Logger.Warn("a dependency has been unavailable too long; convergence takes this task over",
				"key", b.key, "held", now.Sub(b.heldSince).String(), "error", err.Error())
			w.giveUp(ctx, b, res, err)
			return
		}
		w.m.postponed.WithLabelValues(postponeUnavailable).Inc()
		wait := w.backoff(int(now.Sub(b.heldSince)/w.cfg.RetryMin)+1, min(w.cfg.RetryMax, 30*time.Second))
		w.cfg.Logger.Warn("dependency unavailable; holding the work without spending an attempt", "key", b.key,
			"retry_in", wait.String(), "error", err.Error())
		w.transition(func() { w.c.postpone(b, now.Add(wait)) })
	case b.attempts >= w.cfg.MaxAttempts || permanent(err):
		w.giveUp(ctx, b, res, err)
	default:
		wait := w.backoff(b.attempts, w.cfg.RetryMax)
		w.m.retries.Inc()
		w.cfg.Logger.Warn("sync failed; will retry", "key", b.key, "attempt", b.attempts,
			"max_attempts", w.cfg.MaxAttempts, "retry_in", wait.String(), "error", err.Error())
		w.transition(func() { w.c.retry(b, now.Add(wait)) })
	}
}

func (w *Worker) transition(f func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	f()
}

func (w *Worker) draining() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.drain
}

// runBatch does a batch's work.
func (w *Worker) runBatch(ctx context.Context, b *batch) (Result, error) {
	switch {
	case b.taskID != 0:
		return w.cfg.Syncer.Sync(ctx, Request{Event: b.latest, Trigger: b.trig, Quiet: w.cfg.Debounce, Deadline: b.first.Add(w.cfg.MaxWait)})
	case b.deletion:
		_, err := w.cfg.Fanout.ProjectDeleted(ctx, b.projectID, b.trig)
		return Result{}, err
	default:
		w.mu.Lock()
		covered := w.c.tasksSeenSince(b.projectID, b.first.Add(-w.cfg.Debounce))
		w.mu.Unlock()
		if covered {
			return Result{}, nil
		}
		_, err := w.cfg.Fanout.ProjectChanged(ctx, b.projectID, b.trig)
		return Result{}, err
	}
}

// giveUp stops the worker's attempts on b: the failing state is recorded
// for convergence (which retries it with a backoff of its own), a copy goes
// to the dead-letter topic for visibility, and the messages are acked. If
// the record cannot be written the next full pass still finds the state
// behind: giving up never loses it.
func (w *Worker) giveUp(ctx context.Context, b *batch, res Result, cause error) {
	reason := reasonClass(cause)
	log := w.cfg.Logger.With("key", b.key, "attempts", b.attempts, "events", b.events, "reason", cause.Error())
	if b.taskID != 0 && !res.State.UpdatedDate.IsZero() {
		if f, err := w.cfg.Syncer.RecordFailure(ctx, res.State, cause); err != nil {
			log.Warn("could not record the failure; the next full pass retries the state", "error", err.Error())
		} else {
			log = log.With("retry_at", f.Next.Format(time.RFC3339), "failures", f.Count)
		}
	}
	it := inbox.ItemOf(b.latest)
	if b.latest.Name == "" {
		it = inbox.Item{TaskID: b.taskID, ProjectID: b.projectID, Event: b.trig.Event, Source: string(task.SourceWebhook), ReceivedAt: b.first}
	}
	if err := w.cfg.DeadLetters.Send(ctx, it, cause.Error(), b.attempts); err != nil {
		log.Warn("could not copy the work to the dead-letter topic", "error", err.Error())
	} else {
		w.m.deadLettered.WithLabelValues(reason).Inc()
	}
	log.Error("sync given up by the worker; convergence retries it")
	w.transition(func() { w.c.giveUp(b) })
}

// backoff is min doubling per attempt up to max, with ±20% jitter so
// replicas retrying the same outage spread out.
func (w *Worker) backoff(attempt int, capAt time.Duration) time.Duration {
	d := w.cfg.RetryMin << min(max(attempt-1, 0), 20)
	if d > capAt || d <= 0 {
		d = capAt
	}
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}
