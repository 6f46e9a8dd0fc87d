package pipeline

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fsouza/fake-gcs-server/fakestorage"

	"github.com/cvat-sync/cvat-sync/internal/cloud/cloudtest"
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
// cloudtest's GCS emulator over HTTP. It reports CVAT and GCS calls per pass.
//
//	go test -run '^$' -bench FullPass10k -benchtime 5x ./internal/pipeline/
func BenchmarkFullPass10k(b *testing.B) {
	const n = 10000
	em := cloudtest.Start(b, cloudtest.Options{Project: rigProject})
	em.Bucket(b, rigBucket)
	gcs := em.GCS()
	var gcsCalls atomic.Int64
	em.SetGCSFault(func(*http.Request) int { gcsCalls.Add(1); return 0 }) // counts, serves all
	st := em.Open(b).Storage
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
