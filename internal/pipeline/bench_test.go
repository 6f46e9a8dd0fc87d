package pipeline

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/storage"
	"github.com/fsouza/fake-gcs-server/fakestorage"
	"google.golang.org/api/option"

	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
	"github.com/cvat-sync/cvat-sync/internal/cvatfake"
	"github.com/cvat-sync/cvat-sync/internal/sink"
	"github.com/cvat-sync/cvat-sync/internal/task"
)

// nopQueue counts what a pass enqueues.
type nopQueue struct{ n atomic.Int64 }

func (q *nopQueue) EnqueueEvent(context.Context, task.Event) error { q.n.Add(1); return nil }

// BenchmarkFullPass10k is one full convergence pass over 10,000 tasks, all
// exported in their current state but 1%: the CVAT fake over HTTP,
// fake-gcs-server over HTTP. It reports CVAT and GCS calls per pass.
//
//	go test -run '^$' -bench FullPass10k -benchtime 5x ./internal/pipeline/
func BenchmarkFullPass10k(b *testing.B) {
	const n = 10000
	gcs, err := fakestorage.NewServerWithOptions(fakestorage.Options{Scheme: "http", Host: "127.0.0.1", Port: 0, Writer: io.Discard})
	if err != nil {
		b.Fatal(err)
	}
	defer gcs.Stop()
	gcs.CreateBucketWithOpts(fakestorage.CreateBucketOpts{Name: rigBucket})
	var gcsCalls atomic.Int64
	tr := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		gcsCalls.Add(1)
		return http.DefaultTransport.RoundTrip(r)
	})
	st, err := storage.NewClient(context.Background(), option.WithEndpoint(gcs.URL()+"/storage/v1/"), option.WithoutAuthentication(),
		option.WithHTTPClient(&http.Client{Transport: tr}), storage.WithJSONReads())
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	fake, err := cvatfake.Start(cvatfake.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer fake.Close()
	base := time.Now().Add(-time.Hour).UTC().Truncate(time.Microsecond)
	for i := range n {
		tk := fake.AddTask(cvatfake.Task{Name: "t" + strconv.Itoa(i), UpdatedDate: base.Add(time.Duration(i) * time.Millisecond)})
		if i%100 == 0 {
			continue // 1% behind: no record
		}
		rec := sink.Record{V: sink.RecordVersion, TaskID: tk.ID, Task: sink.RecordedTask{Name: tk.Name, UpdatedDate: tk.UpdatedDate},
			Formats: map[string]sink.Announced{rigFormat: {UpdatedDate: tk.UpdatedDate, Generation: 1, At: base}}}
		js, _ := json.Marshal(rec)
		gcs.CreateObject(fakestorage.Object{ObjectAttrs: fakestorage.ObjectAttrs{BucketName: rigBucket,
			Name: "_cvat-sync/tasks/" + strconv.FormatInt(tk.ID, 10) + ".json", ContentType: "application/json",
			Metadata: map[string]string{"cvat_sync_record": string(js)}}, Content: js})
	}
	cv, err := cvatapi.New(cvatapi.Config{BaseURL: fake.URL(), Token: fake.Token(), AuthScheme: "token"})
	if err != nil {
		b.Fatal(err)
	}
	defer cv.Close()
	records, err := sink.NewRecords(sink.RecordsConfig{Client: st, Bucket: rigBucket, Prefix: "_cvat-sync"})
	if err != nil {
		b.Fatal(err)
	}
	q := &nopQueue{}
	conv, err := NewConverger(ConvergerConfig{CVAT: cv, Records: records, Queue: q, Formats: []string{rigFormat},
		Since: SinceAll, MaxDeleteFraction: 0.5, RequeueAfter: time.Nanosecond})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ResetTimer()
	var cvatCalls, gcsPerPass int64
	for range b.N {
		fake.ResetCalls()
		before := gcsCalls.Load()
		res, err := conv.Pass(ctx, true)
		if err != nil {
			b.Fatal(err)
		}
		if res.Listed != n || res.Behind != n/100 {
			b.Fatalf("pass %+v", res)
		}
		cvatCalls += int64(len(fake.Calls()))
		gcsPerPass += gcsCalls.Load() - before
	}
	b.ReportMetric(float64(cvatCalls)/float64(b.N), "cvat-calls/op")
	b.ReportMetric(float64(gcsPerPass)/float64(b.N), "gcs-calls/op")
	b.ReportMetric(float64(q.n.Load())/float64(b.N), "enqueued/op")
}
