package localgcs

import (
	"bytes"
	"context"
	"crypto/md5"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/storage"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/googleapis/gax-go/v2"
	"go.uber.org/goleak"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"
)

const (
	bucket = "test-bucket"
	// chunkSize is the sink's (sink.DefaultChunkSize).
	chunkSize = 8 << 20
)

func TestMain(m *testing.M) {
	if root := os.Getenv(childEnv); root != "" {
		os.Exit(runChild(root))
	}
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"))
}

// rig is a server on a temporary directory with the test bucket, and the
// official client as the sink configures it.
type rig struct {
	srv    *Server
	root   string
	client *storage.Client
	tr     *http.Transport
}

func newRig(t testing.TB, cfg Config) *rig {
	t.Helper()
	if cfg.Root == "" {
		cfg.Root = filepath.Join(t.TempDir(), "gcs")
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	r := &rig{srv: srv, root: cfg.Root, tr: newTransport()}
	r.client = r.newClient(t)
	if err := r.client.Bucket(bucket).Create(context.Background(), "p", nil); err != nil && !isStatus(err, http.StatusConflict) {
		t.Fatalf("create bucket: %v", err)
	}
	return r
}

func (r *rig) newClient(t testing.TB) *storage.Client {
	t.Helper()
	return r.clientWith(t, r.tr)
}

// inProcessClient is a client on the server's in-process transport, as the
// embedded default's own.
func (r *rig) inProcessClient(t testing.TB) *storage.Client {
	t.Helper()
	return r.clientWith(t, r.srv.Transport())
}

func (r *rig) clientWith(t testing.TB, tr http.RoundTripper) *storage.Client {
	t.Helper()
	c, err := storage.NewClient(context.Background(), option.WithEndpoint(r.srv.URL()+"/storage/v1/"),
		option.WithoutAuthentication(), option.WithHTTPClient(&http.Client{Transport: tr}), storage.WithJSONReads())
	if err != nil {
		t.Fatal(err)
	}
	c.SetRetry(storage.WithBackoff(gax.Backoff{Initial: time.Millisecond, Max: 10 * time.Millisecond}))
	t.Cleanup(func() {
		c.Close()
		r.tr.CloseIdleConnections()
	})
	return c
}

// content is n pseudo-random bytes, the same for the same seed.
func content(seed uint64, n int) []byte {
	b := make([]byte, n)
	rng := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	_, _ = rng.Read(b)
	return b
}

// put writes data to name as the sink does (chunks of 8 MiB, automatic
// CRC32C) under conds, and returns the attributes the upload answered.
func (r *rig) put(ctx context.Context, name string, data []byte, conds *storage.Conditions) (*storage.ObjectAttrs, error) {
	h := r.client.Bucket(bucket).Object(name)
	if conds != nil {
		h = h.If(*conds)
	}
	w := h.NewWriter(ctx)
	w.ChunkSize = chunkSize
	w.ContentType = "application/zip"
	w.Metadata = map[string]string{"cvat_task_id": "42"}
	if _, err := io.Copy(w, bytes.NewReader(data)); err != nil {
		_ = w.Close()
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return w.Attrs(), nil
}

func isStatus(err error, code int) bool {
	var gerr *googleapi.Error
	return errors.As(err, &gerr) && gerr.Code == code
}

var ifAbsent = &storage.Conditions{DoesNotExist: true}

// TestUploadRoundTrip: what the storage client uploads (single-request
// below the chunk size, resumable above, a final empty chunk at a multiple
// of it) is what gets, listings and fake-gcs-server read, with the
// checksums GCS would compute, and the upload's answer is a get's answer.
func TestUploadRoundTrip(t *testing.T) {
	for _, transport := range []string{"loopback", "in-process"} {
		t.Run(transport, func(t *testing.T) {
			r := newRig(t, Config{})
			if transport == "in-process" {
				r.client = r.inProcessClient(t)
			}
			testUploadRoundTrip(t, r)
		})
	}
}

func testUploadRoundTrip(t *testing.T, r *rig) {
	ctx := context.Background()
	for _, tt := range []struct {
		name string
		size int
	}{
		{"empty", 0},
		{"small", 4097},
		{"one-chunk-exactly", chunkSize},
		{"three-chunks", 2*chunkSize + 12345},
		{"two-chunks-exactly", 2 * chunkSize},
	} {
		t.Run(tt.name, func(t *testing.T) {
			data := content(uint64(tt.size), tt.size)
			name := "tasks/42/" + tt.name + ".zip"
			got, err := r.put(ctx, name, data, ifAbsent)
			if err != nil {
				t.Fatalf("upload: %v", err)
			}
			sum := md5.Sum(data)
			want := &storage.ObjectAttrs{
				Bucket: bucket, Name: name, ContentType: "application/zip", Size: int64(tt.size),
				CRC32C: crc32.Checksum(data, castagnoli), MD5: sum[:], Metadata: map[string]string{"cvat_task_id": "42"},
				StorageClass: "STANDARD", Metageneration: 1,
			}
			ignore := cmpopts.IgnoreFields(storage.ObjectAttrs{}, "Generation", "Created", "Updated", "Etag", "ACL", "Owner", "MediaLink", "Finalized")
			if diff := cmp.Diff(want, got, ignore, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("upload answer (-want +got):\n%s", diff)
			}
			if got.Generation <= 0 || got.Created.IsZero() {
				t.Errorf("generation %d created %v", got.Generation, got.Created)
			}
			read, err := r.client.Bucket(bucket).Object(name).Attrs(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(got, read); diff != "" {
				t.Errorf("upload answer vs get (-upload +get):\n%s", diff)
			}
			rd, err := r.client.Bucket(bucket).Object(name).NewReader(ctx)
			if err != nil {
				t.Fatal(err)
			}
			back, err := io.ReadAll(rd) // the reader checks the CRC32C too
			rd.Close()
			if err != nil || !bytes.Equal(back, data) {
				t.Fatalf("read back %d bytes (err %v), want %d", len(back), err, len(data))
			}
			obj, err := r.srv.Fake().GetObject(bucket, name)
			if err != nil || !bytes.Equal(obj.Content, data) || obj.Generation != got.Generation {
				t.Fatalf("fake-gcs-server reads generation %d, %d bytes (err %v)", obj.Generation, len(obj.Content), err)
			}
		})
	}
	var names []string
	it := r.client.Bucket(bucket).Objects(ctx, &storage.Query{Prefix: "tasks/42/"})
	for {
		a, err := it.Next()
		if errors.Is(err, iterator.Done) {
			break
		}
		if err != nil {
			t.Fatalf("list: %v", err)
		}
		names = append(names, a.Name)
	}
	want := []string{"tasks/42/empty.zip", "tasks/42/one-chunk-exactly.zip", "tasks/42/small.zip", "tasks/42/three-chunks.zip", "tasks/42/two-chunks-exactly.zip"}
	if diff := cmp.Diff(want, names); diff != "" {
		t.Errorf("listing (-want +got):\n%s", diff)
	}
}

// TestPreconditions: ifGenerationMatch=0 creates only what is absent (a
// second create is 412, the first object stays), ifGenerationMatch=<gen>
// overwrites exactly that generation, for single-request and resumable
// uploads alike.
func TestPreconditions(t *testing.T) {
	r := newRig(t, Config{})
	ctx := context.Background()
	for _, size := range []int{100, chunkSize + 1} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			name := fmt.Sprintf("obj-%d", size)
			first, err := r.put(ctx, name, content(1, size), ifAbsent)
			if err != nil {
				t.Fatalf("create: %v", err)
			}
			if _, err := r.put(ctx, name, content(2, size), ifAbsent); !isStatus(err, http.StatusPreconditionFailed) {
				t.Fatalf("second create: %v, want 412", err)
			}
			if _, err := r.put(ctx, name, content(3, size), &storage.Conditions{GenerationMatch: first.Generation + 1}); !isStatus(err, http.StatusPreconditionFailed) {
				t.Fatalf("overwrite of a wrong generation: %v, want 412", err)
			}
			a, err := r.client.Bucket(bucket).Object(name).Attrs(ctx)
			if err != nil || a.Generation != first.Generation || a.CRC32C != first.CRC32C {
				t.Fatalf("after refused writes: %+v, %v; want the first generation %d", a, err, first.Generation)
			}
			second, err := r.put(ctx, name, content(4, size), &storage.Conditions{GenerationMatch: first.Generation})
			if err != nil {
				t.Fatalf("overwrite of the right generation: %v", err)
			}
			if second.Generation <= first.Generation || second.CRC32C != crc32.Checksum(content(4, size), castagnoli) {
				t.Fatalf("overwrite: generation %d after %d, crc32c %d", second.Generation, first.Generation, second.CRC32C)
			}
			if _, err := r.put(ctx, name, content(5, size), &storage.Conditions{GenerationMatch: first.Generation}); !isStatus(err, http.StatusPreconditionFailed) {
				t.Fatalf("overwrite of a replaced generation: %v, want 412", err)
			}
		})
	}
}

// TestCreateRace: of concurrent creates-if-absent of one name exactly one
// wins, and the object holds its bytes.
func TestCreateRace(t *testing.T) {
	r := newRig(t, Config{})
	ctx := context.Background()
	const n = 6
	errs := make(chan error, n)
	winners := make(chan *storage.ObjectAttrs, n)
	for i := range n {
		go func() {
			a, err := r.put(ctx, "race", content(uint64(i), chunkSize+i), ifAbsent)
			if err == nil {
				winners <- a
			}
			errs <- err
		}()
	}
	var refused int
	for range n {
		if err := <-errs; isStatus(err, http.StatusPreconditionFailed) {
			refused++
		} else if err != nil {
			t.Errorf("create: %v", err)
		}
	}
	if refused != n-1 || len(winners) != 1 {
		t.Fatalf("%d refused, %d won; want %d and 1", refused, len(winners), n-1)
	}
	w := <-winners
	a, err := r.client.Bucket(bucket).Object("race").Attrs(ctx)
	if err != nil || a.Generation != w.Generation || a.Size != w.Size || a.CRC32C != w.CRC32C {
		t.Fatalf("stored %+v (%v), the winner wrote %+v", a, err, w)
	}
}

// TestCancelledUploadLeavesNothing: an upload whose context is cancelled
// after some chunks leaves no object, and its spool file goes when the
// session has been idle for the idle timeout.
func TestCancelledUploadLeavesNothing(t *testing.T) {
	r := newRig(t, Config{IdleTimeout: -1}) // the test sweeps itself
	ctx, cancel := context.WithCancel(context.Background())
	w := r.client.Bucket(bucket).Object("cancelled").If(*ifAbsent).NewWriter(ctx)
	w.ChunkSize = chunkSize
	if _, err := w.Write(content(1, 3*chunkSize)); err != nil {
		t.Fatalf("write: %v", err)
	}
	if n := spoolBytes(t, r.srv); n < 2*chunkSize {
		t.Fatalf("spool holds %d bytes after 3 chunks written, want at least 2 chunks", n)
	}
	cancel()
	if err := w.Close(); err == nil {
		t.Fatal("close after cancel: no error")
	}
	if _, err := r.client.Bucket(bucket).Object("cancelled").Attrs(context.Background()); !errors.Is(err, storage.ErrObjectNotExist) {
		t.Fatalf("attrs of the cancelled upload: %v, want not found", err)
	}
	// The chunk request the cancel cut off may still be taking its bytes
	// back on the server.
	r.srv.active.Wait()
	if ids := r.srv.sessions.expire(time.Now().Add(-time.Hour)); len(ids) != 0 {
		t.Fatalf("sessions %v expired though they were used a moment ago", ids)
	}
	if ids := r.srv.sessions.expire(time.Now().Add(time.Second)); len(ids) != 1 || spoolBytes(t, r.srv) != 0 {
		t.Fatalf("expired %v, spool holds %d bytes; want the one session gone with its spool file", ids, spoolBytes(t, r.srv))
	}
}

// spoolBytes is what the server's spool directory holds.
func spoolBytes(t testing.TB, s *Server) int64 { return dirBytes(t, s.spool.dir) }

func newTransport() *http.Transport { return &http.Transport{} }

// TestChunkRetriedAfter503: a chunk answered 503 is sent again and the
// object is whole.
func TestChunkRetriedAfter503(t *testing.T) {
	var chunks, failed atomic.Int64
	r := newRig(t, Config{Middleware: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if req.URL.Query().Get("upload_id") != "" && chunks.Add(1) == 2 {
				failed.Add(1)
				_, _ = io.Copy(io.Discard, req.Body)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = io.WriteString(w, `{"error":{"code":503,"message":"injected"}}`)
				return
			}
			h.ServeHTTP(w, req)
		})
	}})
	data := content(9, 3*chunkSize+5)
	got, err := r.put(context.Background(), "retried", data, ifAbsent)
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	if failed.Load() != 1 || got.Size != int64(len(data)) || got.CRC32C != crc32.Checksum(data, castagnoli) {
		t.Fatalf("failed %d chunks; stored %d bytes crc32c %d", failed.Load(), got.Size, got.CRC32C)
	}
}

// TestStaleSpoolRemoved: New removes the spool directories of processes
// that are gone and keeps those of live ones.
func TestStaleSpoolRemoved(t *testing.T) {
	base := t.TempDir()
	root, spool := filepath.Join(base, "gcs"), filepath.Join(base, "gcs-uploads")
	stale := filepath.Join(spool, "spool-dead")
	live := filepath.Join(spool, "spool-alive")
	for _, d := range []string{stale, live} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "upload-1"), make([]byte, 1000), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, liveLockName), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.OpenFile(filepath.Join(live, liveLockName), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if ok, err := tryLock(f); !ok || err != nil {
		t.Fatalf("lock: %v %v", ok, err)
	}
	srv, err := New(Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale spool directory: %v, want removed", err)
	}
	if _, err := os.Stat(filepath.Join(live, "upload-1")); err != nil {
		t.Errorf("live spool file: %v, want kept", err)
	}
}

// TestTransport: the in-process transport streams downloads (whole, by
// range, abandoned half way), answers errors as the listener does, does
// not hold Close up, and fails once the server is closed.
func TestTransport(t *testing.T) {
	r := newRig(t, Config{})
	c := r.inProcessClient(t)
	ctx := context.Background()
	data := content(7, 2*chunkSize+3)
	if _, err := r.put(ctx, "big", data, ifAbsent); err != nil {
		t.Fatal(err)
	}
	obj := c.Bucket(bucket).Object("big")
	rd, err := obj.NewReader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	back, err := io.ReadAll(rd)
	rd.Close()
	if err != nil || !bytes.Equal(back, data) {
		t.Fatalf("download: %d bytes, %v", len(back), err)
	}
	rd, err = obj.NewRangeReader(ctx, chunkSize, 10)
	if err != nil {
		t.Fatal(err)
	}
	back, err = io.ReadAll(rd)
	rd.Close()
	if err != nil || !bytes.Equal(back, data[chunkSize:chunkSize+10]) {
		t.Fatalf("range: %q, %v", back, err)
	}
	rctx, cancel := context.WithCancel(ctx)
	rd, err = obj.NewReader(rctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(rd, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	cancel()
	rd.Close() // the handler's goroutine ends (goleak checks)
	if _, err := c.Bucket(bucket).Object("nosuch").Attrs(ctx); !errors.Is(err, storage.ErrObjectNotExist) {
		t.Fatalf("missing object: %v", err)
	}
	// A download nobody reads does not hold Close up, and fails.
	stuck, err := obj.NewReader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	if err := r.srv.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(stuck); err == nil {
		t.Fatal("a download cut off by Close ended without an error")
	}
	if _, err := c.Bucket(bucket).Object("big").Attrs(ctx); err == nil {
		t.Fatal("a request after Close succeeded")
	}
}
