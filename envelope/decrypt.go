package envelope

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/kpcrypt/kpcrypt/envelope/internal/format"
	"github.com/kpcrypt/kpcrypt/internal/filelock"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/stream"
)

// Decrypter decrypts files. Set the fields before first use; then it is safe
// for concurrent use.
type Decrypter struct {
	// Keyring finds the KEKs to try on each key slot.
	Keyring Keyring
	// Workers is the number of goroutines that open chunks; zero means
	// GOMAXPROCS.
	Workers int
	// Context, when set, lists key/value pairs that the file's encryption
	// context must hold; a file without them fails with
	// [ErrContextMismatch] before any KEK is called.
	Context map[string]string
	// MinKeyVersions maps KEK URIs to the oldest key version still allowed
	// to decrypt, mirroring the retirement of key versions: a slot under an
	// older version is refused with [ErrKeyVersionRetired]. The KEK must
	// list its versions ([kms.VersionLister]). The Decrypter keeps each
	// KEK's list for VersionsTTL, so that opening many files costs about
	// one version listing per KEK and TTL; a slot under a version the kept
	// list does not know (the KEK was rotated since) has the list fetched
	// again at once.
	MinKeyVersions map[string]string
	// VersionsTTL is how long the version lists fetched for MinKeyVersions
	// are kept: zero means [DefaultVersionsTTL] (5 minutes), and a negative
	// value fetches the list at every open. A retirement of a key version
	// (a new entry in MinKeyVersions aside) takes effect at the latest
	// after VersionsTTL.
	VersionsTTL time.Duration
	// Cache, when set, keeps unwrapped DEKs so that files sharing a DEK
	// (see [DataKeyReuse]), or a file opened again, cost no KMS call. It
	// may be shared by several Decrypters.
	Cache *DataKeyCache
	// Telemetry receives spans and metrics of the KMS calls and of the
	// bytes opened; nil means OpenTelemetry's global providers.
	Telemetry *Telemetry

	tel      telemetryOnce
	versions versionCache
	now      func() time.Time // time.Now outside tests
}

// OpenedSlot tells which key slot opened a file.
type OpenedSlot struct {
	// Index is the slot's position in the slot table.
	Index int
	// URI is the slot's KEK URI.
	URI string
	// KeyVersion is the key version recorded in the slot.
	KeyVersion string
	// Rewrapped is set when the KMS wrapped the DEK again under a newer key
	// version while unwrapping it. Rewriting the slot with it (see the
	// rewrap tools) moves the file to that version.
	Rewrapped *kms.WrappedKey

	unwrappedVersion string  // the version the KEK reported, for the cache
	kek              kms.KEK // the KEK that unwrapped it; nil from a cache

	// What SaveRewrapped checks, so that it only ever replaces this very
	// slot of this very file.
	wrapped   []byte   // the slot's wrapped DEK
	aadRecipe uint8    // the slot's AAD recipe
	core      [32]byte // SHA-256 of the file's core
}

// Decrypt decrypts src into dst with the KEKs of keyring. Plaintext reaches
// dst chunk by chunk, each after it authenticated; on an error, what was
// written before it is authentic but incomplete. ctx bounds the KMS calls
// and the stream: once it is done, decryption stops at the next chunk with
// an error matching ctx.Err().
func Decrypt(ctx context.Context, dst io.Writer, src io.Reader, keyring Keyring) error {
	return (&Decrypter{Keyring: keyring}).Decrypt(ctx, dst, src)
}

// Open decrypts a whole file held in memory. It returns no plaintext unless
// all of it authenticated. ctx bounds the KMS calls and the decryption, as
// for [Decrypt].
func Open(ctx context.Context, ciphertext []byte, keyring Keyring) ([]byte, error) {
	return (&Decrypter{Keyring: keyring}).Open(ctx, ciphertext)
}

// NewReader reads the header from src, opens a key slot with keyring, and
// returns a Reader of the plaintext. ctx bounds the KMS calls; see
// [Reader.SetContext] to bind a context to the stream.
func NewReader(ctx context.Context, src io.Reader, keyring Keyring) (*Reader, error) {
	return (&Decrypter{Keyring: keyring}).NewReader(ctx, src)
}

// NewReaderAt opens the size-byte file in src for reading at random offsets.
func NewReaderAt(ctx context.Context, src io.ReaderAt, size int64, keyring Keyring) (*ReaderAt, error) {
	return (&Decrypter{Keyring: keyring}).NewReaderAt(ctx, src, size)
}

// Decrypt decrypts src into dst; see the function [Decrypt].
func (d *Decrypter) Decrypt(ctx context.Context, dst io.Writer, src io.Reader) error {
	r, err := d.NewReader(ctx, src)
	if err != nil {
		return err
	}
	defer r.Close()
	r.SetContext(ctx)
	_, err = io.Copy(dst, r)
	return err
}

// Open decrypts a whole file held in memory; see the function [Open]. It
// allocates the plaintext once, at its exact size, and opens the chunks
// straight from ciphertext into it, in parallel on d.Workers goroutines
// (GOMAXPROCS by default), which have all returned when Open returns. It
// never writes to ciphertext. It fails as [Decrypter.Decrypt] would, with
// the same error class (FORMAT.md §1.4 and §2.1: the stream first, then
// the size, then trailing data), and then returns no plaintext at all.
func (d *Decrypter) Open(ctx context.Context, ciphertext []byte) ([]byte, error) {
	h, err := format.ReadHeader(bytes.NewReader(ciphertext))
	if err != nil {
		return nil, err
	}
	if h.Core.Zstd {
		return d.openStreaming(ctx, ciphertext)
	}
	c, _, err := d.openHeader(ctx, h)
	if err != nil {
		return nil, err
	}
	body := ciphertext[h.Size():]
	n, err := streamSize(h, int64(len(body)))
	if err != nil {
		return nil, err
	}
	sb := body[:n]
	want := h.Core.PlaintextSize
	plaintext, err := c.OpenBody(nil, sb, &stream.Options{Workers: d.Workers, Context: ctx})
	if err != nil {
		return nil, err
	}
	if want >= 0 && int64(len(plaintext)) != want {
		clear(plaintext)
		return nil, fmt.Errorf("envelope: %w: %d bytes decrypted, the header says %d", ErrSizeMismatch, len(plaintext), want)
	}
	if len(sb) < len(body) {
		clear(plaintext)
		return nil, fmt.Errorf("envelope: %w", ErrTrailingData)
	}
	d.tel.get(d.Telemetry).count(openedCounter, int64(len(plaintext)))
	return plaintext, nil
}

// openStreaming is Open through a Reader, for a compressed file.
func (d *Decrypter) openStreaming(ctx context.Context, ciphertext []byte) ([]byte, error) {
	r, err := d.NewReader(ctx, bytes.NewReader(ciphertext))
	if err != nil {
		return nil, err
	}
	defer r.Close()
	r.SetContext(ctx)
	var out bytes.Buffer
	if _, err := io.Copy(&out, r); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// NewReader returns a Reader of the plaintext of the file read from src. ctx
// bounds the KMS calls made here, not the stream: see [Reader.SetContext].
//
// When src is a regular file (an io.ReaderAt with Seek and Stat, such as an
// *os.File) and the file is not compressed, the Reader's workers read its
// chunks themselves, with ReadAt, concurrently and in parallel (see
// [stream.Cipher.NewReaderFromAt]): the body's size, hence its final chunk,
// is known from the file's size at NewReader, and the Reader fails as one
// reading the file in order would. The file's offset does not move until
// the Reader reaches the end of the file, which leaves it at the end.
func (d *Decrypter) NewReader(ctx context.Context, src io.Reader) (*Reader, error) {
	if f, off, n, ok := asFile(src); ok {
		if r, err := d.newFileReader(ctx, f, off, n); r != nil || err != nil {
			return r, err
		}
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			return nil, err
		}
	}
	h, err := readHeaderLocked(ctx, src, func() (*format.Header, error) { return format.ReadHeader(src) })
	if err != nil {
		return nil, err
	}
	c, slot, err := d.openHeader(ctx, h)
	if err != nil {
		return nil, err
	}
	r := &Reader{slot: slot, size: h.Core.PlaintextSize, src: src, ctx: new(atomic.Pointer[context.Context]), ins: d.tel.get(d.Telemetry)}
	body := io.Reader(ctxReader{r: src, ctx: r.ctx})
	if r.size >= 0 {
		bodySize, err := h.Core.Stream.BodySize(r.size)
		if err != nil {
			return nil, err
		}
		// Read no further than the body, to tell trailing data apart.
		body = io.LimitReader(body, bodySize)
		r.checkTrailing = true
	}
	r.sr = c.NewReader(body, &stream.Options{Workers: d.readWorkers(h)})
	if h.Core.Zstd {
		zr, err := zstd.NewReader(r.sr, zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxWindow(maxZstdWindow), zstd.WithDecoderMaxMemory(maxZstdMemory))
		if err != nil {
			r.sr.Close()
			return nil, err
		}
		r.zr = zr
	}
	return r, nil
}

// readWorkers is the number of workers for a stream of header h.
func (d *Decrypter) readWorkers(h *format.Header) int {
	if size := h.Core.PlaintextSize; size >= 0 && size < int64(h.Core.Stream.ChunkSize) {
		return 1 // one chunk: no goroutine is worth starting
	}
	return d.Workers
}

// newFileReader returns a Reader of the n-byte file f from offset off,
// whose workers read the chunks with ReadAt; or nothing, with a nil
// error, for a compressed file, which is read in order.
func (d *Decrypter) newFileReader(ctx context.Context, f fileSource, off, n int64) (*Reader, error) {
	h, err := readHeaderLocked(ctx, f, func() (*format.Header, error) {
		return format.ReadHeader(io.NewSectionReader(f, off, n))
	})
	if err != nil {
		return nil, err
	}
	if h.Core.Zstd {
		return nil, nil
	}
	c, slot, err := d.openHeader(ctx, h)
	if err != nil {
		return nil, err
	}
	r := &Reader{slot: slot, size: h.Core.PlaintextSize, src: f, ctx: new(atomic.Pointer[context.Context]), ins: d.tel.get(d.Telemetry)}
	// As NewReaderAt does (FORMAT.md §2.1): with a recorded size the
	// stream is at most the body that size implies, and what follows is
	// trailing data, reported after the size is checked.
	bodySize := n - h.Size()
	ss, err := streamSize(h, bodySize)
	if err != nil {
		return nil, err
	}
	r.trailing = bodySize > ss
	r.seekEnd = func() error { _, err := f.Seek(off+n, io.SeekStart); return err }
	body := ctxReaderAt{r: io.NewSectionReader(f, off+h.Size(), ss), ctx: r.ctx}
	r.sr = c.NewReaderFromAt(body, ss, &stream.Options{Workers: d.readWorkers(h)})
	return r, nil
}

// streamSize is the size of the stream in a body of bodySize bytes under
// header h: the whole body, or with a recorded plaintext size at most the
// body that size implies (FORMAT.md §2.1), what follows being trailing data.
func streamSize(h *format.Header, bodySize int64) (int64, error) {
	if h.Core.PlaintextSize < 0 {
		return bodySize, nil
	}
	expected, err := h.Core.Stream.BodySize(h.Core.PlaintextSize)
	if err != nil {
		return 0, err
	}
	return min(bodySize, expected), nil
}

// Bounds on zstd decoding: the window a frame may ask for, and the memory
// the decoder may use. They keep a compressed file's decryption within the
// same budget as the stream's chunk buffers ([stream.MemoryBudget]): kpcrypt
// compresses with the encoder's default window (at most 8 MiB), and a
// frame asking for more is refused.
const (
	maxZstdWindow = 8 << 20
	maxZstdMemory = 32 << 20
)

// NewReaderAt opens the size-byte file in src for reading at random offsets.
// It authenticates the final chunk before it returns. The ReaderAt has no
// offset of its own, so any number of callers may share it: see
// [ReaderAt].
func (d *Decrypter) NewReaderAt(ctx context.Context, src io.ReaderAt, size int64) (*ReaderAt, error) {
	h, err := readHeaderLocked(ctx, src, func() (*format.Header, error) {
		return format.ReadHeader(io.NewSectionReader(src, 0, size))
	})
	if err != nil {
		return nil, err
	}
	if h.Core.Zstd {
		return nil, ErrCompressed
	}
	c, slot, err := d.openHeader(ctx, h)
	if err != nil {
		return nil, err
	}
	// As the sequential Reader does (FORMAT.md §2.1): with a recorded size,
	// the stream is at most the body that size implies; its authenticated
	// length is compared with the size, and only then is what follows it
	// trailing data.
	bodySize := size - h.Size()
	ss, err := streamSize(h, bodySize)
	if err != nil {
		return nil, err
	}
	sra, err := c.NewReaderAtOptions(io.NewSectionReader(src, h.Size(), ss), ss, &stream.Options{Workers: d.Workers})
	if err != nil {
		return nil, err
	}
	if want := h.Core.PlaintextSize; want >= 0 && sra.Size() != want {
		return nil, fmt.Errorf("envelope: %w: the body holds %d bytes, the header says %d", ErrSizeMismatch, sra.Size(), want)
	}
	if bodySize > ss {
		return nil, fmt.Errorf("envelope: %w: %d bytes after the body", ErrTrailingData, bodySize-ss)
	}
	return &ReaderAt{ra: sra, slot: slot, ins: d.tel.get(d.Telemetry)}, nil
}

// openHeader checks the context, then opens a key slot and returns the
// stream cipher.
func (d *Decrypter) openHeader(ctx context.Context, h *format.Header) (*stream.Cipher, *OpenedSlot, error) {
	if err := checkContext(h.Core.Context, d.Context); err != nil {
		return nil, nil, err
	}
	var check minVersionCheck
	if len(d.MinKeyVersions) > 0 {
		check = d.checkMinVersion
	}
	dek, c, slot, err := openSlots(ctx, d.tel.get(d.Telemetry), h, d.Keyring, check, d.Cache)
	clear(dek)
	if slot != nil {
		s := h.Table().Slots[slot.Index]
		slot.wrapped, slot.aadRecipe, slot.core = s.Wrapped, s.AADRecipe, sha256.Sum256(h.CoreBytes)
	}
	return c, slot, err
}

// openSlots tries the keyring's KEKs on each slot until one unwraps the DEK,
// and authenticates the header with it. Slots under a key version older than
// the minimum for their KEK are refused. The caller clears the DEK.
func openSlots(ctx context.Context, ins *instruments, h *format.Header, keyring Keyring, checkMin minVersionCheck, cache *DataKeyCache) ([]byte, *stream.Cipher, *OpenedSlot, error) {
	if keyring == nil {
		return nil, nil, nil, errors.New("envelope: no keyring to open the file with")
	}
	table := h.Table()
	noKEK := &NoKEKError{Slots: len(table.Slots)}
	for i, slot := range table.Slots {
		noKEK.URIs = append(noKEK.URIs, slot.URI)
		keks, err := keyring.KEKsFor(ctx, slot.URI)
		if err != nil {
			noKEK.Errors = append(noKEK.Errors, err)
		}
		if checkMin != nil && len(keks) > 0 {
			if err := checkMin(ctx, keks, slot); err != nil {
				noKEK.Errors = append(noKEK.Errors, err)
				continue
			}
		}
		aad, err := aadForSlot(h, &slot)
		if err != nil {
			return nil, nil, nil, err
		}
		if cache == nil {
			if dek, c, opened, err := tryKEKs(ctx, ins, h, i, &slot, keks, aad, noKEK); dek != nil || err != nil {
				return dek, c, opened, err
			}
			continue
		}
		// With a cache, one caller at a time unwraps a given slot; the
		// others wait for its result.
		dek, version, release, err := cache.acquire(ctx, slot.URI, slot.Wrapped, aad)
		if err != nil {
			return nil, nil, nil, err
		}
		if dek != nil {
			c, err := authenticate(h, &slot, kms.UnwrapResult{DEK: dek, KeyVersion: version})
			if err != nil {
				clear(dek)
				return nil, nil, nil, err
			}
			return dek, c, &OpenedSlot{Index: i, URI: slot.URI, KeyVersion: slot.KeyVersion}, nil
		}
		// release runs even if a KEK panics, so that the callers waiting
		// for this slot go on.
		dek, c, opened, err := func() ([]byte, *stream.Cipher, *OpenedSlot, error) {
			defer release()
			dek, c, opened, err := tryKEKs(ctx, ins, h, i, &slot, keks, aad, noKEK)
			if dek != nil {
				cache.put(slot.URI, slot.Wrapped, aad, dek, opened.unwrappedVersion)
			}
			return dek, c, opened, err
		}()
		if dek != nil || err != nil {
			return dek, c, opened, err
		}
	}
	return nil, nil, nil, noKEK
}

// tryKEKs tries each KEK on a slot. It returns the DEK and the header's
// cipher when one unwraps it and the header authenticates, an error when
// the header does not (or the context ends), and nothing when no KEK
// unwrapped the slot (their errors go to noKEK).
func tryKEKs(ctx context.Context, ins *instruments, h *format.Header, i int, slot *format.Slot, keks []kms.KEK, aad []byte, noKEK *NoKEKError) ([]byte, *stream.Cipher, *OpenedSlot, error) {
	for _, kek := range keks {
		res, err := unwrap(ctx, ins, kek, slot.Wrapped, aad)
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil, nil, err
			}
			noKEK.Errors = append(noKEK.Errors, err)
			continue
		}
		// The KEK authenticated the slot: from here on a failure means a
		// modified header, not a wrong key.
		c, err := authenticate(h, slot, res)
		if err != nil {
			clear(res.DEK)
			return nil, nil, nil, err
		}
		return res.DEK, c, &OpenedSlot{Index: i, URI: slot.URI, KeyVersion: slot.KeyVersion, Rewrapped: res.Rewrapped,
			unwrappedVersion: res.KeyVersion, kek: kek}, nil
	}
	return nil, nil, nil, nil
}

// unwrap unwraps wrapped with kek, under telemetry.
func unwrap(ctx context.Context, ins *instruments, kek kms.KEK, wrapped, aad []byte) (res kms.UnwrapResult, err error) {
	err = ins.kmsCall(ctx, "unwrap", kek.URI(), func(ctx context.Context) (err error) {
		res, err = kek.Unwrap(ctx, wrapped, aad)
		return err
	})
	return res, err
}

// minVersionCheck refuses a slot whose key version is retired.
type minVersionCheck func(ctx context.Context, keks []kms.KEK, slot format.Slot) error

// checkMinVersion refuses a slot whose key version comes before the
// minimum for its KEK in the KEK's order of versions. The version list
// comes from d's cache, and is fetched again when it does not know the
// slot's version or the minimum.
func (d *Decrypter) checkMinVersion(ctx context.Context, keks []kms.KEK, slot format.Slot) error {
	min, ok := d.MinKeyVersions[slot.URI]
	if !ok {
		return nil
	}
	now := time.Now
	if d.now != nil {
		now = d.now
	}
	ttl := d.VersionsTTL
	if ttl == 0 {
		ttl = DefaultVersionsTTL
	}
	for _, kek := range keks {
		vl, ok := kek.(kms.VersionLister)
		if !ok || kek.URI() != slot.URI {
			continue
		}
		ins := d.tel.get(d.Telemetry)
		versions, err := d.versions.list(ctx, ins, vl, ttl, now, false)
		if err != nil {
			return err
		}
		at, minAt := slices.Index(versions, slot.KeyVersion), slices.Index(versions, min)
		if (at < 0 || minAt < 0) && ttl >= 0 {
			// The list may predate a rotation: fetch it again.
			if versions, err = d.versions.list(ctx, ins, vl, ttl, now, true); err != nil {
				return err
			}
			at, minAt = slices.Index(versions, slot.KeyVersion), slices.Index(versions, min)
		}
		if minAt < 0 {
			return fmt.Errorf("envelope: minimum key version %q is not a version of %s", min, slot.URI)
		}
		if at < minAt {
			return fmt.Errorf("envelope: %w: the slot for %s is under key version %q, older than the minimum %q",
				ErrKeyVersionRetired, slot.URI, slot.KeyVersion, min)
		}
		return nil
	}
	return fmt.Errorf("envelope: %w: cannot list the versions of %s to enforce the minimum %q", ErrKeyVersionRetired, slot.URI, min)
}

// authenticate checks an unwrapped DEK against the header, in the order of
// FORMAT.md §3.2: its length, the slot's recorded key version and the
// core's MAC (header authentication), then the stream's key commitment.
func authenticate(h *format.Header, slot *format.Slot, res kms.UnwrapResult) (*stream.Cipher, error) {
	if len(res.DEK) != stream.KeySize {
		return nil, fmt.Errorf("envelope: %w: the slot for %s unwrapped to %d bytes, not a %d-byte data key",
			ErrHeaderAuthentication, slot.URI, len(res.DEK), stream.KeySize)
	}
	if res.KeyVersion != "" && res.KeyVersion != slot.KeyVersion {
		return nil, fmt.Errorf("envelope: %w: the slot for %s records key version %q, but version %q wrapped its key",
			ErrHeaderAuthentication, slot.URI, slot.KeyVersion, res.KeyVersion)
	}
	mac, err := headerMAC(res.DEK, h.Core)
	if err != nil {
		return nil, err
	}
	if !hmac.Equal(mac[:], h.Core.MAC[:]) {
		return nil, fmt.Errorf("envelope: %w: the core's MAC does not match", ErrHeaderAuthentication)
	}
	return stream.NewCipher(res.DEK, h.Core.Stream)
}

func checkContext(have []format.Pair, want map[string]string) error {
	for k, v := range want {
		found := false
		for _, p := range have {
			if p.Key == k {
				if p.Value != v {
					return fmt.Errorf("envelope: %w: %s is %q, want %q", ErrContextMismatch, k, p.Value, v)
				}
				found = true
			}
		}
		if !found {
			return fmt.Errorf("envelope: %w: the file has no %s", ErrContextMismatch, k)
		}
	}
	return nil
}

// Reader decrypts a file read in order. It releases plaintext only after
// its chunk authenticated, and reports io.EOF only after the final chunk
// did. Call Close when done: it stops the Reader's goroutines and waits for
// them (see [stream.Reader] for the goroutines and the underlying reader).
type Reader struct {
	sr  *stream.Reader
	zr  *zstd.Decoder // set for a compressed file
	src io.Reader
	// ctx is a separate object, not a field, so that the producer reading
	// the body through it does not keep the Reader reachable.
	ctx           *atomic.Pointer[context.Context]
	slot          *OpenedSlot
	size          int64 // plaintext size from the header, or -1
	n             int64
	checkTrailing bool
	trailing      bool         // data is known to follow the body
	seekEnd       func() error // moves a file read with ReadAt to its end
	end           error        // the outcome at the end of the stream, once known
	ins           *instruments
	counted       int64 // bytes counted as opened
}

// Slot tells which key slot opened the file.
func (r *Reader) Slot() OpenedSlot { return *r.slot }

// SetContext binds ctx to the stream: once ctx is done, the Reader fails
// at the next chunk with an error matching ctx.Err(). The context given to
// NewReader bounds only the KMS calls. Call SetContext before reading.
func (r *Reader) SetContext(ctx context.Context) {
	r.ctx.Store(&ctx)
}

// ctxReader fails reads once the context it points to is done.
type ctxReader struct {
	r   io.Reader
	ctx *atomic.Pointer[context.Context]
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := ctxErr(c.ctx); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// Read reads plaintext into p.
func (r *Reader) Read(p []byte) (int, error) {
	if r.zr != nil {
		n, err := r.zr.Read(p)
		r.n += int64(n)
		return n, r.streamErr(err)
	}
	n, err := r.sr.Read(p)
	r.n += int64(n)
	if err == io.EOF {
		err = r.atEOF()
	}
	return n, err
}

// WriteTo writes the plaintext to w. It implements [io.WriterTo].
func (r *Reader) WriteTo(w io.Writer) (int64, error) {
	if r.zr != nil {
		n, err := r.zr.WriteTo(w)
		r.n += n
		return n, r.streamErr(err)
	}
	n, err := r.sr.WriteTo(w)
	r.n += n
	if err == nil {
		if err = r.atEOF(); err == io.EOF {
			err = nil
		}
	}
	return n, err
}

// atEOF runs when the stream has authenticated its final chunk.
func (r *Reader) atEOF() error {
	if r.end != nil {
		return r.end
	}
	r.end = io.EOF
	if r.size >= 0 && r.n != r.size {
		r.end = fmt.Errorf("envelope: %w: %d bytes decrypted, the header says %d", ErrSizeMismatch, r.n, r.size)
	} else if r.trailing {
		r.end = fmt.Errorf("envelope: %w", ErrTrailingData)
	} else if r.seekEnd != nil {
		if err := r.seekEnd(); err != nil {
			r.end = fmt.Errorf("envelope: %w", err)
		}
	} else if r.checkTrailing {
		var b [1]byte
		if n, err := io.ReadFull(r.src, b[:]); n > 0 {
			r.end = fmt.Errorf("envelope: %w", ErrTrailingData)
		} else if err != io.EOF {
			// Not knowing whether data follows is not the end.
			r.end = fmt.Errorf("envelope: checking for trailing data: %w", err)
		}
	}
	return r.end
}

// streamErr prefers the stream's own error (an authentication failure,
// say) to the one the zstd decoder made of it.
func (r *Reader) streamErr(err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	if _, serr := r.sr.Read(nil); serr != nil && serr != io.EOF {
		return serr
	}
	return fmt.Errorf("envelope: decompressing: %w", err)
}

// Close stops the Reader's goroutines. It does not close the source.
func (r *Reader) Close() error {
	r.ins.count(openedCounter, r.n-r.counted)
	r.counted = r.n
	if r.zr != nil {
		r.zr.Close()
	}
	return r.sr.Close()
}

// ReaderAt reads a file's plaintext at random offsets. ReadAt is safe for
// concurrent use, and a ReaderAt has no offset of its own: it has no Read
// or Seek. A caller who wants an [io.ReadSeeker] (for [net/http.ServeContent],
// say) takes its own io.NewSectionReader(ra, 0, ra.Size()), one per
// request or goroutine.
type ReaderAt struct {
	ra   *stream.ReaderAt
	slot *OpenedSlot
	ins  *instruments
}

// ReadAt reads len(p) bytes of plaintext starting at offset off, opening
// only the chunks it touches. It implements [io.ReaderAt].
func (r *ReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := r.ra.ReadAt(p, off)
	r.ins.count(openedCounter, int64(n))
	return n, err
}

// Size returns the plaintext size, authenticated by the final chunk.
func (r *ReaderAt) Size() int64 { return r.ra.Size() }

// Slot tells which key slot opened the file.
func (r *ReaderAt) Slot() OpenedSlot { return *r.slot }

// readHeaderLocked reads a header with read. A rewrap rewrites a file's
// slot tables in place under an exclusive lock ([RewrapFile]), so when src
// is an *os.File the header is read under a shared lock, and a reader that
// races a rewrap never sees both table copies torn. The wait for the lock
// honours ctx; where files cannot be locked, the header is read as it is.
func readHeaderLocked(ctx context.Context, src any, read func() (*format.Header, error)) (*format.Header, error) {
	f, ok := src.(*os.File)
	if !ok {
		return read()
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return read()
	}
	if err := filelock.Lock(ctx, f, false); err != nil {
		if errors.Is(err, filelock.ErrUnsupported) {
			return read()
		}
		return nil, fmt.Errorf("envelope: waiting for a rewrap of %s to end: %w", f.Name(), err)
	}
	defer filelock.Unlock(f)
	return read()
}
