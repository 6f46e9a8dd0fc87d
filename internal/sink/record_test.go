package sink

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/cvat-sync/cvat-sync/internal/task"
)

func newRecords(t *testing.T) *Records {
	t.Helper()
	gcs := newFakeGCS(t, t.TempDir())
	r, err := NewRecords(RecordsConfig{Client: newGCSClient(t, gcs.URL(), true), Bucket: testBucket, Prefix: "_cvat-sync/"})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRecordsRoundTrip(t *testing.T) {
	r := newRecords(t)
	ctx := context.Background()
	rec, err := r.Get(ctx, 42)
	if err != nil || rec.Exists() || rec.TaskID != 42 {
		t.Fatalf("Get of a missing record = %+v, %v", rec, err)
	}
	st := task.State{ID: 42, Name: "cars", ProjectID: 3, OrganizationID: 2, Status: "annotation", UpdatedDate: testUpdated}
	stored, err := r.Update(ctx, 42, func(rec *Record) (bool, error) {
		rec.SetState(st)
		rec.Formats = map[string]Announced{"COCO 1.0": {UpdatedDate: testUpdated, Generation: 7, At: testExportedAt}}
		return true, nil
	})
	if err != nil || !stored.Exists() {
		t.Fatalf("Update = %+v, %v", stored, err)
	}
	got, err := r.Get(ctx, 42)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(stored, got, cmp.AllowUnexported(Record{})); diff != "" {
		t.Errorf("Get after Update (-stored +got):\n%s", diff)
	}
	if !got.Current([]string{"COCO 1.0"}, testUpdated) || got.Current([]string{"COCO 1.0", "YOLO 1.1"}, testUpdated) ||
		got.Current([]string{"COCO 1.0"}, testUpdated.Add(time.Microsecond)) {
		t.Error("Current is wrong")
	}
	if got.State() != st {
		t.Errorf("State %+v, want %+v", got.State(), st)
	}

	// A write from a stale read is a conflict; Update reads again.
	stale := got
	if _, err := r.Put(ctx, got); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Put(ctx, stale); !errors.Is(err, ErrConflict) {
		t.Errorf("stale Put = %v, want ErrConflict", err)
	}
	calls := 0
	if _, err := r.Update(ctx, 42, func(rec *Record) (bool, error) { calls++; rec.Task.Status = "completed"; return true, nil }); err != nil || calls != 1 {
		t.Errorf("Update = %v after %d calls", err, calls)
	}

	var listed []int64
	for _, id := range []int64{7, 1000} {
		if _, err := r.Update(ctx, id, func(rec *Record) (bool, error) { rec.Task.UpdatedDate = testUpdated; return true, nil }); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.List(ctx, func(rec Record) error { listed = append(listed, rec.TaskID); return nil }); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int64{7, 42, 1000}, listed, cmpopts.SortSlices(func(a, b int64) bool { return a < b })); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
}

func TestRecordFitsMetadata(t *testing.T) {
	r := newRecords(t)
	rec := Record{TaskID: 1, Task: RecordedTask{Name: strings.Repeat("n", 300)},
		Failure: &Failure{Error: strings.Repeat("é", 9000)}}
	got, err := r.Put(context.Background(), rec)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Failure.Error) > maxRecordBytes || !strings.HasSuffix(got.Failure.Error, "…") {
		t.Errorf("error text kept %d bytes", len(got.Failure.Error))
	}
}

func TestCursor(t *testing.T) {
	r := newRecords(t)
	ctx := context.Background()
	c, err := r.Cursor(ctx)
	if err != nil || !c.Since.IsZero() {
		t.Fatalf("empty cursor = %+v, %v", c, err)
	}
	c.Since, c.SinceSetting, c.Watermark = testUpdated, "first-start", testExportedAt
	saved, err := r.SaveCursor(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.SaveCursor(ctx, c); !errors.Is(err, ErrConflict) {
		t.Errorf("second save from the same read = %v, want ErrConflict", err)
	}
	back, err := r.Cursor(ctx)
	if err != nil || !back.Since.Equal(testUpdated) || back.SinceSetting != "first-start" || !back.Watermark.Equal(testExportedAt) {
		t.Fatalf("cursor %+v, %v", back, err)
	}
	if _, err := r.SaveCursor(ctx, saved); err != nil {
		t.Errorf("save after its own write: %v", err)
	}
}

func TestCheckPrefixes(t *testing.T) {
	for _, tc := range []struct {
		archives, records string
		ok                bool
	}{
		{"", "_cvat-sync", true},
		{"exports", "_cvat-sync", true},
		{"exports", "exports-state", true},
		{"", "tasks", false},
		{"", "tasks/state", false},
		{"exports", "exports", false},
		{"exports", "exports/state", false},
		{"a/b", "a", false},
		{"", "", false},
	} {
		if err := CheckPrefixes(tc.archives, tc.records); (err == nil) != tc.ok {
			t.Errorf("CheckPrefixes(%q, %q) = %v, want ok %v", tc.archives, tc.records, err, tc.ok)
		}
	}
}
