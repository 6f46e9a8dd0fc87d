package sink

import (
	"context"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/metrics"
	"sync"
	"testing"
	"time"
)

// BenchmarkArchivesPut streams one archive per iteration (256 MiB; 16 MiB
// with -short) through Archives.Put to fake-gcs-server on its filesystem
// backend, in a child process so that this process's heap is the client's
// alone. It reports the peak live heap seen while uploading, which must stay
// near the chunk size however large the archive is, and MB/s (of the whole
// path, the fake's own disk writes and hashing included).
//
//	go test -run '^$' -bench ArchivesPut -benchtime 3x ./internal/sink/
func BenchmarkArchivesPut(b *testing.B) {
	size := int64(256 << 20)
	if testing.Short() {
		size = 16 << 20
	}
	const chunk = 8 << 20

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fakeGCSChildEnv+"="+b.TempDir())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = stdin.Close() // the child exits when its stdin closes
		if err := cmd.Wait(); err != nil {
			b.Errorf("fake-gcs-server child: %v", err)
		}
	})
	url, err := readURL(stdout)
	if err != nil {
		b.Fatal(err)
	}

	a := mustArchives(b, ArchivesConfig{Client: newGCSClient(b, url, true), Bucket: testBucket, Prefix: "bench", ChunkSize: chunk})
	ctx := context.Background()
	peak := startHeapSampler()
	b.SetBytes(size)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		key := Key{TaskID: int64(i + 1), Format: "CVAT for images 1.1", UpdatedDate: testUpdated}
		o, err := a.Put(ctx, key, Metadata{}, io.LimitReader(&patternReader{}, size), nil)
		if err != nil {
			b.Fatal(err)
		}
		if !o.Created || o.Size != size {
			b.Fatalf("Put = %+v, want a new object of %d bytes", o, size)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(peak())/(1<<20), "peak-heap-MiB")
}

// patternReader yields an endless, cheap, non-constant byte stream without
// holding the archive in memory.
type patternReader struct{ n uint64 }

func (r *patternReader) Read(p []byte) (int, error) {
	for i := range p {
		r.n++
		p[i] = byte(r.n ^ r.n>>9)
	}
	return len(p), nil
}

// startHeapSampler samples the live heap every millisecond until the
// returned function is called, which returns the largest sample.
func startHeapSampler() func() uint64 {
	runtime.GC()
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	var (
		wg   sync.WaitGroup
		max  uint64
		stop = make(chan struct{})
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(sample)
			if v := sample[0].Value.Uint64(); v > max {
				max = v
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	return func() uint64 {
		close(stop)
		wg.Wait()
		return max
	}
}
