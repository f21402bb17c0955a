package stream

import (
	"bytes"
	"errors"
	"io"
	"path/filepath"
	"slices"
	"testing"
)

// fuzzDEK is the fixed data key the fuzzer decrypts under.
var fuzzDEK = testKey("fuzz")

// fuzzKeys returns the keys a fuzz input may select: fuzzDEK first, then the
// distinct keys of the test vectors in ../testdata/stream, in file order, so
// that the vectors seed the corpus with the keys they were made with.
func fuzzKeys(tb testing.TB) ([][]byte, []*vector) {
	keys := [][]byte{fuzzDEK}
	paths, err := filepath.Glob(filepath.Join(vectorDir, "*.vec"))
	if err != nil || len(paths) == 0 {
		return keys, nil
	}
	vs := loadVectors(tb)
	for _, v := range vs {
		if len(v.dek) == KeySize && !slices.ContainsFunc(keys, func(k []byte) bool { return bytes.Equal(k, v.dek) }) {
			keys = append(keys, v.dek)
		}
	}
	return keys, vs
}

// FuzzDecrypt decrypts arbitrary bytes as a stream under a fixed key (key
// selects fuzzDEK, or one of the test vectors' keys) and checks that the
// readers never panic, release only authenticated plaintext, agree with each
// other, and accept only streams that are exactly the encryption of what they
// release.
func FuzzDecrypt(f *testing.F) {
	keys, vectors := fuzzKeys(f)
	seeds := 0
	add := func(data []byte, key int) {
		f.Add(data, uint8(key))
		seeds++
	}

	// Valid streams under fuzzDEK with a fixed salt, and mutations of them.
	c := testCipher(f, fuzzDEK, MinChunkSize, "fuzz")
	const cs = MinChunkSize
	for _, n := range []int{0, 1, 100, cs - 1, cs, cs + 1, 2*cs + 17} {
		pt := testPlaintext(n, uint64(n))
		ct := referenceStream(f, c, pt)
		// The property below holds vacuously if both readers refuse
		// everything: the valid seeds must decrypt.
		if got, err := decryptRaw(ct, fuzzDEK, 1); err != nil || !bytes.Equal(got, pt) {
			f.Fatalf("valid %d-byte seed: %v", n, err)
		}
		add(ct, 0)
		add(ct[:len(ct)-1], 0)                                  // truncated inside the final chunk
		add(slices.Concat(ct, []byte{0}), 0)                    // trailing byte
		add(flipByte(ct, HeaderSize+len(ct[HeaderSize:])/2), 0) // body bit flip
		add(flipByte(ct, len(ct)-1), 0)                         // tag bit flip
		add(flipByte(ct, 8), 0)                                 // chunk size changed
		if n >= cs {
			add(ct[:HeaderSize+cs+TagSize], 0)                                 // cut at a chunk boundary
			add(slices.Concat(ct[:HeaderSize], ct[HeaderSize+cs+TagSize:]), 0) // chunk 0 dropped
		}
	}
	add(nil, 0)
	add([]byte(magic), 0)
	add(referenceStream(f, c, nil)[:HeaderSize], 0)

	// The test vectors, each under its own key.
	// (loadVectors is the runner's, in vectors_test.go.)
	for _, v := range vectors {
		key := slices.IndexFunc(keys, func(k []byte) bool { return bytes.Equal(k, v.dek) })
		if key < 0 {
			continue
		}
		if _, err := decryptRaw(v.ciphertext, v.dek, 1); (err == nil) != (v.expect == expectSuccess) {
			f.Fatalf("vector %s (%s): %v", v.name, v.expect, err)
		}
		add(v.ciphertext, key)
	}
	if seeds == 0 {
		f.Fatal("empty seed corpus")
	}
	if len(vectors) > 0 && len(keys) < 2 {
		f.Fatal("the test vectors added no key")
	}

	f.Fuzz(func(t *testing.T, data []byte, key uint8) {
		checkDecrypt(t, keys[int(key)%len(keys)], data)
	})
}

func flipByte(b []byte, off int) []byte {
	b = slices.Clone(b)
	b[off] ^= 0x40
	return b
}

// decryptRaw decrypts data with a Reader and returns what it released and the
// error that ended it (nil at the end of a valid stream).
func decryptRaw(data, dek []byte, workers int) ([]byte, error) {
	r, err := NewDecryptReader(bytes.NewReader(data), dek, &Options{Workers: workers})
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var out bytes.Buffer
	_, err = io.Copy(&out, r)
	return out.Bytes(), err
}

// knownError reports whether err is one of the package's error classes.
func knownError(err error) bool {
	for _, class := range []error{ErrInvalidHeader, ErrKeyCommitment, ErrAuthentication, ErrTruncated, ErrTooLong} {
		if errors.Is(err, class) {
			return true
		}
	}
	return false
}

func checkDecrypt(t *testing.T, dek, data []byte) {
	released, err := decryptRaw(data, dek, 1)
	if err != nil && (!knownError(err) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
		t.Fatalf("Reader: error %q is none of the package's", err)
	}

	// The parallel Reader, through Read, agrees.
	r, perr := NewDecryptReader(bytes.NewReader(data), dek, &Options{Workers: 3})
	var preleased []byte
	if perr == nil {
		preleased, perr = readInPieces(r, 5000, len(data))
		r.Close()
		if perr == io.EOF {
			perr = nil
		}
	}
	if !bytes.Equal(preleased, released) || (perr == nil) != (err == nil) || err != nil && err.Error() != perr.Error() {
		t.Fatalf("Reader with 3 workers released %d bytes, %v; with 1 worker %d bytes, %v", len(preleased), perr, len(released), err)
	}

	h, herr := ReadHeader(bytes.NewReader(data))
	var c *Cipher
	if herr == nil {
		c, herr = NewCipher(dek, h)
	}
	if herr != nil {
		if err == nil || len(released) > 0 {
			t.Fatalf("header refused (%v) but the Reader released %d bytes, %v", herr, len(released), err)
		}
	} else {
		// Every full chunk released is the authenticated plaintext of the
		// ciphertext chunk at its place: sealing it again gives that chunk.
		cs := h.ChunkSize
		body := data[HeaderSize:]
		full := len(released) / cs
		if err != nil && len(released)%cs != 0 {
			t.Fatalf("released %d bytes before %v: not whole chunks", len(released), err)
		}
		for i := range full {
			want := body[i*(cs+TagSize):][:cs+TagSize]
			if got := c.seal(nil, released[i*cs:(i+1)*cs], uint64(i), false); !bytes.Equal(got, want) {
				t.Fatalf("released chunk %d does not seal to the ciphertext at its place", i)
			}
		}
		if err == nil {
			// The final chunk too, and nothing follows it.
			rest := body[full*(cs+TagSize):]
			if got := c.seal(nil, released[full*cs:], uint64(full), true); !bytes.Equal(got, rest) {
				t.Fatalf("final chunk %d does not seal to the rest of the stream", full)
			}
			// Non-malleability: the only accepted stream under this header
			// is the Writer's encryption of the released plaintext.
			var again bytes.Buffer
			again.Write(data[:HeaderSize])
			w := c.NewWriter(&again, &Options{Workers: 1})
			if _, err := w.Write(released); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again.Bytes(), data) {
				t.Fatalf("re-encrypting the %d released bytes does not give the input back", len(released))
			}
		}
	}

	// The ReaderAt agrees: both succeed with the same plaintext, or both
	// fail; and when it opens at all, it fails at the same chunk as the
	// Reader, releasing the same chunks before it.
	ra, aerr := NewDecryptReaderAt(bytes.NewReader(data), int64(len(data)), dek)
	var aReleased []byte
	if aerr == nil {
		if ra.Size() > int64(len(data)) {
			t.Fatalf("ReaderAt size %d, larger than the %d-byte input", ra.Size(), len(data))
		}
		buf := make([]byte, ra.Size())
		n, rerr := ra.ReadAt(buf, 0)
		aReleased = buf[:n]
		if n == len(buf) && rerr == io.EOF {
			rerr = nil
		}
		if rerr != nil && !knownError(rerr) {
			t.Fatalf("ReadAt: error %q is none of the package's", rerr)
		}
		if !bytes.Equal(aReleased, released) || (rerr == nil) != (err == nil) {
			t.Fatalf("ReaderAt released %d bytes, %v; Reader %d bytes, %v", n, rerr, len(released), err)
		}
	} else {
		if !knownError(aerr) {
			t.Fatalf("NewDecryptReaderAt: error %q is none of the package's", aerr)
		}
		if err == nil {
			t.Fatalf("ReaderAt refuses (%v) a stream the Reader accepts", aerr)
		}
	}
}
