package envelope_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"strings"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/local"
)

// exampleKEK makes a local KEK in a temporary directory; cleanup removes it.
func exampleKEK(name string) (kek *local.KEK, cleanup func()) {
	dir, err := os.MkdirTemp("", "kpcrypt-example")
	if err != nil {
		log.Fatal(err)
	}
	kek, err = local.Generate(filepath.Join(dir, name))
	if err != nil {
		log.Fatal(err)
	}
	return kek, func() { os.RemoveAll(dir) }
}

// Encrypt a stream under a KEK and decrypt it.
func ExampleEncrypt() {
	ctx := context.Background()
	kek, cleanup := exampleKEK("kek.json")
	defer cleanup()

	src := strings.NewReader("a stream of any length, encrypted chunk by chunk")
	var file bytes.Buffer
	if err := envelope.Encrypt(ctx, &file, src, kek); err != nil {
		log.Fatal(err)
	}

	var out bytes.Buffer
	if err := envelope.Decrypt(ctx, &out, bytes.NewReader(file.Bytes()), envelope.KEKs{kek}); err != nil {
		log.Fatal(err)
	}
	fmt.Println(out.String())
	// Output:
	// a stream of any length, encrypted chunk by chunk
}

// Seal a small message under two KEKs; either one opens it, another does not.
func ExampleSeal() {
	ctx := context.Background()
	alice, cleanupA := exampleKEK("alice.json")
	defer cleanupA()
	bob, cleanupB := exampleKEK("bob.json")
	defer cleanupB()
	eve, cleanupE := exampleKEK("eve.json")
	defer cleanupE()

	sealed, err := envelope.Seal(ctx, []byte("meet at noon"), alice, bob)
	if err != nil {
		log.Fatal(err)
	}
	for _, kek := range []*local.KEK{alice, bob} {
		plaintext, err := envelope.Open(ctx, sealed, envelope.KEKs{kek})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s\n", plaintext)
	}
	_, err = envelope.Open(ctx, sealed, envelope.KEKs{eve})
	fmt.Println("another KEK:", errors.Is(err, envelope.ErrNoKEK) && errors.Is(err, kms.ErrWrongKey))
	// Output:
	// meet at noon
	// meet at noon
	// another KEK: true
}

// Read parts of a large file at random, opening only the chunks a read
// touches.
func ExampleNewReaderAt() {
	ctx := context.Background()
	kek, cleanup := exampleKEK("kek.json")
	defer cleanup()

	var plaintext bytes.Buffer
	for i := range 100_000 {
		fmt.Fprintf(&plaintext, "line %06d\n", i)
	}
	enc := &envelope.Encrypter{KEKs: []kms.KEK{kek}, ChunkSize: 64 << 10}
	file, err := enc.Seal(ctx, plaintext.Bytes())
	if err != nil {
		log.Fatal(err)
	}

	ra, err := envelope.NewReaderAt(ctx, bytes.NewReader(file), int64(len(file)), envelope.KEKs{kek})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("plaintext size:", ra.Size())
	line := make([]byte, 11)
	if _, err := ra.ReadAt(line, 54321*12); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%q\n", line)
	// ReaderAt keeps no offset, so that any number of goroutines may share
	// it: each reader in order takes a SectionReader of its own.
	sr := io.NewSectionReader(ra, 0, ra.Size())
	if _, err := sr.Seek(-12, io.SeekEnd); err != nil {
		log.Fatal(err)
	}
	last, err := io.ReadAll(sr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%q\n", last)
	// Output:
	// plaintext size: 1200000
	// "line 054321"
	// "line 099999\n"
}

// Inspect a file's header without calling any KEK.
func ExampleInspect() {
	ctx := context.Background()
	kek, cleanup := exampleKEK("kek.json")
	defer cleanup()

	enc := &envelope.Encrypter{
		KEKs:    []kms.KEK{kek},
		Context: map[string]string{"tenant": "acme", "purpose": "backup"},
	}
	file, err := enc.Seal(ctx, make([]byte, 100_000))
	if err != nil {
		log.Fatal(err)
	}

	h, err := envelope.Inspect(bytes.NewReader(file))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("format version:", h.FormatVersion)
	fmt.Println("algorithm:", h.Algorithm)
	fmt.Println("chunk size:", h.ChunkSize)
	fmt.Println("plaintext size:", h.PlaintextSize)
	// A file under SmallFileSize gets slot tables sized to its slots.
	fmt.Println("small slot table:", h.SlotTableSize < envelope.DefaultSlotTableSize, "sequence", h.SlotTableSequence)
	fmt.Println("context:", h.Context)
	for i, s := range h.Slots {
		fmt.Printf("slot %d: %s KEK, version recorded: %v, wrapped DEK: %d bytes\n",
			i, kms.Scheme(s.KEK), s.KeyVersion != "", s.WrappedSize)
	}
	// Output:
	// format version: 1
	// algorithm: AES-256-GCM, HKDF-SHA-256, key-committing
	// chunk size: 65536
	// plaintext size: 100000
	// small slot table: true sequence 1
	// context: map[purpose:backup tenant:acme]
	// slot 0: local KEK, version recorded: true, wrapped DEK: 65 bytes
}
