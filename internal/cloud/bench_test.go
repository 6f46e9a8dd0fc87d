package cloud_test

import (
	"context"
	"flag"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/metrics"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/storage"

	"github.com/cvat-sync/cvat-sync/internal/cloud"
)

var uploadBytes = flag.Int64("upload-bytes", 1<<30, "size of the object BenchmarkEmbeddedUpload writes per iteration")

// BenchmarkEmbeddedUpload uploads one object of -upload-bytes (1 GiB) per
// iteration through the official storage client, as the sink does (8 MiB
// chunks, automatic CRC32C, if-not-exists), to the embedded default's GCS
// server in this process, and reports MB/s and the peak Go heap (sampled
// every 5 ms; the client's and the server's together): through the
// in-process transport the embedded default's own client uses, and over
// the loopback interface as a command attached to it does. The plain-copy
// sub-benchmark writes the same bytes to a file on the same filesystem and
// fsyncs it, as the server does before an object becomes visible: the
// floor to compare with.
//
//	go test ./internal/cloud -run '^$' -bench EmbeddedUpload -benchtime 1x
func BenchmarkEmbeddedUpload(b *testing.B) {
	size := *uploadBytes
	dir := b.TempDir()
	ctx := context.Background()
	data := filepath.Join(dir, "data")
	owner, err := cloud.New(ctx, cloud.Config{DataDir: data, Getenv: func(string) string { return "" }})
	if err != nil {
		b.Fatal(err)
	}
	defer owner.Close()
	if err := owner.EnsureBucket(ctx, "bench"); err != nil {
		b.Fatal(err)
	}
	// What another process attached to the embedded default (backfill) does.
	attached, err := cloud.New(ctx, cloud.Config{DataDir: data, Getenv: func(string) string { return "" }, Attach: true})
	if err != nil {
		b.Fatal(err)
	}
	defer attached.Close()
	for _, c := range []struct {
		name string
		st   *storage.Client
	}{{"storage-client", owner.Storage}, {"storage-client-over-loopback", attached.Storage}} {
		b.Run(c.name, func(b *testing.B) {
			peak := watchHeap(b)
			b.SetBytes(size)
			b.ResetTimer()
			for range b.N {
				w := c.st.Bucket("bench").Object("tasks/" + nextName() + ".zip").If(storage.Conditions{DoesNotExist: true}).NewWriter(ctx)
				w.ChunkSize = 8 << 20
				w.ContentType = "application/zip"
				if _, err := io.Copy(w, newSource(size)); err != nil {
					b.Fatal(err)
				}
				if err := w.Close(); err != nil {
					b.Fatal(err)
				}
				if w.Attrs().Size != size {
					b.Fatalf("stored %d bytes, want %d", w.Attrs().Size, size)
				}
			}
			b.StopTimer()
			b.ReportMetric(peak()/(1<<20), "peak-heap-MiB")
		})
	}
	b.Run("plain-copy", func(b *testing.B) {
		peak := watchHeap(b)
		b.SetBytes(size)
		b.ResetTimer()
		for range b.N {
			f, err := os.Create(filepath.Join(dir, "plain-"+nextName()))
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.Copy(f, newSource(size)); err != nil {
				b.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
			if err := f.Close(); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		b.ReportMetric(peak()/(1<<20), "peak-heap-MiB")
	})
}

// objectSeq names each upload of the benchmark's rounds apart.
var objectSeq atomic.Int64

func nextName() string { return strconv.FormatInt(objectSeq.Add(1), 10) }

// newSource yields n bytes from a fixed random megabyte (incompressible,
// and nearly free to produce, so the figures are the upload's).
func newSource(n int64) io.Reader {
	return io.LimitReader(repeat{block: randomBlock()}, n)
}

var randomBlock = sync.OnceValue(func() []byte {
	b := make([]byte, 1<<20)
	_, _ = rand.NewChaCha8([32]byte{1}).Read(b)
	return b
})

type repeat struct{ block []byte }

func (r repeat) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		n += copy(p[n:], r.block)
	}
	return n, nil
}

// watchHeap samples the live heap until the benchmark ends; the returned
// function reports the peak in bytes.
func watchHeap(b *testing.B) func() float64 {
	stop := make(chan struct{})
	done := make(chan float64)
	go func() {
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		var peak float64
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(s)
			peak = max(peak, float64(s[0].Value.Uint64()))
			select {
			case <-stop:
				done <- peak
				return
			case <-t.C:
			}
		}
	}()
	var once sync.Once
	var peak float64
	get := func() float64 {
		once.Do(func() { close(stop); peak = <-done })
		return peak
	}
	b.Cleanup(func() { get() })
	return get
}
