//go:build !unix

package atomicfile

import "io/fs"

// checkPlantedLink does nothing where there are no sticky directories.
func checkPlantedLink(string, fs.FileInfo) error { return nil }
