package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/cvat-sync/cvat-sync/internal/cloud"
	"github.com/cvat-sync/cvat-sync/internal/config"
	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
	"github.com/cvat-sync/cvat-sync/internal/health"
	"github.com/cvat-sync/cvat-sync/internal/inbox"
	"github.com/cvat-sync/cvat-sync/internal/metrics"
	"github.com/cvat-sync/cvat-sync/internal/pipeline"
	"github.com/cvat-sync/cvat-sync/internal/redeliver"
	"github.com/cvat-sync/cvat-sync/internal/signature"
	"github.com/cvat-sync/cvat-sync/internal/webhook"
)

// openCloud connects to Pub/Sub and GCS and makes sure the topics, the inbox
// subscription and the bucket exist.
func openCloud(ctx context.Context, cfg config.Config, getenv func(string) string, log *slog.Logger, attach bool) (*cloud.Env, error) {
	env, err := cloud.New(ctx, cloud.Config{Project: cfg.GCPProject, DataDir: cfg.DataDir, Getenv: getenv, Attach: attach, Logger: log})
	if err != nil {
		return nil, err
	}
	sub, err := inbox.Subscription(cfg.DeadLetterTopic, cfg.MaxAttempts)
	if err != nil {
		env.Close()
		return nil, err
	}
	steps := []func() error{
		func() error { return env.EnsureTopic(ctx, cfg.InboxTopic) },
		func() error { return env.EnsureTopic(ctx, cfg.DeadLetterTopic) },
		func() error { return env.EnsureTopic(ctx, cfg.OutboxTopic) },
		func() error {
			return env.EnsureSubscription(ctx, cfg.InboxSubscription, cfg.InboxTopic, cloud.SubscriptionOptions{
				AckDeadline: sub.AckDeadline, Ordering: sub.Ordering, DeadLetterTopic: sub.DeadLetterTopic,
				MaxAttempts: sub.MaxDeliveryAttempts, MinBackoff: sub.MinBackoff, MaxBackoff: sub.MaxBackoff,
			})
		},
		func() error { return env.EnsureBucket(ctx, cfg.GCSBucket) },
	}
	var errs []error
	for _, step := range steps {
		errs = append(errs, step())
	}
	if err := errors.Join(errs...); err != nil {
		env.Close()
		return nil, fmt.Errorf("%s mode: %w", env.Mode, err)
	}
	return env, nil
}

func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// serve runs the service until ctx is cancelled (SIGTERM, SIGINT), logging
// to stdout.
func serve(ctx context.Context, cfg config.Config, getenv func(string) string, stdout io.Writer, listening func(addr string)) error {
	log := newLogger(stdout, cfg.LogLevel)
	reg := newRegistry()
	verifier, err := signature.New(signature.Config{Secrets: cfg.WebhookSecrets, LegacyNewline: cfg.LegacySignature})
	if err != nil {
		return err
	}

	env, err := openCloud(ctx, cfg, getenv, log, false)
	if err != nil {
		return err
	}
	defer env.Close()
	queue, err := inbox.NewQueue(inbox.QueueConfig{Publisher: env.PubSub.Publisher(cfg.InboxTopic)})
	if err != nil {
		return err
	}
	defer queue.Stop()

	var cv *cvatapi.Client
	if cfg.CVATURL != "" {
		if cv, err = newCVAT(cfg, cfg.CVATOrg, reg, log.With("component", "cvat")); err != nil {
			return err
		}
		defer cv.Close()
	}
	credsOK, err := metrics.Register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "cvat_sync_cvat_credentials_ok",
		Help: "1 if CVAT accepted the configured credentials at the last probe; 0 when it refused them, none are configured, or CVAT did not answer.",
	}))
	if err != nil {
		return err
	}
	checkCVAT := cvatProbe(cv, cfg, verifier, log)
	mon, err := health.New(health.Config{Registerer: reg, Logger: log.With("component", "health"), Probes: []health.Probe{
		{Name: "pubsub", Required: true, Check: func(ctx context.Context) error { return env.CheckPubSub(ctx, cfg.InboxTopic) }},
		{Name: "gcs", Required: true, Check: func(ctx context.Context) error { return env.CheckStorage(ctx, cfg.GCSBucket) }},
		{Name: "cvat", Check: func(ctx context.Context) error {
			err := checkCVAT(ctx)
			credsOK.Set(map[bool]float64{true: 1, false: 0}[err == nil])
			return err
		}},
	}})
	if err != nil {
		return err
	}
	// The pipeline's and the redeliverer's series exist from the start,
	// whatever runs, so alerts and panels see 0 rather than nothing.
	pm, err := pipeline.NewMetrics(reg)
	if err != nil {
		return err
	}
	pm.InitFormats(cfg.ExportFormats)
	if _, err := redeliver.RegisterMetrics(reg); err != nil {
		return err
	}
	var checks []webhook.Check
	for _, name := range []string{"pubsub", "gcs"} {
		checks = append(checks, webhook.Check{Name: name, Required: true, Run: mon.Check(name)})
	}
	probedCVAT := mon.Check("cvat")
	checks = append(checks, webhook.Check{Name: "cvat", Run: func(ctx context.Context) error {
		if err := cvatUnconfigured(cv, cfg); err != nil {
			return err
		}
		return probedCVAT(ctx)
	}})

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("CVAT_SYNC_LISTEN %s: %w", cfg.Listen, err)
	}
	defer ln.Close()
	srv, err := webhook.New(webhook.Config{
		Verifier:     verifier,
		MaxBodyBytes: cfg.MaxBodyBytes,
		Queue:        queue,
		Logger:       log,
		Registerer:   reg,
		Gatherer:     reg,
		Checks:       checks,
	})
	if err != nil {
		return err
	}

	var bg sync.WaitGroup
	bgCtx, stopBG := context.WithCancel(ctx)
	defer func() { stopBG(); bg.Wait() }()
	bg.Add(1)
	go func() { defer bg.Done(); mon.Run(bgCtx) }()

	// The pipeline needs CVAT and credentials. Without them the service
	// still stores every event in the inbox; convergence exports what is
	// behind once they are configured.
	var pipe *pipeline.Pipeline
	fatal := make(chan error, 1)
	switch {
	case cv == nil:
		log.Warn("CVAT_SYNC_CVAT_URL is not set: webhooks are stored in the inbox, nothing is exported")
	case !cfg.HasCredentials():
		log.Warn("no CVAT credentials (CVAT_SYNC_CVAT_TOKEN, or CVAT_SYNC_CVAT_USERNAME and _PASSWORD): webhooks are stored, nothing is exported until they are set")
	default:
		s, err := newStores(env, cfg, reg, log)
		if err != nil {
			return err
		}
		defer s.outbox.Stop()
		// Everything that can refuse the configuration is built before the
		// pipeline starts, so an error leaves nothing running.
		rd, err := newRedeliverer(cfg, reg, log)
		if err != nil {
			return err
		}
		p, stopDLQ, err := startPipeline(ctx, env, cv, queue, s, cfg, pm, reg, log)
		if err != nil {
			return err
		}
		defer stopDLQ()
		pipe = p
		bg.Add(1)
		go func() { defer bg.Done(); startupChecks(bgCtx, cv, cfg, log, fatal) }()
		if rd != nil {
			bg.Add(1)
			go func() { defer bg.Done(); _ = rd.Run(bgCtx) }()
		}
	}
	var pipeFailed <-chan error
	if pipe != nil {
		pipeFailed = pipe.Failed()
	}

	hs := srv.HTTPServer()
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(ln) }()
	log.Info("listening", "addr", ln.Addr().String(), "mode", string(env.Mode), "version", version,
		"webhook_path", webhook.Path, "secrets", len(cfg.WebhookSecrets))
	if listening != nil {
		listening(ln.Addr().String())
	}

	var shutdownErr error
	select {
	case err := <-serveErr:
		shutdownErr = fmt.Errorf("http server: %w", err)
		serveErr <- nil
	case err := <-pipeFailed:
		shutdownErr = fmt.Errorf("pipeline: %w", err)
		log.Error("the pipeline stopped on its own; shutting down", "error", err.Error())
	case err := <-fatal:
		shutdownErr = err
	case <-ctx.Done():
	}

	log.Info("shutting down", "grace", cfg.ShutdownGrace.String())
	deadline := time.Now().Add(cfg.ShutdownGrace)
	graceCtx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
	defer cancel()
	srv.Drain()
	// Stop taking webhooks first (in-flight ones finish and are stored), then
	// the pipeline: held work is nacked for another replica, running exports
	// get what is left of the grace period.
	shutdownErr = errors.Join(shutdownErr, hs.Shutdown(graceCtx))
	if err := <-serveErr; err != nil && !errors.Is(err, http.ErrServerClosed) {
		shutdownErr = errors.Join(shutdownErr, err)
	}
	if pipe != nil {
		pctx, pcancel := context.WithDeadline(context.WithoutCancel(ctx), deadline.Add(-time.Second))
		shutdownErr = errors.Join(shutdownErr, pipe.Stop(pctx))
		pcancel()
	}
	if shutdownErr != nil {
		log.Error("shutdown incomplete", "error", shutdownErr.Error())
		return shutdownErr
	}
	log.Info("stopped")
	return nil
}

// newRedeliverer builds the reader of CVAT's delivery log of the webhook
// this service registers (nil when there is none to read: no public URL or
// no webhook scope, or CVAT_SYNC_REDELIVER=false).
func newRedeliverer(cfg config.Config, reg prometheus.Registerer, log *slog.Logger) (*redeliver.Redeliverer, error) {
	if !cfg.Redeliver || cfg.PublicURL == "" {
		return nil, nil
	}
	spec, err := webhookSpec(cfg)
	if err != nil {
		log.Info("CVAT's delivery log is not read: no webhook scope (CVAT_SYNC_WEBHOOK_PROJECT_ID or CVAT_SYNC_WEBHOOK_ORG)")
		return nil, nil
	}
	// CVAT shows an organization's webhooks only in its context.
	cv, err := newCVAT(cfg, cfg.WebhookOrg, reg, log.With("component", "redeliver"))
	if err != nil {
		return nil, err
	}
	return redeliver.New(redeliver.Config{CVAT: cv, Webhook: spec, Registerer: reg, Logger: log.With("component", "redeliver")})
}

// startupChecks waits (in the background: the listener is already open) for
// CVAT to answer, then checks what only a live CVAT can tell: the export
// formats (an unknown one stops the service: fatal gets the error) and what
// this CVAT release cannot do.
func startupChecks(ctx context.Context, cv *cvatapi.Client, cfg config.Config, log *slog.Logger, fatal chan<- error) {
	for wait := time.Second; ; wait = min(2*wait, time.Minute) {
		cctx, cancel := context.WithTimeout(ctx, startupTimeout)
		err := cv.CheckFormats(cctx, cfg.ExportFormats)
		cancel()
		if errors.Is(err, cvatapi.ErrUnknownFormat) {
			fatal <- &exitError{code: 2, err: fmt.Errorf("CVAT_SYNC_EXPORT_FORMATS: %w", err)}
			return
		}
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		log.Warn("CVAT not usable yet; exports wait for it", "cvat_url", cv.BaseURL(), "error", err.Error(), "retry_in", wait.String())
		if t := time.NewTimer(wait); true {
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
	}
	a, err := cv.About(ctx)
	if err != nil {
		return
	}
	for _, w := range versionWarnings(a.Version, cfg) {
		log.Warn(w, "cvat_version", a.Version)
	}
}
