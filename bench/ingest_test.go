// Package bench holds profiles of the service's hot paths; bench/run.sh holds
// the measurements against baselines.
//
//	go test ./bench -run '^$' -bench Ingest -cpuprofile cpu.out
//	go tool pprof -top cpu.out
//
// BenchmarkIngestPublishSettings compares inbox publisher settings on the
// durable path (see bench/README.md for what the figures mean for a real
// Pub/Sub).
package bench

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cvat-sync/cvat-sync/internal/cloud"
	"github.com/cvat-sync/cvat-sync/internal/cloud/cloudtest"
	"github.com/cvat-sync/cvat-sync/internal/inbox"
	"github.com/cvat-sync/cvat-sync/internal/payloads"
	"github.com/cvat-sync/cvat-sync/internal/signature"
	"github.com/cvat-sync/cvat-sync/internal/webhook"
)

const secret = "bench-secret"

// setup is how the ingress is wired for one benchmark.
type setup struct {
	// subscription makes pstest keep every message for an inbox
	// subscription nobody pulls, as `receiver serve` without CVAT does.
	subscription bool
	// publish adjusts the inbox publisher after inbox.NewQueue set it up.
	publish func(*pubsub.PublishSettings)
	// rtt delays every call to Pub/Sub, as the network to Google's service
	// does (pstest answers in process).
	rtt time.Duration
}

// ingestServer wires the ingress as `receiver serve` does on its embedded
// default: pstest in process, JSON logs to a file at info level, its own
// registry.
func ingestServer(b *testing.B, s setup) string {
	em := cloudtest.Start(b, cloudtest.Options{Project: "bench"})
	em.Topic(b, "inbox")
	if s.subscription {
		em.Subscription(b, "inbox", "inbox", cloud.SubscriptionOptions{Ordering: true})
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if s.rtt > 0 {
		opts = append(opts, grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, o ...grpc.CallOption) error {
			time.Sleep(s.rtt)
			return invoker(ctx, method, req, reply, cc, o...)
		}))
	}
	// Straight to pstest, not through PubSubHost (a proxy that can cut the
	// connections): the figures are of pstest in process, as on the
	// embedded default.
	conn, err := grpc.NewClient(em.PubSub().Addr, opts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	c, err := pubsub.NewClient(context.Background(), em.Project(), option.WithGRPCConn(conn))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	pub := c.Publisher("inbox")
	q, err := inbox.NewQueue(inbox.QueueConfig{Publisher: pub, Timeout: 9 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	if s.publish != nil {
		s.publish(&pub.PublishSettings)
	}
	b.Cleanup(q.Stop)
	logf, err := os.Create(filepath.Join(b.TempDir(), "log.json"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { logf.Close() })
	v, _ := signature.New(signature.Config{Secrets: []string{secret}})
	reg := prometheus.NewRegistry()
	srv, err := webhook.New(webhook.Config{Verifier: v, MaxBodyBytes: 1 << 20, Queue: q,
		Logger: slog.New(slog.NewJSONHandler(logf, nil)), Registerer: reg, Gatherer: reg})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	hs := srv.HTTPServer()
	go func() { _ = hs.Serve(ln) }()
	b.Cleanup(func() { hs.Close() })
	return "http://" + ln.Addr().String() + webhook.Path
}

// signedBody is one delivery as CVAT sends it.
type signedBody struct {
	body []byte
	sig  string
}

// forTasks returns the update_job payload once per task, so deliveries
// spread over that many ordering keys.
func forTasks(b *testing.B, tasks int) []signedBody {
	body := payloads.Read(b, "update_job.json")
	out := make([]signedBody, tasks)
	for i := range out {
		bi := bytes.Replace(body, []byte(`"task_id": 9,`), []byte(`"task_id": `+strconv.Itoa(9+i)+`,`), 1)
		out[i] = signedBody{bi, signature.Sign(secret, bi)}
	}
	return out
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// run posts bodies round-robin from 16 concurrent clients (bench/run.sh's
// concurrency) and reports the latency percentiles and the process's CPU
// time per delivery (the client's included: compare variants, not servers).
func run(b *testing.B, url string, bodies []signedBody, want int) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	defer client.CloseIdleConnections()
	var mu sync.Mutex
	var lat []time.Duration
	b.SetParallelism(8) // 16 clients on 2 cores
	b.ResetTimer()
	cpu0 := cpuTime(b)
	b.RunParallel(func(pb *testing.PB) {
		var mine []time.Duration
		i := 0
		for pb.Next() {
			d := bodies[i%len(bodies)]
			i++
			req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(d.body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set(signature.Header, d.sig)
			start := time.Now()
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = bytes.NewBuffer(nil).ReadFrom(resp.Body)
			resp.Body.Close()
			mine = append(mine, time.Since(start))
			if resp.StatusCode != want {
				b.Errorf("status %d, want %d", resp.StatusCode, want)
				return
			}
		}
		mu.Lock()
		lat = append(lat, mine...)
		mu.Unlock()
	})
	b.StopTimer()
	b.ReportMetric(float64((cpuTime(b)-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(pct(0.5), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}

func BenchmarkIngestPing(b *testing.B) {
	body := payloads.Read(b, "ping.json")
	run(b, ingestServer(b, setup{}), []signedBody{{body, signature.Sign(secret, body)}}, http.StatusOK)
}

// BenchmarkIngestUpdateJob is the durable path as bench/run.sh loads it: one
// task (one ordering key), an inbox subscription nobody pulls.
func BenchmarkIngestUpdateJob(b *testing.B) {
	run(b, ingestServer(b, setup{subscription: true}), forTasks(b, 1), http.StatusAccepted)
}

// BenchmarkIngestPublishSettings measures the durable path under inbox
// publisher settings: today's (inbox.NewQueue: DelayThreshold 1 ms, the
// library's other defaults) and alternatives, for one task and for 64
// tasks, with and without pstest's backlog of unpulled messages, and with a
// 10 ms round trip to Pub/Sub (Google's service from a GKE cluster in the
// same region answers a publish in a few to tens of milliseconds).
//
//	go test ./bench -run '^$' -bench IngestPublishSettings -benchtime 20000x
//	BENCH_VARIANTS=today,delay=10ms go test ./bench -run '^$' -bench 'IngestPublishSettings/tasks=1/'
func BenchmarkIngestPublishSettings(b *testing.B) {
	type variant struct {
		name string
		set  func(*pubsub.PublishSettings)
	}
	variants := []variant{{"today", nil}}
	for _, d := range []time.Duration{0, 100 * time.Microsecond, 500 * time.Microsecond, 2 * time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond} {
		variants = append(variants, variant{"delay=" + d.String(), func(p *pubsub.PublishSettings) { p.DelayThreshold = d }})
	}
	for _, n := range []int{1, 4, 16} {
		variants = append(variants, variant{fmt.Sprintf("delay=1ms+count=%d", n), func(p *pubsub.PublishSettings) { p.CountThreshold = n }})
	}
	for _, g := range []int{1, 4} {
		variants = append(variants, variant{fmt.Sprintf("delay=1ms+goroutines=%d", g), func(p *pubsub.PublishSettings) { p.NumGoroutines = g }})
	}
	variants = append(variants, variant{"delay=1ms+flow=block64", func(p *pubsub.PublishSettings) {
		p.FlowControlSettings.MaxOutstandingMessages = 64
		p.FlowControlSettings.LimitExceededBehavior = pubsub.FlowControlBlock
	}})
	only := os.Getenv("BENCH_VARIANTS") // comma-separated names, to run a few
	for _, tasks := range []int{1, 64} {
		for _, queue := range []struct {
			name string
			s    setup
		}{
			{"backlog", setup{subscription: true}},
			{"nobacklog", setup{}},
			{"rtt=10ms", setup{rtt: 10 * time.Millisecond}},
		} {
			for _, v := range variants {
				if only != "" && !slices.Contains(strings.Split(only, ","), v.name) {
					continue
				}
				s := queue.s
				s.publish = v.set
				b.Run(fmt.Sprintf("tasks=%d/%s/%s", tasks, queue.name, v.name), func(b *testing.B) {
					run(b, ingestServer(b, s), forTasks(b, tasks), http.StatusAccepted)
				})
			}
		}
	}
}
