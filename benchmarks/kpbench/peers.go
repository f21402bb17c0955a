package kpbench

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"sync/atomic"

	"filippo.io/age"
	"github.com/minio/sio"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/streamingaead"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/local"
)

// The plaintext of every case is the AES-CTR keystream of a fixed key, so
// that any byte range can be regenerated (and checked) from its offset, and
// every case and process sees the same input.
var patternBlock = func() cipher.Block {
	b, err := aes.NewCipher([]byte("kpbench plaintext pattern key 32"))
	if err != nil {
		panic(err)
	}
	return b
}()

// fillAt fills p with the plaintext bytes at offset off.
func fillAt(p []byte, off int64) {
	clear(p)
	var iv [16]byte
	binary.BigEndian.PutUint64(iv[8:], uint64(off/16))
	s := cipher.NewCTR(patternBlock, iv[:])
	if skip := off % 16; skip != 0 {
		var junk [16]byte
		s.XORKeyStream(junk[:skip], junk[:skip])
	}
	s.XORKeyStream(p, p)
}

// plaintext returns the first n bytes of the plaintext.
func plaintext(n int64) []byte {
	p := make([]byte, n)
	const step = 4 << 20
	for off := int64(0); off < n; off += step {
		fillAt(p[off:min(off+step, n)], off)
	}
	return p
}

// patternReader reads the plaintext from off up to n bytes.
type patternReader struct{ off, n int64 }

func (r *patternReader) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.n-r.off)]
	fillAt(p, r.off)
	r.off += int64(len(p))
	return len(p), nil
}

// sink discards what is written to it and counts it. It has no ReadFrom, so
// io.Copy uses the source's WriteTo if it has one, or a buffer.
type sink struct{ n int64 }

func (s *sink) Write(p []byte) (int, error) {
	s.n += int64(len(p))
	return len(p), nil
}

// writeSize is the size of each Write when a case encrypts from memory: the
// same for every codec.
const writeSize = 1 << 20

func writeAll(w io.Writer, p []byte) error {
	for len(p) > 0 {
		n := min(len(p), writeSize)
		if _, err := w.Write(p[:n]); err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

// copyOut copies a decrypting reader to dst with a 1 MiB buffer (unless the
// reader has a WriteTo, which io.CopyBuffer then prefers).
func copyOut(dst io.Writer, r io.Reader) error {
	_, err := io.CopyBuffer(dst, r, make([]byte, writeSize))
	return err
}

// codec is one encryptor under test, with its key set up.
type codec interface {
	// Encrypt encrypts pt into dst, writing it in writeSize pieces.
	Encrypt(dst io.Writer, pt []byte) error
	// Decrypt decrypts src into dst.
	Decrypt(dst io.Writer, src io.Reader) error
}

// peer describes a codec.
type peer struct {
	name string // case name, as given to -cases
	desc string // for the tables
	new  func(dir string) (codec, error)
}

// peers are the streaming codecs compared, in table order. The raw AES-GCM
// baselines and the file and CLI cases are handled apart.
var peers = []peer{
	{"kpcrypt", "kpcrypt, library (memory → io.Discard)", func(dir string) (codec, error) { return newKpcrypt(dir, 0) }},
	{"kpcrypt-64k", "kpcrypt, library, 64 KiB Writes and Reads", func(dir string) (codec, error) {
		c, err := newKpcrypt(dir, 0)
		if err != nil {
			return nil, err
		}
		return &smallIO{c.(*kpcryptCodec)}, nil
	}},
	{"kpcrypt-1w", "kpcrypt, library, Workers: 1", func(dir string) (codec, error) { return newKpcrypt(dir, 1) }},
	{"age", "age, X25519 recipient (ChaCha20-Poly1305, 64 KiB chunks)", newAge},
	{"tink", "Tink streaming AEAD AES256_GCM_HKDF_1MB", newTink},
	{"sio", "minio/sio DARE 2.0, AES-256-GCM (64 KiB packages)", newSio},
}

func peerByName(name string) (peer, bool) {
	for _, p := range peers {
		if p.name == name {
			return p, true
		}
	}
	return peer{}, false
}

// kpcryptCodec is kpcrypt through the envelope API with a local KEK.
type kpcryptCodec struct {
	enc *envelope.Encrypter
	dec *envelope.Decrypter
}

// openOrGenerateKEK opens the local KEK at path, creating it if needed.
func openOrGenerateKEK(path string) (*local.KEK, error) {
	if k, err := local.OpenFile(path); err == nil {
		return k, nil
	}
	return local.Generate(path)
}

func newKpcrypt(dir string, workers int) (codec, error) {
	kek, err := openOrGenerateKEK(dir + "/kek-mem.json")
	if err != nil {
		return nil, err
	}
	return &kpcryptCodec{
		enc: &envelope.Encrypter{KEKs: []kms.KEK{kek}, Workers: workers},
		dec: &envelope.Decrypter{Keyring: envelope.KEKs{kek}, Workers: workers},
	}, nil
}

func (k *kpcryptCodec) Encrypt(dst io.Writer, pt []byte) error {
	w, err := k.enc.NewWriter(context.Background(), dst, int64(len(pt)))
	if err != nil {
		return err
	}
	if err := writeAll(w, pt); err != nil {
		w.Close()
		return err
	}
	return w.Close()
}

func (k *kpcryptCodec) Decrypt(dst io.Writer, src io.Reader) error {
	r, err := k.dec.NewReader(context.Background(), src)
	if err != nil {
		return err
	}
	defer r.Close()
	return copyOut(dst, r)
}

// smallIO is kpcrypt written to in 64 KiB Writes (one chunk each, as
// io.CopyBuffer with a 64 KiB buffer or a bufio.Writer of that size would)
// and read with 64 KiB Reads (the reader's WriteTo hidden).
type smallIO struct{ k *kpcryptCodec }

const smallIOSize = 64 << 10

func (s *smallIO) Encrypt(dst io.Writer, pt []byte) error {
	w, err := s.k.enc.NewWriter(context.Background(), dst, int64(len(pt)))
	if err != nil {
		return err
	}
	for p := pt; len(p) > 0; {
		n := min(len(p), smallIOSize)
		if _, err := w.Write(p[:n]); err != nil {
			w.Close()
			return err
		}
		p = p[n:]
	}
	return w.Close()
}

func (s *smallIO) Decrypt(dst io.Writer, src io.Reader) error {
	r, err := s.k.dec.NewReader(context.Background(), src)
	if err != nil {
		return err
	}
	defer r.Close()
	_, err = io.CopyBuffer(dst, struct{ io.Reader }{r}, make([]byte, smallIOSize))
	return err
}

// sweepSizes are the -sweep cases: kpcrypt encrypting in Writes of these
// sizes (0: io.Copy from a reader, which takes the Writer's ReadFrom).
var sweepSizes = map[string]int{
	"sweep-32k": 32 << 10, "sweep-64k": 64 << 10, "sweep-1m": 1 << 20, "sweep-8m": 8 << 20, "sweep-readfrom": 0,
}

var sweepCases = []string{"sweep-32k", "sweep-64k", "sweep-1m", "sweep-8m", "sweep-readfrom"}

// sweepIO is kpcrypt written to in Writes of one size, or through ReadFrom.
type sweepIO struct {
	k    *kpcryptCodec
	size int
}

func (s *sweepIO) Encrypt(dst io.Writer, pt []byte) error {
	w, err := s.k.enc.NewWriter(context.Background(), dst, int64(len(pt)))
	if err != nil {
		return err
	}
	if s.size == 0 {
		_, err = io.Copy(w, struct{ io.Reader }{bytes.NewReader(pt)})
	} else {
		for p := pt; len(p) > 0 && err == nil; {
			n := min(len(p), s.size)
			_, err = w.Write(p[:n])
			p = p[n:]
		}
	}
	if err != nil {
		w.Close()
		return err
	}
	return w.Close()
}

func (s *sweepIO) Decrypt(dst io.Writer, src io.Reader) error { return s.k.Decrypt(dst, src) }

// ageCodec is age with an X25519 recipient.
type ageCodec struct {
	id *age.X25519Identity
}

func newAge(string) (codec, error) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return nil, err
	}
	return &ageCodec{id: id}, nil
}

func (a *ageCodec) Encrypt(dst io.Writer, pt []byte) error {
	w, err := age.Encrypt(dst, a.id.Recipient())
	if err != nil {
		return err
	}
	if err := writeAll(w, pt); err != nil {
		return err
	}
	return w.Close()
}

func (a *ageCodec) Decrypt(dst io.Writer, src io.Reader) error {
	r, err := age.Decrypt(src, a.id)
	if err != nil {
		return err
	}
	return copyOut(dst, r)
}

// tinkCodec is Tink's streaming AEAD with 1 MiB segments.
type tinkCodec struct {
	a interface {
		NewEncryptingWriter(io.Writer, []byte) (io.WriteCloser, error)
		NewDecryptingReader(io.Reader, []byte) (io.Reader, error)
	}
}

var tinkAAD = []byte("kpbench")

func newTink(string) (codec, error) {
	h, err := keyset.NewHandle(streamingaead.AES256GCMHKDF1MBKeyTemplate())
	if err != nil {
		return nil, err
	}
	a, err := streamingaead.New(h)
	if err != nil {
		return nil, err
	}
	return &tinkCodec{a: a}, nil
}

func (t *tinkCodec) Encrypt(dst io.Writer, pt []byte) error {
	w, err := t.a.NewEncryptingWriter(dst, tinkAAD)
	if err != nil {
		return err
	}
	if err := writeAll(w, pt); err != nil {
		return err
	}
	return w.Close()
}

func (t *tinkCodec) Decrypt(dst io.Writer, src io.Reader) error {
	r, err := t.a.NewDecryptingReader(src, tinkAAD)
	if err != nil {
		return err
	}
	return copyOut(dst, r)
}

// sioCodec is minio/sio, DARE 2.0 with AES-256-GCM only.
type sioCodec struct {
	cfg sio.Config
}

func newSio(string) (codec, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	return &sioCodec{cfg: sio.Config{
		MinVersion:   sio.Version20,
		MaxVersion:   sio.Version20,
		CipherSuites: []byte{sio.AES_256_GCM},
		Key:          key,
	}}, nil
}

func (s *sioCodec) Encrypt(dst io.Writer, pt []byte) error {
	w, err := sio.EncryptWriter(dst, s.cfg)
	if err != nil {
		return err
	}
	if err := writeAll(w, pt); err != nil {
		return err
	}
	return w.Close()
}

func (s *sioCodec) Decrypt(dst io.Writer, src io.Reader) error {
	r, err := sio.DecryptReader(src, s.cfg)
	if err != nil {
		return err
	}
	return copyOut(dst, r)
}

// rawGCM is the baseline: the standard library's AES-256-GCM sealing or
// opening 64 KiB chunks into a preallocated buffer, on one goroutine or on
// all cores (GOMAXPROCS goroutines, each a contiguous range of chunks).
type rawGCM struct {
	aead cipher.AEAD
}

const rawChunk = 64 << 10

func newRawGCM() (*rawGCM, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	a, err := cipher.NewGCM(b)
	if err != nil {
		return nil, err
	}
	return &rawGCM{aead: a}, nil
}

func rawChunks(n int) int { return (n + rawChunk - 1) / rawChunk }

// sealedSize is the size of the chunks of an n-byte plaintext.
func rawSealedSize(n int) int { return n + rawChunks(n)*16 }

func (g *rawGCM) seal(ct, pt []byte, from, to int) {
	var nonce [12]byte
	for i := from; i < to; i++ {
		binary.BigEndian.PutUint64(nonce[4:], uint64(i))
		p := pt[i*rawChunk : min((i+1)*rawChunk, len(pt))]
		o := i * (rawChunk + 16)
		g.aead.Seal(ct[o:o], nonce[:], p, nil)
	}
}

func (g *rawGCM) open(pt, ct []byte, from, to int, base ...uint64) error {
	var nonce [12]byte
	for i := from; i < to; i++ {
		n := uint64(i)
		if len(base) > 0 {
			n += base[0]
		}
		binary.BigEndian.PutUint64(nonce[4:], n)
		o := i * (rawChunk + 16)
		c := ct[o:min(o+rawChunk+16, len(ct))]
		if _, err := g.aead.Open(pt[i*rawChunk:i*rawChunk], nonce[:], c, nil); err != nil {
			return fmt.Errorf("raw chunk %d: %w", n, err)
		}
	}
	return nil
}

// parallel runs f on goroutines ranges of [0, n).
func parallel(goroutines, n int, f func(from, to int) error) error {
	if goroutines <= 1 {
		return f(0, n)
	}
	// Blocks of up to 16 chunks (1 MiB) from a shared counter, so that a
	// goroutine slowed by page faults or preemption does not leave the
	// others idle at the end, as a static split would.
	block := max(1, min(16, n/(goroutines*4)))
	var next atomic.Int64
	errs := make(chan error, goroutines)
	for range goroutines {
		go func() {
			for {
				from := int(next.Add(int64(block))) - block
				if from >= n {
					errs <- nil
					return
				}
				if err := f(from, min(from+block, n)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var first error
	for range goroutines {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// prefault touches every page of p, so that the first timed write to a
// preallocated buffer does not pay for page faults.
func prefault(p []byte) {
	for i := 0; i < len(p); i += 4096 {
		p[i] = 0
	}
}
