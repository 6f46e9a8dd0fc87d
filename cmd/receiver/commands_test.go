package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/storage"
	"google.golang.org/api/iterator"

	"github.com/cvat-sync/cvat-sync/internal/cloud"
	"github.com/cvat-sync/cvat-sync/internal/cvatfake"
	"github.com/cvat-sync/cvat-sync/internal/eventually"
	"github.com/cvat-sync/cvat-sync/internal/logbuf"
)

// runCmd runs a command to its end and returns what it printed on
// standard output; what it printed on standard error is logged when it
// fails.
func runCmd(t *testing.T, env map[string]string, args ...string) (string, error) {
	t.Helper()
	out, errOut, err := runStreams(t, env, args...)
	if err != nil {
		t.Logf("receiver %s: %v; standard error:\n%s", strings.Join(args, " "), err, tail(errOut))
	}
	return out, err
}

// runStreams runs a command to its end and returns its standard output and
// standard error.
func runStreams(t *testing.T, env map[string]string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut logbuf.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err = run(ctx, append([]string{"receiver"}, args...), envMap(env), stdio{out: &out, err: &errOut})
	return out.String(), errOut.String(), err
}

// TestBackfillManyPages: a project with more tasks than fit a page of CVAT's
// listing is exported once per task; a second run finds nothing to do.
func TestBackfillManyPages(t *testing.T) {
	t.Parallel()
	em := newEmulators(t)
	f := cvatfake.New(t, cvatfake.Options{ExportPolls: -1, ArchiveSize: 512})
	p := f.AddProject(cvatfake.Project{Name: "many"})
	other := f.AddProject(cvatfake.Project{Name: "other"})
	const n = 230
	for i := 0; i < n; i++ {
		f.AddTask(cvatfake.Task{ProjectID: p.ID})
	}
	lone := f.AddTask(cvatfake.Task{ProjectID: other.ID})
	env := em.env(pipelineEnv(f, map[string]string{"CVAT_SYNC_DATA_DIR": t.TempDir()}))
	delete(env, "CVAT_SYNC_WEBHOOK_SECRET") // backfill needs none

	out, err := runCmd(t, env, "backfill", "--project", itoa(p.ID), "--dry-run")
	if err != nil || !strings.Contains(out, "230 tasks: 0 exported, 0 already up to date, 230 would be exported") {
		t.Fatalf("dry run: %v\n%s", err, tail(out))
	}
	out, err = runCmd(t, env, "backfill", "--project", itoa(p.ID))
	if err != nil || !strings.Contains(out, "230 tasks: 230 exported") || !strings.Contains(out, "[230/230]") {
		t.Fatalf("backfill: %v\n%s", err, tail(out))
	}
	if pages := len(f.CallsTo(http.MethodGet, "/api/tasks")); pages < 3 {
		t.Errorf("%d list calls, want several pages", pages)
	}
	eventually.Within(t, 20*time.Second, "230 notices", func() bool { return len(em.notices(t)) >= n })
	seen := map[int64]bool{}
	for _, no := range em.notices(t) {
		if seen[no.Data.Task.ID] {
			t.Errorf("task %d announced twice", no.Data.Task.ID)
		}
		seen[no.Data.Task.ID] = true
		if no.Data.Trigger.Event != "backfill" {
			t.Errorf("trigger %q", no.Data.Trigger.Event)
		}
	}
	out, err = runCmd(t, env, "backfill", "--project", itoa(p.ID))
	if err != nil || !strings.Contains(out, "230 tasks: 0 exported, 230 already up to date") {
		t.Fatalf("second backfill: %v\n%s", err, tail(out))
	}

	// A failing export makes the exit status say so.
	f.FailNextExport(lone.ID, "disk full")
	_, err = runCmd(t, env, "backfill", "--project", itoa(other.ID))
	if exitCode(err) != exitIncomplete {
		t.Errorf("backfill with a failed export: %v (exit %d), want exit %d", err, exitCode(err), exitIncomplete)
	}
}

func tail(s string) string {
	lines := strings.Split(s, "\n")
	return strings.Join(lines[max(0, len(lines)-8):], "\n")
}

// TestWebhookRegisterAndPing: register twice changes CVAT once; the ping CVAT
// then delivers reaches the running service and verifies.
func TestWebhookRegisterAndPing(t *testing.T) {
	t.Parallel()
	em := newEmulators(t)
	f := cvatfake.New(t, cvatfake.Options{})
	p := f.AddProject(cvatfake.Project{Name: "hooks"})
	s := startService(t, em.env(pipelineEnv(f, nil)))
	env := em.env(pipelineEnv(f, map[string]string{
		"CVAT_SYNC_PUBLIC_URL":         "http://" + s.addr,
		"CVAT_SYNC_WEBHOOK_PROJECT_ID": itoa(p.ID),
		"CVAT_SYNC_DATA_DIR":           t.TempDir(),
	}))
	var results []map[string]any
	for i := 0; i < 2; i++ {
		out, err := runCmd(t, env, "webhook", "register")
		if err != nil {
			t.Fatalf("register #%d: %v\n%s", i+1, err, out)
		}
		var r map[string]any
		if err := json.Unmarshal([]byte(lastLine(out)), &r); err != nil {
			t.Fatalf("register output %q: %v", out, err)
		}
		results = append(results, r)
	}
	if results[0]["changed"] != true || results[1]["changed"] != false {
		t.Errorf("changed: first %v, second %v; want true then false", results[0]["changed"], results[1]["changed"])
	}
	hooks := f.Webhooks()
	if len(hooks) != 1 || hooks[0].TargetURL != "http://"+s.addr+"/webhooks/cvat" || !f.WebhookSecretIs(hooks[0].ID, e2eSecret) {
		t.Fatalf("CVAT's webhooks: %+v", hooks)
	}
	out, err := runCmd(t, env, "webhook", "ping")
	if err != nil || !strings.Contains(out, `"status_code":200`) {
		t.Fatalf("ping: %v\n%s", err, out)
	}
	if got := s.metric(t, "cvat_sync_webhook_deliveries_total", `event="ping"`, `outcome="ping"`); got != 1 {
		t.Errorf("pings received by the service: %v, want 1", got)
	}

	// By id, as an operator would after reading it from CVAT's UI.
	out, err = runCmd(t, env, "webhook", "ping", "--id", itoa(hooks[0].ID))
	if err != nil || !strings.Contains(out, `"status_code":200`) {
		t.Fatalf("ping by id: %v\n%s", err, out)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestEmbeddedExportTailAndRestart: on the embedded default the export lands
// in the data directory, `outbox tail` prints its notice, and after a restart
// on the same directory the archive is still there and not exported again.
func TestEmbeddedExportTailAndRestart(t *testing.T) {
	t.Parallel()
	f := cvatfake.New(t, cvatfake.Options{})
	p := f.AddProject(cvatfake.Project{Name: "embedded"})
	task := f.AddTask(cvatfake.Task{ProjectID: p.ID})
	job := f.AddJob(cvatfake.Job{TaskID: task.ID})
	dir := t.TempDir()
	env := pipelineEnv(f, map[string]string{"CVAT_SYNC_WEBHOOK_SECRET": e2eSecret, "CVAT_SYNC_DATA_DIR": dir})
	s := startService(t, env)

	// Tail in the background; wait until its subscription exists.
	tailOut := logbuf.New()
	tailCtx, stopTail := context.WithCancel(context.Background())
	tailDone := make(chan error, 1)
	go func() {
		tailDone <- run(tailCtx, []string{"receiver", "outbox", "tail", "--limit", "1"}, envMap(env), stdio{out: tailOut})
	}()
	ps := embeddedEnv(t, dir).PubSub
	eventually.Within(t, 20*time.Second, "the tail subscription", func() bool {
		it := ps.SubscriptionAdminClient.ListSubscriptions(context.Background(), &pubsubpb.ListSubscriptionsRequest{Project: "projects/cvat-sync-local"})
		for {
			sub, err := it.Next()
			if err != nil {
				return false
			}
			if strings.Contains(sub.Name, "cvat-sync-tail-") {
				return true
			}
		}
	})

	evs, _ := f.SaveAnnotations(job.ID)
	deliver(t, f, s, evs...)
	select {
	case err := <-tailDone:
		if err != nil {
			t.Fatalf("outbox tail: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("outbox tail printed nothing within 30s")
	}
	stopTail()
	var line struct {
		Attributes map[string]string `json:"attributes"`
		Data       struct {
			Object struct {
				Bucket, Name string
			} `json:"object"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(lastLine(tailOut.String())), &line); err != nil || line.Attributes["kind"] != "task.exported" {
		t.Fatalf("tail printed %q (%v)", tailOut.String(), err)
	}
	if _, err := os.Stat(dir + "/gcs/" + line.Data.Object.Bucket + "/" + line.Data.Object.Name); err != nil {
		t.Errorf("archive not under the data directory: %v", err)
	}
	s.stop(t)

	env["CVAT_SYNC_RECONCILE_INTERVAL"] = "200ms"
	s2 := startService(t, env)
	eventually.Within(t, 20*time.Second, "a reconcile pass", func() bool {
		return s2.metric(t, "cvat_sync_reconcile_passes_total", `kind="full"`, `outcome="ok"`) >= 1
	})
	if n := s2.metric(t, "cvat_sync_reconcile_enqueued_total"); n != 0 {
		t.Errorf("after restart the reconciler re-enqueued %v tasks; the bucket should say they are exported", n)
	}
	st := embeddedEnv(t, dir).Storage
	names := listNames(t, st, line.Data.Object.Bucket)
	if len(names) != 1 || names[0] != line.Data.Object.Name {
		t.Errorf("archives after restart: %v, want only %s", names, line.Data.Object.Name)
	}
}

// embeddedEnv connects to the embedded default of the service running on
// dir, as `receiver outbox tail` does.
func embeddedEnv(t *testing.T, dir string) *cloud.Env {
	t.Helper()
	if _, ok := cloud.RunningEndpoints(dir); !ok {
		t.Fatalf("no running embedded default in %s", dir)
	}
	env, err := cloud.New(context.Background(), cloud.Config{DataDir: dir, Attach: true, Getenv: envMap(nil)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Close() })
	return env
}

// listNames lists the archives (not the _published markers) of a bucket.
func listNames(t *testing.T, c *storage.Client, bucket string) []string {
	t.Helper()
	var names []string
	it := c.Bucket(bucket).Objects(context.Background(), &storage.Query{Prefix: "tasks/"})
	for {
		a, err := it.Next()
		if errors.Is(err, iterator.Done) {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, a.Name)
	}
}

// TestWebhookRegisterWaits: --wait retries while CVAT is unreachable or
// refuses the token, logging each attempt; --optional turns a registration
// that did not happen into exit status 0 and a message saying why, as the
// chart's post-install Job needs on a fresh install.
func TestWebhookRegisterWaits(t *testing.T) {
	tests := []struct {
		name      string
		fault     *cvatfake.Fault
		token     string // "-" for none
		args      []string
		wantCode  int
		wantHooks int
		wantErr   []string // in the error, or with --optional on standard error
		retry     string   // the reason a retry is logged with; "" for none
	}{
		{name: "CVAT down, then up within the wait", fault: &cvatfake.Fault{Status: http.StatusServiceUnavailable, Times: 5},
			args: []string{"--wait", "1m"}, wantHooks: 1, retry: "CVAT unreachable"},
		{name: "token refused, then accepted", fault: &cvatfake.Fault{Status: http.StatusUnauthorized, Times: 1},
			args: []string{"--wait=1m"}, wantHooks: 1, retry: "CVAT refused the credentials"},
		{name: "no token, optional", token: "-", args: []string{"--wait", "1m", "--optional"},
			wantErr: []string{"no webhook registered", "--optional, so exit status 0", "CVAT_SYNC_CVAT_TOKEN"}},
		{name: "no token", token: "-", args: []string{"--wait", "1m"}, wantCode: 2,
			wantErr: []string{"webhook register: CVAT_SYNC_CVAT_TOKEN", "credentials are required"}},
		{name: "token refused for the whole wait, optional", token: "not-the-token", args: []string{"--wait", "2s", "--optional"},
			wantErr: []string{"no webhook registered", "gave up after", "401"}, retry: "CVAT refused the credentials"},
		{name: "token refused for the whole wait", token: "not-the-token", args: []string{"--wait", "2s"}, wantCode: 1,
			wantErr: []string{"webhook register: gave up after", "401"}, retry: "CVAT refused the credentials"},
		{name: "token refused, no wait", token: "not-the-token", wantCode: 1, wantErr: []string{"401"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := cvatfake.New(t, cvatfake.Options{})
			p := f.AddProject(cvatfake.Project{Name: "hooks"})
			env := map[string]string{
				"CVAT_SYNC_CVAT_URL":           f.URL(),
				"CVAT_SYNC_CVAT_TOKEN":         f.Token(),
				"CVAT_SYNC_WEBHOOK_SECRET":     e2eSecret,
				"CVAT_SYNC_PUBLIC_URL":         "http://cvat-sync.cvat.svc:8080",
				"CVAT_SYNC_WEBHOOK_PROJECT_ID": itoa(p.ID),
			}
			switch tt.token {
			case "-":
				delete(env, "CVAT_SYNC_CVAT_TOKEN")
			case "":
			default:
				env["CVAT_SYNC_CVAT_TOKEN"] = tt.token
			}
			if tt.fault != nil {
				f.Inject(*tt.fault)
			}
			out, errOut, err := runStreams(t, env, append([]string{"webhook", "register"}, tt.args...)...)
			if exitCode(err) != tt.wantCode {
				t.Fatalf("exit %d (%v), want %d; standard error:\n%s", exitCode(err), err, tt.wantCode, errOut)
			}
			said := errOut
			if err != nil {
				said = err.Error()
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(said, w) {
					t.Errorf("%q does not say %q", said, w)
				}
			}
			retried := strings.Contains(errOut, `"message":"CVAT not ready; retrying"`)
			if retried != (tt.retry != "") || (retried && !strings.Contains(errOut, `"reason":"`+tt.retry+`"`)) {
				t.Errorf("retry logged: %v, want one with reason %q; standard error:\n%s", retried, tt.retry, errOut)
			}
			if n := len(f.Webhooks()); n != tt.wantHooks {
				t.Errorf("CVAT has %d webhooks, want %d", n, tt.wantHooks)
			}
			if tt.wantHooks > 0 && !strings.Contains(out, `"changed":true`) {
				t.Errorf("standard output %q, want the registered webhook", out)
			}
			if strings.Contains(said, e2eSecret) || strings.Contains(said, f.Token()) {
				t.Error("a secret is in the output")
			}
		})
	}
}
