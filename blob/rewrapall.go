package blob

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"gocloud.dev/blob"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/envelope/batch"
)

// RewrapAllOptions says how [RewrapAll] rewraps the objects under a prefix.
type RewrapAllOptions struct {
	// Options applies to every object, as to [Rewrap]. If its Cache is nil,
	// RewrapAll uses a new [envelope.RewrapCache] for the call, so that each
	// KEK is asked its current version once and each wrapped DEK shared by
	// objects written with envelope.DataKeyReuse is rewrapped once, for
	// every object that holds it.
	Options envelope.RewrapOptions
	// Jobs bounds the objects rewrapped at once, hence the KMS calls and
	// the bucket requests in flight; less than 1 means 1.
	Jobs int
	// ObjectTimeout, if positive, bounds the time of each object: its
	// bucket requests and its KMS calls.
	ObjectTimeout time.Duration
	// Done, if set, is called after each object with its result, by one
	// goroutine at a time (for a progress bar).
	Done func(batch.Result)
}

// RewrapAll rewraps, as [Rewrap] does, every object whose key starts with
// prefix, at most opts.Jobs at once, sharing one [envelope.RewrapCache].
// The objects are those listed before any is rewrapped, in the bucket's
// order, header objects ([IsHeaderKey]) passed over. It returns one
// [batch.Result] per object, in that order, with Path the object's key and
// Status as [batch.StatusOf] gives it; nothing is left out: an attached
// object is Failed with an error matching [ErrNotDetached], an object that
// is not a kpcrypt file Failed with one matching envelope.ErrInvalidHeader,
// and once ctx is cancelled the objects not yet done are Failed with its
// error. With Options.DryRun nothing is written.
//
// Its error is the listing's: then no object was rewrapped and the results
// are nil. opts may be nil.
func RewrapAll(ctx context.Context, b *blob.Bucket, prefix string, opts *RewrapAllOptions) ([]batch.Result, error) {
	if opts == nil {
		opts = &RewrapAllOptions{}
	}
	keys, err := listObjects(ctx, b, prefix)
	if err != nil {
		return nil, err
	}
	o := opts.Options
	if o.Cache == nil {
		o.Cache = envelope.NewRewrapCache()
	}
	results := make([]batch.Result, len(keys))
	var mu sync.Mutex
	batch.ForEach(len(keys), opts.Jobs, func(i int) {
		r := batch.Result{Path: keys[i]}
		octx, cancel := objectContext(ctx, opts.ObjectTimeout)
		if r.Err = octx.Err(); r.Err == nil {
			r.Rewrap, r.Err = Rewrap(octx, b, keys[i], &o)
		}
		cancel()
		if r.Err == nil {
			r.Status = batch.StatusOf(r.Rewrap)
		} else {
			r.Rewrap = nil
		}
		results[i] = r
		if opts.Done != nil {
			mu.Lock()
			opts.Done(r)
			mu.Unlock()
		}
	})
	return results, nil
}

// listObjects lists the keys under prefix, header objects passed over.
func listObjects(ctx context.Context, b *blob.Bucket, prefix string) ([]string, error) {
	var keys []string
	it := b.List(&blob.ListOptions{Prefix: prefix})
	for {
		obj, err := it.Next(ctx)
		if err == io.EOF {
			return keys, nil
		}
		if err != nil {
			return nil, err
		}
		if obj.IsDir {
			continue
		}
		if _, ok := IsHeaderKey(obj.Key); ok {
			continue
		}
		keys = append(keys, obj.Key)
	}
}

func objectContext(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d > 0 {
		return context.WithTimeout(ctx, d)
	}
	return context.WithCancel(ctx)
}

// ScanAll checks, as batch.Scan does for files, the key slots of every
// object whose key starts with prefix, header objects ([IsHeaderKey])
// passed over, at most opts.Jobs at once, each within opts.FileTimeout if it
// is positive. Attached and detached objects alike are read (a detached
// object's slots from its newest header object whose core is the body's);
// nothing is written, and no KMS call is made but the version questions of
// opts.Versions, at most one of each kind per KEK. It returns one
// [batch.ScanResult] per object, in the bucket's order, with Path the
// object's key; an object that cannot be read (not a kpcrypt file, no
// header object, a cancelled ctx) has Err set.
//
// Its error is the listing's: then nothing was scanned and the results are
// nil.
func ScanAll(ctx context.Context, b *blob.Bucket, prefix string, opts *batch.ScanOptions) ([]batch.ScanResult, error) {
	keys, err := listObjects(ctx, b, prefix)
	if err != nil {
		return nil, err
	}
	results := make([]batch.ScanResult, len(keys))
	batch.ForEach(len(keys), opts.Jobs, func(i int) {
		octx, cancel := objectContext(ctx, opts.FileTimeout)
		defer cancel()
		results[i] = scanObject(octx, b, keys[i], opts)
	})
	return results, nil
}

func scanObject(ctx context.Context, b *blob.Bucket, key string, opts *batch.ScanOptions) batch.ScanResult {
	r := batch.ScanResult{Path: key}
	if r.Err = ctx.Err(); r.Err != nil {
		return r
	}
	if r.Header, r.Err = inspect(ctx, b, key); r.Err != nil {
		return r
	}
	for j, s := range r.Header.Slots {
		c := batch.SlotScan{Index: j}
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

// inspect reads the header of the object at key, attached or detached, as
// envelope.Inspect does.
func inspect(ctx context.Context, b *blob.Bucket, key string) (*envelope.Header, error) {
	h, err := readHead(ctx, b, key, DefaultHeaderReadSize)
	if err != nil {
		return nil, err
	}
	hdr := h.buf[:h.l.headerSize]
	if h.l.isDetached(hdr) {
		if hdr, _, _, err = findHeader(ctx, b, key, h.buf[:h.l.coreSize]); err != nil {
			return nil, err
		}
	}
	info, err := envelope.Inspect(bytes.NewReader(hdr))
	if err != nil {
		return nil, fmt.Errorf("blob: %q: %w", key, err)
	}
	return info, nil
}
