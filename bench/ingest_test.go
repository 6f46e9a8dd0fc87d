// Package bench holds profiles of the service's hot paths; bench/run.sh holds
// the measurements against baselines.
//
//	go test ./bench -run '^$' -bench Ingest -cpuprofile cpu.out
//	go tool pprof -top cpu.out
package bench

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cvat-sync/cvat-sync/internal/inbox"
	"github.com/cvat-sync/cvat-sync/internal/signature"
	"github.com/cvat-sync/cvat-sync/internal/webhook"
)

const secret = "bench-secret"

// ingestServer wires the ingress as `receiver serve` does on its embedded
// default: pstest in process, JSON logs to a file, its own registry.
func ingestServer(b *testing.B) string {
	ps := pstest.NewServerWithAddress("127.0.0.1:0")
	b.Cleanup(func() { ps.Close() })
	conn, err := grpc.NewClient(ps.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	ctx := context.Background()
	c, err := pubsub.NewClient(ctx, "bench", option.WithGRPCConn(conn))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	if _, err := c.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: "projects/bench/topics/inbox"}); err != nil {
		b.Fatal(err)
	}
	if _, err := c.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{
		Name: "projects/bench/subscriptions/inbox", Topic: "projects/bench/topics/inbox", EnableMessageOrdering: true,
	}); err != nil {
		b.Fatal(err)
	}
	q := inbox.NewQueue(c.Publisher("inbox"), 9*time.Second)
	b.Cleanup(q.Stop)
	logf, err := os.Create(filepath.Join(b.TempDir(), "log.json"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { logf.Close() })
	v, _ := signature.NewVerifier([]string{secret})
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

func benchIngest(b *testing.B, payload string, want int) {
	body, err := os.ReadFile("../testdata/payloads/" + payload)
	if err != nil {
		b.Fatal(err)
	}
	url := ingestServer(b)
	sig := signature.Sign(secret, body)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set(signature.Header, sig)
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = bytes.NewBuffer(nil).ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != want {
				b.Errorf("status %d, want %d", resp.StatusCode, want)
				return
			}
		}
	})
}

func BenchmarkIngestPing(b *testing.B)      { benchIngest(b, "ping.json", http.StatusOK) }
func BenchmarkIngestUpdateJob(b *testing.B) { benchIngest(b, "update_job.json", http.StatusAccepted) }
