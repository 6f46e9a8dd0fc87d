// Package golden compares test output with files kept under testdata:
// UPDATE_GOLDEN=1 rewrites them. The one golden-file rule of cvat-sync's
// tests.
package golden

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Update reports whether golden files are being rewritten (UPDATE_GOLDEN=1).
func Update() bool { return os.Getenv("UPDATE_GOLDEN") == "1" }

// Check fails t when got differs from the file at path, showing the diff.
// With UPDATE_GOLDEN=1 it writes got to path first.
func Check(t testing.TB, path string, got []byte) {
	t.Helper()
	if Update() {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with UPDATE_GOLDEN=1 to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s differs (-want +got); rerun with UPDATE_GOLDEN=1 if intended:\n%s", path, diff)
	}
}
