package batch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/internal/filelock"
	"github.com/kpcrypt/kpcrypt/kms"
)

// ErrNoKEK is why a slot is not checked when the keyring offers no KEK of
// its URI (and gave no reason, such as kms.ErrUntrusted, of its own).
var ErrNoKEK = errors.New("no KEK of the keyring opens it")

// Versions asks each KEK, by URI, once for its current version and once for
// its list of versions, and remembers the answers for its lifetime: make
// one per batch. It is safe for concurrent use; a caller waiting for
// another's KMS call honours its own context. A failure is not remembered.
type Versions struct {
	keyring  envelope.Keyring
	lock     chan struct{} // held across a KMS call; a wait honours ctx
	mu       sync.Mutex    // guards the maps
	current  map[string]string
	versions map[string][]string
}

// NewVersions returns a Versions that opens KEKs through keyring.
func NewVersions(keyring envelope.Keyring) *Versions {
	return &Versions{keyring: keyring, lock: make(chan struct{}, 1), current: map[string]string{}, versions: map[string][]string{}}
}

func (v *Versions) kek(ctx context.Context, uri string) (kms.KEK, error) {
	if v.keyring == nil {
		return nil, fmt.Errorf("KEK %s: %w", uri, ErrNoKEK)
	}
	keks, err := v.keyring.KEKsFor(ctx, uri)
	if err != nil {
		return nil, err
	}
	for _, k := range keks {
		if k.URI() == uri {
			return k, nil
		}
	}
	return nil, fmt.Errorf("KEK %s: %w", uri, ErrNoKEK)
}

// cached returns m[uri], asking ask for it under v.lock if it is not there.
func cached[T any](ctx context.Context, v *Versions, m map[string]T, uri string, ask func(kms.KEK) (T, error)) (T, error) {
	var zero T
	select {
	case v.lock <- struct{}{}:
	case <-ctx.Done():
		return zero, ctx.Err()
	}
	defer func() { <-v.lock }()
	v.mu.Lock()
	val, ok := m[uri]
	v.mu.Unlock()
	if ok {
		return val, nil
	}
	k, err := v.kek(ctx, uri)
	if err != nil {
		return zero, err
	}
	if val, err = ask(k); err != nil {
		return zero, err
	}
	v.mu.Lock()
	m[uri] = val
	v.mu.Unlock()
	return val, nil
}

// Current returns the current version of the KEK at uri.
func (v *Versions) Current(ctx context.Context, uri string) (string, error) {
	return cached(ctx, v, v.current, uri, func(k kms.KEK) (string, error) {
		vr, ok := k.(kms.VersionReporter)
		if !ok {
			return "", fmt.Errorf("KEK %s cannot tell its current version", uri)
		}
		return vr.CurrentVersion(ctx)
	})
}

// List returns the versions of the KEK at uri, oldest first.
func (v *Versions) List(ctx context.Context, uri string) ([]string, error) {
	return cached(ctx, v, v.versions, uri, func(k kms.KEK) ([]string, error) {
		vl, ok := k.(kms.VersionLister)
		if !ok {
			return nil, fmt.Errorf("KEK %s cannot list its versions", uri)
		}
		return vl.Versions(ctx)
	})
}

// Outdated reports whether slot s is not under its KEK's current version.
func (v *Versions) Outdated(ctx context.Context, s envelope.SlotInfo) (bool, error) {
	cur, err := v.Current(ctx, s.KEK)
	if err != nil {
		return false, err
	}
	return s.KeyVersion != cur, nil
}

// Below reports whether slot s is under a version of its KEK older than
// min, in the KEK's order of versions. A min that is not one of the KEK's
// versions makes it false; a slot's version that is not one is an error.
func (v *Versions) Below(ctx context.Context, s envelope.SlotInfo, min string) (bool, error) {
	vs, err := v.List(ctx, s.KEK)
	if err != nil {
		return false, err
	}
	minAt := slices.Index(vs, min)
	if minAt < 0 {
		return false, nil // another KEK's version
	}
	at := slices.Index(vs, s.KeyVersion)
	if at < 0 {
		return false, fmt.Errorf("the slot's key version %s is not one of KEK %s's versions", s.KeyVersion, s.KEK)
	}
	return at < minAt, nil
}

// ScanOptions says what [Scan] looks for.
type ScanOptions struct {
	// Versions answers the questions about KEKs' versions; make it with
	// NewVersions over the keyring that opens the slots' KEKs.
	Versions *Versions
	// BelowVersion, when set, makes Scan check only the slots of the KEK
	// BelowKEK, each found outdated when its version is older than
	// BelowVersion in the KEK's order of versions. Without it, every slot
	// is checked against its KEK's current version.
	BelowVersion, BelowKEK string
	// Jobs bounds the files scanned at once; less than 1 means 1.
	Jobs int
	// FileTimeout, if positive, bounds the time of each file: the wait for
	// its lock and its KMS calls.
	FileTimeout time.Duration
}

// ScanResult is what [Scan] found in one file.
type ScanResult struct {
	// Path is the file's path, as [Files.Path] gives it.
	Path string
	// Err is why the file could not be read: nothing of it was checked.
	Err error
	// Header is the file's header, when it could be read.
	Header *envelope.Header
	// Slots are the slots checked, in order.
	Slots []SlotScan
}

// SlotScan is what Scan found of one slot.
type SlotScan struct {
	// Index is the slot's index in Header.Slots.
	Index int
	// Outdated is set when the slot is outdated; meaningless if Err is set.
	Outdated bool
	// Err is why the slot could not be checked: for example an error
	// matching ErrNoKEK or kms.ErrUntrusted.
	Err error
}

// Outdated reports whether some slot of the file was found outdated.
func (r *ScanResult) Outdated() bool {
	return slices.ContainsFunc(r.Slots, func(s SlotScan) bool { return s.Err == nil && s.Outdated })
}

// Complete reports whether the file and every slot in question were
// checked: only then does "not outdated" mean current.
func (r *ScanResult) Complete() bool {
	return r.Err == nil && !slices.ContainsFunc(r.Slots, func(s SlotScan) bool { return s.Err != nil })
}

// Scan reads the header of every file of files, opened by [Files.Open]
// (so only if it is still the file the walk found) under a shared lock, so
// that a concurrent rewrap never shows a torn table, and checks its slots'
// versions, at most opts.Jobs files at once. It writes nothing and makes no
// KMS call but the version questions of opts.Versions, at most one of each
// kind per KEK. It returns one result per file, in the order of files.
func Scan(ctx context.Context, files *Files, opts *ScanOptions) []ScanResult {
	results := make([]ScanResult, files.Len())
	ForEach(files.Len(), opts.Jobs, func(i int) {
		fctx, cancel := fileContext(ctx, opts.FileTimeout)
		defer cancel()
		results[i] = scanOne(fctx, files, i, opts)
	})
	return results
}

func scanOne(ctx context.Context, files *Files, i int, opts *ScanOptions) ScanResult {
	r := ScanResult{Path: files.Path(i)}
	if r.Err = ctx.Err(); r.Err != nil {
		return r
	}
	f, err := files.Open(i, os.O_RDONLY)
	if err != nil {
		r.Err = err
		return r
	}
	// A shared lock, within the file's time: a lock held for ever stalls
	// one file, not the batch.
	if err := filelock.Lock(ctx, f, false); err != nil && !errors.Is(err, filelock.ErrUnsupported) {
		f.Close()
		r.Err = fmt.Errorf("waiting for the file's lock: %w", err)
		return r
	}
	r.Header, r.Err = envelope.Inspect(f)
	f.Close()
	if r.Err != nil {
		return r
	}
	for j, s := range r.Header.Slots {
		c := SlotScan{Index: j}
		switch {
		case opts.BelowVersion == "":
			c.Outdated, c.Err = opts.Versions.Outdated(ctx, s)
		case s.KEK != opts.BelowKEK:
			continue // another KEK's slot: not in question
		default:
			c.Outdated, c.Err = opts.Versions.Below(ctx, s, opts.BelowVersion)
		}
		r.Slots = append(r.Slots, c)
	}
	return r
}
