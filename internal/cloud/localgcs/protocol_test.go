package localgcs

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/storage"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/pkg/xattr"
)

// call sends one raw request and returns the status, headers and body.
func (r *rig) call(t *testing.T, method, u string, body []byte, hdr map[string]string) (int, http.Header, string) {
	t.Helper()
	if !strings.HasPrefix(u, "http") {
		u = r.srv.URL() + u
	}
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := r.tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

func (r *rig) startSession(t *testing.T, name, query string) string {
	t.Helper()
	code, h, body := r.call(t, http.MethodPost, "/upload/storage/v1/b/"+bucket+"/o?uploadType=resumable&name="+url.QueryEscape(name)+query,
		[]byte(`{"contentType":"text/plain"}`), map[string]string{"Content-Type": "application/json"})
	if code != http.StatusOK || h.Get("Location") == "" || body != "" {
		t.Fatalf("start session: %d %q %q", code, h.Get("Location"), body)
	}
	return h.Get("Location")
}

func crcHeader(b []byte) string {
	var c [4]byte
	binary.BigEndian.PutUint32(c[:], crc32.Checksum(b, castagnoli))
	return "crc32c=" + base64.StdEncoding.EncodeToString(c[:])
}

// TestResumableProtocol drives a session by hand through what GCS does
// with resent, overlapping and out-of-order chunks, status queries, both
// ways of acknowledging a chunk, the final answer and its replay.
func TestResumableProtocol(t *testing.T) {
	r := newRig(t, Config{})
	data := []byte("0123456789abcdefghij")
	loc := r.startSession(t, "proto", "&ifGenerationMatch=0")
	type step struct {
		name, rng, body string
		no308           bool
		hash            string
		wantCode        int
		wantRange       string
	}
	for _, s := range []step{
		{name: "status before any byte", rng: "bytes */*", wantCode: 308},
		{name: "first chunk, GCS's 308", rng: "bytes 0-9/*", body: string(data[:10]), wantCode: 308, wantRange: "bytes=0-9"},
		{name: "the same chunk again (its answer was lost)", rng: "bytes 0-9/*", body: string(data[:10]), no308: true, wantCode: 200, wantRange: "bytes=0-9"},
		{name: "a chunk past what is held", rng: "bytes 15-19/*", body: string(data[15:]), wantCode: 400},
		{name: "overlapping chunk", rng: "bytes 5-14/*", body: string(data[5:15]), no308: true, wantCode: 200, wantRange: "bytes=0-14"},
		{name: "status", rng: "bytes */*", wantCode: 308, wantRange: "bytes=0-14"},
		{name: "last chunk with a wrong CRC32C", rng: "bytes 15-19/20", body: string(data[15:]), hash: crcHeader([]byte("nope")), wantCode: 400},
		{name: "the error is the session's answer from now on", rng: "bytes */20", wantCode: 400},
	} {
		hdr := map[string]string{"Content-Range": s.rng}
		if s.no308 {
			hdr["X-GUploader-No-308"] = "yes"
		}
		if s.hash != "" {
			hdr["X-Goog-Hash"] = s.hash
		}
		code, h, body := r.call(t, http.MethodPut, loc, []byte(s.body), hdr)
		if code != s.wantCode || h.Get("Range") != s.wantRange {
			t.Fatalf("%s: %d Range %q %s; want %d Range %q", s.name, code, h.Get("Range"), body, s.wantCode, s.wantRange)
		}
		if s.no308 && code == 200 && h.Get("X-Http-Status-Code-Override") != "308" {
			t.Fatalf("%s: no X-Http-Status-Code-Override: 308", s.name)
		}
	}
	if _, err := r.client.Bucket(bucket).Object("proto").Attrs(context.Background()); !errors.Is(err, storage.ErrObjectNotExist) {
		t.Fatalf("object after a checksum mismatch: %v, want none", err)
	}

	// A session that ends well answers with the object resource, to the
	// last chunk and to a resend of it.
	loc = r.startSession(t, "proto", "&ifGenerationMatch=0")
	if code, _, body := r.call(t, http.MethodPost, loc, data[:12], map[string]string{"Content-Range": "bytes 0-11/*"}); code != 308 {
		t.Fatalf("chunk: %d %s", code, body)
	}
	var first string
	for i := range 2 {
		code, _, body := r.call(t, http.MethodPut, loc, data[12:], map[string]string{"Content-Range": "bytes 12-19/20", "X-Goog-Hash": crcHeader(data)})
		if code != http.StatusOK {
			t.Fatalf("last chunk (%d): %d %s", i, code, body)
		}
		var obj struct {
			Name, Size, Crc32c, ContentType, Generation string
		}
		if err := json.Unmarshal([]byte(body), &obj); err != nil || obj.Name != "proto" || obj.Size != "20" || obj.ContentType != "text/plain" || obj.Generation == "" {
			t.Fatalf("final answer: %s (%v)", body, err)
		}
		if i == 0 {
			first = body
		} else if body != first {
			t.Fatalf("replayed answer differs:\n%s\n%s", first, body)
		}
	}

	// DELETE cancels a session: 499, and no object.
	loc = r.startSession(t, "cancelled", "")
	r.call(t, http.MethodPut, loc, data[:10], map[string]string{"Content-Range": "bytes 0-9/*"})
	if code, _, _ := r.call(t, http.MethodDelete, loc, nil, nil); code != 499 {
		t.Fatalf("delete session: %d, want 499", code)
	}
	if code, _, _ := r.call(t, http.MethodPut, loc, data[10:], map[string]string{"Content-Range": "bytes 10-19/20"}); code != 499 {
		t.Fatalf("chunk after delete: %d, want 499", code)
	}
	if _, err := r.client.Bucket(bucket).Object("cancelled").Attrs(context.Background()); !errors.Is(err, storage.ErrObjectNotExist) {
		t.Fatalf("object of a cancelled session: %v", err)
	}
	if code, _, _ := r.call(t, http.MethodPut, "/upload/storage/v1/b/"+bucket+"/o?uploadType=resumable&upload_id=nosuch", data, map[string]string{"Content-Range": "bytes 0-19/20"}); code != http.StatusNotFound {
		t.Fatalf("unknown session: %d, want 404", code)
	}
}

// TestSingleRequestUploads: multipart and media uploads, their declared
// checksums checked, and uploads into a bucket that does not exist.
func TestSingleRequestUploads(t *testing.T) {
	r := newRig(t, Config{})
	data := []byte("hello, embedded GCS")
	multipart := func(meta string) ([]byte, string) {
		var b bytes.Buffer
		fmt.Fprintf(&b, "--XX\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n%s\r\n--XX\r\nContent-Type: text/plain\r\n\r\n%s\r\n--XX--\r\n", meta, data)
		return b.Bytes(), "multipart/related; boundary=XX"
	}
	for _, tt := range []struct {
		name     string
		query    string
		body     func() ([]byte, string)
		hdr      map[string]string
		wantCode int
	}{
		{name: "multipart", query: "uploadType=multipart", body: func() ([]byte, string) {
			return multipart(`{"name":"mp","metadata":{"k":"v"},"crc32c":"` + strings.TrimPrefix(crcHeader(data), "crc32c=") + `"}`)
		}, wantCode: 200},
		{name: "multipart with a wrong declared CRC32C", query: "uploadType=multipart", body: func() ([]byte, string) {
			return multipart(`{"name":"mp-bad","crc32c":"AAAAAA=="}`)
		}, wantCode: 400},
		{name: "multipart with a wrong declared MD5", query: "uploadType=multipart", body: func() ([]byte, string) {
			return multipart(`{"name":"mp-bad","md5Hash":"AAAAAAAAAAAAAAAAAAAAAA=="}`)
		}, wantCode: 400},
		{name: "multipart if absent, again", query: "uploadType=multipart&ifGenerationMatch=0", body: func() ([]byte, string) {
			return multipart(`{"name":"mp"}`)
		}, wantCode: 412},
		{name: "media", query: "uploadType=media&name=media", body: func() ([]byte, string) { return data, "text/plain" },
			hdr: map[string]string{"X-Goog-Meta-Owner": "me", "X-Goog-Hash": crcHeader(data)}, wantCode: 200},
		{name: "media with an escaping name", query: "uploadType=media&name=" + url.QueryEscape("../../etc/passwd"), body: func() ([]byte, string) { return data, "text/plain" }, wantCode: 400},
		{name: "media without a name", query: "uploadType=media", body: func() ([]byte, string) { return data, "text/plain" }, wantCode: 400},
	} {
		t.Run(tt.name, func(t *testing.T) {
			body, ct := tt.body()
			hdr := map[string]string{"Content-Type": ct}
			for k, v := range tt.hdr {
				hdr[k] = v
			}
			code, _, resp := r.call(t, http.MethodPost, "/upload/storage/v1/b/"+bucket+"/o?"+tt.query, body, hdr)
			if code != tt.wantCode {
				t.Fatalf("%d %s, want %d", code, resp, tt.wantCode)
			}
		})
	}
	for name, wantMeta := range map[string]map[string]string{"mp": {"k": "v"}, "media": {"owner": "me"}} {
		obj, err := r.srv.Fake().GetObject(bucket, name)
		if err != nil || !bytes.Equal(obj.Content, data) || obj.ContentType != "text/plain" {
			t.Fatalf("%s: %+v %v", name, obj.ObjectAttrs, err)
		}
		if diff := cmp.Diff(wantMeta, obj.Metadata); diff != "" {
			t.Errorf("%s metadata (-want +got):\n%s", name, diff)
		}
	}
	if _, err := r.srv.Fake().GetObject(bucket, "mp-bad"); err == nil {
		t.Error("an upload refused for its checksum was stored")
	}
	if code, _, _ := r.call(t, http.MethodPost, "/upload/storage/v1/b/nosuch/o?uploadType=media&name=x", data, nil); code != http.StatusNotFound {
		t.Errorf("upload into a missing bucket: %d, want 404", code)
	}
	if code, _, _ := r.call(t, http.MethodPost, "/upload/storage/v1/b/nosuch/o?uploadType=resumable&name=x", nil, nil); code != http.StatusNotFound {
		t.Errorf("session in a missing bucket: %d, want 404", code)
	}
	for _, b := range []string{"..", "."} {
		if code, _, _ := r.call(t, http.MethodPost, "/upload/storage/v1/b/"+b+"/o?uploadType=media&name=escaped", data, nil); code != http.StatusNotFound {
			t.Errorf("upload into bucket %q: %d, want 404", b, code)
		}
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(r.root), "escaped")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("an upload escaped the bucket directory: %v", err)
	}
}

// TestStoreLayoutMatchesFake holds store's on-disk record to the one
// fake-gcs-server writes itself: the same place (extended attribute or
// .metadata file) and the same fields.
func TestStoreLayoutMatchesFake(t *testing.T) {
	r := newRig(t, Config{})
	// The same media upload, once through fake-gcs-server's own handler
	// and once through the server.
	for name, h := range map[string]http.Handler{"by-fake": r.srv.fakeH, "by-us": r.srv.hs.Handler} {
		req, err := http.NewRequest(http.MethodPost, "/upload/storage/v1/b/"+bucket+"/o?uploadType=media&name="+name, strings.NewReader("x"))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "text/plain")
		rec := &recorder{header: http.Header{}}
		h.ServeHTTP(rec, req)
		if rec.status != http.StatusOK {
			t.Fatalf("%s: %d %s", name, rec.status, rec.body.String())
		}
	}
	record := func(name string) map[string]any {
		t.Helper()
		p := r.root + "/" + bucket + "/" + name
		var b []byte
		var err error
		if r.srv.store.xattr {
			b, err = xattr.Get(p, xattrName)
		} else {
			b, err = os.ReadFile(p + metadataSuffix)
		}
		if err != nil {
			t.Fatalf("record of %s: %v", name, err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	keys := func(m map[string]any) []string {
		var ks []string
		for k := range m {
			ks = append(ks, k)
		}
		return ks
	}
	fake, ours := record("by-fake"), record("by-us")
	if diff := cmp.Diff(keys(fake), keys(ours), cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
		t.Errorf("record fields (-fake-gcs-server +ours):\n%s", diff)
	}
	for _, k := range []string{"StorageClass", "Deleted", "CustomTime", "ACL", "Crc32c", "Md5Hash", "Etag"} {
		if fmt.Sprint(fake[k]) != fmt.Sprint(ours[k]) {
			t.Errorf("%s: fake-gcs-server writes %v, we write %v", k, fake[k], ours[k])
		}
	}
}

// TestDeleteAndUpdatePreconditions: a delete or metadata update of an
// object honours ifGenerationMatch, which fake-gcs-server alone ignores
// (it deletes whatever generation is live): the sink removes one corrupt
// generation this way and must not remove a newer one.
func TestDeleteAndUpdatePreconditions(t *testing.T) {
	r := newRig(t, Config{})
	ctx := context.Background()
	first, err := r.put(ctx, "tasks/1/x.zip", []byte("one"), ifAbsent)
	if err != nil {
		t.Fatal(err)
	}
	second, err := r.put(ctx, "tasks/1/x.zip", []byte("two"), &storage.Conditions{GenerationMatch: first.Generation})
	if err != nil {
		t.Fatal(err)
	}
	h := r.client.Bucket(bucket).Object("tasks/1/x.zip")
	if err := h.If(storage.Conditions{GenerationMatch: first.Generation}).Delete(ctx); !isStatus(err, http.StatusPreconditionFailed) {
		t.Fatalf("delete of a replaced generation: %v, want 412", err)
	}
	if _, err := h.If(storage.Conditions{GenerationMatch: first.Generation}).Update(ctx, storage.ObjectAttrsToUpdate{Metadata: map[string]string{"k": "v"}}); !isStatus(err, http.StatusPreconditionFailed) {
		t.Fatalf("update of a replaced generation: %v, want 412", err)
	}
	if a, err := h.Attrs(ctx); err != nil || a.Generation != second.Generation {
		t.Fatalf("after refused changes: %+v %v; want generation %d", a, err, second.Generation)
	}
	if err := h.If(storage.Conditions{GenerationMatch: second.Generation}).Delete(ctx); err != nil {
		t.Fatalf("delete of the live generation: %v", err)
	}
	if _, err := h.Attrs(ctx); !errors.Is(err, storage.ErrObjectNotExist) {
		t.Fatalf("after delete: %v", err)
	}
}

// TestNamesTheLayoutCannotHold: names that would collide as files are
// refused with a 400 that says why, before or after their bytes arrive.
func TestNamesTheLayoutCannotHold(t *testing.T) {
	r := newRig(t, Config{})
	ctx := context.Background()
	if _, err := r.put(ctx, "a/b", []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "a/b/c", "a//b", "a/./b", "/a", "a/"} {
		if _, err := r.put(ctx, name, []byte("y"), nil); !isStatus(err, http.StatusBadRequest) {
			t.Errorf("%q: %v, want 400", name, err)
		}
	}
	if obj, err := r.srv.Fake().GetObject(bucket, "a/b"); err != nil || string(obj.Content) != "x" {
		t.Fatalf("a/b: %q %v", obj.Content, err)
	}
}

// TestExpiredSession: a session dropped for idleness answers 404 to a
// request that was already on its way.
func TestExpiredSession(t *testing.T) {
	r := newRig(t, Config{IdleTimeout: -1})
	loc := r.startSession(t, "late", "")
	id := loc[strings.LastIndex(loc, "=")+1:]
	sess := r.srv.sessions.get(id)
	if ids := r.srv.sessions.expire(time.Now().Add(time.Second)); len(ids) != 1 || ids[0] != id {
		t.Fatalf("expired %v", ids)
	}
	// The request that had found the session before it expired.
	rec := &recorder{header: http.Header{}}
	req, _ := http.NewRequest(http.MethodPut, loc, strings.NewReader("0123456789"))
	req.Header.Set("Content-Range", "bytes 0-9/10")
	r.srv.chunk(rec, req, sess)
	if rec.status != http.StatusNotFound {
		t.Fatalf("chunk to an expired session: %d %s, want 404", rec.status, rec.body.String())
	}
	if code, _, _ := r.call(t, http.MethodPut, loc, []byte("0123456789"), map[string]string{"Content-Range": "bytes 0-9/10"}); code != http.StatusNotFound {
		t.Fatalf("chunk after expiry: %d, want 404", code)
	}
}
