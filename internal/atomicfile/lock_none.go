//go:build !(darwin || dragonfly || freebsd || linux || netbsd || openbsd)

package atomicfile

import "os"

// holdOpen: without locks there is no reason to keep a temporary file open
// while it is renamed or removed, and Windows refuses to rename or remove an
// open file.
const holdOpen = false

// lockNew does nothing: this system has no flock(2) here, so a temporary
// file is not locked.
func lockNew(f *os.File, path string) (bool, error) { return true, nil }

// removeIfStale removes nothing: without locks a dead writer's temporary
// file cannot be told from a live one's.
func removeIfStale(path string) {}
