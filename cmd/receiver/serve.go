package main

import (
	"context"
	"errors"
	"flag"
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
	"github.com/cvat-sync/cvat-sync/internal/inbox"
	"github.com/cvat-sync/cvat-sync/internal/signature"
	"github.com/cvat-sync/cvat-sync/internal/webhook"
)

// loadConfig parses a command's flags and environment; -h prints the
// settings.
func loadConfig(name string, args []string, getenv func(string) string, stdout io.Writer, needs config.Needs, extra func(*flag.FlagSet)) (config.Config, []string, error) {
	fs := flagSet(name, stdout)
	if extra != nil {
		extra(fs)
	}
	cfg, rest, err := config.Parse(fs, args, getenv, needs)
	if errors.Is(err, flag.ErrHelp) {
		fs.Usage()
		return cfg, nil, err
	}
	if err != nil {
		return cfg, nil, &exitError{code: 2, err: fmt.Errorf("%s: invalid configuration:\n%w", name, err)}
	}
	return cfg, rest, nil
}

// openCloud connects to Pub/Sub and GCS and makes sure the topics, the inbox
// subscription and the bucket exist.
func openCloud(ctx context.Context, cfg config.Config, getenv func(string) string, log *slog.Logger, attach bool) (*cloud.Env, error) {
	env, err := cloud.Open(ctx, cloud.Settings{Project: cfg.GCPProject, DataDir: cfg.DataDir, Getenv: getenv, Attach: attach}, log)
	if err != nil {
		return nil, err
	}
	steps := []func() error{
		func() error { return env.EnsureTopic(ctx, cfg.InboxTopic) },
		func() error { return env.EnsureTopic(ctx, cfg.DeadLetterTopic) },
		func() error { return env.EnsureTopic(ctx, cfg.OutboxTopic) },
		func() error {
			return env.EnsureSubscription(ctx, cfg.InboxSubscription, cfg.InboxTopic, cloud.SubscriptionOptions{
				AckDeadline: 20 * time.Second, Ordering: true, DeadLetterTopic: cfg.DeadLetterTopic,
				// Pub/Sub's own dead-lettering is the backstop for messages that
				// crash replicas; shutdown nacks spend deliveries too, so it
				// allows more than the worker's in-process attempts.
				MaxAttempts: min(max(4*cfg.MaxAttempts, 20), 100), MinBackoff: 10 * time.Second, MaxBackoff: 10 * time.Minute,
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

// serve runs the service until ctx is cancelled (SIGTERM, SIGINT).
func serve(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	cfg, _, err := loadConfig("serve", args, getenv, stdout, config.NeedsSecret, nil)
	if err != nil {
		return err
	}
	log := newLogger(stdout, cfg.LogLevel)
	reg := newRegistry()
	verifier, err := signature.NewVerifier(cfg.WebhookSecrets, signature.WithLegacyNewline(cfg.LegacySignature))
	if err != nil {
		return err
	}

	env, err := openCloud(ctx, cfg, getenv, log, false)
	if err != nil {
		return err
	}
	defer env.Close()

	// The inbox publisher gives up before the webhook handler does, so a
	// failed publish has resumed its ordering key by the time the handler
	// answers 503, and CVAT's retry is not refused as "paused".
	queue := inbox.NewQueue(env.PubSub.Publisher(cfg.InboxTopic), 6*time.Second)
	defer queue.Stop()
	checks := []webhook.Check{
		{Name: "pubsub", Required: true, Run: func(ctx context.Context) error {
			return env.CheckPubSub(ctx, cfg.InboxTopic)
		}},
		{Name: "gcs", Required: true, Run: func(ctx context.Context) error {
			return env.CheckStorage(ctx, cfg.GCSBucket)
		}},
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("CVAT_SYNC_LISTEN %s: %w", cfg.Listen, err)
	}
	defer ln.Close()

	// The pipeline needs CVAT; without a CVAT URL the service still stores
	// every event in the inbox, for a later run to export.
	var pipe *pipelineHandle
	if cfg.CVATURL == "" {
		log.Warn("CVAT_SYNC_CVAT_URL is not set: webhooks are stored in the inbox but nothing is exported")
	} else {
		cv, err := newCVAT(cfg, cfg.CVATOrg, reg, log.With("component", "cvat"))
		if err != nil {
			return err
		}
		defer cv.Close()
		if err := checkFormats(ctx, cv, cfg.ExportFormats, log); err != nil {
			return err
		}
		probe := &cvatProbe{err: errors.New("not checked yet")}
		var bg sync.WaitGroup
		bgCtx, stopBG := context.WithCancel(ctx)
		defer func() { stopBG(); bg.Wait() }()
		bg.Add(1)
		go func() { defer bg.Done(); probe.run(bgCtx, cv, 30*time.Second) }()
		checks = append(checks, webhook.Check{Name: "cvat", Required: false, Run: probe.check})
		if pipe, err = startPipeline(ctx, env, cv, queue, cfg, reg, log); err != nil {
			return err
		}
	}
	var pipeFailed <-chan error
	stopPipe := func(deadline time.Time) error { return nil }
	if pipe != nil {
		pipeFailed, stopPipe = pipe.failed, pipe.stop
	}

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
		return errors.Join(err, stopPipe(time.Now().Add(cfg.ShutdownGrace)))
	}
	hs := srv.HTTPServer()
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(ln) }()
	log.Info("listening", "addr", ln.Addr().String(), "mode", string(env.Mode), "version", version,
		"webhook_path", webhook.Path, "secrets", len(cfg.WebhookSecrets))

	var shutdownErr error
	select {
	case err := <-serveErr:
		shutdownErr = fmt.Errorf("http server: %w", err)
		serveErr <- nil
	case err := <-pipeFailed:
		shutdownErr = fmt.Errorf("pipeline: %w", err)
	case <-ctx.Done():
	}

	log.Info("shutting down", "grace", cfg.ShutdownGrace.String())
	deadline := time.Now().Add(cfg.ShutdownGrace)
	graceCtx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
	defer cancel()
	srv.Drain()
	// Stop taking webhooks first (in-flight ones finish and are stored), then
	// the worker: pending work is nacked for another replica, running exports
	// get what is left of the grace period.
	shutdownErr = errors.Join(shutdownErr, hs.Shutdown(graceCtx))
	if err := <-serveErr; err != nil && !errors.Is(err, http.ErrServerClosed) {
		shutdownErr = errors.Join(shutdownErr, err)
	}
	shutdownErr = errors.Join(shutdownErr, stopPipe(deadline.Add(-time.Second)))
	if shutdownErr != nil {
		log.Error("shutdown incomplete", "error", shutdownErr.Error())
		return shutdownErr
	}
	log.Info("stopped")
	return nil
}
