package golden

import (
	"os"
	"path/filepath"
	"testing"
)

type recorder struct {
	testing.TB
	failed bool
}

func (r *recorder) Helper()               {}
func (r *recorder) Errorf(string, ...any) { r.failed = true }
func (r *recorder) Fatalf(string, ...any) { r.failed = true }
func (r *recorder) Fatal(...any)          { r.failed = true }

func TestCheck(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "x.golden")
	t.Setenv("UPDATE_GOLDEN", "")
	r := &recorder{TB: t}
	Check(r, path, []byte("a\n"))
	if !r.failed {
		t.Fatal("a missing golden file passed")
	}
	t.Setenv("UPDATE_GOLDEN", "1")
	r = &recorder{TB: t}
	Check(r, path, []byte("a\n"))
	if r.failed {
		t.Fatal("UPDATE_GOLDEN=1 did not write the file")
	}
	if b, _ := os.ReadFile(path); string(b) != "a\n" {
		t.Fatalf("written %q", b)
	}
	t.Setenv("UPDATE_GOLDEN", "")
	for got, fail := range map[string]bool{"a\n": false, "b\n": true} {
		r = &recorder{TB: t}
		Check(r, path, []byte(got))
		if r.failed != fail {
			t.Errorf("Check(%q) failed = %v, want %v", got, r.failed, fail)
		}
	}
}
