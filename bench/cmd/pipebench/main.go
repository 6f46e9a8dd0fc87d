// Command pipebench measures the pipeline of the real receiver binary for
// bench/run.sh and prints table rows (tab-separated: measure, service,
// baseline, ratio, target, holds) on stdout.
//
// It hosts the CVAT fake (cvatfake.Start) in this process on 127.0.0.1 and
// runs `receiver serve` against it:
//
//   - -cloud embedded (the default): on its embedded default, as on a
//     laptop: the receiver runs Pub/Sub (pstest) and GCS (fake-gcs-server on
//     disk, uploads streamed by localgcs) in its own process, so its peak
//     RSS includes them. pipebench attaches to them through
//     <data dir>/embedded.json, as `receiver outbox tail` does.
//   - -cloud emulators: against external emulators in this process
//     (cloudtest: pstest, and the same GCS server), through
//     PUBSUB_EMULATOR_HOST and STORAGE_EMULATOR_HOST.
//
// In both, a subscription of pipebench's own on the outbox topic sees the
// notices, and an export is complete when its notice arrives (its archive is
// then read back from GCS and checked).
//
//   - export: one annotation save of a task whose archive is -archive-bytes
//     long; throughput is the archive size over the time from CVAT's export
//     request to the outbox notice, peak RSS is VmHWM from /proc. The
//     baseline, in the same run, is a plain copy of the same bytes: the same
//     export from the same fake (request, poll, download) streamed into a
//     file on the data directory's filesystem and fsynced, as the embedded
//     GCS server does before an object becomes visible (a row without the
//     fsync is printed too). Dirty pages are flushed (sync) before each
//     measurement, so none pays for another's writeback.
//   - coalescing: bursts of 10, 100 and 1000 signed webhook deliveries (the
//     update:job, update:task and update:project of consecutive saves) for
//     one task each; the count of exports and the latency from the burst's
//     last delivery to its outbox notice.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"cloud.google.com/go/pubsub/v2"

	"github.com/cvat-sync/cvat-sync/internal/cloud"
	"github.com/cvat-sync/cvat-sync/internal/cloud/cloudtest"
	"github.com/cvat-sync/cvat-sync/internal/cvatfake"
)

const (
	secret      = "pipebench-secret"
	format      = "CVAT for images 1.1"
	outboxTopic = "cvat-sync-exports"
	bucket      = "cvat-sync"
	debounce    = time.Second
)

func main() {
	bin := flag.String("receiver", "", "the receiver binary")
	size := flag.Int64("archive-bytes", 1<<30, "size of the exported archive")
	work := flag.String("work", os.TempDir(), "scratch directory")
	mode := flag.String("cloud", "embedded", "embedded (the receiver's embedded default) or emulators (external, in this process)")
	bursts := flag.Bool("bursts", true, "also measure coalescing bursts")
	flag.Parse()
	if err := run(*bin, *size, *work, *mode, *bursts); err != nil {
		fmt.Fprintln(os.Stderr, "pipebench:", err)
		os.Exit(1)
	}
}

type env struct {
	cv      *cvatfake.Server
	recv    *exec.Cmd
	url     string // webhook URL
	dataDir string
	obs     *cloud.Env // pipebench's own clients on the receiver's Pub/Sub and GCS
	notices *notices
}

func run(bin string, size int64, work, mode string, bursts bool) error {
	if bin == "" {
		return errors.New("-receiver is required")
	}
	cv, err := cvatfake.Start(cvatfake.Options{ExportPolls: -1})
	if err != nil {
		return err
	}
	defer cv.Close()
	e := &env{cv: cv, dataDir: filepath.Join(work, "pipebench-data")}
	if err := os.RemoveAll(e.dataDir); err != nil {
		return err
	}
	if err := os.MkdirAll(e.dataDir, 0o750); err != nil {
		return err
	}
	defer os.RemoveAll(e.dataDir)
	ctx := context.Background()

	var extra []string
	var cfg cloud.Config
	switch mode {
	case "embedded":
		cfg = cloud.Config{DataDir: e.dataDir, Attach: true, Getenv: func(string) string { return "" }}
	case "emulators":
		emDir := filepath.Join(work, "pipebench-emulators")
		defer os.RemoveAll(emDir)
		em, err := cloudtest.New(cloudtest.Options{Dir: emDir})
		if err != nil {
			return err
		}
		defer em.Close()
		for k, v := range em.Env() {
			extra = append(extra, k+"="+v)
		}
		cfg = cloud.Config{Project: em.Project(), Getenv: em.Getenv}
	default:
		return fmt.Errorf("-cloud %q: embedded or emulators", mode)
	}

	logf, err := os.Create(filepath.Join(work, "pipebench-receiver.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	if err := e.start(bin, logf, extra); err != nil {
		return err
	}
	defer func() {
		_ = e.recv.Process.Signal(syscall.SIGTERM)
		_ = e.recv.Wait()
	}()
	if mode == "embedded" {
		if _, ok := cloud.RunningEndpoints(e.dataDir); !ok {
			return fmt.Errorf("the receiver is listening but %s names no running embedded servers", cloud.EndpointsFile(e.dataDir))
		}
	}
	if e.obs, err = cloud.New(ctx, cfg); err != nil {
		return fmt.Errorf("attach to the receiver's Pub/Sub and GCS: %w", err)
	}
	defer e.obs.Close()
	if e.notices, err = collect(ctx, e.obs); err != nil {
		return err
	}
	defer e.notices.stop()

	if err := e.export(ctx, size); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if bursts {
		for _, n := range []int{10, 100, 1000} {
			if err := e.burst(ctx, n); err != nil {
				return fmt.Errorf("burst of %d: %w", n, err)
			}
		}
	}
	return nil
}

// start runs the receiver and waits for its "listening" line.
func (e *env) start(bin string, logf *os.File, extra []string) error {
	cmd := exec.Command(bin, "serve")
	cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		"CVAT_SYNC_WEBHOOK_SECRET=" + secret, "CVAT_SYNC_LISTEN=127.0.0.1:0", "CVAT_SYNC_DATA_DIR=" + e.dataDir,
		"CVAT_SYNC_CVAT_URL=" + e.cv.URL(), "CVAT_SYNC_CVAT_TOKEN=" + e.cv.Token(),
		"CVAT_SYNC_DEBOUNCE=" + debounce.String(), "CVAT_SYNC_MAX_WAIT=10m", "CVAT_SYNC_RECONCILE_INTERVAL=0",
	}, extra...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		return err
	}
	e.recv = cmd
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		sent := false
		for sc.Scan() {
			fmt.Fprintln(logf, sc.Text())
			var l struct{ Message, Addr string }
			if !sent && json.Unmarshal(sc.Bytes(), &l) == nil && l.Message == "listening" {
				addr <- l.Addr
				sent = true
			}
		}
	}()
	select {
	case a := <-addr:
		e.url = "http://" + a + "/webhooks/cvat"
		return nil
	case <-time.After(60 * time.Second):
		return errors.New("receiver did not log \"listening\" within 60s; see pipebench-receiver.log")
	}
}

// notice is an outbox message as pipebench reads it (contract v1).
type notice struct {
	taskID    string
	published time.Time
	object    struct {
		Bucket     string `json:"bucket"`
		Name       string `json:"name"`
		Size       int64  `json:"size"`
		Generation int64  `json:"generation"`
	}
}

// notices receives the outbox notices through a subscription of
// pipebench's own.
type notices struct {
	mu     sync.Mutex
	byTask map[string][]notice
	notify chan struct{} // closed and replaced at each notice
	stop   func()
}

func collect(ctx context.Context, obs *cloud.Env) (*notices, error) {
	sub, err := obs.CreateTempSubscription(ctx, outboxTopic, "pipebench-")
	if err != nil {
		return nil, err
	}
	n := &notices{byTask: map[string][]notice{}, notify: make(chan struct{})}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := sub.Subscriber().Receive(rctx, func(_ context.Context, m *pubsub.Message) {
			m.Ack()
			v := notice{taskID: m.Attributes["task_id"], published: m.PublishTime}
			var data struct {
				Object *json.RawMessage `json:"object"`
			}
			if json.Unmarshal(m.Data, &data) == nil && data.Object != nil {
				_ = json.Unmarshal(*data.Object, &v.object)
			}
			n.mu.Lock()
			n.byTask[v.taskID] = append(n.byTask[v.taskID], v)
			close(n.notify)
			n.notify = make(chan struct{})
			n.mu.Unlock()
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "pipebench: receiving notices:", err)
		}
	}()
	n.stop = func() {
		cancel()
		<-done
		dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer dcancel()
		_ = sub.Delete(dctx)
	}
	return n, nil
}

func (n *notices) of(taskID int64) []notice {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]notice(nil), n.byTask[strconv.FormatInt(taskID, 10)]...)
}

// wait returns the first notice of task id, waiting up to d.
func (n *notices) wait(taskID int64, d time.Duration) (notice, error) {
	timeout := time.After(d)
	for {
		n.mu.Lock()
		ns, notify := n.byTask[strconv.FormatInt(taskID, 10)], n.notify
		n.mu.Unlock()
		if len(ns) > 0 {
			return ns[0], nil
		}
		select {
		case <-notify:
		case <-timeout:
			return notice{}, fmt.Errorf("no outbox notice for task %d within %v", taskID, d)
		}
	}
}

func (e *env) deliver(ctx context.Context, evs []cvatfake.Event) error {
	for _, ev := range evs {
		res, err := e.cv.Deliver(ctx, e.url, secret, ev.Body)
		if err != nil {
			return err
		}
		if res.StatusCode/100 != 2 {
			return fmt.Errorf("delivery of %s: %d %s", ev.Name, res.StatusCode, res.Body)
		}
	}
	return nil
}

func hwmMiB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			kb, _ := strconv.ParseFloat(strings.Fields(l)[1], 64)
			return kb / 1024
		}
	}
	return 0
}

func row(measure, service, baseline, ratio, target, holds string) {
	fmt.Printf("%s\t%s\t%s\t%s\t%s\t%s\n", measure, service, baseline, ratio, target, holds)
}

func yes(ok bool) string {
	if ok {
		return "yes"
	}
	return "NO"
}

func (e *env) export(ctx context.Context, size int64) error {
	p := e.cv.AddProject(cvatfake.Project{Name: "bench"})
	task := e.cv.AddTask(cvatfake.Task{Name: "big", ProjectID: p.ID, ArchiveSize: size})
	job := e.cv.AddJob(cvatfake.Job{TaskID: task.ID})
	rssBefore := hwmMiB(e.recv.Process.Pid)
	syscall.Sync()
	evs, err := e.cv.SaveAnnotations(job.ID)
	if err != nil {
		return err
	}
	if err := e.deliver(ctx, evs); err != nil {
		return err
	}
	n, err := e.notices.wait(task.ID, 30*time.Minute)
	if err != nil {
		return err
	}
	var start time.Time
	for _, c := range e.cv.CallsTo("POST", "/api/tasks/{id}/dataset/export") {
		if c.Path == fmt.Sprintf("/api/tasks/%d/dataset/export", task.ID) && (start.IsZero() || c.Time.Before(start)) {
			start = c.Time
		}
	}
	if start.IsZero() {
		return errors.New("no export request reached CVAT")
	}
	svcSecs := n.published.Sub(start).Seconds()
	rss := hwmMiB(e.recv.Process.Pid)
	if err := e.checkArchive(ctx, task.ID, n); err != nil {
		return err
	}

	label := fmt.Sprintf("export %d MiB", size>>20)
	svcMiBs := float64(size) / (1 << 20) / svcSecs
	plain := map[bool]float64{}
	for _, fsync := range []bool{true, false} {
		syscall.Sync()
		secs, err := e.plainCopy(ctx, task.ID, size, fsync)
		if err != nil {
			return fmt.Errorf("plain copy: %w", err)
		}
		plain[fsync] = float64(size) / (1 << 20) / secs
	}
	row(label+" MiB/s (vs plain copy to a file + fsync)", fmt.Sprintf("%.1f", svcMiBs), fmt.Sprintf("%.1f", plain[true]), fmt.Sprintf("%.2fx", svcMiBs/plain[true]), ">= 0.7x", yes(svcMiBs/plain[true] >= 0.7))
	row(label+" MiB/s (vs plain copy to a file, no fsync)", fmt.Sprintf("%.1f", svcMiBs), fmt.Sprintf("%.1f", plain[false]), fmt.Sprintf("%.2fx", svcMiBs/plain[false]), "", "")
	row(label+" seconds", fmt.Sprintf("%.1f", svcSecs), fmt.Sprintf("%.1f", float64(size)/(1<<20)/plain[true]), "", "", "")
	row(label+" peak RSS MiB", fmt.Sprintf("%.1f", rss), "", fmt.Sprintf("(%.1f before)", rssBefore), "< 64 MiB", yes(rss < 64))
	return nil
}

// checkArchive reads the notice's archive back from GCS: it must be the
// bytes the fake served.
func (e *env) checkArchive(ctx context.Context, taskID int64, n notice) error {
	if n.object.Name == "" {
		return fmt.Errorf("the notice of task %d names no object", taskID)
	}
	want, size, err := e.cv.ExpectedArchive(taskID, format)
	if err != nil {
		return err
	}
	wantCRC := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	if _, err := io.Copy(wantCRC, want); err != nil {
		return err
	}
	a, err := e.obs.Storage.Bucket(n.object.Bucket).Object(n.object.Name).Attrs(ctx)
	if err != nil {
		return fmt.Errorf("the archive of the notice: %w", err)
	}
	if a.Size != size || a.CRC32C != wantCRC.Sum32() || a.Generation != n.object.Generation {
		return fmt.Errorf("gs://%s/%s holds %d bytes (crc32c %08x, generation %d); the fake served %d (crc32c %08x), the notice says generation %d",
			a.Bucket, a.Name, a.Size, a.CRC32C, a.Generation, size, wantCRC.Sum32(), n.object.Generation)
	}
	return nil
}

// plainCopy exports task id from the fake with plain HTTP calls (request,
// poll, download) and streams the bytes into a file beside the receiver's
// data (fsynced if asked), returning the seconds it took.
func (e *env) plainCopy(ctx context.Context, taskID, size int64, fsync bool) (float64, error) {
	start := time.Now()
	do := func(method, u string) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, method, u, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Token "+e.cv.Token())
		return http.DefaultClient.Do(req)
	}
	q := url.Values{"format": {format}, "save_images": {"false"}}
	resp, err := do("POST", fmt.Sprintf("%s/api/tasks/%d/dataset/export?%s", e.cv.URL(), taskID, q.Encode()))
	if err != nil {
		return 0, err
	}
	var rq struct {
		RQID string `json:"rq_id"`
	}
	err = json.NewDecoder(resp.Body).Decode(&rq)
	resp.Body.Close()
	if err != nil {
		return 0, err
	}
	var result string
	for result == "" {
		resp, err := do("GET", e.cv.URL()+"/api/requests/"+url.PathEscape(rq.RQID))
		if err != nil {
			return 0, err
		}
		var st struct {
			Status    string `json:"status"`
			ResultURL string `json:"result_url"`
		}
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil {
			return 0, err
		}
		if st.Status == "finished" {
			result = st.ResultURL
		}
	}
	resp, err = do("GET", result)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	f, err := os.CreateTemp(e.dataDir, "plain-copy-")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	n, err := io.Copy(f, resp.Body)
	if err == nil && fsync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, err
	}
	if n != size {
		return 0, fmt.Errorf("copied %d bytes, want %d", n, size)
	}
	return time.Since(start).Seconds(), nil
}

// burst delivers n events of consecutive saves of one task, 8 at a time,
// and counts the exports that follow.
func (e *env) burst(ctx context.Context, n int) error {
	p := e.cv.AddProject(cvatfake.Project{Name: "burst"})
	task := e.cv.AddTask(cvatfake.Task{Name: "burst", ProjectID: p.ID})
	job := e.cv.AddJob(cvatfake.Job{TaskID: task.ID})
	var evs []cvatfake.Event
	for len(evs) < n {
		s, err := e.cv.SaveAnnotations(job.ID)
		if err != nil {
			return err
		}
		evs = append(evs, s...)
	}
	evs = evs[:n]
	work := make(chan cvatfake.Event)
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ev := range work {
				if err := e.deliver(ctx, []cvatfake.Event{ev}); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		}()
	}
	for _, ev := range evs {
		work <- ev
	}
	close(work)
	wg.Wait()
	last := time.Now()
	select {
	case err := <-errs:
		return err
	default:
	}
	first, err := e.notices.wait(task.ID, 2*time.Minute)
	if err != nil {
		return err
	}
	// Give a second export the chance to show up: three debounce windows.
	quiet := time.Now().Add(3 * debounce)
	for time.Now().Before(quiet) {
		time.Sleep(50 * time.Millisecond) // observing for a bounded while
	}
	exports := len(e.notices.of(task.ID))
	lat := first.published.Sub(last)
	row(fmt.Sprintf("burst of %d: exports", n), strconv.Itoa(exports), "1", fmt.Sprintf("%.0f events/export", float64(n)/float64(max(exports, 1))), "1 per burst", yes(exports == 1))
	row(fmt.Sprintf("burst of %d: last webhook->outbox ms", n), fmt.Sprintf("%.0f", lat.Seconds()*1000), "", fmt.Sprintf("(debounce %v)", debounce), "", "")
	return nil
}
