// Package payloads loads CVAT's recorded webhook payloads from the
// repository's testdata/payloads, from any package's tests: the one payload
// loader of cvat-sync's tests.
package payloads

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Dir is the absolute path of testdata/payloads.
func Dir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "testdata", "payloads")
}

// Read returns the payload at name, relative to testdata/payloads (e.g.
// "update_job.json" or "v2.73.0/update_task.json"), and fails t when it
// cannot be read.
func Read(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(Dir(), filepath.FromSlash(name)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// All returns every payload, keyed by its slash-separated path relative to
// testdata/payloads.
func All(t testing.TB) map[string][]byte {
	t.Helper()
	root := Dir()
	out := map[string][]byte{}
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".json") {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		out[filepath.ToSlash(rel)] = b
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
