// Command pipebench measures the pipeline of the real receiver binary for
// bench/run.sh and prints table rows (tab-separated: measure, service,
// baseline, ratio, target, holds) on stdout.
//
// It hosts, in this process on 127.0.0.1, the CVAT fake (cvatfake.Start),
// a Pub/Sub emulator (pstest) and a GCS emulator (fake-gcs-server on disk),
// and runs `receiver serve` against them (PUBSUB_EMULATOR_HOST,
// STORAGE_EMULATOR_HOST), so the receiver's peak RSS is the service's own.
//
//   - export: one annotation save of a task whose archive is -archive-bytes
//     long; throughput is the archive size over the time from CVAT's export
//     request to the outbox notice. The baseline is a plain Go copy of the
//     same bytes from the same fake (request, poll, download) into the same
//     GCS emulator, in the same run.
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

	"cloud.google.com/go/pubsub/v2/pstest"
	"cloud.google.com/go/storage"
	"github.com/fsouza/fake-gcs-server/fakestorage"
	"google.golang.org/api/option"

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
	flag.Parse()
	if err := run(*bin, *size, *work); err != nil {
		fmt.Fprintln(os.Stderr, "pipebench:", err)
		os.Exit(1)
	}
}

type env struct {
	cv   *cvatfake.Server
	ps   *pstest.Server
	gcs  *fakestorage.Server
	recv *exec.Cmd
	url  string // webhook URL
}

func run(bin string, size int64, work string) error {
	if bin == "" {
		return errors.New("-receiver is required")
	}
	cv, err := cvatfake.Start(cvatfake.Options{ExportPolls: -1})
	if err != nil {
		return err
	}
	defer cv.Close()
	ps := pstest.NewServerWithAddress("127.0.0.1:0")
	defer ps.Close()
	gcsRoot := filepath.Join(work, "pipebench-gcs")
	defer os.RemoveAll(gcsRoot)
	gcs, err := fakestorage.NewServerWithOptions(fakestorage.Options{Scheme: "http", Host: "127.0.0.1", StorageRoot: gcsRoot, Writer: io.Discard})
	if err != nil {
		return err
	}
	defer gcs.Stop()

	e := &env{cv: cv, ps: ps, gcs: gcs}
	logf, err := os.Create(filepath.Join(work, "pipebench-receiver.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	if err := e.start(bin, logf, filepath.Join(work, "pipebench-data")); err != nil {
		return err
	}
	defer func() {
		_ = e.recv.Process.Signal(syscall.SIGTERM)
		_ = e.recv.Wait()
	}()

	if err := e.export(size); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	for _, n := range []int{10, 100, 1000} {
		if err := e.burst(n); err != nil {
			return fmt.Errorf("burst of %d: %w", n, err)
		}
	}
	return nil
}

// start runs the receiver and waits for its "listening" line.
func (e *env) start(bin string, logf *os.File, dataDir string) error {
	cmd := exec.Command(bin, "serve")
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		"PUBSUB_EMULATOR_HOST=" + e.ps.Addr, "STORAGE_EMULATOR_HOST=" + e.gcs.URL(),
		"CVAT_SYNC_WEBHOOK_SECRET=" + secret, "CVAT_SYNC_LISTEN=127.0.0.1:0", "CVAT_SYNC_DATA_DIR=" + dataDir,
		"CVAT_SYNC_CVAT_URL=" + e.cv.URL(), "CVAT_SYNC_CVAT_TOKEN=" + e.cv.Token(),
		"CVAT_SYNC_DEBOUNCE=" + debounce.String(), "CVAT_SYNC_MAX_WAIT=10m", "CVAT_SYNC_RECONCILE_INTERVAL=0",
	}
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

// notices returns the outbox notices for task id.
func (e *env) notices(taskID int64) []*pstest.Message {
	var out []*pstest.Message
	for _, m := range e.ps.Messages() {
		if strings.HasSuffix(m.Topic, "/topics/"+outboxTopic) && m.Attributes["task_id"] == strconv.FormatInt(taskID, 10) {
			out = append(out, m)
		}
	}
	return out
}

// waitNotice polls (with a deadline) until task id has a notice.
func (e *env) waitNotice(taskID int64, d time.Duration) (*pstest.Message, error) {
	deadline := time.Now().Add(d)
	for {
		if ns := e.notices(taskID); len(ns) > 0 {
			return ns[0], nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no outbox notice for task %d within %v", taskID, d)
		}
		time.Sleep(10 * time.Millisecond) // polling with a deadline
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

func (e *env) export(size int64) error {
	ctx := context.Background()
	p := e.cv.AddProject(cvatfake.Project{Name: "bench"})
	task := e.cv.AddTask(cvatfake.Task{Name: "big", ProjectID: p.ID, ArchiveSize: size})
	job := e.cv.AddJob(cvatfake.Job{TaskID: task.ID})
	rssBefore := hwmMiB(e.recv.Process.Pid)
	evs, err := e.cv.SaveAnnotations(job.ID)
	if err != nil {
		return err
	}
	if err := e.deliver(ctx, evs); err != nil {
		return err
	}
	n, err := e.waitNotice(task.ID, 30*time.Minute)
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
	svcSecs := n.PublishTime.Sub(start).Seconds()
	svcMiBs := float64(size) / (1 << 20) / svcSecs
	rss := hwmMiB(e.recv.Process.Pid)

	plainSecs, err := e.plainCopy(ctx, task.ID, size)
	if err != nil {
		return fmt.Errorf("plain copy: %w", err)
	}
	plainMiBs := float64(size) / (1 << 20) / plainSecs
	label := fmt.Sprintf("export %d MiB", size>>20)
	row(label+" MiB/s", fmt.Sprintf("%.1f", svcMiBs), fmt.Sprintf("%.1f", plainMiBs), fmt.Sprintf("%.2fx", svcMiBs/plainMiBs), ">= 0.7x", yes(svcMiBs/plainMiBs >= 0.7))
	row(label+" seconds", fmt.Sprintf("%.1f", svcSecs), fmt.Sprintf("%.1f", plainSecs), "", "", "")
	row(label+" peak RSS MiB", fmt.Sprintf("%.1f", rss), "", fmt.Sprintf("(%.1f before)", rssBefore), "< 64 MiB", yes(rss < 64))
	return nil
}

// plainCopy exports task id from the fake with plain HTTP calls (request,
// poll, download) and copies the bytes into the GCS emulator with the
// official client, returning the seconds it took.
func (e *env) plainCopy(ctx context.Context, taskID, size int64) (float64, error) {
	st, err := storage.NewClient(ctx, option.WithEndpoint(e.gcs.URL()+"/storage/v1/"), option.WithoutAuthentication(), storage.WithJSONReads())
	if err != nil {
		return 0, err
	}
	defer st.Close()
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
	w := st.Bucket(bucket).Object(fmt.Sprintf("plain-copy/task-%d.zip", taskID)).NewWriter(ctx)
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return 0, err
	}
	if err := w.Close(); err != nil {
		return 0, err
	}
	if n != size {
		return 0, fmt.Errorf("copied %d bytes, want %d", n, size)
	}
	return time.Since(start).Seconds(), nil
}

// burst delivers n events of consecutive saves of one task, 8 at a time,
// and counts the exports that follow.
func (e *env) burst(n int) error {
	ctx := context.Background()
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
	first, err := e.waitNotice(task.ID, 2*time.Minute)
	if err != nil {
		return err
	}
	// Give a second export the chance to show up: three debounce windows.
	quiet := time.Now().Add(3 * debounce)
	for time.Now().Before(quiet) {
		time.Sleep(50 * time.Millisecond) // observing for a bounded while
	}
	exports := len(e.notices(task.ID))
	lat := first.PublishTime.Sub(last)
	row(fmt.Sprintf("burst of %d: exports", n), strconv.Itoa(exports), "1", fmt.Sprintf("%.0f events/export", float64(n)/float64(max(exports, 1))), "1 per burst", yes(exports == 1))
	row(fmt.Sprintf("burst of %d: last webhook->outbox ms", n), fmt.Sprintf("%.0f", lat.Seconds()*1000), "", fmt.Sprintf("(debounce %v)", debounce), "", "")
	return nil
}
