package stream

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"

	"github.com/kpcrypt/kpcrypt/internal/sha256pair"
)

// HKDF info labels. Each is followed by the header prefix (magic, version,
// algorithm, chunk size) so that the derived keys and the commitment bind the
// stream's parameters.
const (
	labelChunkKey   = "kpcrypt stream v1 chunk key"
	labelNonceBase  = "kpcrypt stream v1 nonce base"
	labelCommitment = "kpcrypt stream v1 key commitment"
)

const nonceSize = 12

type derivedKeys struct {
	chunkKey   [32]byte
	nonceBase  [nonceSize]byte
	commitment [CommitmentSize]byte
}

// deriveKeys computes the per-stream keys of FORMAT.md §2.
func deriveKeys(dek []byte, h *Header) (*derivedKeys, error) {
	if len(dek) != KeySize {
		return nil, fmt.Errorf("stream: data key is %d bytes, want %d", len(dek), KeySize)
	}
	enc, err := h.AppendBinary(make([]byte, 0, HeaderSize))
	if err != nil {
		return nil, err
	}
	prefix := string(enc[:prefixSize])
	// HKDF's HMACs run one after another: two SHA-256 digests, reset
	// before each use, serve them all.
	var ds sha256pair.Pair
	prk, err := hkdf.Extract(ds.Next, dek, h.Salt[:])
	if err != nil {
		return nil, err
	}
	var ks derivedKeys
	for _, d := range []struct {
		label string
		out   []byte
	}{
		{labelChunkKey, ks.chunkKey[:]},
		{labelNonceBase, ks.nonceBase[:]},
		{labelCommitment, ks.commitment[:]},
	} {
		k, err := hkdf.Expand(ds.Next, prk, d.label+prefix, len(d.out))
		if err != nil {
			return nil, err
		}
		copy(d.out, k)
		clear(k)
	}
	clear(prk)
	return &ks, nil
}

// Cipher holds the keys of one stream. It is safe for concurrent use, and
// any number of readers may share it.
type Cipher struct {
	header    Header
	aead      cipher.AEAD
	nonceBase [nonceSize]byte
	// maxChunks is MaxChunks outside tests.
	maxChunks uint64
}

// NewCipher derives the keys of the stream described by h from dek, and
// checks the header's commitment before anything else: a wrong key or a
// modified header fails with [ErrKeyCommitment].
func NewCipher(dek []byte, h Header) (*Cipher, error) {
	ks, err := deriveKeys(dek, &h)
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare(ks.commitment[:], h.Commitment[:]) != 1 {
		return nil, ErrKeyCommitment
	}
	return newCipher(h, ks)
}

// NewFreshCipher returns the Cipher of a new stream under dek: a fresh
// random salt, the commitment computed (Cipher.Header gives the header to
// write) and the keys derived once. chunkSize 0 means [DefaultChunkSize].
func NewFreshCipher(dek []byte, chunkSize int) (*Cipher, error) {
	if chunkSize == 0 {
		chunkSize = DefaultChunkSize
	}
	if err := checkChunkSize(chunkSize); err != nil {
		return nil, err
	}
	h := Header{ChunkSize: chunkSize}
	if _, err := rand.Read(h.Salt[:]); err != nil {
		return nil, fmt.Errorf("stream: reading random salt: %w", err)
	}
	ks, err := deriveKeys(dek, &h)
	if err != nil {
		return nil, err
	}
	h.Commitment = ks.commitment
	return newCipher(h, ks)
}

func newCipher(h Header, ks *derivedKeys) (*Cipher, error) {
	block, err := aes.NewCipher(ks.chunkKey[:])
	clear(ks.chunkKey[:])
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Cipher{header: h, aead: aead, nonceBase: ks.nonceBase, maxChunks: MaxChunks}, nil
}

// Header returns the header the cipher was made from.
func (c *Cipher) Header() Header { return c.header }

// nonce computes the nonce of chunk index: the nonce base XORed with three
// zero bytes, the index as a big-endian uint64, and the final flag.
func (c *Cipher) nonce(n *[nonceSize]byte, index uint64, final bool) {
	*n = c.nonceBase
	var x [8]byte
	binary.BigEndian.PutUint64(x[:], index)
	for i, b := range x {
		n[3+i] ^= b
	}
	if final {
		n[11] ^= 1
	}
}

// seal encrypts plaintext as chunk index and appends it to dst.
func (c *Cipher) seal(dst, plaintext []byte, index uint64, final bool) []byte {
	return c.sealNonce(new([nonceSize]byte), dst, plaintext, index, final)
}

// sealNonce is seal computing the nonce in n. The nonce escapes into the AEAD
// interface, so the pipelines pass a buffer of their own rather than allocate
// one per chunk.
func (c *Cipher) sealNonce(n *[nonceSize]byte, dst, plaintext []byte, index uint64, final bool) []byte {
	c.nonce(n, index, final)
	return c.aead.Seal(dst, n[:], plaintext, nil)
}

// open decrypts ciphertext as chunk index and appends the plaintext to dst.
// dst may be ciphertext[:0]. On failure nothing is appended to dst.
func (c *Cipher) open(dst, ciphertext []byte, index uint64, final bool) ([]byte, error) {
	return c.openNonce(new([nonceSize]byte), dst, ciphertext, index, final)
}

// openNonce is open computing the nonce in n, like sealNonce.
func (c *Cipher) openNonce(n *[nonceSize]byte, dst, ciphertext []byte, index uint64, final bool) ([]byte, error) {
	if final && len(ciphertext) > c.header.ChunkSize+TagSize-1 || !final && len(ciphertext) != c.header.ChunkSize+TagSize {
		return nil, &ChunkError{Index: index, Err: ErrAuthentication}
	}
	c.nonce(n, index, final)
	out, err := c.aead.Open(dst, n[:], ciphertext, nil)
	if err != nil {
		return nil, &ChunkError{Index: index, Err: ErrAuthentication}
	}
	return out, nil
}

// Options tunes writers and readers. The zero value is ready to use.
type Options struct {
	// ChunkSize is the plaintext size of a chunk for [NewEncryptWriter]. Zero
	// means [DefaultChunkSize]. Readers take the size from the header.
	ChunkSize int
	// Workers is the number of goroutines that seal or open chunks. Zero
	// means runtime.GOMAXPROCS(0). One gives the smallest footprint: a single
	// chunk buffer and no goroutine. [MemoryBudget] bounds the chunk buffers
	// whatever the number of workers, so with very large chunks fewer
	// workers are busy at once.
	Workers int
	// Context, when set, is checked before each chunk: once it is done, the
	// stream fails with its error at the next chunk. A Writer then abandons
	// the stream (no final chunk); a Reader returns the error after the
	// plaintext of the chunks already authenticated. Nil means none.
	Context context.Context
	// SizeHint, when positive, is the plaintext size a Writer expects (the
	// size an envelope header records, say). A Writer expecting less than
	// one chunk starts with a buffer of SizeHint+1+TagSize bytes rather than
	// a whole chunk, and grows it to a chunk only if more is written; the
	// stream it writes is the same. Readers ignore it.
	SizeHint int64
}

func (o *Options) sizeHint() int64 {
	if o == nil {
		return 0
	}
	return o.SizeHint
}

func (o *Options) context() context.Context {
	if o == nil {
		return nil
	}
	return o.Context
}

func (o *Options) workers() int {
	if o == nil || o.Workers <= 0 {
		return runtime.GOMAXPROCS(0)
	}
	return o.Workers
}

func (o *Options) chunkSize() int {
	if o == nil {
		return 0
	}
	return o.ChunkSize
}

// NewEncryptWriter writes a new stream header to dst and returns a Writer
// that encrypts into dst what is written to it. Close writes the final chunk
// once all the plaintext is written; on an error, Abort abandons the stream
// (see [Writer]). Neither closes dst.
func NewEncryptWriter(dst io.Writer, dek []byte, opts *Options) (*Writer, error) {
	c, err := NewFreshCipher(dek, opts.chunkSize())
	if err != nil {
		return nil, err
	}
	enc, err := c.Header().MarshalBinary()
	if err != nil {
		return nil, err
	}
	if n, err := dst.Write(enc); err != nil {
		return nil, err
	} else if n < len(enc) {
		return nil, io.ErrShortWrite
	}
	return c.NewWriter(dst, opts), nil
}

// NewDecryptReader reads a stream header from src, checks its commitment
// against dek, and returns a Reader of the plaintext.
func NewDecryptReader(src io.Reader, dek []byte, opts *Options) (*Reader, error) {
	h, err := ReadHeader(src)
	if err != nil {
		return nil, err
	}
	c, err := NewCipher(dek, h)
	if err != nil {
		return nil, err
	}
	return c.NewReader(src, opts), nil
}

// NewDecryptReaderAt reads the header of the size-byte stream in src, checks
// its commitment against dek, authenticates the final chunk, and returns a
// random-access reader of the plaintext.
func NewDecryptReaderAt(src io.ReaderAt, size int64, dek []byte) (*ReaderAt, error) {
	var buf [HeaderSize]byte
	if size < HeaderSize {
		return nil, &HeaderError{Reason: fmt.Sprintf("stream is %d bytes, shorter than the %d-byte header", size, HeaderSize)}
	}
	// A ReaderAt may return io.EOF with a full read at the end of its input.
	if n, err := src.ReadAt(buf[:], 0); n < HeaderSize {
		if err == nil || errors.Is(err, io.EOF) {
			return nil, &HeaderError{Reason: fmt.Sprintf("stream ends after %d of %d header bytes", n, HeaderSize)}
		}
		return nil, fmt.Errorf("stream: reading header: %w", err)
	}
	var h Header
	if err := h.UnmarshalBinary(buf[:]); err != nil {
		return nil, err
	}
	c, err := NewCipher(dek, h)
	if err != nil {
		return nil, err
	}
	return c.NewReaderAt(io.NewSectionReader(src, HeaderSize, size-HeaderSize), size-HeaderSize)
}
