package cvatapi_test

import (
	"context"
	"io"
	"net/http"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
	"github.com/cvat-sync/cvat-sync/internal/cvatfake"
)

// benchArchive is the export size streamed per iteration: 1 GiB. Benchmarks
// only run under -bench, so plain `go test` stays fast.
const benchArchive = 1 << 30

// heapPeak samples the live heap until stop is called and returns the
// highest value seen above the baseline at start.
func heapPeak() (stop func() uint64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	var peak uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > base && ms.HeapAlloc-base > peak {
				peak = ms.HeapAlloc - base
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() uint64 {
		close(done)
		wg.Wait()
		return peak
	}
}

// BenchmarkExportStream streams a 1 GiB export through the client (the
// request-queue API, polls included) into io.Discard, and, for the ratio, a
// plain io.Copy of the same download URL with net/http. Memory must stay
// flat: peak-heap-MiB is the live heap above the starting baseline.
func BenchmarkExportStream(b *testing.B) {
	f, err := cvatfake.Start(cvatfake.Options{ExportPolls: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	p := f.AddProject(cvatfake.Project{Name: "bench"})
	task := f.AddTask(cvatfake.Task{Name: "big", ProjectID: p.ID, ArchiveSize: benchArchive})

	b.Run("client", func(b *testing.B) {
		c := newClient(b, f)
		b.SetBytes(benchArchive)
		stop := heapPeak()
		for b.Loop() {
			x, err := c.ExportTask(context.Background(), task.ID, coco, cvatapi.ExportOptions{})
			if err != nil {
				b.Fatal(err)
			}
			n, err := io.Copy(io.Discard, x.Body)
			x.Body.Close()
			if err != nil || n != benchArchive {
				b.Fatalf("copied %d bytes: %v", n, err)
			}
		}
		b.ReportMetric(float64(stop())/(1<<20), "peak-heap-MiB")
	})

	b.Run("plain-io.Copy", func(b *testing.B) {
		// One finished export whose result_url is fetched directly.
		c := newClient(b, f)
		x, err := c.ExportTask(context.Background(), task.ID, coco, cvatapi.ExportOptions{})
		if err != nil {
			b.Fatal(err)
		}
		x.Body.Close()
		calls := f.CallsTo("GET", "/api/tasks/{id}/dataset/download")
		last := calls[len(calls)-1]
		url := f.URL() + last.Path + "?" + last.Query.Encode()
		hc := &http.Client{}
		defer hc.CloseIdleConnections()
		b.SetBytes(benchArchive)
		stop := heapPeak()
		for b.Loop() {
			req, _ := http.NewRequest("GET", url, nil)
			req.Header.Set("Authorization", "Bearer "+f.Token())
			resp, err := hc.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			n, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil || n != benchArchive {
				b.Fatalf("copied %d bytes: %v", n, err)
			}
		}
		b.ReportMetric(float64(stop())/(1<<20), "peak-heap-MiB")
	})
}
