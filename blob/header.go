package blob

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"

	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"

	"github.com/kpcrypt/kpcrypt/envelope"
)

// DefaultHeaderReadSize is how many bytes of an object [NewReaderAt] and
// [Rewrap] read in their first ranged read: enough for the header of a file
// with the default slot tables and up to 12 KiB of encryption context, and
// for the whole of a small object.
const DefaultHeaderReadSize = 16 << 10

// head is the start of an object: at least its whole header.
type head struct {
	buf  []byte // the object's first bytes
	size int64  // the object's size
	l    layout
}

// readHead reads the first n bytes of the object in one ranged read, and the
// rest of its header in a second when the header is longer.
func readHead(ctx context.Context, b *blob.Bucket, key string, n int) (*head, error) {
	buf, size, err := readRange(ctx, b, key, 0, int64(n))
	if err != nil {
		return nil, err
	}
	l, err := parseLayout(buf)
	if err != nil {
		return nil, err
	}
	if size < l.headerSize {
		return nil, fmt.Errorf("blob: %w: object %q ends inside its header", envelope.ErrInvalidHeader, key)
	}
	if int64(len(buf)) < l.headerSize {
		rest, _, err := readRange(ctx, b, key, int64(len(buf)), l.headerSize-int64(len(buf)))
		if err != nil {
			return nil, err
		}
		buf = append(buf, rest...)
	}
	if int64(len(buf)) < l.headerSize {
		return nil, fmt.Errorf("blob: %w: object %q ends inside its header", envelope.ErrInvalidHeader, key)
	}
	return &head{buf: buf, size: size, l: l}, nil
}

// readRange reads length bytes at off (fewer at the end of the object) in
// one ranged read, and returns them with the object's size.
func readRange(ctx context.Context, b *blob.Bucket, key string, off, length int64) ([]byte, int64, error) {
	r, err := b.NewRangeReader(ctx, key, off, length, nil)
	if err != nil {
		return nil, 0, fmt.Errorf("blob: %w", err)
	}
	defer r.Close()
	buf := make([]byte, 0, min(length, max(r.Size()-off, 0)))
	buf, err = readAll(r, buf)
	if err != nil {
		return nil, 0, fmt.Errorf("blob: reading %q: %w", key, err)
	}
	return buf, r.Size(), nil
}

func readAll(r io.Reader, buf []byte) ([]byte, error) {
	w := bytes.NewBuffer(buf)
	_, err := w.ReadFrom(r)
	return w.Bytes(), err
}

// listHeaders returns the sequences of the header objects of key, newest
// first. A listing that fails with NotFound (fileblob's, when an object is
// deleted while it lists) is made again, a bounded number of times.
func listHeaders(ctx context.Context, b *blob.Bucket, key string) ([]uint64, error) {
	var err error
	for range maxFindAttempts {
		var seqs []uint64
		seqs, err = listHeadersOnce(ctx, b, key)
		if err == nil || gcerrors.Code(err) != gcerrors.NotFound {
			return seqs, err
		}
	}
	return nil, err
}

func listHeadersOnce(ctx context.Context, b *blob.Bucket, key string) ([]uint64, error) {
	var seqs []uint64
	it := b.List(&blob.ListOptions{Prefix: key + HeaderSuffix})
	for {
		o, err := it.Next(ctx)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("blob: listing the header objects of %q: %w", key, err)
		}
		if n, ok := parseHeaderKey(key, o.Key); ok {
			seqs = append(seqs, n)
		}
	}
	slices.Sort(seqs)
	slices.Reverse(seqs)
	return seqs, nil
}

// maxFindAttempts bounds how often the header objects are listed again when
// one listed was deleted meanwhile by a newer rewrap.
const maxFindAttempts = 4

// findHeader returns the header of the detached object whose body starts
// with core: the newest header object that is a whole header (FORMAT.md
// §8.2) with that core. It also returns its sequence, and every sequence
// listed, newest first.
func findHeader(ctx context.Context, b *blob.Bucket, key string, core []byte) ([]byte, uint64, []uint64, error) {
	for range maxFindAttempts {
		seqs, err := listHeaders(ctx, b, key)
		if err != nil {
			return nil, 0, nil, err
		}
		raced := false
		for _, n := range seqs {
			h, _, err := readRange(ctx, b, headerKey(key, n), 0, envelope.MaxHeaderSize+1)
			if err != nil {
				if gcerrors.Code(err) == gcerrors.NotFound {
					raced = true
					continue
				}
				return nil, 0, nil, err
			}
			if headerMatches(h, core) {
				return h, n, seqs, nil
			}
		}
		if !raced {
			break
		}
	}
	return nil, 0, nil, fmt.Errorf("blob: %w: %q", ErrNoHeader, key)
}

// headerMatches reports whether h is a whole header (core and both slot
// table copies, nothing after, at least one valid copy) whose core is core.
func headerMatches(h, core []byte) bool {
	l, err := parseLayout(h)
	if err != nil || int64(len(h)) != l.headerSize || !bytes.Equal(h[:l.coreSize], core) {
		return false
	}
	_, err = envelope.Inspect(bytes.NewReader(h))
	return err == nil
}
