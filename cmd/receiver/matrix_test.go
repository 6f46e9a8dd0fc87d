package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/cvat-sync/cvat-sync/internal/cvatfake"
	"github.com/cvat-sync/cvat-sync/internal/eventually"
)

// TestCVATReleases runs the real program against the CVAT fake
// impersonating each release, over sockets, with external Pub/Sub and GCS
// emulators: `webhook register` twice makes one webhook; `webhook ping`
// succeeds; an annotation save (delivered by CVAT as that release does, or,
// where saves fire nothing, found by convergence) becomes one archive with
// CVAT's bytes and one notice; a deletion becomes one task.deleted; and
// `backfill --project` exports only that project.
func TestCVATReleases(t *testing.T) {
	for _, version := range []string{
		"2.3.0", "2.4.0", "2.4.2", "2.10.0", "2.15.0", "2.16.0", "2.20.0", "2.31.0",
		"2.32.0", "2.37.0", "2.40.0", "2.48.0", "2.64.0", "2.73.0",
		"2.74.0", // the newest payload shape (after cvat-ai/cvat#11104)
	} {
		t.Run(version, func(t *testing.T) {
			t.Parallel()
			em := newEmulators(t)
			f := cvatfake.New(t, cvatfake.Options{Version: version, ExportPolls: 1, ArchiveSize: 64<<10 + 3})
			p := f.AddProject(cvatfake.Project{Name: "litter"})
			other := f.AddProject(cvatfake.Project{Name: "other"})
			// History: last changed before the service's first start, so out
			// of convergence's scope (CVAT_SYNC_SYNC_SINCE=first-start).
			past := time.Now().Add(-time.Hour)
			tk := f.AddTask(cvatfake.Task{ProjectID: p.ID, Name: "beach", CreatedDate: past, UpdatedDate: past})
			job := f.AddJob(cvatfake.Job{TaskID: tk.ID, CreatedDate: past, UpdatedDate: past})
			elsewhere := f.AddTask(cvatfake.Task{ProjectID: other.ID, Name: "river", CreatedDate: past, UpdatedDate: past})
			saves := savesFireWebhooks(version)
			extra := map[string]string{
				// Convergence exports where saves fire no webhook; elsewhere
				// the webhooks alone must do it.
				"CVAT_SYNC_RECONCILE_INTERVAL": map[bool]string{true: "0", false: "300ms"}[saves],
				"CVAT_SYNC_SYNC_SINCE":         "first-start",
			}
			// 2.3.0 signs body+newline: the service notices the release
			// and accepts it without CVAT_SYNC_LEGACY_SIGNATURE.
			s := startService(t, em.env(pipelineEnv(f, extra)))
			if strings.HasPrefix(version, "2.3.") {
				eventually.Within(t, 30*time.Second, "the release noticed", func() bool { return s.logs.Contains("plus a newline") })
			}
			env := em.env(pipelineEnv(f, map[string]string{
				"CVAT_SYNC_PUBLIC_URL":         "http://" + s.addr,
				"CVAT_SYNC_WEBHOOK_PROJECT_ID": itoa(p.ID),
				"CVAT_SYNC_DATA_DIR":           t.TempDir(),
			}))

			for i := range 2 {
				if out, err := runCmd(t, env, "webhook", "register"); err != nil {
					t.Fatalf("register #%d: %v\n%s", i+1, err, out)
				}
			}
			if hooks := f.Webhooks(); len(hooks) != 1 {
				t.Fatalf("%d webhooks after registering twice, want 1: %+v", len(hooks), hooks)
			}
			if out, err := runCmd(t, env, "webhook", "ping"); err != nil {
				t.Fatalf("ping: %v\n%s", err, out)
			}
			eventually.Within(t, 60*time.Second, "the ping at the service", func() bool {
				return s.metric(t, "cvat_sync_webhook_deliveries_total", `event="ping"`, `outcome="ping"`) == 1
			})
			if !saves {
				eventually.Within(t, 30*time.Second, "the first pass", func() bool {
					return s.metric(t, "cvat_sync_reconcile_passes_total", `outcome="ok"`) >= 1
				})
			}

			evs, err := f.SaveAnnotations(job.ID)
			if err != nil {
				t.Fatal(err)
			}
			if saves != (len(evs) > 0) {
				t.Fatalf("%d events for a save on %s", len(evs), version)
			}
			for _, sent := range f.Dispatch(context.Background(), evs...) {
				if sent.Err != nil || sent.Result.StatusCode/100 != 2 {
					t.Fatalf("delivery of %s: %v %d %s", sent.Event, sent.Err, sent.Result.StatusCode, sent.Result.Body)
				}
			}
			eventually.Within(t, 60*time.Second, "the export notice", func() bool { return len(em.notices(t)) >= 1 })
			eventually.Within(t, 20*time.Second, "no pending work", func() bool { return s.metric(t, "cvat_sync_pending_tasks") == 0 })
			ns := em.notices(t)
			if len(ns) != 1 || ns[0].Attrs["kind"] != "task.exported" || ns[0].Data.Task.ID != tk.ID {
				t.Fatalf("notices %+v, want one task.exported of task %d", ns, tk.ID)
			}
			stored, _ := f.Task(tk.ID)
			if !ns[0].Data.Task.UpdatedDate.Equal(stored.UpdatedDate) {
				t.Errorf("notice of state %v, CVAT has %v", ns[0].Data.Task.UpdatedDate, stored.UpdatedDate)
			}
			obj, err := em.GCS().GetObject(ns[0].Data.Object.Bucket, ns[0].Data.Object.Name)
			if err != nil {
				t.Fatal(err)
			}
			want, _, _ := f.ExpectedArchive(tk.ID, formatCVAT)
			wantBytes, _ := io.ReadAll(want)
			if !bytes.Equal(obj.Content, wantBytes) {
				t.Errorf("archive: %d bytes stored, not CVAT's %d", len(obj.Content), len(wantBytes))
			}

			// A deletion, through the REST API (which fires on every release).
			del, err := f.DeleteTask(tk.ID)
			if err != nil {
				t.Fatal(err)
			}
			for _, sent := range f.Dispatch(context.Background(), del) {
				if sent.Err != nil || sent.Result.StatusCode/100 != 2 {
					t.Fatalf("delivery of %s: %v %d", sent.Event, sent.Err, sent.Result.StatusCode)
				}
			}
			eventually.Within(t, 60*time.Second, "the deletion notice", func() bool { return len(em.notices(t)) >= 2 })
			ns = em.notices(t)
			if len(ns) != 2 || ns[1].Attrs["kind"] != "task.deleted" || ns[1].Data.Task.ID != tk.ID {
				t.Fatalf("notices %+v, want the deletion of task %d second", ns, tk.ID)
			}

			// Backfill of the other project exports its task, and only it.
			out, err := runCmd(t, env, "backfill", "--project", itoa(other.ID))
			if err != nil || !strings.Contains(out, "1 tasks: 1 exported") {
				t.Fatalf("backfill: %v\n%s", err, tail(out))
			}
			eventually.Within(t, 30*time.Second, "the backfilled notice", func() bool { return len(em.notices(t)) >= 3 })
			ns = em.notices(t)
			if len(ns) != 3 || ns[2].Data.Task.ID != elsewhere.ID {
				t.Errorf("notices after backfill %+v, want a third for task %d", ns, elsewhere.ID)
			}
		})
	}
}

// savesFireWebhooks: CVAT before 2.4.2 fires events only from REST create,
// update and delete calls, not for annotation saves.
func savesFireWebhooks(version string) bool {
	switch version {
	case "2.3.0", "2.4.0", "2.4.1":
		return false
	}
	return true
}

// TestRedeliveryAfterDowntime: deliveries CVAT made while the service was
// down fail (CVAT records a 502 for the refused connection); once the
// service is back it reads CVAT's delivery log of its webhook, the metric of
// CVAT's failed deliveries moves, it asks CVAT to redeliver them, and the
// save is exported: with convergence off, only the redelivery can do that.
func TestRedeliveryAfterDowntime(t *testing.T) {
	t.Parallel()
	em := newEmulators(t)
	f := cvatfake.New(t, cvatfake.Options{Version: "2.64.0", ExportPolls: -1})
	p := f.AddProject(cvatfake.Project{Name: "p"})
	tk := f.AddTask(cvatfake.Task{ProjectID: p.ID})
	job := f.AddJob(cvatfake.Job{TaskID: tk.ID})
	addr := freeAddr(t)
	env := em.env(pipelineEnv(f, map[string]string{
		"CVAT_SYNC_LISTEN":             addr,
		"CVAT_SYNC_PUBLIC_URL":         "http://" + addr,
		"CVAT_SYNC_WEBHOOK_PROJECT_ID": itoa(p.ID),
		"CVAT_SYNC_REDELIVER":          "true",
	}))
	if out, err := runCmd(t, env, "webhook", "register"); err != nil {
		t.Fatalf("register: %v\n%s", err, out)
	}
	// The service is down: CVAT's deliveries fail.
	evs, err := f.SaveAnnotations(job.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, sent := range f.Dispatch(context.Background(), evs...) {
		if sent.Err == nil && sent.Result.StatusCode/100 == 2 {
			t.Fatalf("a delivery to a stopped service succeeded: %+v", sent)
		}
	}
	s := startService(t, env)
	eventually.Within(t, 60*time.Second, "the failed deliveries seen", func() bool {
		return s.metric(t, "cvat_sync_cvat_failed_deliveries") >= 1
	})
	eventually.Within(t, 60*time.Second, "the export of the redelivered save", func() bool { return len(em.notices(t)) == 1 })
	if n := s.metric(t, "cvat_sync_cvat_redeliveries_total", `outcome="requested"`); n < 1 {
		t.Errorf("redeliveries requested: %v", n)
	}
}

// freeAddr is a loopback address free now, for a service that must come
// back on the same address (the webhook's target URL).
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
