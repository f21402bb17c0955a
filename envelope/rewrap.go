package envelope

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/kpcrypt/kpcrypt/envelope/internal/dirctx"
	"github.com/kpcrypt/kpcrypt/envelope/internal/format"
	"github.com/kpcrypt/kpcrypt/internal/atomicfile"
	"github.com/kpcrypt/kpcrypt/internal/filelock"
	"github.com/kpcrypt/kpcrypt/kms"
)

// File is what [Rewrap] needs of a file: it reads the header and writes
// the slot table in place. *os.File is one.
type File interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
}

// RewrapOptions says how [Rewrap] changes a file's key slots. With no
// field but Keyring set, it moves every slot to its KEK's current version;
// with Add or Remove it adds or removes slots and leaves the others as they
// are; with To it migrates.
type RewrapOptions struct {
	// Keyring finds the KEKs of the file's slots: to learn their current
	// versions, to rewrap, and to unwrap the DEK when one must be wrapped
	// anew (adding or migrating to a KEK, or a KEK that cannot rewrap on
	// its side).
	Keyring Keyring
	// To, when set, migrates the file: afterwards it has exactly one slot
	// for each of these KEKs, and none for any other.
	To []kms.KEK
	// Add adds a slot for each of these KEKs the file lacks.
	Add []kms.KEK
	// Remove removes the slots whose KEK URI is listed. The last slot of a
	// file is never removed.
	Remove []string
	// DryRun computes the result but calls no KMS write operation and
	// writes nothing.
	DryRun bool
	// Cache, when set, is shared by the rewraps of one batch of files
	// (see [RewrapCache]): each KEK is asked its current version once, and
	// each distinct shared wrapped DEK is rewrapped once for all the files
	// that hold it. Nil asks the KMS for every file.
	Cache *RewrapCache
	// Telemetry receives spans and metrics of the KMS calls; nil means
	// OpenTelemetry's global providers.
	Telemetry *Telemetry
}

// RewrapCache lets the rewraps of a batch of files share their KMS calls.
// Give one to every [Rewrap] of the batch through [RewrapOptions.Cache]; it
// is safe for concurrent use, and its zero value is ready to use.
//
// It remembers, for its lifetime, the current version of each KEK (by URI),
// so it is meant for one batch: a KEK rotated while the batch runs is seen
// at the version first asked. And it remembers the rewrap of each slot of
// the shared recipe (FORMAT.md §3.2, recipe 2: the slots that files
// written with [DataKeyReuse] share): keyed by the KEK URI, the wrapped DEK
// and its associated data, so the one rewrapped slot goes into every file
// that held the same slot, as recipe 2 allows, and readers with a
// [DataKeyCache] find it there. With it, a batch of files sharing D wrapped
// DEKs under K KEKs makes at most D + K KMS calls (a current version per
// KEK, a server-side rewrap per DEK) where it made two per file. A KEK that
// cannot rewrap on its side has the DEK unwrapped and wrapped anew, under
// the same recipe, once per DEK too. Per-file slots (recipe 1) are
// rewrapped one by one as before: no two files share one.
//
// Rewraps of the same key that overlap wait for the first; the wait
// honours their context. A failure is not remembered: the next file that
// needs the key asks again.
type RewrapCache struct {
	mu       sync.Mutex
	versions map[string]*flight[string]
	rewraps  map[rewrapKey]*flight[kms.WrappedKey]
}

// NewRewrapCache returns an empty cache, as its zero value is.
func NewRewrapCache() *RewrapCache { return &RewrapCache{} }

// rewrapKey names a shared slot: its KEK URI and the SHA-256 of its wrapped
// DEK and associated data.
type rewrapKey struct {
	uri string
	sum [32]byte
}

func newRewrapKey(uri string, wrapped, aad []byte) rewrapKey {
	h := sha256.New()
	for _, b := range [][]byte{wrapped, aad} {
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(b))))
		h.Write(b)
	}
	k := rewrapKey{uri: uri}
	h.Sum(k.sum[:0])
	return k
}

// flight is one KMS call that others may wait for.
type flight[T any] struct {
	done chan struct{}
	val  T
	err  error
}

// once runs fn for key k unless a run for k succeeded or is in progress:
// then it returns (or waits for, honouring ctx) that run's value. A run that
// failed is forgotten, and a waiter then tries itself.
func once[K comparable, T any](ctx context.Context, mu *sync.Mutex, m *map[K]*flight[T], k K, fn func() (T, error)) (T, error) {
	var zero T
	for {
		mu.Lock()
		if *m == nil {
			*m = map[K]*flight[T]{}
		}
		f, ok := (*m)[k]
		if !ok {
			f = &flight[T]{done: make(chan struct{})}
			(*m)[k] = f
			mu.Unlock()
			f.val, f.err = fn()
			if f.err != nil {
				mu.Lock()
				delete(*m, k)
				mu.Unlock()
			}
			close(f.done)
			return f.val, f.err
		}
		mu.Unlock()
		select {
		case <-f.done:
			if f.err == nil {
				return f.val, nil
			}
		case <-ctx.Done():
			return zero, ctx.Err()
		}
		if err := ctx.Err(); err != nil {
			return zero, err
		}
	}
}

func (c *RewrapCache) currentVersion(ctx context.Context, uri string, vr kms.VersionReporter) (string, error) {
	if c == nil {
		return vr.CurrentVersion(ctx)
	}
	return once(ctx, &c.mu, &c.versions, uri, func() (string, error) { return vr.CurrentVersion(ctx) })
}

func (c *RewrapCache) rewrap(ctx context.Context, s *format.Slot, aad []byte, r kms.Rewrapper) (kms.WrappedKey, error) {
	if c == nil || s.AADRecipe != format.AADRecipeShared {
		return r.Rewrap(ctx, s.Wrapped, aad)
	}
	return c.shared(ctx, s, aad, func() (kms.WrappedKey, error) { return r.Rewrap(ctx, s.Wrapped, aad) })
}

// shared runs fn, through once, for the shared slot s with associated data
// aad: one new wrapping of the slot serves every file that holds it.
func (c *RewrapCache) shared(ctx context.Context, s *format.Slot, aad []byte, fn func() (kms.WrappedKey, error)) (kms.WrappedKey, error) {
	return once(ctx, &c.mu, &c.rewraps, newRewrapKey(s.URI, s.Wrapped, aad), fn)
}

// SlotChange describes what Rewrap did, or would do, to one slot.
type SlotChange struct {
	// URI is the slot's KEK.
	URI string
	// Action is "current" (kept, already at the current version), "kept"
	// (left as it was: slots were only added or removed, or its KEK cannot
	// tell its version), "unchecked" (left as it was: no KEK for it could
	// be opened, so whether it is current is not known; Err says why),
	// "rewrapped", "added" or "removed".
	Action string
	// OldVersion and NewVersion are the key versions before and after.
	OldVersion, NewVersion string
	// ServerSide is set when the KMS rewrapped the DEK without the client
	// seeing it.
	ServerSide bool
	// Err is why an "unchecked" slot's KEK could not be opened, when the
	// keyring said: for example an error matching kms.ErrUntrusted.
	Err error
}

// RewrapResult reports a rewrap.
type RewrapResult struct {
	// Changed reports whether the slot table was (or, in a dry run, would
	// be) rewritten.
	Changed bool
	// Slots lists each slot's change.
	Slots []SlotChange
	// Sequence is the slot table's sequence after the rewrap.
	Sequence uint64
	// Repaired is set when the slots needed no change but one table copy
	// was stale (left so by an interrupted rewrap) and was rewritten.
	Repaired bool
	// Rewritten is set when the new slots did not fit the file's slot
	// table, so that [RewrapFile] or [RewrapPath] wrote the file anew with
	// a larger table, its body copied unchanged (or, in a dry run, would:
	// the size of a slot to be added is then estimated).
	Rewritten bool
}

// Unchecked returns how many slots were left "unchecked": their KEK could
// not be opened, so whether they are current is not known.
func (r *RewrapResult) Unchecked() int {
	n := 0
	for _, c := range r.Slots {
		if c.Action == "unchecked" {
			n++
		}
	}
	return n
}

// AllCurrent reports whether the file has slots and every one was found
// under its KEK's current version.
func (r *RewrapResult) AllCurrent() bool {
	for _, c := range r.Slots {
		if c.Action != "current" {
			return false
		}
	}
	return len(r.Slots) > 0
}

// Rewrap changes the key slots of the file f in place: it moves slots to
// their KEK's current version (by the KMS's server-side rewrap where the KEK
// offers one, so the DEK never leaves the KMS), migrates to other KEKs, adds
// or removes slots. It reads and writes only the header: at most
// [MaxHeaderSize] bytes are read and two slot table copies (2 × 2 KiB by
// default) written, whatever the size of the file. The update is
// crash-safe (FORMAT.md §3.3): if it is interrupted at any write or sync the
// file still decrypts, with its old slots or its new ones. A file already as
// asked is not written to, and no KMS write operation is made for it
// (unless an interrupted rewrap left a table copy stale, which is repaired).
//
// If the new slots do not fit the file's slot table (a slot added to a small
// file, see [SmallFileSize]), Rewrap fails with [ErrSlotTableFull] and
// writes nothing; [RewrapFile] and [RewrapPath] then rewrite the file whole.
//
// Rewrap does not lock the file; [RewrapFile] and [RewrapPath] do.
func Rewrap(ctx context.Context, f File, opts *RewrapOptions) (*RewrapResult, error) {
	return rewrapIn(ctx, f, opts, nil)
}

// grower writes a file anew: header, then the old file's body from offset
// bodyOffset, in place of the old file.
type grower func(ctx context.Context, header []byte, bodyOffset int64) error

func rewrapIn(ctx context.Context, f File, opts *RewrapOptions, grow grower) (*RewrapResult, error) {
	h, err := format.ReadHeader(io.NewSectionReader(f, 0, MaxHeaderSize))
	if err != nil {
		return nil, err
	}
	rw := &rewrapper{ctx: ctx, h: h, opts: opts, ins: newInstruments(opts.Telemetry)}
	defer clear(rw.dek)
	slots, changes, err := rw.plan()
	if err != nil {
		return nil, err
	}
	res := &RewrapResult{Slots: changes, Sequence: h.Table().Sequence}
	for _, c := range changes {
		if c.Action != "current" && c.Action != "kept" && c.Action != "unchecked" {
			res.Changed = true
		}
	}
	if !res.Changed {
		if opts.DryRun {
			return res, nil
		}
		// A rewrap interrupted after its first copy leaves the other copy
		// stale: bring it up to date, so that no old slot lingers.
		if stale := 1 - h.Active; h.Tables[stale] == nil || h.Tables[stale].Sequence != h.Table().Sequence {
			enc, err := h.Table().Marshal(h.Core.SlotTableSize)
			if err != nil {
				return nil, fmt.Errorf("envelope: %w", err)
			}
			if _, err := f.WriteAt(enc, h.TableOffset(stale)); err != nil {
				return nil, fmt.Errorf("envelope: writing slot table copy %d: %w", stale, err)
			}
			if err := f.Sync(); err != nil {
				return nil, fmt.Errorf("envelope: syncing slot table copy %d: %w", stale, err)
			}
			res.Repaired = true
		}
		return res, nil
	}
	res.Sequence++
	enc, err := encodeTable(h, &format.SlotTable{Sequence: res.Sequence, Slots: slots})
	if errors.Is(err, format.ErrSlotTableFull) && grow != nil {
		res.Rewritten = true
		if opts.DryRun {
			return res, nil
		}
		header, err := rw.grownHeader(slots, res)
		if err != nil {
			return nil, err
		}
		if err := grow(ctx, header, h.Size()); err != nil {
			return nil, err
		}
		return res, nil
	}
	if opts.DryRun {
		return res, nil
	}
	if err != nil {
		return nil, err
	}
	if err := writeCopies(f, h, enc); err != nil {
		return nil, err
	}
	return res, nil
}

// grownHeader builds the header of the file rewritten with a slot table
// large enough for slots: the same core but for its table size (so a new
// MAC), and every per-file slot (recipe 1, bound to the core) wrapped anew
// by its KEK; shared slots (recipe 2) are bound to the context alone and
// kept. It updates res's slot changes to the versions that wrapped.
func (rw *rewrapper) grownHeader(slots []format.Slot, res *RewrapResult) ([]byte, error) {
	dek, err := rw.getDEK()
	if err != nil {
		return nil, err
	}
	core := *rw.h.Core
	size := tableSizeFor(slots)
	if core.PlaintextSize < 0 || core.PlaintextSize >= SmallFileSize {
		// A large file is costly to rewrite: leave room for more slots.
		size = max(size, 2*core.SlotTableSize, DefaultSlotTableSize)
	}
	core.SlotTableSize = min(max(size, core.SlotTableSize), MaxSlotTableSize)
	if core.MAC, err = headerMAC(dek, &core); err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	coreBytes, err := core.Marshal()
	if err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	out := make([]format.Slot, len(slots))
	for i, s := range slots {
		if s.AADRecipe == format.AADRecipeShared {
			out[i] = s
			continue
		}
		// Only a slot added here is known to be its KEK's; any other
		// must prove it by unwrapping to the DEK (a slot is not
		// authenticated: it may have been planted).
		kek := rw.added[s.URI]
		if kek == nil {
			if kek, err = rw.holderOf(s, dek); kek == nil {
				return nil, fmt.Errorf("envelope: the slots do not fit the slot table, and rewriting the file with a larger one needs every slot wrapped anew, but slot %s cannot be: %w", s.URI, err)
			}
		}
		if out[i], err = wrapSlot(rw.ctx, rw.ins, kek, s.URI, dek, func(uri string) []byte { return slotAAD(coreBytes, uri) }, format.AADRecipeV1); err != nil {
			return nil, err
		}
		for j := range res.Slots {
			c := &res.Slots[j]
			if c.URI != s.URI || c.Action == "removed" {
				continue
			}
			if c.NewVersion != out[i].KeyVersion && (c.Action == "kept" || c.Action == "current") {
				c.Action = "rewrapped"
			}
			c.NewVersion, c.ServerSide = out[i].KeyVersion, false
		}
	}
	table, err := (&format.SlotTable{Sequence: res.Sequence, Slots: out}).Marshal(core.SlotTableSize)
	if err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	return slices.Concat(coreBytes, table, table), nil
}

// RewrapPath rewraps the file at path under an exclusive lock, so that
// concurrent rewraps of one file take turns, as [RewrapFile] does. It opens
// path as named, following symlinks; to rewrap a file found by a directory
// walk, open it safely and call RewrapFile. If the file was replaced while
// it waited for the lock (another rewrap rewrote it whole), it opens path
// again.
func RewrapPath(ctx context.Context, path string, opts *RewrapOptions) (*RewrapResult, error) {
	// A link stands for the file it names, which a rewrite whole
	// replaces in its own directory (the link stays a link).
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	var res *RewrapResult
	err := withLockedFile(ctx, path, func(f *os.File) (err error) {
		res, err = rewrapIn(ctx, f, opts, growFile(f))
		return err
	})
	return res, err
}

// RewrapFile rewraps the open file f as [Rewrap] does, holding an exclusive
// flock(2) lock on it meanwhile, as [RewrapPath] and [SaveRewrapped] do, so
// that concurrent rewraps of one file take turns. f must be open for reading
// and writing (even for a dry run). The lock is released before RewrapFile
// returns; f is left open.
//
// The slots are rewritten in place when they fit the file's slot table. When
// they do not (a slot added to a small file, see [SmallFileSize]),
// RewrapFile rewrites the file whole, crash-safely: a new file beside it in
// the same directory, with a larger table, the same body bytes and every
// per-file slot wrapped anew (the table size is part of the core, which
// those slots are bound to, so each must unwrap under a KEK of the keyring),
// synced and renamed over the file's name while the lock on f is held. A
// crash at any point leaves the old file or the new one, each whole. The
// directory is f.Name()'s (f.Name() must be the file's path, as os.Open
// names it; for a file found by a walk, package batch passes the walked
// directory), opened once as a handle that no later step leaves. The file
// must have one link, and keeps its owner, group and permission bits (or
// the rewrite is refused); ACLs and extended attributes are not carried
// over. A named temporary file ".NAME.kpcrypt-tmp-…" (mode 0600) is left
// by a crash in the middle. Readers that opened the old file read it to the end;
// a rewrap or [SaveRewrapped] that waited for the lock on the old file
// finds it replaced and fails with [ErrFileReplaced] (RewrapPath and
// SaveRewrapped then open the path again), so no update is lost.
func RewrapFile(ctx context.Context, f *os.File, opts *RewrapOptions) (*RewrapResult, error) {
	var res *RewrapResult
	err := withLock(ctx, f, func() (err error) {
		res, err = rewrapIn(ctx, f, opts, growFile(f))
		return err
	})
	return res, err
}

// growFile returns the step that rewrites the locked file f whole: header,
// then f's body, into a new file that replaces f in its directory.
//
// The directory is opened once, as a handle (an *os.Root): the directory
// the walk found f in when ctx carries it (dirctx), else f.Name()'s. Every
// step after that is relative to the handle and follows no link: the check
// that the name still holds f's inode, the temporary file, the rename over
// the name and the directory's sync. So a directory swapped for a link
// meanwhile cannot send the new file, or the rename, anywhere else, and
// the rename replaces only the name that held f.
func growFile(f *os.File) grower {
	return func(ctx context.Context, header []byte, bodyOffset int64) error {
		name := f.Name()
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		if n, err := filelock.Links(f); err != nil {
			return err
		} else if n != 1 {
			return fmt.Errorf("envelope: %s: the slots do not fit its slot table, and rewriting it with a larger one would split its %d hard links: %w", name, n, ErrSlotTableFull)
		}
		var dir *os.Root
		var base string
		if root, rel, ok := dirctx.From(ctx); ok {
			dir, err = root.OpenRoot(filepath.Dir(rel))
			base = filepath.Base(rel)
		} else {
			dir, err = os.OpenRoot(filepath.Dir(name))
			base = filepath.Base(name)
		}
		if err != nil {
			return fmt.Errorf("envelope: rewriting %s with a larger slot table: opening its directory: %w", name, err)
		}
		defer dir.Close()
		if err := sameFileIn(dir, base, fi, name); err != nil {
			return err
		}
		tmp := atomicfile.TempName(base)
		nf, err := dir.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("envelope: rewriting %s with a larger slot table: %w", name, err)
		}
		done := false
		defer func() {
			nf.Close()
			if !done {
				dir.Remove(tmp)
			}
		}()
		// Locked while it exists, so that no other writer's clean-up of
		// dead writers' temporary files takes it for one.
		if err := filelock.Lock(ctx, nf, true); err != nil && !errors.Is(err, filelock.ErrUnsupported) {
			return fmt.Errorf("envelope: rewriting %s: %w", name, err)
		}
		if err := keepOwner(nf, fi); err != nil {
			return fmt.Errorf("envelope: %s: %w", name, err)
		}
		if _, err := nf.Write(header); err != nil {
			return fmt.Errorf("envelope: rewriting %s: %w", name, err)
		}
		if err := copyContext(ctx, nf, io.NewSectionReader(f, bodyOffset, fi.Size()-bodyOffset)); err != nil {
			return fmt.Errorf("envelope: rewriting %s: %w", name, err)
		}
		// The old file's permission bits, once the new one is whole: a
		// temporary file left by a crash stays the writer's alone.
		if err := nf.Chmod(fi.Mode().Perm()); err != nil {
			return fmt.Errorf("envelope: rewriting %s: %w", name, err)
		}
		if err := nf.Sync(); err != nil {
			return fmt.Errorf("envelope: rewriting %s: %w", name, err)
		}
		if err := sameFileIn(dir, base, fi, name); err != nil {
			return err
		}
		if err := dir.Rename(tmp, base); err != nil {
			return fmt.Errorf("envelope: rewriting %s: %w", name, err)
		}
		done = true
		// The new name is in place; a failed directory sync only risks
		// losing it to a crash, which leaves the old file whole.
		if d, err := dir.Open("."); err == nil {
			d.Sync()
			d.Close()
		}
		return nil
	}
}

// sameFileIn checks that base, in dir and not followed if a link, is still
// the file whose FileInfo is fi (named name, for errors).
func sameFileIn(dir *os.Root, base string, fi os.FileInfo, name string) error {
	now, err := dir.Lstat(base)
	if err != nil {
		return fmt.Errorf("envelope: rewriting %s with a larger slot table: %w", name, err)
	}
	if !os.SameFile(now, fi) {
		return fmt.Errorf("envelope: %s no longer names the file being rewrapped: %w", name, ErrFileReplaced)
	}
	return nil
}

// copyContext copies src to dst, checking ctx between blocks.
func copyContext(ctx context.Context, dst io.Writer, src io.Reader) error {
	buf := make([]byte, 1<<20)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := io.ReadFull(src, buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// withLockedFile runs fn on the file at path, opened for reading and
// writing and locked exclusively. If the file was replaced while it waited
// for the lock, it opens path again, a few times.
func withLockedFile(ctx context.Context, path string, fn func(*os.File) error) error {
	for attempt := 0; ; attempt++ {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		err = withLock(ctx, f, func() error { return fn(f) })
		f.Close()
		if !errors.Is(err, ErrFileReplaced) || attempt == 4 {
			return err
		}
	}
}

// withLock runs fn while holding an exclusive lock on f. The wait for the
// lock honours ctx. A file that has no name left once locked (it was
// renamed over by a rewrite, or removed) fails with [ErrFileReplaced].
func withLock(ctx context.Context, f *os.File, fn func() error) error {
	if err := filelock.Lock(ctx, f, true); err != nil {
		return fmt.Errorf("locking %s: %w", f.Name(), err)
	}
	defer filelock.Unlock(f)
	if n, err := filelock.Links(f); err != nil {
		return fmt.Errorf("envelope: %s: %w", f.Name(), err)
	} else if n == 0 {
		return fmt.Errorf("envelope: %s: %w", f.Name(), ErrFileReplaced)
	}
	return fn()
}

// writeTable writes t over the non-current copy, syncs, then over the other
// copy, and syncs (FORMAT.md §3.3).
func writeTable(f File, h *format.Header, t *format.SlotTable) error {
	enc, err := encodeTable(h, t)
	if err != nil {
		return err
	}
	return writeCopies(f, h, enc)
}

// encodeTable encodes t at the size of h's tables; slots that do not fit
// fail with [ErrSlotTableFull], saying what to do.
func encodeTable(h *format.Header, t *format.SlotTable) ([]byte, error) {
	enc, err := t.Marshal(h.Core.SlotTableSize)
	if errors.Is(err, format.ErrSlotTableFull) {
		return nil, fmt.Errorf("envelope: %w; the file's slot tables are fixed at its encryption (a small file's hold its slots and room for their rotation only, see SmallFileSize): rewrap it with RewrapFile or RewrapPath (kpcrypt rewrap), which rewrite it whole with a larger table", err)
	}
	if err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	return enc, nil
}

// writeCopies writes the encoded table enc over the non-current copy of
// h's file f, syncs, then over the other copy, and syncs.
func writeCopies(f File, h *format.Header, enc []byte) error {
	for _, copyIndex := range []int{1 - h.Active, h.Active} {
		if _, err := f.WriteAt(enc, h.TableOffset(copyIndex)); err != nil {
			return fmt.Errorf("envelope: writing slot table copy %d: %w", copyIndex, err)
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("envelope: syncing slot table copy %d: %w", copyIndex, err)
		}
	}
	return nil
}

type rewrapper struct {
	ctx    context.Context
	h      *format.Header
	opts   *RewrapOptions
	dek    []byte // unwrapped on demand
	ins    *instruments
	added  map[string]kms.KEK // the KEK of each slot added, by URI
	opened *OpenedSlot        // the slot getDEK opened, and the KEK that did
}

// getDEK unwraps the DEK through any slot, authenticating the header.
func (rw *rewrapper) getDEK() ([]byte, error) {
	if rw.dek == nil {
		dek, _, opened, err := openSlots(rw.ctx, rw.ins, rw.h, rw.opts.Keyring, nil, nil)
		if err != nil {
			return nil, err
		}
		rw.dek, rw.opened = dek, opened
	}
	return rw.dek, nil
}

func (rw *rewrapper) wrap(kek kms.KEK) (format.Slot, error) {
	if rw.opts.DryRun {
		// Prove the DEK can be had, but make no KMS write. The slot
		// stands for the one that would be made, at an estimated size:
		// a slot of the file under the same scheme, or a Key Protect
		// slot's 40 bytes of version and 240 of wrapped DEK.
		if _, err := rw.getDEK(); err != nil {
			return format.Slot{}, err
		}
		version, wrapped := 40, 240
		for _, s := range rw.h.Table().Slots {
			if kms.Scheme(s.URI) == kms.Scheme(kek.URI()) {
				version, wrapped = len(s.KeyVersion), len(s.Wrapped)
				break
			}
		}
		return format.Slot{AADRecipe: format.AADRecipeV1, URI: kek.URI(), KeyVersion: strings.Repeat("0", version), Wrapped: make([]byte, wrapped)}, nil
	}
	dek, err := rw.getDEK()
	if err != nil {
		return format.Slot{}, err
	}
	return wrapSlot(rw.ctx, rw.ins, kek, kek.URI(), dek, func(uri string) []byte { return slotAAD(rw.h.CoreBytes, uri) }, format.AADRecipeV1)
}

// plan computes the new slots and what changes.
func (rw *rewrapper) plan() ([]format.Slot, []SlotChange, error) {
	o := rw.opts
	old := rw.h.Table().Slots
	var p slotPlan
	if len(o.To) > 0 {
		for _, s := range old {
			if !slices.ContainsFunc(o.To, func(k kms.KEK) bool { return k.URI() == s.URI }) {
				p.drop(s)
			}
		}
		for _, kek := range o.To {
			if i := slices.IndexFunc(old, func(s format.Slot) bool { return s.URI == kek.URI() }); i >= 0 {
				if err := rw.refresh(&p, old[i], kek); err != nil {
					return nil, nil, err
				}
			} else if err := rw.add(&p, kek); err != nil {
				return nil, nil, err
			}
		}
		return p.slots, p.changes, nil
	}

	editing := len(o.Add) > 0 || len(o.Remove) > 0
	for _, s := range old {
		if slices.Contains(o.Remove, s.URI) {
			p.drop(s)
			continue
		}
		if editing {
			// Adding or removing slots leaves the others as they are.
			p.keep(s, "kept", nil)
			continue
		}
		kek, err := rw.kekFor(s.URI)
		if kek == nil && (err == nil || errors.Is(err, kms.ErrUntrusted) || errors.Is(err, kms.ErrInvalidURI)) {
			p.keep(s, "unchecked", err)
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		if err := rw.refresh(&p, s, kek); err != nil {
			return nil, nil, err
		}
	}
	if len(p.slots) == 0 && len(o.Add) == 0 {
		return nil, nil, fmt.Errorf("envelope: removing %d slot(s) would leave the file with none: a file keeps at least one", len(old))
	}
	for _, kek := range o.Add {
		if !slices.ContainsFunc(p.slots, func(s format.Slot) bool { return s.URI == kek.URI() }) {
			if err := rw.add(&p, kek); err != nil {
				return nil, nil, err
			}
		}
	}
	return p.slots, p.changes, nil
}

// slotPlan gathers the new slots and the changes that lead to them.
type slotPlan struct {
	slots   []format.Slot
	changes []SlotChange
}

func (p *slotPlan) put(s format.Slot, c SlotChange) {
	p.slots, p.changes = append(p.slots, s), append(p.changes, c)
}

// keep puts s unchanged, with the given action ("kept", "current" or
// "unchecked") and, for "unchecked", why.
func (p *slotPlan) keep(s format.Slot, action string, err error) {
	p.put(s, SlotChange{URI: s.URI, Action: action, OldVersion: s.KeyVersion, NewVersion: s.KeyVersion, Err: err})
}

// uncheckedIfNotHeld keeps s as "unchecked" if err is a *notHeldError (the
// slot is not its KEK's own), and returns any other error.
func (p *slotPlan) uncheckedIfNotHeld(s format.Slot, err error) error {
	if nh := (*notHeldError)(nil); errors.As(err, &nh) {
		p.keep(s, "unchecked", err)
		return nil
	}
	return err
}

func (p *slotPlan) drop(s format.Slot) {
	p.changes = append(p.changes, SlotChange{URI: s.URI, Action: "removed", OldVersion: s.KeyVersion})
}

// add wraps the DEK with kek into a new slot.
func (rw *rewrapper) add(p *slotPlan, kek kms.KEK) error {
	s, err := rw.wrap(kek)
	if err != nil {
		return err
	}
	p.put(s, SlotChange{URI: kek.URI(), Action: "added", NewVersion: s.KeyVersion})
	if rw.added == nil {
		rw.added = map[string]kms.KEK{}
	}
	rw.added[kek.URI()] = kek
	return nil
}

// notHeldError says that a slot does not unwrap, under the KEK its URI
// names, to the file's DEK.
type notHeldError struct {
	uri string
	err error
}

func (e *notHeldError) Error() string {
	msg := fmt.Sprintf("envelope: slot %s does not unwrap under its KEK to the file's data key: it was not made by that key (added by someone else, or damaged), so it is left as it is", e.uri)
	if e.err != nil {
		msg += ": " + e.err.Error()
	}
	return msg
}

func (e *notHeldError) Unwrap() error { return e.err }

// holds checks that kek unwraps slot s to dek, and fails with a
// *notHeldError if not. A KMS that cannot be reached is an error of its own.
func (rw *rewrapper) holds(kek kms.KEK, s format.Slot, dek []byte) error {
	if o, t := rw.opened, rw.h.Table(); o != nil && o.kek != nil && sameKEK(o.kek, kek) && o.Index < len(t.Slots) &&
		bytes.Equal(t.Slots[o.Index].Wrapped, s.Wrapped) && t.Slots[o.Index].URI == s.URI && t.Slots[o.Index].AADRecipe == s.AADRecipe {
		return nil // getDEK unwrapped this very slot with kek
	}
	aad, err := aadForSlot(rw.h, &s)
	if err != nil {
		return err
	}
	res, err := unwrap(rw.ctx, rw.ins, kek, s.Wrapped, aad)
	same := err == nil && bytes.Equal(res.DEK, dek)
	clear(res.DEK)
	if same {
		return nil
	}
	if err != nil && (errors.Is(err, kms.ErrUnavailable) || rw.ctx.Err() != nil) {
		return fmt.Errorf("checking slot %s: %w", s.URI, err)
	}
	return &notHeldError{uri: s.URI, err: err}
}

// own checks, as holds does, that kek unwraps slot s to the file's DEK,
// unwrapped first if it was not, and returns the DEK.
func (rw *rewrapper) own(kek kms.KEK, s format.Slot) ([]byte, error) {
	dek, err := rw.getDEK()
	if err != nil {
		return nil, err
	}
	return dek, rw.holds(kek, s, dek)
}

// sameKEK reports whether a and b are the same KEK value.
func sameKEK(a, b kms.KEK) bool {
	ta, tb := reflect.TypeOf(a), reflect.TypeOf(b)
	return ta == tb && ta.Comparable() && a == b
}

// holderOf returns the keyring's KEK that holds the key of slot s, as it
// is in the file: of the KEKs the keyring offers for it, the first that
// unwraps it to dek. Only that KEK may wrap the slot anew under its URI.
func (rw *rewrapper) holderOf(s format.Slot, dek []byte) (kms.KEK, error) {
	if rw.opts.Keyring == nil {
		return nil, errors.New("no keyring")
	}
	keks, err := rw.opts.Keyring.KEKsFor(rw.ctx, s.URI)
	if len(keks) == 0 {
		if err == nil {
			err = errors.New("the keyring has no KEK for it")
		}
		return nil, err
	}
	var errs []error
	for _, k := range keks {
		err := rw.holds(k, s, dek)
		if err == nil {
			return k, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("no KEK of the keyring unwraps it: %w", errors.Join(errs...))
}

// kekFor returns the keyring's KEK whose URI is uri, or nil and why not.
func (rw *rewrapper) kekFor(uri string) (kms.KEK, error) {
	if rw.opts.Keyring == nil {
		return nil, nil
	}
	keks, err := rw.opts.Keyring.KEKsFor(rw.ctx, uri)
	for _, k := range keks {
		if k.URI() == uri {
			return k, nil
		}
	}
	return nil, err
}

// refresh moves slot s to kek's current version, if it is not there.
func (rw *rewrapper) refresh(p *slotPlan, s format.Slot, kek kms.KEK) error {
	vr, ok := kek.(kms.VersionReporter)
	if !ok {
		p.keep(s, "kept", nil)
		return nil
	}
	current, err := rw.opts.Cache.currentVersion(rw.ctx, s.URI, telVersions{vr, rw.ins})
	if err != nil {
		return err
	}
	if current == s.KeyVersion {
		p.keep(s, "current", nil)
		return nil
	}
	c := SlotChange{URI: s.URI, Action: "rewrapped", OldVersion: s.KeyVersion, NewVersion: current}
	if rw.opts.DryRun {
		_, c.ServerSide = kek.(kms.Rewrapper)
		if !c.ServerSide {
			// As the rewrap would (below), check that the slot is
			// kek's own: an unwrap, no KMS write.
			if _, err := rw.own(kek, s); err != nil {
				return p.uncheckedIfNotHeld(s, err)
			}
		}
		p.put(s, c)
		return nil
	}
	if r, ok := kek.(kms.Rewrapper); ok {
		aad, err := aadForSlot(rw.h, &s)
		if err != nil {
			return err
		}
		w, err := rw.opts.Cache.rewrap(rw.ctx, &s, aad, telRewrapper{r, rw.ins})
		if err != nil {
			return fmt.Errorf("rewrapping the data key: %w", err)
		}
		c.ServerSide, c.NewVersion = true, w.KeyVersion
		p.put(format.Slot{AADRecipe: s.AADRecipe, URI: s.URI, KeyVersion: w.KeyVersion, Wrapped: w.Ciphertext}, c)
		return nil
	}
	// The DEK is about to be wrapped anew under kek for this slot: only if
	// the slot is kek's own, shown by unwrapping it to the file's DEK.
	// Nothing in a slot is authenticated, and a slot planted with the URI
	// of another of the keyring's KEKs must not get that KEK a real
	// wrapping of the DEK.
	if s.AADRecipe == format.AADRecipeShared && rw.opts.Cache != nil {
		// A shared slot stays shared: wrapped anew under the same
		// associated data, once for every file that holds it.
		aad, err := aadForSlot(rw.h, &s)
		if err != nil {
			return err
		}
		w, err := rw.opts.Cache.shared(rw.ctx, &s, aad, func() (kms.WrappedKey, error) {
			dek, err := rw.own(kek, s)
			if err != nil {
				return kms.WrappedKey{}, err
			}
			ns, err := wrapSlot(rw.ctx, rw.ins, kek, s.URI, dek, func(string) []byte { return aad }, s.AADRecipe)
			return kms.WrappedKey{Ciphertext: ns.Wrapped, KeyVersion: ns.KeyVersion}, err
		})
		if err != nil {
			return p.uncheckedIfNotHeld(s, err)
		}
		c.NewVersion = w.KeyVersion
		p.put(format.Slot{AADRecipe: s.AADRecipe, URI: s.URI, KeyVersion: w.KeyVersion, Wrapped: w.Ciphertext}, c)
		return nil
	}
	if _, err := rw.own(kek, s); err != nil {
		return p.uncheckedIfNotHeld(s, err)
	}
	ns, err := rw.wrap(kek)
	if err != nil {
		return err
	}
	c.NewVersion = ns.KeyVersion
	p.put(ns, c)
	return nil
}

// SaveRewrapped writes into the file at path the newer wrapping a KMS handed
// back while a Reader opened it (OpenedSlot.Rewrapped), so that the file
// moves to the newer key version without another KMS call. It does nothing
// if there is none. The file is locked while its slot table is rewritten;
// the wait for the lock honours ctx.
//
// It replaces the slot only if it is the one opened: the same index, KEK
// URI, wrapped DEK and AAD recipe and, for a per-file slot (recipe 1), the
// same core. Anything else (a slot opened from another file, a file whose
// slot has changed since) fails with [ErrSlotMismatch] and leaves the file
// untouched. A recipe-2 slot is shared by design by the files of one
// context that reuse a DEK, so its newer wrapping may be saved into each of
// them.
func SaveRewrapped(ctx context.Context, path string, opened OpenedSlot) error {
	if opened.Rewrapped == nil {
		return nil
	}
	return withLockedFile(ctx, path, func(f *os.File) error {
		h, err := format.ReadHeader(io.NewSectionReader(f, 0, MaxHeaderSize))
		if err != nil {
			return err
		}
		t := h.Table()
		slots := slices.Clone(t.Slots)
		i := opened.Index
		if i < 0 || i >= len(slots) || slots[i].URI != opened.URI || slots[i].KeyVersion != opened.KeyVersion ||
			opened.wrapped == nil || !bytes.Equal(slots[i].Wrapped, opened.wrapped) || slots[i].AADRecipe != opened.aadRecipe ||
			opened.aadRecipe == format.AADRecipeV1 && sha256.Sum256(h.CoreBytes) != opened.core {
			return fmt.Errorf("envelope: %s: %w", path, ErrSlotMismatch)
		}
		slots[i].KeyVersion, slots[i].Wrapped = opened.Rewrapped.KeyVersion, opened.Rewrapped.Ciphertext
		return writeTable(f, h, &format.SlotTable{Sequence: t.Sequence + 1, Slots: slots})
	})
}

// telVersions and telRewrapper put a KEK's version and rewrap calls under
// telemetry, below the batch cache: what the cache answers is no KMS call.
type telVersions struct {
	kms.VersionReporter
	ins *instruments
}

func (t telVersions) CurrentVersion(ctx context.Context) (v string, err error) {
	err = t.ins.kmsCall(ctx, "current_version", t.URI(), func(ctx context.Context) (err error) {
		v, err = t.VersionReporter.CurrentVersion(ctx)
		return err
	})
	return v, err
}

type telRewrapper struct {
	kms.Rewrapper
	ins *instruments
}

func (t telRewrapper) Rewrap(ctx context.Context, wrapped, aad []byte) (w kms.WrappedKey, err error) {
	err = t.ins.kmsCall(ctx, "rewrap", t.URI(), func(ctx context.Context) (err error) {
		w, err = t.Rewrapper.Rewrap(ctx, wrapped, aad)
		return err
	})
	return w, err
}
