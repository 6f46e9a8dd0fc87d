// Package pipeline is cvat-sync's controller: it converges the bucket and the
// outbox on CVAT's state. The desired state is CVAT's: every task in scope
// exported in its current state (updated_date), once per format, and
// announced; every exported task that no longer exists announced as deleted.
// The recorded state is the bucket (archives, and a record per task).
//
//   - Syncer: one task, level-triggered: read CVAT's state, compare it with
//     the record, export/announce/announce the deletion of the difference.
//   - Worker: the fast path. Webhooks become inbox events; the worker keeps
//     one pending batch per task, syncs it once the task has been quiet for
//     the debounce window (or the max-wait passed), and acks the messages
//     only then. It holds work through outages without spending attempts and,
//     after its attempts, leaves a failing state to convergence.
//   - Converger: the safety net that makes it correct. At start and
//     periodically it diffs CVAT's task list with the record and enqueues
//     what is behind, what failed and is due again, and what is gone.
//   - Pipeline: the one owner of their lifecycle.
//   - Backfill: exports chosen tasks through the same Syncer.
package pipeline

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cvat-sync/cvat-sync/internal/task"
)

// Config configures a Pipeline.
type Config struct {
	CVAT        CVAT
	Archives    Archives
	Records     Records
	Outbox      Outbox
	Inbox       Inbox
	Queue       Enqueuer
	DeadLetters DeadLetterer

	Formats     []string
	SaveImages  bool
	Policy      task.Policy
	Debounce    time.Duration
	MaxWait     time.Duration
	MaxAttempts int
	Concurrency int

	ReconcileInterval     time.Duration // 0: no convergence passes
	FullReconcileInterval time.Duration
	Since                 string
	MaxDeleteFraction     float64

	// Metrics, if set, are the pipeline's metrics (NewMetrics); else New
	// registers them on Registerer.
	Metrics    *Metrics
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	Now        func() time.Time

	// Test knobs; zero takes the component's default.
	Tick, RetryMin, RetryMax, HoldMax, ConfirmDelay time.Duration
	ListPageSize                                    int
}

// Pipeline runs the worker and the converger.
type Pipeline struct {
	cfg    Config
	m      *Metrics
	syncer *Syncer
	worker *Worker
	conv   *Converger

	stopWorker chan context.Context
	stopConv   context.CancelFunc
	wg         sync.WaitGroup
	failed     chan error
	stopOnce   sync.Once
	stopErr    error
}

// New validates cfg and builds the pipeline; nothing runs until Start.
func New(cfg Config) (*Pipeline, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	m := cfg.Metrics
	if m == nil {
		var err error
		if m, err = NewMetrics(cfg.Registerer); err != nil {
			return nil, err
		}
	}
	m.InitFormats(cfg.Formats)
	// The converger measures CVAT's clock at every pass; the syncer reads
	// CVAT's dates against it.
	var clock cvatClock
	clock.now = cfg.Now
	if clock.now == nil {
		clock.now = time.Now
	}
	s, err := NewSyncer(SyncerConfig{CVAT: cfg.CVAT, Archives: cfg.Archives, Records: cfg.Records, Outbox: cfg.Outbox,
		Formats: cfg.Formats, SaveImages: cfg.SaveImages, Policy: cfg.Policy, ConfirmDelay: cfg.ConfirmDelay,
		Metrics: m, Logger: cfg.Logger.With("component", "syncer"), Now: cfg.Now, CVATNow: clock.Now})
	if err != nil {
		return nil, err
	}
	c, err := NewConverger(ConvergerConfig{CVAT: cfg.CVAT, Records: cfg.Records, Queue: cfg.Queue, Formats: cfg.Formats,
		Policy: s.Policy(), Interval: cfg.ReconcileInterval, FullInterval: cfg.FullReconcileInterval, Since: cfg.Since,
		MaxDeleteFraction: cfg.MaxDeleteFraction, PageSize: cfg.ListPageSize, ConfirmDelay: cfg.ConfirmDelay,
		Metrics: m, Logger: cfg.Logger.With("component", "converger"),
		Now: cfg.Now, Offset: clock.set})
	if err != nil {
		return nil, err
	}
	w, err := NewWorker(WorkerConfig{Inbox: cfg.Inbox, Syncer: s, Fanout: c, DeadLetters: cfg.DeadLetters,
		Debounce: cfg.Debounce, MaxWait: cfg.MaxWait, MaxAttempts: cfg.MaxAttempts, Concurrency: cfg.Concurrency,
		Tick: cfg.Tick, RetryMin: cfg.RetryMin, RetryMax: cfg.RetryMax, HoldMax: cfg.HoldMax, OnSynced: c.Synced,
		Metrics: m, Logger: cfg.Logger.With("component", "worker"), Now: cfg.Now})
	if err != nil {
		return nil, err
	}
	p := &Pipeline{cfg: cfg, m: m, syncer: s, worker: w, conv: c,
		stopWorker: make(chan context.Context, 1), failed: make(chan error, 1)}
	w.cfg.OnFailed = func(err error) {
		select {
		case p.failed <- err:
		default:
		}
	}
	return p, nil
}

// cvatClock is CVAT's clock as last measured: ours plus an offset.
type cvatClock struct {
	offset atomic.Int64
	now    func() time.Time
}

func (c *cvatClock) set(d time.Duration) { c.offset.Store(int64(d)) }

// Now is CVAT's time now, by the last measure.
func (c *cvatClock) Now() time.Time { return c.now().Add(time.Duration(c.offset.Load())) }

// LeaseHold is how long the inbox must be able to hold a message for the
// worker (inbox.ReceiverConfig.Hold).
func LeaseHold(cfg Config) time.Duration {
	return WorkerConfig{MaxWait: cfg.MaxWait, MaxAttempts: cfg.MaxAttempts, RetryMax: cfg.RetryMax, HoldMax: cfg.HoldMax}.LeaseHold()
}

// Syncer is the pipeline's syncer (backfill uses one of its own).
func (p *Pipeline) Syncer() *Syncer { return p.syncer }

// Converger is the pipeline's converger.
func (p *Pipeline) Converger() *Converger { return p.conv }

// Start runs the worker and the converger. Their work does not end with
// ctx (only its values are kept): Stop ends it, so a SIGTERM first drains
// the HTTP server and then gives running exports what is left of the grace.
func (p *Pipeline) Start(ctx context.Context) {
	work := context.WithoutCancel(ctx)
	convCtx, stopConv := context.WithCancel(work)
	p.stopConv = stopConv
	p.cfg.Logger.Info("pipeline started", "formats", p.cfg.Formats, "policy", string(p.syncer.Policy()),
		"debounce", p.cfg.Debounce.String(), "max_wait", p.cfg.MaxWait.String(), "convergence", p.conv.describe())
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		_ = p.worker.run(work, p.stopWorker) // its failure went to OnFailed
	}()
	go func() {
		defer p.wg.Done()
		p.conv.Run(convCtx)
	}()
}

// Failed delivers the worker's error if it stops on its own (the inbox
// subscription is gone or unreadable): the service should then shut down,
// so that its orchestrator restarts it, rather than accept work nobody does.
func (p *Pipeline) Failed() <-chan error { return p.failed }

// Stop stops the converger, drains the worker (held work nacked at once for
// another replica, running syncs given until ctx's deadline) and waits for
// both. It may be called once Start was; later calls return the first's
// result.
func (p *Pipeline) Stop(ctx context.Context) error {
	p.stopOnce.Do(func() {
		p.stopConv()
		p.stopWorker <- ctx
		done := make(chan struct{})
		go func() { p.wg.Wait(); close(done) }()
		<-done
		select {
		case err := <-p.failed:
			p.stopErr = err
		default:
		}
		if p.stopErr != nil && errors.Is(p.stopErr, context.Canceled) {
			p.stopErr = nil
		}
	})
	return p.stopErr
}
