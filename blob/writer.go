package blob

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"

	"github.com/kpcrypt/kpcrypt/envelope"
)

// WriterOptions says how [NewWriter] writes an object.
type WriterOptions struct {
	// Detached writes the detached layout (FORMAT.md §8): the body object
	// with its slot tables zeroed, and the header in a header object beside
	// it, so that [Rewrap] can later change the key slots without
	// re-uploading the body.
	Detached bool
	// Blob is given to gocloud.dev/blob for the object (content type,
	// metadata, IfNotExist, …); nil means the zero value. Header objects are
	// always written with IfNotExist.
	Blob *blob.WriterOptions
}

// Writer encrypts what is written to it into an object. It implements
// io.WriteCloser and io.ReaderFrom, and is not safe for concurrent use.
//
// As with envelope.Writer, end it with Close once all the plaintext is
// written, or with Abort on an error. Only a successful Close makes the
// object: on Abort, or on any error (from the stream, the upload, or the
// context), the upload is aborted by cancelling its context, and no object is
// created or replaced. A previous object of the same key stays as it was.
type Writer struct {
	ctx    context.Context
	cancel context.CancelFunc
	bucket *blob.Bucket
	key    string
	bw     *blob.Writer
	ew     *envelope.Writer
	det    *detacher
	done   bool
	err    error
}

// NewWriter starts the upload of an object at key, encrypted by e, and
// returns a Writer of its plaintext. size is the plaintext size, or
// envelope.UnknownSize; see envelope.Encrypter.NewWriter. ctx bounds the KMS
// calls, the stream and the upload: once it is done, the upload is aborted.
func NewWriter(ctx context.Context, b *blob.Bucket, key string, e *envelope.Encrypter, size int64, opts *WriterOptions) (*Writer, error) {
	if opts == nil {
		opts = &WriterOptions{}
	}
	uctx, cancel := context.WithCancel(ctx)
	bw, err := b.NewWriter(uctx, key, opts.Blob)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("blob: %w", err)
	}
	w := &Writer{ctx: ctx, cancel: cancel, bucket: b, key: key, bw: bw}
	var dst io.Writer = bw
	if opts.Detached {
		w.det = &detacher{w: bw}
		dst = w.det
	}
	ew, err := e.NewWriter(ctx, dst, size)
	if err != nil {
		w.abortUpload()
		return nil, err
	}
	ew.SetContext(ctx)
	w.ew = ew
	return w, nil
}

// Write encrypts p.
func (w *Writer) Write(p []byte) (int, error) { return w.ew.Write(p) }

// ReadFrom encrypts what it reads from r until io.EOF.
func (w *Writer) ReadFrom(r io.Reader) (int64, error) { return w.ew.ReadFrom(r) }

// Close writes the final chunk and completes the upload, then, in the
// detached layout, writes the header object. It returns nil only if the
// object is complete. On an error no object is made, except in the detached
// layout when the body was stored and its header object failed: the body then
// opens with no header and is refused with [ErrNoHeader].
func (w *Writer) Close() error {
	if w.done {
		return w.err
	}
	w.done = true
	if err := w.ew.Close(); err != nil {
		w.abortUpload()
		w.err = err
		return err
	}
	err := w.bw.Close()
	w.cancel()
	if err != nil {
		w.err = fmt.Errorf("blob: upload of %q: %w", w.key, err)
		return w.err
	}
	if w.det != nil {
		if !w.det.done {
			w.err = fmt.Errorf("blob: %w: header not written", envelope.ErrInvalidHeader)
			return w.err
		}
		if err := publishHeader(w.ctx, w.bucket, w.key, w.det.header, nil); err != nil {
			w.err = err
			return err
		}
	}
	return nil
}

// Abort abandons the object: it aborts the stream (envelope.Writer.Abort) and
// the upload, so that no object is created. Close then returns the error
// Abort gave the stream. Abort after Close does nothing.
func (w *Writer) Abort(err error) {
	if w.done {
		return
	}
	w.done = true
	w.ew.Abort(err)
	w.abortUpload()
	w.err = w.ew.Close()
}

// abortUpload cancels the upload's context, then closes the blob writer,
// which gocloud.dev/blob requires and which then aborts the upload.
func (w *Writer) abortUpload() {
	w.cancel()
	_ = w.bw.Close()
}

// detacher passes the envelope file through to the body object, with both
// slot table copies zeroed, and keeps the header aside.
type detacher struct {
	w      io.Writer
	header []byte
	l      layout
	known  bool
	done   bool
}

func (d *detacher) Write(p []byte) (int, error) {
	n := len(p)
	for !d.done && len(p) > 0 {
		need := coreFixed
		if d.known {
			need = int(d.l.headerSize)
		}
		take := min(need-len(d.header), len(p))
		d.header = append(d.header, p[:take]...)
		p = p[take:]
		if !d.known && len(d.header) == coreFixed {
			l, err := parseLayout(d.header)
			if err != nil {
				return 0, err
			}
			d.l, d.known = l, true
			continue
		}
		if d.known && len(d.header) == int(d.l.headerSize) {
			body := make([]byte, d.l.headerSize)
			copy(body, d.header[:d.l.coreSize])
			if _, err := d.w.Write(body); err != nil {
				return 0, err
			}
			d.done = true
		}
	}
	if len(p) > 0 {
		if _, err := d.w.Write(p); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// writeHeaderObject writes the header object of sequence n, only if it does
// not exist yet. An existing one fails with an error for which gcerrors.Code
// is gcerrors.FailedPrecondition.
// hook, when set, is called before Close, and its error aborts the write as
// a crash would.
func writeHeaderObject(ctx context.Context, b *blob.Bucket, key string, n uint64, header []byte, hook func(string) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := b.NewWriter(ctx, headerKey(key, n), &blob.WriterOptions{
		IfNotExist:  true,
		ContentType: "application/octet-stream",
	})
	if err != nil {
		return fmt.Errorf("blob: header object: %w", err)
	}
	if _, err := io.Copy(w, bytes.NewReader(header)); err != nil {
		cancel()
		_ = w.Close()
		return fmt.Errorf("blob: header object: %w", err)
	}
	if hook != nil {
		if err := hook("close"); err != nil {
			cancel()
			_ = w.Close()
			return err
		}
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("blob: header object: %w", err)
	}
	return nil
}

// maxPublishAttempts bounds the retries of a header write that lost a race
// to a concurrent writer of the same sequence.
const maxPublishAttempts = 8

// publishHeader writes header as the newest header object of key, above
// every one listed, and then deletes the older ones. hook, when set, is
// called before each step (tests make it fail, as a crash would).
func publishHeader(ctx context.Context, b *blob.Bucket, key string, header []byte, hook func(step string) error) error {
	for range maxPublishAttempts {
		seqs, err := listHeaders(ctx, b, key)
		if err != nil {
			return err
		}
		next := uint64(1)
		if len(seqs) > 0 {
			next = seqs[0] + 1
		}
		if err := writeHeaderObject(ctx, b, key, next, header, hook); err != nil {
			if gcerrors.Code(err) == gcerrors.FailedPrecondition {
				continue
			}
			return err
		}
		return deleteHeaders(ctx, b, key, seqs, hook)
	}
	return fmt.Errorf("blob: %w: %q", ErrConflict, key)
}

// deleteHeaders deletes the header objects of the given sequences, older
// than one just written. One already gone is not an error.
func deleteHeaders(ctx context.Context, b *blob.Bucket, key string, seqs []uint64, hook func(string) error) error {
	for _, s := range seqs {
		if hook != nil {
			if err := hook("delete"); err != nil {
				return err
			}
		}
		if err := b.Delete(ctx, headerKey(key, s)); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
			return fmt.Errorf("blob: deleting an old header object: %w", err)
		}
	}
	return nil
}
