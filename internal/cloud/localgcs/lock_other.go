//go:build !unix

package localgcs

import "os"

// Without flock, spool directories are not told apart by process (every
// one but this process's is taken as stale) and commits are serialized
// within the process only: one process per data directory.

func tryLock(*os.File) (bool, error) { return true, nil }

func lockFile(*os.File) error { return nil }

func unlockFile(*os.File) error { return nil }
