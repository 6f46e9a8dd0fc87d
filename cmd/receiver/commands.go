package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/cvat-sync/cvat-sync/internal/cloud"
	"github.com/cvat-sync/cvat-sync/internal/config"
	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
	"github.com/cvat-sync/cvat-sync/internal/pipeline"
	"github.com/cvat-sync/cvat-sync/internal/sink"
	"github.com/cvat-sync/cvat-sync/internal/webhook"
)

// exitIncomplete is backfill's exit status when some task was not exported.
const exitIncomplete = 3

// commandLogger logs warnings and errors only (unless --log-level says
// otherwise) so a command's own output stays readable.
func commandLogger(cfg config.Config, w io.Writer) *slog.Logger {
	level := max(cfg.LogLevel, slog.LevelWarn)
	if cfg.LogLevel < slog.LevelInfo {
		level = cfg.LogLevel
	}
	return newLogger(w, level)
}

// backfill exports the existing tasks of a project, an organization or the
// whole server through the same exporter as serve. It never binds the listen
// address, so it runs beside a running serve; on the embedded default it
// attaches to that serve's Pub/Sub and GCS servers when one runs.
func backfill(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	var project int64
	var org, tasks, since string
	var dryRun bool
	cfg, _, err := loadConfig("backfill", args, getenv, stdout, config.NeedsCVAT, func(fs *flag.FlagSet) {
		fs.Int64Var(&project, "project", 0, "only the tasks of this project id")
		fs.StringVar(&org, "org", "", "organization slug (default --cvat-org; the personal sandbox when neither)")
		fs.StringVar(&tasks, "task", "", "only these task ids, comma-separated")
		fs.StringVar(&since, "since", "", "only tasks updated since this time (RFC 3339) or this long ago (Go duration, e.g. 72h)")
		fs.BoolVar(&dryRun, "dry-run", false, "list what would be exported; export nothing")
	})
	if err != nil {
		return err
	}
	filter := cvatapi.TaskFilter{ProjectID: project}
	if filter.UpdatedSince, err = parseSince(since, time.Now()); err != nil {
		return usageError("backfill: --since: %v", err)
	}
	for _, s := range strings.Split(tasks, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		id, err := strconv.ParseInt(s, 10, 64)
		if err != nil || id <= 0 {
			return usageError("backfill: --task: %q is not a task id", s)
		}
		filter.IDs = append(filter.IDs, id)
	}
	if org == "" {
		org = cfg.CVATOrg
	}
	log := commandLogger(cfg, stdout)
	reg := newRegistry()
	cv, err := newCVAT(cfg, org, reg, log)
	if err != nil {
		return err
	}
	defer cv.Close()
	if err := cv.CheckFormats(ctx, cfg.ExportFormats); err != nil {
		return fmt.Errorf("backfill: %w", err)
	}
	env, err := openCloud(ctx, cfg, getenv, log, true)
	if err != nil {
		return err
	}
	defer env.Close()
	s, err := newStores(env, cfg, reg, log)
	if err != nil {
		return err
	}
	defer s.outbox.Stop()
	syncer, err := newSyncer(cv, s, cfg, log)
	if err != nil {
		return err
	}

	progress := progressLines(stdout)
	if f, ok := stdout.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		progress = progressBar(f)
	}
	sum, err := pipeline.Backfill(ctx, syncer, pipeline.BackfillOptions{Filter: filter, DryRun: dryRun, Progress: progress})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "backfill: %d tasks: %d exported, %d already up to date, %d would be exported, %d gone, %d failed\n",
		sum.Tasks, sum.Exported, sum.Unchanged, sum.Missing, sum.Gone, sum.Failed)
	for _, e := range sum.Errors {
		fmt.Fprintln(stdout, "  failed:", e)
	}
	if sum.Failed > 0 {
		return &exitError{code: exitIncomplete, err: fmt.Errorf("backfill: %d of %d tasks not exported", sum.Failed, sum.Tasks)}
	}
	return nil
}

// parseSince reads an RFC 3339 time or a duration before now.
func parseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time (2026-05-01T00:00:00Z) nor a duration (72h)", s)
	}
	return now.Add(-d), nil
}

func progressLines(w io.Writer) func(done, total int, t cvatapi.Task, outcome string) {
	return func(done, total int, t cvatapi.Task, outcome string) {
		if done == 0 {
			fmt.Fprintf(w, "backfill: %d tasks to check\n", total)
			return
		}
		fmt.Fprintf(w, "[%d/%d] task %d %q: %s\n", done, total, t.ID, t.Name, outcome)
	}
}

func progressBar(w io.Writer) func(done, total int, t cvatapi.Task, outcome string) {
	var bar *progressbar.ProgressBar
	return func(done, total int, t cvatapi.Task, outcome string) {
		if done == 0 {
			bar = progressbar.NewOptions(total, progressbar.OptionSetWriter(w), progressbar.OptionShowCount(),
				progressbar.OptionSetDescription("backfill"), progressbar.OptionSetPredictTime(true),
				progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionFullWidth())
			return
		}
		bar.Describe(fmt.Sprintf("task %d: %s", t.ID, outcome))
		_ = bar.Set(done)
		if done == total {
			_ = bar.Finish()
			fmt.Fprintln(w)
		}
	}
}

// ensureWebhook makes CVAT have the webhook that points at this service.
func ensureWebhook(ctx context.Context, cv *cvatapi.Client, cfg config.Config) (cvatapi.Webhook, bool, error) {
	spec, err := webhookSpec(cfg)
	if err != nil {
		return cvatapi.Webhook{}, false, err
	}
	return cv.EnsureWebhook(ctx, spec)
}

// webhookSpec is the CVAT webhook that points at this service; the events
// are left to cvatapi, which knows what each CVAT release offers.
func webhookSpec(cfg config.Config) (cvatapi.WebhookSpec, error) {
	spec := cvatapi.WebhookSpec{
		TargetURL:   cfg.PublicURL + webhook.Path,
		Secret:      cfg.WebhookSecrets[0],
		ProjectID:   cfg.WebhookProjectID,
		Org:         cfg.WebhookOrg,
		Description: "cvat-sync: exports annotations to Cloud Storage",
		EnableSSL:   strings.HasPrefix(cfg.PublicURL, "https://"),
	}
	if spec.ProjectID == 0 && spec.Org == "" {
		return spec, usageError("webhook: set CVAT_SYNC_WEBHOOK_PROJECT_ID (a project webhook) or CVAT_SYNC_WEBHOOK_ORG / CVAT_SYNC_CVAT_ORG (an organization webhook)")
	}
	return spec, nil
}

// webhookRegister creates or updates the CVAT webhook that points at
// CVAT_SYNC_PUBLIC_URL; running it again changes nothing.
func webhookRegister(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	cfg, _, err := loadConfig("webhook register", args, getenv, stdout, config.NeedsCVAT|config.NeedsSecret|config.NeedsPublicURL, nil)
	if err != nil {
		return err
	}
	cv, err := newCVAT(cfg, cfg.WebhookOrg, nil, commandLogger(cfg, stdout))
	if err != nil {
		return err
	}
	defer cv.Close()
	wh, changed, err := ensureWebhook(ctx, cv, cfg)
	if err != nil {
		return fmt.Errorf("webhook register: %w", err)
	}
	return json.NewEncoder(stdout).Encode(map[string]any{
		"webhook_id": wh.ID, "target_url": wh.TargetURL, "type": wh.Type, "events": wh.Events, "changed": changed,
	})
}

// webhookPing makes CVAT deliver a ping to this service and reports CVAT's
// record of the delivery.
func webhookPing(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	var id int64
	cfg, _, err := loadConfig("webhook ping", args, getenv, stdout, config.NeedsCVAT, func(fs *flag.FlagSet) {
		fs.Int64Var(&id, "id", 0, "CVAT webhook id (default: the one webhook register manages, found by CVAT_SYNC_PUBLIC_URL)")
	})
	if err != nil {
		return err
	}
	cv, err := newCVAT(cfg, cfg.WebhookOrg, nil, commandLogger(cfg, stdout))
	if err != nil {
		return err
	}
	defer cv.Close()
	if id == 0 {
		if cfg.PublicURL == "" || len(cfg.WebhookSecrets) == 0 {
			return usageError("webhook ping: give --id, or CVAT_SYNC_PUBLIC_URL and the webhook secret to find the webhook")
		}
		wh, _, err := ensureWebhook(ctx, cv, cfg)
		if err != nil {
			return fmt.Errorf("webhook ping: %w", err)
		}
		id = wh.ID
	}
	d, err := cv.PingWebhook(ctx, id)
	if err != nil {
		return fmt.Errorf("webhook ping: %w", err)
	}
	_ = json.NewEncoder(stdout).Encode(map[string]any{"webhook_id": id, "delivery_id": d.ID, "status_code": d.StatusCode})
	if d.StatusCode/100 != 2 {
		hint := ""
		switch d.StatusCode {
		case 407, 502:
			hint = " (407/502: CVAT's Smokescreen proxy blocked the address; allow it with smokescreen.opts --allow-address=<receiver ClusterIP>, see README)"
		case 401:
			hint = " (401: the receiver does not know the webhook's secret)"
		}
		return fmt.Errorf("webhook ping: CVAT's delivery got status %d%s", d.StatusCode, hint)
	}
	return nil
}

// outboxTail prints the export notices as JSON lines, from a subscription of
// its own that it deletes on exit. On the embedded default it attaches to the
// running serve.
func outboxTail(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	var limit int
	cfg, _, err := loadConfig("outbox tail", args, getenv, stdout, 0, func(fs *flag.FlagSet) {
		fs.IntVar(&limit, "limit", 0, "stop after this many notices (0: until interrupted)")
	})
	if err != nil {
		return err
	}
	log := commandLogger(cfg, os.Stderr)
	if cfg.Embedded(getenv) {
		if _, err := os.Stat(cloud.EndpointsFile(cfg.DataDir)); err != nil {
			return fmt.Errorf("outbox tail: no running embedded service found in %s: start \"receiver serve\" with the same CVAT_SYNC_DATA_DIR first", cfg.DataDir)
		}
	}
	env, err := cloud.Open(ctx, cloud.Settings{Project: cfg.GCPProject, DataDir: cfg.DataDir, Getenv: getenv, Attach: true}, log)
	if err != nil {
		return err
	}
	defer env.Close()
	var b [4]byte
	_, _ = rand.Read(b[:])
	id := "cvat-sync-tail-" + hex.EncodeToString(b[:])
	name := env.SubscriptionName(id)
	if _, err := env.PubSub.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{
		Name: name, Topic: env.TopicName(cfg.OutboxTopic), AckDeadlineSeconds: 30, EnableMessageOrdering: true,
	}); err != nil {
		return fmt.Errorf("outbox tail: create subscription on %s: %w (on GCP this needs roles/pubsub.editor)", cfg.OutboxTopic, err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = env.PubSub.SubscriptionAdminClient.DeleteSubscription(dctx, &pubsubpb.DeleteSubscriptionRequest{Subscription: name})
	}()
	fmt.Fprintf(os.Stderr, "tailing %s (notices published from now on)\n", env.TopicName(cfg.OutboxTopic))
	return sink.Tail(ctx, env.PubSub.Subscriber(id), stdout, limit)
}

// versionWarnings says what a CVAT release cannot do that the operator
// should know at start.
func versionWarnings(version string, cfg config.Config) []string {
	v, ok := cvatapi.ParseVersion(version)
	if !ok {
		return nil
	}
	var out []string
	if !v.AtLeast(2, 4, 2) {
		out = append(out, "this CVAT fires no webhook for annotation saves (only for REST create, update and delete): "+
			"convergence, every CVAT_SYNC_RECONCILE_INTERVAL ("+cfg.ReconcileInterval.String()+"), is the export engine here")
		if cfg.ReconcileInterval == 0 {
			out = append(out, "CVAT_SYNC_RECONCILE_INTERVAL is 0: with this CVAT, annotation saves are never exported; set it (e.g. 10m)")
		}
	}
	if !v.AtLeast(2, 4, 0) {
		if !cfg.LegacySignature {
			out = append(out, "CVAT 2.3 signs every delivery over the body plus a newline: set CVAT_SYNC_LEGACY_SIGNATURE=true or every delivery is refused with 401")
		}
		out = append(out, "CVAT 2.3 puts a task's labels and segments into its webhook bodies; raise CVAT_SYNC_MAX_BODY_BYTES if deliveries are refused with 413")
	}
	return out
}
