package envelope

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/kpcrypt/kpcrypt/envelope/internal/format"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/stream"
)

// Limits of the header, enforced on encryption and on decryption.
const (
	// MaxSlots is the most key slots a file may have.
	MaxSlots = format.MaxSlots
	// DefaultSlotTableSize (2048) is the size of each slot table copy of a
	// file of unknown size or of [SmallFileSize] or more, unless
	// Encrypter.SlotTableSize says otherwise: room for about four Key
	// Protect slots, or a dozen local ones (see [SmallFileSize] for the
	// size of a slot per backend).
	DefaultSlotTableSize = format.DefaultSlotTableSize
	// MinSlotTableSize and MaxSlotTableSize bound Encrypter.SlotTableSize.
	MinSlotTableSize = format.MinSlotTableSize
	MaxSlotTableSize = format.MaxSlotTableSize
	// MaxHeaderSize bounds the whole header.
	MaxHeaderSize = format.MaxHeaderSize
)

// Compression names a compression applied before encryption.
type Compression string

// Compressions.
const (
	CompressionNone Compression = ""
	CompressionZstd Compression = "zstd"
)

// UnknownSize is the plaintext size to give [Encrypter.NewWriter] when it is
// not known in advance.
const UnknownSize = -1

// Encrypter encrypts files and streams under its KEKs. Set the fields before
// first use; then it is safe for concurrent use. Each file gets a fresh DEK.
type Encrypter struct {
	// KEKs wrap each file's DEK, one key slot each. At least one is needed;
	// any one of them opens the file.
	KEKs []kms.KEK
	// ChunkSize is the plaintext size of a chunk; zero means
	// [stream.DefaultChunkSize] (64 KiB).
	ChunkSize int
	// Workers is the number of goroutines that seal chunks; zero means
	// GOMAXPROCS.
	Workers int
	// SlotTableSize is the size of each of the two slot table copies; zero
	// means [DefaultSlotTableSize] (2 KiB: about four Key Protect slots),
	// or for a file known to be smaller than [SmallFileSize] a table sized
	// to its slots with room for a rotation of each. A larger table leaves
	// room for more slots to be added later without rewriting the file.
	SlotTableSize int
	// Context is the encryption context: key/value pairs stored in the
	// header, authenticated, and bound into the data given to the KEKs.
	// It is not secret.
	Context map[string]string
	// Compression compresses the plaintext before it is encrypted; "" (the
	// default) does not. With CompressionZstd the header records it, and
	// records no plaintext size. Compression reveals how compressible the
	// data is through the ciphertext's size, and a compressed file cannot
	// be read at random offsets.
	Compression Compression
	// Reuse, when set, shares one wrapped DEK among several streams to save
	// KMS calls; see [DataKeyReuse]. Nil gives every stream its own DEK.
	Reuse *DataKeyReuse
	// Telemetry receives spans and metrics of the KMS calls and of the
	// bytes sealed; nil means OpenTelemetry's global providers.
	Telemetry *Telemetry

	tel        telemetryOnce
	mu         sync.Mutex
	shared     *sharedKey       // the DEK in use for reuse
	ready      []*sharedKey     // DEKs wrapped ahead, next first
	renewing   int              // wraps of DEKs for reuse in flight
	renewed    chan struct{}    // closed when one of them ends
	generation uint64           // grows at every ClearDataKey
	depth      int              // how many DEKs to wrap ahead, up to Reuse.Ahead
	served     bool             // a shared DEK served a stream
	dry        bool             // callers found no shared DEK left
	slotSizes  map[string]int   // the size of the last slot each KEK made
	now        func() time.Time // time.Now outside tests
}

// Encrypt encrypts src into dst under keks, each wrapping the file's DEK.
// ctx bounds the KMS calls and the stream: once it is done, the encryption
// stops at the next chunk. On any error, from src, dst or ctx, what was
// written to dst lacks its final chunk and does not decrypt.
func Encrypt(ctx context.Context, dst io.Writer, src io.Reader, keks ...kms.KEK) error {
	return (&Encrypter{KEKs: keks}).Encrypt(ctx, dst, src)
}

// Seal encrypts a small plaintext under keks and returns the whole file. ctx
// bounds the KMS calls and the stream, as for [Encrypt].
func Seal(ctx context.Context, plaintext []byte, keks ...kms.KEK) ([]byte, error) {
	return (&Encrypter{KEKs: keks}).Seal(ctx, plaintext)
}

// Encrypt encrypts src into dst. When src is a regular file its size is
// recorded in the header, and the workers read it themselves, in parallel,
// with ReadAt (see [Writer.ReadFrom]); its offset ends at its end. ctx bounds the
// KMS calls and the stream, and on any error the stream is abandoned
// without its final chunk; see the function [Encrypt].
func (e *Encrypter) Encrypt(ctx context.Context, dst io.Writer, src io.Reader) error {
	size := int64(UnknownSize)
	if _, _, n, ok := asFile(src); ok {
		size = n
	}
	w, err := e.NewWriter(ctx, dst, size)
	if err != nil {
		return err
	}
	w.SetContext(ctx)
	// Not io.Copy: an *os.File's WriteTo would hide the file from ReadFrom.
	if _, err := w.ReadFrom(src); err != nil {
		w.Abort(err)
		return err
	}
	return w.Close()
}

// fileSource is a source read at random offsets: a regular file.
type fileSource interface {
	io.Reader
	io.ReaderAt
	io.Seeker
}

// asFile returns src as a regular file (with Stat, such as an *os.File),
// with its current offset and the number of bytes from there to its end, if
// it is one.
func asFile(src io.Reader) (f fileSource, off, n int64, ok bool) {
	f, ok = src.(fileSource)
	if !ok {
		return nil, 0, 0, false
	}
	st, ok := src.(interface{ Stat() (os.FileInfo, error) })
	if !ok {
		return nil, 0, 0, false
	}
	fi, err := st.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return nil, 0, 0, false
	}
	if off, err = f.Seek(0, io.SeekCurrent); err != nil || off > fi.Size() {
		return nil, 0, 0, false
	}
	return f, off, fi.Size() - off, true
}

// ctxReaderAt fails reads once the context it points to is done.
type ctxReaderAt struct {
	r   io.ReaderAt
	ctx *atomic.Pointer[context.Context]
}

func (c ctxReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if err := ctxErr(c.ctx); err != nil {
		return 0, err
	}
	return c.r.ReadAt(p, off)
}

// Seal encrypts a plaintext held in memory and returns the whole file. It
// allocates the file once, at its exact size, and seals the chunks straight
// from plaintext into it, in parallel on e.Workers goroutines (GOMAXPROCS by
// default; one for a plaintext of one chunk), which have all returned when
// Seal returns. ctx bounds the KMS calls and is checked between chunks: once
// it is done, Seal fails with its error. On any error Seal returns nil.
func (e *Encrypter) Seal(ctx context.Context, plaintext []byte) ([]byte, error) {
	if e.Compression != CompressionNone {
		return e.sealStreaming(ctx, plaintext)
	}
	size := int64(len(plaintext))
	header, c, _, err := e.newHeader(ctx, size)
	if err != nil {
		return nil, err
	}
	bodySize, err := c.Header().BodySize(size)
	if err != nil {
		return nil, fmt.Errorf("envelope: plaintext of %d bytes: %w", size, err)
	}
	file := make([]byte, len(header), int64(len(header))+bodySize)
	copy(file, header)
	file, err = c.SealBody(file, plaintext, &stream.Options{Workers: e.Workers, Context: ctx})
	if err != nil {
		return nil, err
	}
	e.tel.get(e.Telemetry).count(sealedCounter, size)
	return file, nil
}

// sealStreaming is Seal through a Writer, for a compressed file.
func (e *Encrypter) sealStreaming(ctx context.Context, plaintext []byte) ([]byte, error) {
	var buf bytes.Buffer
	w, err := e.NewWriter(ctx, &buf, int64(len(plaintext)))
	if err != nil {
		return nil, err
	}
	w.SetContext(ctx)
	if _, err := w.Write(plaintext); err != nil {
		w.Abort(err)
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// NewWriter wraps a fresh DEK under every KEK, writes the header to dst, and
// returns a Writer for the plaintext. size is the plaintext size, recorded in
// the header, or [UnknownSize]; when it is given, Close fails unless exactly
// size bytes were written. ctx bounds the KMS calls made here, not the
// stream: [Writer.SetContext] binds a context to the stream. End the Writer
// with Close once all the plaintext is written, or with Abort on an error;
// neither closes dst.
func (e *Encrypter) NewWriter(ctx context.Context, dst io.Writer, size int64) (*Writer, error) {
	header, c, shared, err := e.newHeader(ctx, size)
	if err != nil {
		return nil, err
	}
	if n, err := dst.Write(header); err != nil {
		return nil, err
	} else if n < len(header) {
		return nil, fmt.Errorf("envelope: writing the header: %w", io.ErrShortWrite)
	}
	// The stream's Writer starts its workers only once a full chunk is
	// written, so a one-chunk file starts none.
	w := &Writer{size: size, ctx: new(atomic.Pointer[context.Context]), ins: e.tel.get(e.Telemetry)}
	w.dst = ctxWriter{w: dst, ctx: w.ctx}
	opts := &stream.Options{Workers: e.Workers}
	if size >= 0 && e.Compression == CompressionNone {
		opts.SizeHint = max(size, 1) // no chunk-sized buffer for a small file
	}
	w.sw = c.NewWriter(w.dst, opts)
	if e.Compression == CompressionZstd {
		if w.zw, err = zstd.NewWriter(w.sw, zstd.WithEncoderConcurrency(1)); err != nil {
			w.sw.Abort(err)
			return nil, err
		}
	}
	if shared != nil && size < 0 {
		w.onClose = func(n int64) { e.countBytes(shared, n) }
	}
	return w, nil
}

// newHeader makes a DEK and returns the encoded header, the stream cipher,
// and the shared DEK the stream uses, if any.
func (e *Encrypter) newHeader(ctx context.Context, size int64) ([]byte, *stream.Cipher, *sharedKey, error) {
	if len(e.KEKs) == 0 {
		return nil, nil, nil, fmt.Errorf("envelope: no KEK to wrap the data key")
	}
	if len(e.KEKs) > MaxSlots {
		return nil, nil, nil, fmt.Errorf("envelope: %d KEKs, over the limit of %d key slots", len(e.KEKs), MaxSlots)
	}
	for i, k := range e.KEKs {
		if k == nil {
			return nil, nil, nil, fmt.Errorf("envelope: KEK %d is nil", i)
		}
		for _, other := range e.KEKs[:i] {
			if k.URI() == other.URI() {
				return nil, nil, nil, fmt.Errorf("envelope: KEK %s given twice", k.URI())
			}
		}
	}
	tableSize := e.SlotTableSize
	small := tableSize == 0 && size >= 0 && size < SmallFileSize
	if tableSize == 0 {
		tableSize = DefaultSlotTableSize
	}
	if tableSize < MinSlotTableSize || tableSize > MaxSlotTableSize {
		return nil, nil, nil, fmt.Errorf("envelope: slot table size %d out of range [%d, %d]", tableSize, MinSlotTableSize, MaxSlotTableSize)
	}

	pairs := sortedContext(e.Context)
	dek, shared, err := e.dataKey(ctx, pairs, size)
	if err != nil {
		return nil, nil, nil, err
	}
	defer clear(dek)
	c, err := stream.NewFreshCipher(dek, e.ChunkSize)
	if err != nil {
		return nil, nil, nil, err
	}
	sh := c.Header()
	if size >= 0 {
		if _, err := sh.BodySize(size); err != nil {
			return nil, nil, nil, fmt.Errorf("envelope: plaintext of %d bytes: %w", size, err)
		}
	} else {
		size = UnknownSize
	}
	core := &format.Core{SlotTableSize: tableSize, PlaintextSize: size, Stream: sh, Context: pairs}
	switch e.Compression {
	case CompressionNone:
	case CompressionZstd:
		core.Zstd, core.PlaintextSize = true, UnknownSize
	default:
		return nil, nil, nil, fmt.Errorf("envelope: unknown compression %q", e.Compression)
	}
	if small {
		// A shared DEK's slots are known; a fresh DEK's are estimated,
		// from the slots this Encrypter made before if it has.
		if shared != nil {
			core.SlotTableSize = tableSizeFor(shared.slots)
		} else {
			core.SlotTableSize = smallTableSize(e.slotEstimates())
		}
	}
	for attempt := 0; ; attempt++ {
		if core.MAC, err = headerMAC(dek, core); err != nil {
			return nil, nil, nil, fmt.Errorf("envelope: %w", err)
		}
		coreBytes, err := core.Marshal()
		if err != nil {
			return nil, nil, nil, fmt.Errorf("envelope: %w", err)
		}
		var slots []format.Slot
		if shared != nil {
			slots = shared.slots
		} else if slots, err = wrapAll(ctx, e.tel.get(e.Telemetry), e.KEKs, dek, func(uri string) []byte { return slotAAD(coreBytes, uri) }, format.AADRecipeV1); err != nil {
			return nil, nil, nil, err
		}
		if small && shared == nil {
			e.learnSlotSizes(slots)
		}
		table, err := (&format.SlotTable{Sequence: 1, Slots: slots}).Marshal(core.SlotTableSize)
		if err != nil && small && attempt == 0 && shared == nil && errors.Is(err, format.ErrSlotTableFull) {
			// The estimate fell short: size the table to the slots, which
			// binds them to another core, and wrap again.
			core.SlotTableSize = tableSizeFor(slots)
			continue
		}
		if err != nil {
			return nil, nil, nil, fmt.Errorf("envelope: %w (raise the slot table size)", err)
		}
		return slices.Concat(coreBytes, table, table), c, shared, nil
	}
}

// SmallFileSize is the plaintext size below which, when it is known in
// advance (Seal, NewWriter with a size, Encrypt from a regular file) and
// Encrypter.SlotTableSize is zero, a file's slot tables are sized to the
// slots it holds plus [SlotRotationRoom] bytes for each, rather than
// [DefaultSlotTableSize]: enough for every slot to be rewrapped under a new
// key version in place, not for a slot to be added. Adding a slot to such a
// file with [RewrapFile] or [RewrapPath] rewrites it whole, crash-safely,
// with a larger table (FORMAT.md §3.3), which costs the file's size in I/O
// and a wrap by each of its KEKs; [Rewrap] fails with [ErrSlotTableFull].
// Set Encrypter.SlotTableSize for files that will get more slots.
//
// A slot takes 6 bytes plus its KEK URI, its key version and its wrapped
// DEK. By backend, about:
//   - local key file: 60 bytes plus the URI ("local:" and the file's
//     path), so about 130 bytes;
//   - Key Protect and Hyper Protect Crypto Services: 280 bytes plus the
//     key CRN, so about 430 to 470 bytes;
//   - PKCS#11: 50 to 70 bytes plus the pkcs11: URI, so about 150 bytes.
//
// A slot table adds 45 bytes to its slots, and a file holds two copies. So
// a small file with one Key Protect slot carries two tables of 540 to 600
// bytes; with the core (126 bytes with no encryption context) and a 16-byte
// tag per chunk, a 4 KiB object grows by 1.2 to 1.3 KiB (1,230 bytes
// against a local Key Protect, kplocal), where the default tables make it
// 4.1 KiB.
const SmallFileSize = 1 << 20

// SlotRotationRoom is the room a small file's slot table leaves for each
// slot (see [SmallFileSize]), so that a rotation may lengthen its key
// version or its wrapped DEK.
const SlotRotationRoom = 64

// smallTableSize is the slot table size for slots of the given sizes:
// room for each and [SlotRotationRoom] more, rounded up to 16 bytes.
func smallTableSize(sizes []int) int {
	n := format.TableOverhead
	for _, s := range sizes {
		n += s + SlotRotationRoom
	}
	n = (n + 15) &^ 15
	return min(max(n, MinSlotTableSize), MaxSlotTableSize)
}

// tableSizeFor is smallTableSize for the given slots.
func tableSizeFor(slots []format.Slot) int {
	sizes := make([]int, len(slots))
	for i, s := range slots {
		sizes[i] = s.Size()
	}
	return smallTableSize(sizes)
}

// slotEstimates estimates the size of the slot each KEK will make: the
// size of the last one it made for this Encrypter, or else its URI plus 6
// bytes of framing, 40 of key version and 240 of wrapped DEK (a Key Protect
// slot's).
func (e *Encrypter) slotEstimates() []int {
	e.mu.Lock()
	defer e.mu.Unlock()
	sizes := make([]int, len(e.KEKs))
	for i, k := range e.KEKs {
		uri := k.URI()
		if n, ok := e.slotSizes[uri]; ok {
			sizes[i] = n
		} else {
			sizes[i] = (&format.Slot{URI: uri}).Size() + 40 + 240
		}
	}
	return sizes
}

// learnSlotSizes remembers the size of each slot, by KEK URI.
func (e *Encrypter) learnSlotSizes(slots []format.Slot) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.slotSizes == nil {
		e.slotSizes = map[string]int{}
	}
	for _, s := range slots {
		if len(e.slotSizes) < MaxSlots*4 || e.slotSizes[s.URI] != 0 {
			e.slotSizes[s.URI] = s.Size()
		}
	}
}

// dataKey returns a DEK for a new stream: a fresh one, or with DataKeyReuse
// a copy of the shared one. No lock is held across a KMS call: the shared
// DEK's successors are wrapped ahead, on the goroutine of the caller that
// finds the current one half spent, while the others go on with the current
// one; a caller that finds no DEK left waits for one, or for its context to
// end. The caller clears the DEK.
func (e *Encrypter) dataKey(ctx context.Context, pairs []format.Pair, size int64) ([]byte, *sharedKey, error) {
	if e.Reuse == nil {
		dek, err := freshDEK()
		return dek, nil, err
	}
	maxStreams, maxAge, maxBytes := e.Reuse.limits()
	if maxStreams <= 1 {
		dek, err := freshDEK()
		return dek, nil, err
	}
	ahead := e.Reuse.ahead()
	now := time.Now
	if e.now != nil {
		now = e.now
	}
	spent := func(k *sharedKey) bool {
		return k.streams >= maxStreams || now().Sub(k.created) >= maxAge || k.bytes >= maxBytes ||
			size > 0 && k.bytes+size > maxBytes && k.streams > 0
	}
	e.mu.Lock()
	for {
		// Retire a spent DEK and put the next one ready in its place.
		for e.shared == nil || spent(e.shared) {
			if e.shared != nil {
				clear(e.shared.dek)
				e.shared = nil
			}
			if len(e.ready) == 0 {
				break
			}
			e.shared, e.ready = e.ready[0], e.ready[1:]
			e.shared.created = now()
			e.dry = false
		}
		if k := e.shared; k != nil {
			e.served = true
			k.streams++
			if size > 0 {
				k.bytes += size
			}
			dek := slices.Clone(k.dek)
			renew := 2*k.streams >= maxStreams && len(e.ready)+e.renewing < max(e.depth, 1)
			if renew {
				e.renewing++
			}
			gen := e.generation
			e.mu.Unlock()
			if renew {
				// Wrap the next DEK ahead. Its failure is not this stream's:
				// the next caller to find the DEK half spent tries again.
				_ = e.renew(ctx, pairs, gen)
			}
			return dek, k, nil
		}
		// The DEKs wrapped ahead did not last until the next was ready:
		// wrap one more ahead from now on, up to Ahead.
		if e.served && !e.dry {
			e.dry = true
			e.depth = min(max(e.depth, 1)+1, ahead)
		}
		if e.renewing < ahead {
			e.renewing++
			gen := e.generation
			e.mu.Unlock()
			if err := e.renew(ctx, pairs, gen); err != nil {
				return nil, nil, err
			}
			e.mu.Lock()
			continue
		}
		// Every renewal allowed is in flight: wait for one to end.
		if e.renewed == nil {
			e.renewed = make(chan struct{})
		}
		wait := e.renewed
		e.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
		e.mu.Lock()
	}
}

// freshDEK returns a new random DEK.
func freshDEK() ([]byte, error) {
	dek := make([]byte, stream.KeySize)
	if _, err := rand.Read(dek); err != nil {
		return nil, err
	}
	return dek, nil
}

// renew wraps a new shared DEK under every KEK, without holding e.mu, and
// adds it to the ready ones, unless ClearDataKey was called meanwhile
// (gen tells). The caller has counted it in e.renewing. Whatever the
// outcome, the callers waiting for a DEK are woken.
func (e *Encrypter) renew(ctx context.Context, pairs []format.Pair, gen uint64) (err error) {
	var k *sharedKey
	defer func() {
		e.mu.Lock()
		e.renewing--
		if k != nil && gen == e.generation {
			e.ready = append(e.ready, k)
		} else if k != nil {
			clear(k.dek)
		}
		if e.renewed != nil {
			close(e.renewed)
			e.renewed = nil
		}
		e.mu.Unlock()
	}()
	dek, err := freshDEK()
	if err != nil {
		return err
	}
	encCtx, err := format.EncodeContext(pairs)
	if err != nil {
		clear(dek)
		return fmt.Errorf("envelope: %w", err)
	}
	slots, err := wrapAll(ctx, e.tel.get(e.Telemetry), e.KEKs, dek, func(uri string) []byte { return sharedSlotAAD(encCtx, uri) }, format.AADRecipeShared)
	if err != nil {
		clear(dek)
		return err
	}
	k = &sharedKey{dek: dek, slots: slots}
	return nil
}

// countBytes adds the plaintext of a stream of unknown size to the shared
// DEK's count once the stream is closed.
func (e *Encrypter) countBytes(k *sharedKey, n int64) {
	e.mu.Lock()
	k.bytes += n
	e.mu.Unlock()
}

// ClearDataKey zeroes and forgets the DEKs kept for reuse, the one in use
// and those wrapped ahead, if any; the next stream gets a new one. A DEK
// whose wrapping is in flight is zeroed and dropped when it returns.
func (e *Encrypter) ClearDataKey() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.generation++
	if e.shared != nil {
		clear(e.shared.dek)
		e.shared = nil
	}
	for _, k := range e.ready {
		clear(k.dek)
	}
	e.ready = nil
}

// wrapAll wraps dek under every KEK at once, one slot each, with the
// associated data aad gives for each URI. A KEK that panics makes wrapAll
// panic with the same value, on the caller's goroutine, once every KEK has
// returned.
func wrapAll(ctx context.Context, ins *instruments, keks []kms.KEK, dek []byte, aad func(uri string) []byte, recipe uint8) ([]format.Slot, error) {
	if len(keks) == 1 {
		// One KEK: no goroutine to start and wait for.
		s, err := wrapSlot(ctx, ins, keks[0], keks[0].URI(), dek, aad, recipe)
		if err != nil {
			return nil, err
		}
		return []format.Slot{s}, nil
	}
	slots := make([]format.Slot, len(keks))
	errs := make([]error, len(keks))
	panics := make([]any, len(keks))
	var wg sync.WaitGroup
	for i, kek := range keks {
		wg.Go(func() {
			defer func() {
				if v := recover(); v != nil {
					panics[i] = v
				} else if errs[i] == nil && slots[i].URI == "" {
					errs[i] = fmt.Errorf("envelope: KEK %d stopped its goroutine while wrapping", i)
				}
			}()
			slots[i], errs[i] = wrapSlot(ctx, ins, kek, kek.URI(), dek, aad, recipe)
		})
	}
	wg.Wait()
	for _, v := range panics {
		if v != nil {
			panic(v)
		}
	}
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return slots, nil
}

// wrapSlot wraps dek under kek into a slot of the given recipe for uri,
// with the associated data aad gives for uri.
func wrapSlot(ctx context.Context, ins *instruments, kek kms.KEK, uri string, dek []byte, aad func(uri string) []byte, recipe uint8) (format.Slot, error) {
	var w kms.WrappedKey
	err := ins.kmsCall(ctx, "wrap", uri, func(ctx context.Context) (err error) {
		w, err = kek.Wrap(ctx, dek, aad(uri))
		return err
	})
	if err != nil {
		return format.Slot{}, fmt.Errorf("wrapping the data key: %w", err)
	}
	return format.Slot{AADRecipe: recipe, URI: uri, KeyVersion: w.KeyVersion, Wrapped: w.Ciphertext}, nil
}

func sortedContext(m map[string]string) []format.Pair {
	var ps []format.Pair
	for k, v := range m {
		ps = append(ps, format.Pair{Key: k, Value: v})
	}
	slices.SortFunc(ps, func(a, b format.Pair) int {
		switch {
		case a.Key < b.Key:
			return -1
		case a.Key > b.Key:
			return 1
		}
		return 0
	})
	return ps
}

// Writer encrypts what is written to it. It implements io.WriteCloser and
// io.ReaderFrom. It is not safe for concurrent use.
//
// End a Writer with Close once all the plaintext is written: Close writes
// the final chunk, which makes the file valid. On an error, end it with
// Abort, which writes no final chunk, so that what reached the underlying
// writer never decrypts, not even to a prefix. Any error the Writer sees —
// from the underlying writer, from the reader given to ReadFrom, from the
// context bound with SetContext, or a size other than the one announced —
// fails it for good, and Close then abandons the file too and returns the
// error. Both Close and Abort stop the Writer's goroutines before they
// return.
type Writer struct {
	sw   *stream.Writer
	zw   *zstd.Encoder // set when compressing
	dst  ctxWriter     // the underlying writer, checking ctx
	ctx  *atomic.Pointer[context.Context]
	size int64 // UnknownSize or the size announced in the header
	n    int64 // bytes written so far
	err  error // sticky
	done bool  // Close or Abort was called
	// onClose, if set, learns the plaintext size at Close or Abort.
	onClose func(n int64)
	ins     *instruments
}

// ctxWriter fails writes once the context it points to is done.
type ctxWriter struct {
	w   io.Writer
	ctx *atomic.Pointer[context.Context]
}

func (c ctxWriter) Write(p []byte) (int, error) {
	if err := ctxErr(c.ctx); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}

func ctxErr(p *atomic.Pointer[context.Context]) error {
	if ctx := p.Load(); ctx != nil {
		return (*ctx).Err()
	}
	return nil
}

// SetContext binds ctx to the stream: once ctx is done, the Writer fails
// at the next chunk with ctx.Err(), and the file is abandoned without its
// final chunk. The context given to NewWriter bounds only the KMS calls.
// Call SetContext before writing.
func (w *Writer) SetContext(ctx context.Context) {
	w.ctx.Store(&ctx)
}

// Write encrypts p.
func (w *Writer) Write(p []byte) (int, error) {
	if w.done {
		return 0, stream.ErrClosed
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.size >= 0 && w.n+int64(len(p)) > w.size {
		w.err = fmt.Errorf("envelope: %w: more than the %d bytes announced", ErrSizeMismatch, w.size)
		return 0, w.err
	}
	var n int
	var err error
	if w.zw != nil {
		n, err = w.zw.Write(p)
	} else {
		n, err = w.sw.Write(p)
	}
	w.n += int64(n)
	if err != nil {
		w.err = err
	}
	return n, err
}

// ReadFrom encrypts what it reads from r until io.EOF. An error from r
// fails the Writer, like any other.
//
// When r is a regular file (an io.ReaderAt with Seek and Stat, such as an
// *os.File), the Writer's workers read the bytes from its current offset
// to its end themselves, with ReadAt, concurrently and in parallel (see
// [stream.Writer.ReadFromAt]); then ReadFrom reads on from there, as from
// any reader, in case the file grew, and leaves the file's offset at its
// end, as reading it would have. A file that shrank meanwhile fails with
// [ErrSizeMismatch].
func (w *Writer) ReadFrom(r io.Reader) (int64, error) {
	if w.done {
		return 0, stream.ErrClosed
	}
	if w.err != nil {
		return 0, w.err
	}
	var total int64
	if f, off, n, ok := asFile(r); ok && w.zw == nil {
		if w.size >= 0 {
			n = min(n, w.size-w.n+1)
		}
		k, err := w.sw.ReadFromAt(ctxReaderAt{r: f, ctx: w.ctx}, off, n)
		w.n += k
		total += k
		if err == nil {
			_, err = f.Seek(off+k, io.SeekStart)
		}
		if errors.Is(err, stream.ErrTruncated) {
			err = fmt.Errorf("envelope: %w: the file shrank while it was read: %w", ErrSizeMismatch, err)
		}
		if err == nil && w.size >= 0 && w.n > w.size {
			err = fmt.Errorf("envelope: %w: more than the %d bytes announced", ErrSizeMismatch, w.size)
		}
		if err != nil {
			w.err = err
			return total, err
		}
	}
	if w.size >= 0 {
		// Read at most one byte more than announced, to notice it.
		r = io.LimitReader(r, w.size-w.n+1)
	}
	var n int64
	var err error
	if w.zw != nil {
		n, err = w.zw.ReadFrom(r)
	} else {
		n, err = w.sw.ReadFrom(r)
	}
	w.n += n
	if err == nil && w.size >= 0 && w.n > w.size {
		err = fmt.Errorf("envelope: %w: more than the %d bytes announced", ErrSizeMismatch, w.size)
	}
	if err != nil {
		w.err = err
	}
	return total + n, err
}

// Close writes the final chunk, once all the plaintext is written. If the
// Writer failed, or the plaintext size was announced and not met
// (including when a Write was refused for going past it), Close writes no
// final chunk and returns the error: the file does not decrypt. After Abort
// it returns Abort's error. It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.done {
		return w.err
	}
	if w.err == nil && w.size >= 0 && w.n != w.size {
		w.err = fmt.Errorf("envelope: %w: %d bytes written, %d announced", ErrSizeMismatch, w.n, w.size)
	}
	if w.err == nil && w.zw != nil {
		if err := w.zw.Close(); err != nil {
			w.err = err
		}
	}
	if w.err != nil {
		w.sw.Abort(w.err)
	} else {
		w.err = w.sw.Close()
	}
	if w.err == nil {
		w.ins.count(sealedCounter, w.n)
	}
	w.finish()
	return w.err
}

// Abort abandons the file: it writes no final chunk, so what was written to
// the underlying writer never decrypts, and it stops the Writer's
// goroutines before it returns. Later calls fail. Close then returns the
// error that had failed the Writer, if any, or else an error matching
// [stream.ErrAborted] and, when err is not nil, err. Abort after Close, or
// after another Abort, does nothing.
func (w *Writer) Abort(err error) {
	if w.done {
		return
	}
	w.sw.Abort(err)
	if w.err == nil {
		w.err = w.sw.Close()
	}
	w.finish()
}

func (w *Writer) finish() {
	w.done = true
	w.zw = nil
	if w.onClose != nil {
		w.onClose(w.n)
		w.onClose = nil
	}
}
