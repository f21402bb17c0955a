package stream_test

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"log"

	"github.com/kpcrypt/kpcrypt/stream"
)

// Encrypt a stream under a random data key, decrypt it in order, and read a
// range of it at random.
func Example() {
	dek := make([]byte, stream.KeySize)
	rand.Read(dek) // In kpcrypt the DEK comes from the envelope, wrapped by a KEK.

	plaintext := bytes.Repeat([]byte("kpcrypt streams data in authenticated chunks. "), 10000)

	var ciphertext bytes.Buffer
	w, err := stream.NewEncryptWriter(&ciphertext, dek, &stream.Options{ChunkSize: 64 << 10})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := w.Write(plaintext); err != nil {
		log.Fatal(err)
	}
	if err := w.Close(); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("plaintext %d bytes, ciphertext %d bytes\n", len(plaintext), ciphertext.Len())

	r, err := stream.NewDecryptReader(bytes.NewReader(ciphertext.Bytes()), dek, nil)
	if err != nil {
		log.Fatal(err)
	}
	decrypted, err := io.ReadAll(r)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("round trip equal:", bytes.Equal(decrypted, plaintext))

	ra, err := stream.NewDecryptReaderAt(bytes.NewReader(ciphertext.Bytes()), int64(ciphertext.Len()), dek)
	if err != nil {
		log.Fatal(err)
	}
	part := make([]byte, 21)
	if _, err := ra.ReadAt(part, 200_000); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("at offset 200000: %q\n", part)

	// Flip one bit: the reader refuses the chunk and releases none of it.
	tampered := bytes.Clone(ciphertext.Bytes())
	tampered[stream.HeaderSize+70_000] ^= 1
	r, _ = stream.NewDecryptReader(bytes.NewReader(tampered), dek, nil)
	n, err := io.Copy(io.Discard, r)
	fmt.Printf("tampered: %d bytes released, error: %v\n", n, err)

	// Output:
	// plaintext 460000 bytes, ciphertext 460202 bytes
	// round trip equal: true
	// at offset 200000: "chunks. kpcrypt strea"
	// tampered: 65536 bytes released, error: chunk 1: authentication failed
}
