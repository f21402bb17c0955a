package batch

import (
	"context"
	"os"
	"sync"
	"time"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/envelope/internal/dirctx"
)

// Status is what a batch operation did to one file.
type Status int

const (
	// Failed: the file could not be opened, read, locked or rewrapped;
	// Result.Err says why. Nothing was written to it.
	Failed Status = iota
	// Rewrapped: its slot table was rewritten (or, in a dry run, would
	// be): slots moved to their KEK's current version, added or removed.
	Rewrapped
	// Current: every slot was found under its KEK's current version, and
	// nothing was written.
	Current
	// Unchanged: nothing was written, but not every slot is known to be
	// current: its slots were only kept (others were added or removed, or
	// a KEK cannot tell its version).
	Unchanged
	// NotChecked: nothing was written, and at least one slot's KEK could
	// not be opened, so whether it is current is not known
	// (SlotChange.Action "unchecked"). Never to be taken for current.
	NotChecked
)

// String returns "failed", "rewrapped", "current", "unchanged" or
// "not checked".
func (s Status) String() string {
	switch s {
	case Failed:
		return "failed"
	case Rewrapped:
		return "rewrapped"
	case Current:
		return "current"
	case Unchanged:
		return "unchanged"
	case NotChecked:
		return "not checked"
	}
	return "unknown"
}

// Result is what a batch rewrap did to one file.
type Result struct {
	// Path is the file's path, as [Files.Path] gives it.
	Path string
	// Status sums up what happened.
	Status Status
	// Rewrap is envelope.Rewrap's report, slot by slot; nil when Status is
	// Failed. A file Rewrapped may also hold "unchecked" slots.
	Rewrap *envelope.RewrapResult
	// Err is why the file failed.
	Err error
}

// StatusOf classifies a rewrap's report: Rewrapped if the table changed,
// else NotChecked if a slot is "unchecked", else Current if every slot is
// "current", else Unchanged.
func StatusOf(res *envelope.RewrapResult) Status {
	switch {
	case res.Changed:
		return Rewrapped
	case res.Unchecked() > 0:
		return NotChecked
	case res.AllCurrent():
		return Current
	}
	return Unchanged
}

// RewrapOptions says how [Rewrap] rewraps a batch of files.
type RewrapOptions struct {
	// Options applies to every file. If its Cache is nil, Rewrap uses a
	// new [envelope.RewrapCache] for the batch, so that each KEK is asked
	// its current version once and each shared wrapped DEK is rewrapped
	// once, for every file that holds it.
	Options envelope.RewrapOptions
	// Jobs bounds the files rewrapped at once, hence the KMS calls in
	// flight; less than 1 means 1.
	Jobs int
	// FileTimeout, if positive, bounds the time of each file: the wait for
	// its lock and its KMS calls.
	FileTimeout time.Duration
	// Done, if set, is called after each file with its result, by one
	// goroutine at a time (for a progress bar).
	Done func(Result)
}

// Rewrap rewraps every file of files as [envelope.RewrapFile] does, each
// opened for writing by [Files.Open] (so only if it is still the file the
// walk found) and locked while it is rewrapped, at most opts.Jobs at once.
// It returns one result per file, in the order of files, and returns once
// every file is done; a cancelled ctx fails the files not yet done.
func Rewrap(ctx context.Context, files *Files, opts *RewrapOptions) []Result {
	o := opts.Options
	if o.Cache == nil {
		o.Cache = envelope.NewRewrapCache()
	}
	results := make([]Result, files.Len())
	var mu sync.Mutex
	ForEach(files.Len(), opts.Jobs, func(i int) {
		r := Result{Path: files.Path(i)}
		fctx, cancel := fileContext(ctx, opts.FileTimeout)
		r.Rewrap, r.Err = rewrapOne(fctx, files, i, &o)
		cancel()
		if r.Err == nil {
			r.Status = StatusOf(r.Rewrap)
		}
		results[i] = r
		if opts.Done != nil {
			mu.Lock()
			opts.Done(r)
			mu.Unlock()
		}
	})
	return results
}

func rewrapOne(ctx context.Context, files *Files, i int, opts *envelope.RewrapOptions) (*envelope.RewrapResult, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, err := files.Open(i, os.O_RDWR)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if e := files.entries[i]; e.root != nil {
		// A file rewritten whole (its slots outgrew its table) is
		// replaced within the walked directory, never through a link.
		ctx = dirctx.With(ctx, e.root, e.rel)
	}
	return envelope.RewrapFile(ctx, f, opts)
}

func fileContext(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d > 0 {
		return context.WithTimeout(ctx, d)
	}
	return context.WithCancel(ctx)
}

// ForEach runs fn(0) … fn(n-1), at most jobs at once (at least one), and
// returns when all have returned: the bounded concurrency of this
// package's batches, for callers that batch other things (objects in a
// bucket, say).
func ForEach(n, jobs int, fn func(int)) {
	jobs = max(jobs, 1)
	var wg sync.WaitGroup
	sem := make(chan struct{}, jobs)
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			fn(i)
		})
	}
	wg.Wait()
}
