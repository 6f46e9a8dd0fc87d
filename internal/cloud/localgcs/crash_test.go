package localgcs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/storage"
)

// childEnv makes the test binary a server on the directory it names, in a
// process of its own that the test can kill.
const childEnv = "LOCALGCS_TEST_CHILD_ROOT"

func runChild(root string) int {
	srv, err := New(Config{Root: root})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(srv.URL())
	_, _ = io.Copy(io.Discard, os.Stdin) // until the parent closes stdin, or kills us
	if err := srv.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// TestKilledMidUpload: a server killed (SIGKILL) in the middle of an upload
// leaves no object, and the next server on the directory removes what it
// had spooled.
func TestKilledMidUpload(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "gcs")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+root)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	r := &rig{srv: &Server{url: strings.TrimSpace(line)}}
	r.tr = newTransport()
	r.client = r.newClient(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := r.client.Bucket(bucket).Create(ctx, "p", nil); err != nil {
		t.Fatal(err)
	}
	w := r.client.Bucket(bucket).Object("killed").If(*ifAbsent).NewWriter(ctx)
	w.ChunkSize = chunkSize
	if _, err := w.Write(content(1, 3*chunkSize)); err != nil {
		t.Fatalf("write: %v", err)
	}
	spool := root + "-uploads"
	if n := dirBytes(t, spool); n < 2*chunkSize {
		t.Fatalf("spool holds %d bytes, want at least two chunks", n)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	cancel()
	_ = w.Close()

	r2 := newRig(t, Config{Root: root})
	if _, err := r2.client.Bucket(bucket).Object("killed").Attrs(context.Background()); !errors.Is(err, storage.ErrObjectNotExist) {
		t.Fatalf("object of the killed upload: %v, want not found", err)
	}
	if n := dirBytes(t, spool); n != 0 {
		t.Fatalf("spool holds %d bytes after the restart, want 0", n)
	}
	entries, _ := os.ReadDir(spool)
	var dirs []string
	for _, e := range entries {
		if e.IsDir() {
			dirs = append(dirs, e.Name())
		}
	}
	if len(dirs) != 1 || filepath.Join(spool, dirs[0]) != r2.srv.spool.dir {
		t.Fatalf("spool directories %v, want only the new server's %s", dirs, r2.srv.spool.dir)
	}
	_ = time.Second
}

// dirBytes is the size of the regular files under dir.
func dirBytes(t testing.TB, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err == nil {
			n += info.Size()
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
