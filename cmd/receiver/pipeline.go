package main

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cvat-sync/cvat-sync/internal/cloud"
	"github.com/cvat-sync/cvat-sync/internal/config"
	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
	"github.com/cvat-sync/cvat-sync/internal/inbox"
	"github.com/cvat-sync/cvat-sync/internal/pipeline"
	"github.com/cvat-sync/cvat-sync/internal/sink"
)

// newCVAT builds the CVAT client from the configuration.
func newCVAT(cfg config.Config, org string, reg prometheus.Registerer, log *slog.Logger) (*cvatapi.Client, error) {
	return cvatapi.New(cvatapi.Config{
		BaseURL: cfg.CVATURL, Token: cfg.CVATToken, AuthScheme: cfg.CVATAuth,
		Username: cfg.CVATUsername, Password: cfg.CVATPassword, Org: org,
		UserAgent: "cvat-sync/" + version, Registerer: reg, Logger: log,
	})
}

// sinks are the GCS writer and the outbox publisher.
type sinks struct {
	archives *sink.Archives
	outbox   *sink.Outbox
	stop     func()
}

func newSinks(env *cloud.Env, cfg config.Config, reg prometheus.Registerer, log *slog.Logger) sinks {
	pub := env.PubSub.Publisher(cfg.OutboxTopic)
	// A publish stuck on an outage gives up well inside the shutdown grace;
	// the export is retried as a whole.
	pub.PublishSettings.Timeout = 30 * time.Second
	return sinks{
		archives: sink.NewArchives(env.Storage, cfg.GCSBucket, cfg.GCSPrefix, reg, log),
		outbox:   sink.NewOutbox(pub, reg, log),
		stop:     pub.Stop,
	}
}

func newExporter(cv *cvatapi.Client, s sinks, cfg config.Config, log *slog.Logger) *pipeline.Exporter {
	return &pipeline.Exporter{
		CVAT: cv, Archives: s.archives, Outbox: s.outbox, Formats: cfg.ExportFormats,
		SaveImages: cfg.SaveImages, Metrics: pipeline.NopMetrics(), Log: log,
	}
}

// checkFormats fails start-up when CVAT answers and does not offer a
// configured format; an unreachable CVAT only warns (the service must start
// without it, and the exports wait).
func checkFormats(ctx context.Context, cv *cvatapi.Client, formats []string, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := cv.CheckFormats(ctx, formats)
	if errors.Is(err, cvatapi.ErrUnknownFormat) {
		return err
	}
	if err != nil {
		log.Warn("CVAT not reachable at start; exports wait for it", "cvat_url", cv.BaseURL(), "error", err.Error())
	}
	return nil
}

// cvatProbe keeps CVAT's last known reachability for /readyz, refreshed in
// the background so probes never wait on CVAT.
type cvatProbe struct {
	mu  sync.Mutex
	err error
}

func (p *cvatProbe) run(ctx context.Context, cv *cvatapi.Client, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := cv.Formats(cctx)
		cancel()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *cvatProbe) check(context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// pipelineHandle is a running worker and reconciler.
type pipelineHandle struct {
	// failed receives the worker's error if it stops on its own (the inbox
	// subscription is gone or not readable); serve then shuts down so that
	// Kubernetes restarts it instead of accepting work nobody exports.
	failed <-chan error
	stop   func(deadline time.Time) error
}

// startPipeline starts the worker and the reconciler. They run until stop is
// called, not until ctx ends: on SIGTERM serve first drains its HTTP server,
// then stops them with the time left of the grace period, which running
// exports may use.
func startPipeline(ctx context.Context, env *cloud.Env, cv *cvatapi.Client, queue *inbox.Queue, cfg config.Config,
	reg prometheus.Registerer, log *slog.Logger) (*pipelineHandle, error) {
	s := newSinks(env, cfg, reg, log)
	exp := newExporter(cv, s, cfg, log)
	dlq := inbox.NewDeadLetters(env.PubSub.Publisher(cfg.DeadLetterTopic))
	var metrics *pipeline.Metrics
	w, err := pipeline.NewWorker(pipeline.WorkerConfig{
		Subscriber:  env.PubSub.Subscriber(cfg.InboxSubscription),
		Exporter:    exp,
		Queue:       queue,
		DeadLetters: dlq,
		Trigger:     cfg.Trigger,
		Debounce:    cfg.Debounce,
		MaxWait:     cfg.MaxWait,
		MaxAttempts: cfg.MaxAttempts,
		Log:         log.With("component", "worker"),
	}, func(pending, oldest func() float64) (*pipeline.Metrics, error) {
		m, err := pipeline.NewMetrics(reg, pending, oldest)
		metrics = m
		return m, err
	})
	if err != nil {
		s.stop()
		dlq.Stop()
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	var deadline time.Time
	var mu sync.Mutex
	done := make(chan error, 1)
	failed := make(chan error, 1)
	go func() {
		err := w.Run(runCtx, func() (context.Context, context.CancelFunc) {
			mu.Lock()
			defer mu.Unlock()
			if deadline.IsZero() { // stopped on its own: no grace to wait for
				return context.WithCancel(runCtx)
			}
			return context.WithDeadline(context.WithoutCancel(runCtx), deadline)
		})
		if runCtx.Err() == nil {
			if err == nil {
				err = errors.New("worker stopped")
			}
			log.Error("worker stopped on its own; shutting down", "error", err.Error())
			failed <- err
		}
		done <- err
	}()
	rec := &pipeline.Reconciler{Exporter: exp, Queue: queue, Interval: cfg.ReconcileInterval, Metrics: metrics,
		Log: log.With("component", "reconciler"), OnlyCompleted: cfg.Trigger == pipeline.TriggerCompleted}
	var recWG sync.WaitGroup
	recWG.Add(1)
	go func() { defer recWG.Done(); rec.Run(runCtx) }()

	return &pipelineHandle{failed: failed, stop: func(d time.Time) error {
		mu.Lock()
		deadline = d
		mu.Unlock()
		cancel()
		err := <-done
		recWG.Wait()
		s.stop()
		dlq.Stop()
		return err
	}}, nil
}
