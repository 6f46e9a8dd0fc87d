package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cvat-sync/cvat-sync/internal/cloud"
	"github.com/cvat-sync/cvat-sync/internal/config"
	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
	"github.com/cvat-sync/cvat-sync/internal/inbox"
	"github.com/cvat-sync/cvat-sync/internal/pipeline"
	"github.com/cvat-sync/cvat-sync/internal/signature"
	"github.com/cvat-sync/cvat-sync/internal/sink"
	"github.com/cvat-sync/cvat-sync/internal/task"
)

// newCVAT builds the CVAT client from the configuration.
func newCVAT(cfg config.Config, org string, reg prometheus.Registerer, log *slog.Logger) (*cvatapi.Client, error) {
	return cvatapi.New(cvatapi.Config{
		BaseURL: cfg.CVATURL, Token: cfg.CVATToken, AuthScheme: cfg.CVATAuth,
		Username: cfg.CVATUsername, Password: cfg.CVATPassword, Org: org,
		UserAgent: "cvat-sync/" + version, Registerer: reg, Logger: log,
	})
}

// stores are the bucket's archives and record and the outbox publisher.
type stores struct {
	archives *sink.Archives
	records  *sink.Records
	outbox   *sink.Outbox
}

func newStores(env *cloud.Env, cfg config.Config, reg prometheus.Registerer, log *slog.Logger) (stores, error) {
	if err := sink.CheckPrefixes(cfg.GCSPrefix, cfg.GCSStatePrefix); err != nil {
		return stores{}, &exitError{code: 2, err: fmt.Errorf("CVAT_SYNC_GCS_STATE_PREFIX and CVAT_SYNC_GCS_PREFIX: %w", err)}
	}
	a, err := sink.NewArchives(sink.ArchivesConfig{Client: env.Storage, Bucket: cfg.GCSBucket, Prefix: cfg.GCSPrefix, Registerer: reg, Logger: log})
	if err != nil {
		return stores{}, err
	}
	r, err := sink.NewRecords(sink.RecordsConfig{Client: env.Storage, Bucket: cfg.GCSBucket, Prefix: cfg.GCSStatePrefix, Logger: log})
	if err != nil {
		return stores{}, err
	}
	o, err := sink.NewOutbox(sink.OutboxConfig{Publisher: env.PubSub.Publisher(cfg.OutboxTopic), Registerer: reg, Logger: log})
	if err != nil {
		return stores{}, err
	}
	return stores{archives: a, records: r, outbox: o}, nil
}

func policy(cfg config.Config) task.Policy { return task.Policy(cfg.Trigger) }

// newSyncer is the syncer of backfill: the service's, without a worker.
func newSyncer(cv *cvatapi.Client, s stores, cfg config.Config, log *slog.Logger) (*pipeline.Syncer, error) {
	return pipeline.NewSyncer(pipeline.SyncerConfig{CVAT: cv, Archives: s.archives, Records: s.records, Outbox: s.outbox,
		Formats: cfg.ExportFormats, SaveImages: cfg.SaveImages, Policy: policy(cfg), Logger: log})
}

// startPipeline builds and starts the worker and the converger on the inbox.
func startPipeline(ctx context.Context, env *cloud.Env, cv *cvatapi.Client, queue *inbox.Queue, s stores, cfg config.Config,
	pm *pipeline.Metrics, reg prometheus.Registerer, log *slog.Logger) (*pipeline.Pipeline, func(), error) {
	dlq, err := inbox.NewDeadLetters(inbox.DeadLettersConfig{Publisher: env.PubSub.Publisher(cfg.DeadLetterTopic)})
	if err != nil {
		return nil, nil, err
	}
	pcfg := pipeline.Config{CVAT: cv, Archives: s.archives, Records: s.records, Outbox: s.outbox, Queue: queue, DeadLetters: dlq,
		Formats: cfg.ExportFormats, SaveImages: cfg.SaveImages, Policy: policy(cfg),
		Debounce: cfg.Debounce, MaxWait: cfg.MaxWait, MaxAttempts: cfg.MaxAttempts,
		ReconcileInterval: cfg.ReconcileInterval, FullReconcileInterval: cfg.FullReconcileInterval,
		Since: cfg.SyncSince, MaxDeleteFraction: cfg.MaxDeleteFraction, Metrics: pm, Registerer: reg, Logger: log}
	recv, err := inbox.NewReceiver(inbox.ReceiverConfig{Subscriber: env.PubSub.Subscriber(cfg.InboxSubscription),
		DeadLetters: dlq, Hold: pipeline.LeaseHold(pcfg), Observe: pm.ObserveInbox, Logger: log.With("component", "inbox")})
	if err != nil {
		dlq.Stop()
		return nil, nil, err
	}
	pcfg.Inbox = recv
	p, err := pipeline.New(pcfg)
	if err != nil {
		dlq.Stop()
		return nil, nil, err
	}
	p.Start(ctx)
	return p, dlq.Stop, nil
}

// cvatProbe checks CVAT for the health monitor: reachable, and accepting
// the credentials. It reports what to fix, never the credentials.
//
// It also adapts the signature check to CVAT's release: CVAT 2.3.x signs
// its bodies plus a newline it does not send, so once such a CVAT answers,
// those signatures are accepted too (as CVAT_SYNC_LEGACY_SIGNATURE=true
// does from the start).
func cvatProbe(cv *cvatapi.Client, cfg config.Config, verifier *signature.Verifier, log *slog.Logger) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		if cv != nil {
			if v, err := cv.Version(ctx); err == nil && v.SignsWithNewline() && !verifier.LegacyNewline() {
				verifier.SetLegacyNewline(true)
				log.Info("CVAT "+v.String()+" signs webhooks over the body plus a newline: those signatures are accepted from now on", "cvat_version", v.String())
			}
		}
		if err := cvatUnconfigured(cv, cfg); err != nil {
			return err
		}
		// CheckAuth's error names the setting and the scheme CVAT refused.
		return cv.CheckAuth(ctx)
	}
}

// cvatUnconfigured is what the settings alone say is missing to reach CVAT
// (no URL, no credentials), nil when nothing is: readiness reports it from
// the first answer, without waiting for a probe.
func cvatUnconfigured(cv *cvatapi.Client, cfg config.Config) error {
	switch {
	case cv == nil:
		return errors.New("CVAT_SYNC_CVAT_URL is not set: webhooks are stored, nothing is exported")
	case !cfg.HasCredentials():
		return errors.New("no CVAT credentials: set CVAT_SYNC_CVAT_TOKEN (or _FILE), or CVAT_SYNC_CVAT_USERNAME and CVAT_SYNC_CVAT_PASSWORD")
	}
	return nil
}

// startupTimeout bounds the checks that wait for a dependency at start.
const startupTimeout = 10 * time.Second
