package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/cvat-sync/cvat-sync/internal/cloud"
	"github.com/cvat-sync/cvat-sync/internal/config"
	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
	"github.com/cvat-sync/cvat-sync/internal/pipeline"
	"github.com/cvat-sync/cvat-sync/internal/signature"
	"github.com/cvat-sync/cvat-sync/internal/sink"
	"github.com/cvat-sync/cvat-sync/internal/webhook"
)

// commandLogger logs warnings and errors only (unless --log-level says
// otherwise) so a command's own output stays readable.
func commandLogger(cfg config.Config, w io.Writer) *slog.Logger {
	level := max(cfg.LogLevel, slog.LevelWarn)
	if cfg.LogLevel < slog.LevelInfo {
		level = cfg.LogLevel
	}
	return newLogger(w, level)
}

// backfillCmd exports the existing tasks of a project, an organization or
// the whole server through the same exporter as serve. It never binds the
// listen address, so it runs beside a running serve; on the embedded
// default it attaches to that serve's Pub/Sub and GCS servers when one runs.
type backfillCmd struct {
	project int64
	org     string
	tasks   idList
	since   sinceFlag
	dryRun  bool
}

func newBackfill(fs *flag.FlagSet) runner {
	b := &backfillCmd{}
	fs.Int64Var(&b.project, "project", 0, "only the tasks of this project id")
	fs.StringVar(&b.org, "org", "", "organization slug (default --cvat-org; the personal sandbox when neither)")
	fs.Var(&b.tasks, "task", "only these task `ids`, comma-separated")
	fs.Var(&b.since, "since", "only tasks updated since this `time` (RFC 3339) or this long ago (a duration, e.g. 72h)")
	fs.BoolVar(&b.dryRun, "dry-run", false, "list what would be exported; export nothing")
	return b
}

func (b *backfillCmd) run(ctx context.Context, inv invocation) error {
	cfg := inv.cfg
	filter := cvatapi.TaskFilter{ProjectID: b.project, IDs: b.tasks, UpdatedSince: b.since.t}
	org := b.org
	if org == "" {
		org = cfg.CVATOrg
	}
	log := commandLogger(cfg, inv.err)
	reg := newRegistry()
	cv, err := newCVAT(cfg, org, reg, log)
	if err != nil {
		return err
	}
	defer cv.Close()
	if err := cv.CheckFormats(ctx, cfg.ExportFormats); err != nil {
		return fmt.Errorf("backfill: %w", err)
	}
	if !b.dryRun && cfg.Embedded(inv.getenv) {
		if _, err := os.Stat(cloud.EndpointsFile(cfg.DataDir)); err != nil {
			log.Warn("no running serve on this data directory: the archives are kept, but the notices go to this backfill's own Pub/Sub and are lost when it ends; "+
				"start \"receiver serve\" with the same CVAT_SYNC_DATA_DIR first for \"receiver outbox tail\" to see them", "data_dir", cfg.DataDir)
		}
	}
	env, err := openCloud(ctx, cfg, inv.getenv, log, true)
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

	progress := progressLines(inv.out)
	if f, ok := inv.out.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		progress = progressBar(f)
	}
	sum, err := pipeline.Backfill(ctx, syncer, pipeline.BackfillOptions{Filter: filter, DryRun: b.dryRun, Progress: progress})
	if err != nil {
		return fmt.Errorf("backfill: %w", err)
	}
	fmt.Fprintf(inv.out, "backfill: %d tasks: %d exported, %d already up to date, %d would be exported, %d gone, %d failed\n",
		sum.Tasks, sum.Exported, sum.Unchanged, sum.Missing, sum.Gone, sum.Failed)
	for _, e := range sum.Errors {
		fmt.Fprintln(inv.out, "  failed:", e)
	}
	if sum.Listing != nil {
		fmt.Fprintln(inv.out, "  incomplete:", sum.Listing)
		return &exitError{code: exitIncomplete, err: fmt.Errorf("backfill: the task list is incomplete (%d tasks listed, %d not exported): %w", sum.Tasks, sum.Failed, sum.Listing)}
	}
	if sum.Failed > 0 {
		return &exitError{code: exitIncomplete, err: fmt.Errorf("backfill: %d of %d tasks not exported", sum.Failed, sum.Tasks)}
	}
	return nil
}

// idList is a flag of comma-separated CVAT ids.
type idList []int64

func (l *idList) String() string {
	var s []string
	for _, id := range *l {
		s = append(s, strconv.FormatInt(id, 10))
	}
	return strings.Join(s, ",")
}

func (l *idList) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		id, err := strconv.ParseInt(s, 10, 64)
		if err != nil || id <= 0 {
			return fmt.Errorf("%q is not a task id", s)
		}
		*l = append(*l, id)
	}
	return nil
}

// sinceFlag is a time given as RFC 3339 or as a duration before now.
type sinceFlag struct {
	t   time.Time
	raw string
}

func (f *sinceFlag) String() string { return f.raw }

func (f *sinceFlag) Set(v string) error {
	t, err := parseSince(v, time.Now())
	if err != nil {
		return err
	}
	f.t, f.raw = t, v
	return nil
}

// parseSince reads an RFC 3339 time or a duration before now.
func parseSince(s string, now time.Time) (time.Time, error) {
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

// webhookSpec is the CVAT webhook that points at this service; the events
// are left to cvatapi, which knows what each CVAT release offers.
func webhookSpec(cfg config.Config) (cvatapi.WebhookSpec, error) {
	spec := cvatapi.WebhookSpec{
		TargetURL:   cfg.PublicURL + webhook.Path,
		ProjectID:   cfg.WebhookProjectID,
		Org:         cfg.WebhookOrg,
		Description: "cvat-sync: exports annotations to Cloud Storage",
		EnableSSL:   strings.HasPrefix(cfg.PublicURL, "https://"),
	}
	if len(cfg.WebhookSecrets) > 0 {
		spec.Secret = cfg.WebhookSecrets[0]
	}
	if spec.ProjectID == 0 && spec.Org == "" {
		return spec, usageError("webhook: set CVAT_SYNC_WEBHOOK_PROJECT_ID (a project webhook) or CVAT_SYNC_WEBHOOK_ORG / CVAT_SYNC_CVAT_ORG (an organization webhook)")
	}
	return spec, nil
}

// registerCmd creates or updates the CVAT webhook that points at
// CVAT_SYNC_PUBLIC_URL; running it again changes nothing.
type registerCmd struct {
	wait     time.Duration
	optional bool
}

func newRegister(fs *flag.FlagSet) runner {
	r := &registerCmd{}
	fs.DurationVar(&r.wait, "wait", 0, "keep trying this long while CVAT is unreachable or refuses the credentials (a token not created yet), with a backoff from 1s to 30s and a log line per attempt; 0 tries once")
	fs.BoolVar(&r.optional, "optional", false, "exit 0, with a message saying why, when no webhook could be registered: no CVAT credentials configured, or CVAT unreachable, refusing or failing within --wait (an install hook that must not fail a release); invalid settings still fail")
	return r
}

func (r *registerCmd) run(ctx context.Context, inv invocation) error {
	cfg := inv.cfg
	spec, err := webhookSpec(cfg)
	if err != nil {
		return err
	}
	if err := cfg.Require(config.NeedsCredentials); err != nil {
		return r.notRegistered(inv, 2, err)
	}
	log := commandLogger(cfg, inv.err)
	cv, err := newCVAT(cfg, cfg.WebhookOrg, nil, log)
	if err != nil {
		return err
	}
	defer cv.Close()
	var wh cvatapi.Webhook
	var changed bool
	err = retryCVAT(ctx, r.wait, log.With("command", "webhook register"), func(ctx context.Context) error {
		var err error
		wh, changed, err = cv.EnsureWebhook(ctx, spec)
		return err
	})
	if err != nil {
		return r.notRegistered(inv, 1, err)
	}
	return json.NewEncoder(inv.out).Encode(map[string]any{
		"webhook_id": wh.ID, "target_url": wh.TargetURL, "type": wh.Type, "events": wh.Events, "changed": changed,
	})
}

// notRegistered is the outcome of a registration that did not happen: an
// error with the exit status code, or with --optional a message and exit 0.
func (r *registerCmd) notRegistered(inv invocation, code int, cause error) error {
	if !r.optional {
		return &exitError{code: code, err: fmt.Errorf("webhook register: %w", cause)}
	}
	fmt.Fprintf(inv.err, "webhook register: no webhook registered; --optional, so exit status 0. Run \"receiver webhook register\" again once this is fixed:\n%v\n", cause)
	return nil
}

// The backoff of retryCVAT, and how long an attempt started before the
// end of the wait may run past it.
const (
	retryWaitMin = time.Second
	retryWaitMax = 30 * time.Second
	attemptGrace = 30 * time.Second
)

// retryCVAT calls attempt until it succeeds, fails for a reason waiting
// cannot change, or wait has passed. CVAT unreachable (cvatapi's
// ErrUnavailable) or refusing the credentials (ErrUnauthorized: on a fresh
// install the token may not exist yet) is retried; each failed attempt is
// logged with what comes next. wait 0 means one attempt.
func retryCVAT(ctx context.Context, wait time.Duration, log *slog.Logger, attempt func(context.Context) error) error {
	if wait <= 0 {
		return attempt(ctx)
	}
	deadline := time.Now().Add(wait)
	actx, cancel := context.WithDeadline(ctx, deadline.Add(attemptGrace))
	defer cancel()
	backoff := retryWaitMin
	for n := 1; ; n++ {
		err := attempt(actx)
		if err == nil {
			return nil
		}
		var reason string
		switch {
		case errors.Is(err, cvatapi.ErrUnavailable):
			reason = "CVAT unreachable"
		case errors.Is(err, cvatapi.ErrUnauthorized):
			reason = "CVAT refused the credentials"
		default:
			return err
		}
		left := time.Until(deadline)
		if left <= 0 || ctx.Err() != nil {
			return fmt.Errorf("gave up after %d attempts in %s: %w", n, wait, err)
		}
		next := min(backoff, left)
		log.Warn("CVAT not ready; retrying", "reason", reason, "attempt", n, "error", err.Error(),
			"retry_in", next.String(), "gives_up_in", left.Round(time.Second).String())
		t := time.NewTimer(next)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("interrupted after %d attempts: %w", n, err)
		case <-t.C:
		}
		backoff = min(2*backoff, retryWaitMax)
	}
}

// pingCmd makes CVAT deliver a ping to this service and reports CVAT's
// record of the delivery.
type pingCmd struct{ id int64 }

func newPing(fs *flag.FlagSet) runner {
	p := &pingCmd{}
	fs.Int64Var(&p.id, "id", 0, "CVAT webhook id (default: the one webhook register manages, found by --public-url and the webhook secret)")
	return p
}

func (p *pingCmd) run(ctx context.Context, inv invocation) error {
	cfg := inv.cfg
	cv, err := newCVAT(cfg, cfg.WebhookOrg, nil, commandLogger(cfg, inv.err))
	if err != nil {
		return err
	}
	defer cv.Close()
	id := p.id
	if id == 0 {
		if cfg.PublicURL == "" || len(cfg.WebhookSecrets) == 0 {
			return usageError("webhook ping: give --id, or CVAT_SYNC_PUBLIC_URL and the webhook secret to find the webhook")
		}
		spec, err := webhookSpec(cfg)
		if err != nil {
			return err
		}
		wh, found, err := cv.FindWebhook(ctx, spec)
		if err != nil {
			return fmt.Errorf("webhook ping: %w", err)
		}
		if !found {
			return fmt.Errorf("webhook ping: CVAT has no webhook of this service for %s with this secret: run \"receiver webhook register\" first, or give --id", spec.TargetURL)
		}
		id = wh.ID
	}
	d, err := cv.PingWebhook(ctx, id)
	if err != nil {
		return fmt.Errorf("webhook ping: %w", err)
	}
	_ = json.NewEncoder(inv.out).Encode(map[string]any{"webhook_id": id, "delivery_id": d.ID, "status_code": d.StatusCode})
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

// tailCmd prints the export notices as JSON lines, from a subscription of
// its own that it deletes on exit. On the embedded default it attaches to
// the running serve.
type tailCmd struct{ limit int }

func newTail(fs *flag.FlagSet) runner {
	c := &tailCmd{}
	fs.IntVar(&c.limit, "limit", 0, "stop after this many notices (0: until interrupted)")
	return c
}

func (c *tailCmd) run(ctx context.Context, inv invocation) error {
	cfg := inv.cfg
	log := commandLogger(cfg, inv.err)
	if cfg.Embedded(inv.getenv) {
		if _, err := os.Stat(cloud.EndpointsFile(cfg.DataDir)); err != nil {
			return fmt.Errorf("outbox tail: no running embedded service found in %s: start \"receiver serve\" with the same CVAT_SYNC_DATA_DIR first", cfg.DataDir)
		}
	}
	env, err := cloud.New(ctx, cloud.Config{Project: cfg.GCPProject, DataDir: cfg.DataDir, Getenv: inv.getenv, Attach: true, Logger: log})
	if err != nil {
		return err
	}
	defer env.Close()
	sub, err := env.CreateTempSubscription(ctx, cfg.OutboxTopic, "cvat-sync-tail-")
	if err != nil {
		return fmt.Errorf("outbox tail: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := sub.Delete(dctx); err != nil {
			log.Warn("the tail's subscription was not deleted", "subscription", sub.Name, "error", err.Error())
		}
	}()
	fmt.Fprintf(inv.err, "tailing %s (notices published from now on)\n", sub.Topic)
	return sink.Tail(ctx, sub.Subscriber(), inv.out, c.limit)
}

// signCmd prints the header value CVAT would send for FILE (or standard
// input).
type signCmd struct{ secret, secretFile string }

func newSign(fs *flag.FlagSet) runner {
	c := &signCmd{}
	fs.StringVar(&c.secret, "secret", "", "the webhook secret")
	fs.StringVar(&c.secretFile, "secret-file", "", "file holding the webhook secret")
	return c
}

func (c *signCmd) run(_ context.Context, inv invocation) error {
	secret := c.secret
	if c.secretFile != "" {
		if c.secret != "" {
			return usageError("sign: set either --secret or --secret-file, not both")
		}
		b, err := os.ReadFile(c.secretFile)
		if err != nil {
			return fmt.Errorf("sign: read --secret-file: %w", err)
		}
		secret = strings.TrimSpace(string(b))
	}
	if secret == "" {
		return usageError("sign: --secret or --secret-file is required: receiver sign --secret S [FILE]")
	}
	var body []byte
	var err error
	switch len(inv.args) {
	case 0:
		body, err = io.ReadAll(inv.in)
	case 1:
		body, err = os.ReadFile(inv.args[0])
	default:
		return usageError("sign: at most one FILE")
	}
	if err != nil {
		return fmt.Errorf("sign: read the body: %w", err)
	}
	_, err = fmt.Fprintln(inv.out, signature.Sign(secret, body))
	return err
}

// versionWarnings says what a CVAT release cannot do that the operator
// should know at start.
func versionWarnings(version string, cfg config.Config) []string {
	v, ok := cvatapi.ParseVersion(version)
	if !ok {
		return nil
	}
	var out []string
	if !v.FiresSaveWebhooks() {
		out = append(out, "this CVAT fires no webhook for annotation saves (only for REST create, update and delete): "+
			"convergence, every CVAT_SYNC_RECONCILE_INTERVAL ("+cfg.ReconcileInterval.String()+"), is the export engine here")
		if cfg.ReconcileInterval == 0 {
			out = append(out, "CVAT_SYNC_RECONCILE_INTERVAL is 0: with this CVAT, annotation saves are never exported; set it (e.g. 10m)")
		}
	}
	if v.InlinesTaskDetails() {
		out = append(out, "this CVAT puts a task's labels and segments into its webhook bodies; raise CVAT_SYNC_MAX_BODY_BYTES if deliveries are refused with 413")
	}
	return out
}
