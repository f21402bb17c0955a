package blob

import (
	"context"
	"fmt"
	"io"

	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"

	"github.com/kpcrypt/kpcrypt/envelope"
)

// Rewrap changes the key slots of the detached object at key as
// envelope.Rewrap does (opts as there), by writing a new header object and
// never touching the body (FORMAT.md §8.3): it reads the start of the body
// and the newest matching header object, rewraps that header in memory, and
// writes it as a header object of the next sequence with IfNotExist, then
// deletes the older header objects, so that a removed KEK's wrapping does not
// linger.
//
// It is crash-safe: interrupted anywhere, the object opens with its old
// slots or its new ones, and a later Rewrap finishes the cleanup. It is safe
// under concurrent rewraps: a rewrap that finds its sequence taken starts
// again from the newer header, up to a bound, and then fails with
// [ErrConflict]. An object that needs no change is not written to.
//
// An attached object fails with [ErrNotDetached]: its slots cannot be
// rewritten without uploading the object again. So does a change whose slots
// do not fit the object's slot table, with envelope.ErrSlotTableFull: the
// table's size is in the core, which is in the body object. Objects that will
// get more slots than they are written with (a small object's tables hold its
// slots and room for their rotation) are written with an
// envelope.Encrypter.SlotTableSize that leaves the room.
func Rewrap(ctx context.Context, b *blob.Bucket, key string, opts *envelope.RewrapOptions) (*envelope.RewrapResult, error) {
	return rewrap(ctx, b, key, opts, nil)
}

// rewrap is Rewrap with a hook called before each step that writes or
// deletes: tests fail it as a crash would.
func rewrap(ctx context.Context, b *blob.Bucket, key string, opts *envelope.RewrapOptions, hook func(step string) error) (*envelope.RewrapResult, error) {
	if opts == nil {
		opts = &envelope.RewrapOptions{}
	}
	call := func(step string) error {
		if hook == nil {
			return nil
		}
		return hook(step)
	}
	for range maxPublishAttempts {
		h, err := readHead(ctx, b, key, coreFixed+16384+coreMACSize)
		if err != nil {
			return nil, err
		}
		if !h.l.isDetached(h.buf[:h.l.headerSize]) {
			return nil, fmt.Errorf("blob: %w: %q", ErrNotDetached, key)
		}
		hdr, cur, seqs, err := findHeader(ctx, b, key, h.buf[:h.l.coreSize])
		if err != nil {
			return nil, err
		}
		f := &memFile{b: append([]byte(nil), hdr...)}
		res, err := envelope.Rewrap(ctx, f, opts)
		if err != nil {
			return res, err
		}
		if opts.DryRun {
			return res, nil
		}
		if !res.Changed && !res.Repaired {
			// Nothing to write; finish an interrupted cleanup.
			return res, deleteHeaders(ctx, b, key, below(seqs, cur), hook)
		}
		if err := call("write"); err != nil {
			return nil, err
		}
		next := seqs[0] + 1
		if err := writeHeaderObject(ctx, b, key, next, f.b, hook); err != nil {
			if gcerrors.Code(err) == gcerrors.FailedPrecondition {
				continue
			}
			return nil, err
		}
		if err := call("written"); err != nil {
			return nil, err
		}
		// The sequence was free, but a newer header may have been written
		// and the one this rewrap started from deleted meanwhile (which
		// freed it): then this header is stale, and no reader will use it.
		// Take it back, and start again from the newest.
		now, err := listHeaders(ctx, b, key)
		if err != nil {
			return nil, err
		}
		if len(now) > 0 && now[0] > next {
			if err := deleteHeaders(ctx, b, key, []uint64{next}, nil); err != nil {
				return nil, err
			}
			continue
		}
		return res, deleteHeaders(ctx, b, key, below(now, next), hook)
	}
	return nil, fmt.Errorf("blob: %w: %q", ErrConflict, key)
}

// below returns the sequences of seqs lower than n.
func below(seqs []uint64, n uint64) []uint64 {
	var out []uint64
	for _, s := range seqs {
		if s < n {
			out = append(out, s)
		}
	}
	return out
}

// memFile is a header held in memory, as envelope.Rewrap reads and writes
// it.
type memFile struct{ b []byte }

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(f.b)) {
		return 0, io.EOF
	}
	n := copy(p, f.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(f.b)) {
		return 0, fmt.Errorf("blob: write outside the header")
	}
	return copy(f.b[off:], p), nil
}

func (f *memFile) Sync() error { return nil }
