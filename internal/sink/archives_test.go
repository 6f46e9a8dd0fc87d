package sink

import (
	"bytes"
	"context"
	"crypto/md5"
	"errors"
	"hash/crc32"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/storage"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/api/googleapi"
)

var testUpdated = time.Date(2026, 5, 4, 9, 41, 27, 118604000, time.UTC)

func TestObjectName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		prefix string
		key    Key
		want   string
	}{
		{
			name:   "CVAT for images",
			prefix: "exports",
			key:    Key{TaskID: 42, Format: "CVAT for images 1.1", UpdatedDate: testUpdated},
			want:   "exports/tasks/42/20260504T094127.118604Z/CVAT_for_images_1.1.zip",
		},
		{
			name: "no prefix",
			key:  Key{TaskID: 7, Format: "COCO 1.0", UpdatedDate: testUpdated},
			want: "tasks/7/20260504T094127.118604Z/COCO_1.0.zip",
		},
		{
			name:   "prefix slashes trimmed",
			prefix: "/a/b/",
			key:    Key{TaskID: 7, Format: "Market-1501 1.0", UpdatedDate: testUpdated},
			want:   "a/b/tasks/7/20260504T094127.118604Z/Market-1501_1.0.zip",
		},
		{
			name: "time zone normalised to UTC",
			key:  Key{TaskID: 1, Format: "YOLO 1.1", UpdatedDate: testUpdated.In(time.FixedZone("CEST", 2*3600))},
			want: "tasks/1/20260504T094127.118604Z/YOLO_1.1.zip",
		},
		{
			name: "whole seconds keep the width",
			key:  Key{TaskID: 1, Format: "YOLO 1.1", UpdatedDate: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)},
			want: "tasks/1/20260102T030405.000000Z/YOLO_1.1.zip",
		},
		{
			name: "nanoseconds kept when present",
			key:  Key{TaskID: 1, Format: "YOLO 1.1", UpdatedDate: time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC)},
			want: "tasks/1/20260102T030405.123456789Z/YOLO_1.1.zip",
		},
		{
			name: "path separators and dots escaped",
			key:  Key{TaskID: 1, Format: "../a/b", UpdatedDate: testUpdated},
			want: "tasks/1/20260504T094127.118604Z/..~2fa~2fb.zip",
		},
		{
			name: "underscore, tilde and non-ASCII escaped",
			key:  Key{TaskID: 1, Format: "a_b~c é", UpdatedDate: testUpdated},
			want: "tasks/1/20260504T094127.118604Z/a~5fb~7ec_~c3~a9.zip",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := ObjectName(tt.prefix, tt.key); got != tt.want {
				t.Errorf("ObjectName(%q, %+v) = %q, want %q", tt.prefix, tt.key, got, tt.want)
			}
		})
	}
}

func TestObjectNameInjective(t *testing.T) {
	t.Parallel()
	formats := []string{"COCO 1.0", "coco 1.0", "COCO_1.0", "COCO~201.0", "COCO~5f1.0", "COCO-1.0", "COCO  1.0", "COCO 1.0 ", "", "~", "_", " "}
	seen := map[string]string{}
	for _, f := range formats {
		name := ObjectName("p", Key{TaskID: 1, Format: f, UpdatedDate: testUpdated})
		if prev, ok := seen[name]; ok {
			t.Errorf("formats %q and %q share the object name %q", prev, f, name)
		}
		seen[name] = f
	}
}

// FuzzEscapeFormat checks that the format part of an object name decodes
// back to the format (so names are injective) and is safe in a GCS name.
func FuzzEscapeFormat(f *testing.F) {
	for _, s := range []string{"CVAT for images 1.1", "COCO 1.0", "a_b~c", "../x", "é", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e := escapeFormat(s)
		if strings.ContainsAny(e, "/ \r\n#[]*?%") {
			t.Fatalf("escapeFormat(%q) = %q has an unsafe character", s, e)
		}
		if got := unescapeFormat(t, e); got != s {
			t.Fatalf("unescapeFormat(escapeFormat(%q)) = %q", s, got)
		}
	})
}

func unescapeFormat(t *testing.T, e string) string {
	var b strings.Builder
	for i := 0; i < len(e); i++ {
		switch c := e[i]; c {
		case '_':
			b.WriteByte(' ')
		case '~':
			if i+2 >= len(e) {
				t.Fatalf("truncated escape in %q", e)
			}
			var v byte
			for _, h := range []byte(e[i+1 : i+3]) {
				v <<= 4
				switch {
				case '0' <= h && h <= '9':
					v |= h - '0'
				case 'a' <= h && h <= 'f':
					v |= h - 'a' + 10
				default:
					t.Fatalf("bad escape in %q", e)
				}
			}
			b.WriteByte(v)
			i += 2
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// archive returns n bytes of test data holding the corruption marker.
func archive(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	copy(b[n/2:], marker)
	return b
}

var marker = []byte("CVAT-SYNC-MARKER")

func readObject(t *testing.T, c *storage.Client, o Object) []byte {
	t.Helper()
	r, err := c.Bucket(o.Bucket).Object(o.Name).Generation(o.Generation).NewReader(context.Background())
	if err != nil {
		t.Fatalf("read %s: %v", o.URI, err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read %s: %v", o.URI, err)
	}
	return b
}

func TestArchivesPut(t *testing.T) {
	t.Parallel()
	const chunk = 256 << 10
	tests := []struct {
		name string
		size int
	}{
		{name: "empty archive, one request", size: 0},
		{name: "small archive, one request", size: 100 << 10},
		{name: "large archive, resumable in chunks", size: 3*chunk + 1234},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			gcs := newFakeGCS(t, t.TempDir())
			client := newGCSClient(t, gcs.URL(), true)
			reg := prometheus.NewPedanticRegistry()
			a := mustArchives(t, ArchivesConfig{Client: client, Bucket: testBucket, Prefix: "exports", Registerer: reg, ChunkSize: chunk})
			ctx := context.Background()
			key := Key{TaskID: 42, Format: "CVAT for images 1.1", UpdatedDate: testUpdated}
			data := archive(tt.size)

			if _, ok, err := a.Stat(ctx, key); err != nil || ok {
				t.Fatalf("Stat before Put = (_, %v, %v), want (_, false, nil)", ok, err)
			}
			got, err := a.Put(ctx, key, Metadata{ProjectID: 3, TaskName: "cars", CVATVersion: "2.49.0"}, bytes.NewReader(data), nil)
			if err != nil {
				t.Fatalf("Put: %v", err)
			}
			sum := md5.Sum(data)
			name := "exports/tasks/42/20260504T094127.118604Z/CVAT_for_images_1.1.zip"
			want := Object{
				URI:        "gs://" + testBucket + "/" + name,
				Bucket:     testBucket,
				Name:       name,
				Generation: got.Generation,
				Size:       int64(len(data)),
				CRC32C:     crc32.Checksum(data, crc32cTable),
				MD5:        sum[:],
				Created:    true,
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("Put (-want +got):\n%s", diff)
			}
			if got.Generation <= 0 {
				t.Errorf("generation = %d, want > 0", got.Generation)
			}
			if back := readObject(t, client, got); !bytes.Equal(back, data) {
				t.Errorf("object holds %d bytes that differ from the %d written", len(back), len(data))
			}
			attrs, err := client.Bucket(testBucket).Object(name).Attrs(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if attrs.ContentType != ContentType {
				t.Errorf("content type = %q, want %q", attrs.ContentType, ContentType)
			}
			wantMeta := map[string]string{
				"cvat_task_id": "42", "cvat_project_id": "3", "cvat_format": "CVAT for images 1.1",
				"cvat_updated_date": "2026-05-04T09:41:27.118604Z", "cvat_task_name": "cars",
				"cvat_version": "2.49.0", "cvat_sync_schema": Schema,
			}
			if diff := cmp.Diff(wantMeta, attrs.Metadata); diff != "" {
				t.Errorf("metadata (-want +got):\n%s", diff)
			}

			// The same state again (an export produces new bytes each time:
			// here, other bytes) is the same object.
			again, err := a.Put(ctx, key, Metadata{}, bytes.NewReader(archive(tt.size+10)), nil)
			if err != nil {
				t.Fatalf("second Put: %v", err)
			}
			want.Created = false
			if diff := cmp.Diff(want, again); diff != "" {
				t.Errorf("second Put (-want +got):\n%s", diff)
			}
			stat, ok, err := a.Stat(ctx, key)
			if err != nil || !ok {
				t.Fatalf("Stat after Put = (_, %v, %v), want (_, true, nil)", ok, err)
			}
			if diff := cmp.Diff(want, stat); diff != "" {
				t.Errorf("Stat (-want +got):\n%s", diff)
			}

			// An upload whose commit check fails leaves nothing behind.
			other := Key{TaskID: 42, Format: "COCO 1.0", UpdatedDate: testUpdated}
			refused := errors.New("task changed during its export")
			if _, err := a.Put(ctx, other, Metadata{}, bytes.NewReader(data), func(context.Context) error { return refused }); !errors.Is(err, refused) {
				t.Fatalf("Put with a failing commit check = %v, want it", err)
			}
			if _, ok, err := a.Stat(ctx, other); err != nil || ok {
				t.Errorf("an uncommitted archive exists (%v, %v)", ok, err)
			}
			// The same state again, past a commit check that passes, is
			// still the one object.
			third, err := a.Put(ctx, key, Metadata{}, bytes.NewReader(data), func(context.Context) error { return nil })
			if err != nil || third.Created {
				t.Errorf("third Put = (Created %v, %v), want the existing object", third.Created, err)
			}
			if ok, err := a.HasAny(ctx, 42); err != nil || !ok {
				t.Errorf("HasAny(42) = %v, %v", ok, err)
			}
			if ok, err := a.HasAny(ctx, 4); err != nil || ok {
				t.Errorf("HasAny(4) = %v, %v (task 42's archives are not task 4's)", ok, err)
			}

			if got := testutil.ToFloat64(a.m.writes.WithLabelValues(outcomeCreated)); got != 1 {
				t.Errorf("writes{created} = %v, want 1", got)
			}
			if got := testutil.ToFloat64(a.m.writes.WithLabelValues(outcomeExists)); got != 2 {
				t.Errorf("writes{exists} = %v, want 2", got)
			}
			if got, want := testutil.ToFloat64(a.m.bytes), float64(4*tt.size+10); got != want {
				t.Errorf("write bytes = %v, want %v", got, want)
			}
			if n, err := testutil.GatherAndCount(reg); err != nil || n != 4 {
				t.Errorf("registry has %d series (err %v), want 4", n, err)
			}
		})
	}
}

func mustArchives(t testing.TB, cfg ArchivesConfig) *Archives {
	t.Helper()
	a, err := NewArchives(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestArchivesInvalidKey(t *testing.T) {
	t.Parallel()
	a := &Archives{bucket: testBucket} // never reaches the client
	tests := []struct {
		name string
		key  Key
	}{
		{name: "no task", key: Key{Format: "COCO 1.0", UpdatedDate: testUpdated}},
		{name: "no format", key: Key{TaskID: 1, UpdatedDate: testUpdated}},
		{name: "no updated_date", key: Key{TaskID: 1, Format: "COCO 1.0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := a.Put(context.Background(), tt.key, Metadata{}, strings.NewReader("x"), nil); !errors.Is(err, ErrInvalidKey) {
				t.Errorf("Put: %v, want ErrInvalidKey", err)
			}
			if _, _, err := a.Stat(context.Background(), tt.key); !errors.Is(err, ErrInvalidKey) {
				t.Errorf("Stat: %v, want ErrInvalidKey", err)
			}
		})
	}
}

// TestArchivesCorruption alters bytes on the wire between the client and
// fake-gcs-server. What it proves, and what not:
//   - single request: the client sends the CRC32C it computed in the upload's
//     metadata, and the server refuses bytes that do not match it (400), as
//     GCS does. The object is never created.
//   - resumable: the client sends its CRC32C with the final chunk
//     (X-Goog-Hash), which GCS checks but fake-gcs-server v1.56.1 ignores, so
//     the corrupted object IS stored; this row proves that Put's own
//     comparison catches it and deletes that generation, and that a retry
//     then writes the object again.
func TestArchivesCorruption(t *testing.T) {
	t.Parallel()
	const chunk = 256 << 10
	flipped := bytes.ToLower(marker)
	tests := []struct {
		name        string
		size        int
		wantErrIs   error
		wantErrCode int
	}{
		{name: "single request: refused by the server", size: 64 << 10, wantErrCode: http.StatusBadRequest},
		{name: "resumable: detected by Put, generation deleted", size: 2*chunk + 77, wantErrIs: ErrChecksumMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			gcs := newFakeGCS(t, "")
			proxy := newFaultProxy(t, gcs.URL())
			proxy.corrupt(marker, flipped)
			a := mustArchives(t, ArchivesConfig{Client: newGCSClient(t, proxy.URL, false), Bucket: testBucket, Prefix: "", Registerer: prometheus.NewRegistry(), ChunkSize: chunk})
			ctx := context.Background()
			key := Key{TaskID: 9, Format: "COCO 1.0", UpdatedDate: testUpdated}
			data := archive(tt.size)

			_, err := a.Put(ctx, key, Metadata{}, bytes.NewReader(data), nil)
			if err == nil {
				t.Fatal("Put of corrupted bytes succeeded")
			}
			t.Logf("Put: %v", err)
			if tt.wantErrIs != nil && !errors.Is(err, tt.wantErrIs) {
				t.Errorf("Put: %v, want %v", err, tt.wantErrIs)
			}
			var gerr *googleapi.Error
			if tt.wantErrCode != 0 && (!errors.As(err, &gerr) || gerr.Code != tt.wantErrCode) {
				t.Errorf("Put: %v, want a googleapi error %d", err, tt.wantErrCode)
			}
			if !strings.Contains(err.Error(), "put task 9 as \"COCO 1.0\" to gs://"+testBucket+"/tasks/9/") {
				t.Errorf("Put error %q lacks its context", err)
			}
			if got := testutil.ToFloat64(a.m.writes.WithLabelValues(outcomeError)); got != 1 {
				t.Errorf("writes{error} = %v, want 1", got)
			}

			// Nothing corrupt is left behind: a retry on a sound path writes it.
			if _, ok, err := a.Stat(ctx, key); err != nil || ok {
				t.Fatalf("Stat after a corrupted Put = (_, %v, %v), want (_, false, nil)", ok, err)
			}
			proxy.corrupt(nil, nil)
			o, err := a.Put(ctx, key, Metadata{}, bytes.NewReader(data), nil)
			if err != nil || !o.Created {
				t.Fatalf("retry: Put = (Created %v, %v), want a new object", o.Created, err)
			}
			if o.CRC32C != crc32.Checksum(data, crc32cTable) {
				t.Errorf("retry stored crc32c %s, want the data's", o.CRC32CBase64())
			}
		})
	}
}

func TestArchivesGCSFailures(t *testing.T) {
	t.Parallel()
	const chunk = 256 << 10
	tests := []struct {
		name        string
		size        int
		retry       bool
		fail        int  // requests the proxy answers 503; -1: all
		stop        bool // stop the server before writing
		timeout     time.Duration
		wantCreated bool
		wantErr     []string // substrings of the error
		wantErrIs   error
	}{
		{name: "503 on every request, no retries", size: 1000, fail: -1, wantErr: []string{"put task 5", "503", "injected: backend unavailable"}},
		{name: "503 on a resumable upload, no retries", size: 2*chunk + 1, fail: -1, wantErr: []string{"put task 5", "503"}},
		{name: "503 until the deadline, with retries", size: 1000, retry: true, fail: -1, timeout: 300 * time.Millisecond, wantErr: []string{"put task 5"}, wantErrIs: context.DeadlineExceeded},
		{name: "503 once, then the client retries", size: 1000, retry: true, fail: 1, wantCreated: true},
		{name: "server stopped", size: 1000, stop: true, wantErr: []string{"put task 5", "connection refused"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			gcs := newFakeGCS(t, "")
			proxy := newFaultProxy(t, gcs.URL())
			proxy.failNext(tt.fail)
			endpoint := proxy.URL
			if tt.stop {
				gcs.Stop()
				endpoint = gcs.URL() // nothing listens there any more
			}
			a := mustArchives(t, ArchivesConfig{Client: newGCSClient(t, endpoint, tt.retry), Bucket: testBucket, Prefix: "", Registerer: prometheus.NewRegistry(), ChunkSize: chunk})
			ctx := context.Background()
			if tt.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.timeout)
				defer cancel()
			}
			o, err := a.Put(ctx, Key{TaskID: 5, Format: "COCO 1.0", UpdatedDate: testUpdated}, Metadata{}, bytes.NewReader(archive(tt.size)), nil)
			if tt.wantErr == nil {
				if err != nil || o.Created != tt.wantCreated {
					t.Fatalf("Put = (Created %v, %v), want (Created %v, nil)", o.Created, err, tt.wantCreated)
				}
				if proxy.count() < 2 {
					t.Errorf("proxy saw %d requests, want a retry", proxy.count())
				}
				return
			}
			if err == nil {
				t.Fatal("Put succeeded, want an error")
			}
			t.Logf("Put: %v", err)
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("Put error %q does not contain %q", err, s)
				}
			}
			if tt.wantErrIs != nil && !errors.Is(err, tt.wantErrIs) {
				t.Errorf("Put: %v, want %v", err, tt.wantErrIs)
			}
			if got := testutil.ToFloat64(a.m.writes.WithLabelValues(outcomeError)); got != 1 {
				t.Errorf("writes{error} = %v, want 1", got)
			}
		})
	}
}

// TestArchivesReadError keeps a failing archive reader apart from GCS: the
// error says so, and nothing is committed.
func TestArchivesReadError(t *testing.T) {
	t.Parallel()
	gcs := newFakeGCS(t, "")
	a := mustArchives(t, ArchivesConfig{Client: newGCSClient(t, gcs.URL(), true), Bucket: testBucket, ChunkSize: 256 << 10})
	boom := errors.New("cvat: connection reset")
	r := io.MultiReader(bytes.NewReader(archive(300<<10)), errReader{boom})
	key := Key{TaskID: 6, Format: "COCO 1.0", UpdatedDate: testUpdated}
	_, err := a.Put(context.Background(), key, Metadata{}, r, nil)
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "read archive after") {
		t.Fatalf("Put: %v, want the reader's error with context", err)
	}
	if _, ok, err := a.Stat(context.Background(), key); err != nil || ok {
		t.Fatalf("Stat = (_, %v, %v): a failed read must not leave an object", ok, err)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }
