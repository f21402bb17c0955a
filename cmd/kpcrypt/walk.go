package main

import (
	"github.com/kpcrypt/kpcrypt/envelope/batch"
)

// The directory walk of rewrap and scan is batch.Walk's.

// testHookAfterWalk, when set, runs between the walk and the rewraps.
var testHookAfterWalk func()

// collectFiles walks paths as batch.Walk does and returns, besides the
// files, how many files found were not kpcrypt files. Close the result.
func collectFiles(paths []string) (_ *batch.Files, skipped int, err error) {
	w, err := batch.Walk(paths)
	if err != nil {
		return nil, 0, err
	}
	return w, w.NotKpcrypt, nil
}
