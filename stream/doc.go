// Package stream implements kpcrypt's chunked, key-committing AES-256-GCM
// streaming engine.
//
// A stream is a [Header] followed by a body of chunks. Every chunk but the last
// holds exactly ChunkSize bytes of plaintext; the final chunk holds fewer (it
// is empty when the plaintext length is a multiple of the chunk size). Each
// chunk is sealed with AES-256-GCM under a key derived per stream with
// HKDF-SHA-256 from the data key (DEK) and a random 32-byte salt, with a nonce
// computed from the chunk's index and a final-chunk flag. The header carries a
// 32-byte commitment to the derived keys, checked before any chunk is opened,
// so a stream opens under exactly one DEK.
//
// The package knows nothing about key wrapping or the envelope header: it is
// handed a 32-byte DEK. FORMAT.md at the root of the repository specifies the
// stream byte for byte.
//
// # Entry points
//
//   - [NewEncryptWriter] (or [Cipher.NewWriter] for the body alone) encrypts
//     what is written to it; Close writes the final chunk.
//   - [NewDecryptReader] (or [Cipher.NewReader]) decrypts a stream read in
//     order.
//   - [NewDecryptReaderAt] (or [Cipher.NewReaderAt]) decrypts only the chunks a
//     read touches, and implements [io.ReaderAt]; wrap it in an
//     [io.SectionReader] per caller for Read and Seek.
//
// Writers and readers use Options.Workers goroutines to seal and open chunks in
// parallel (GOMAXPROCS by default) and keep their output in order. Their memory
// is bounded by a small multiple of workers × chunk size whatever the length of
// the stream. With one worker they use a single chunk buffer and no goroutine.
//
// # Guarantees
//
// A decrypting reader releases no plaintext before the chunk holding it has
// authenticated. It detects truncation (at any byte, including at a chunk
// boundary), dropped, duplicated, reordered or transplanted chunks, trailing
// data and any modified bit, and reports them with the errors of this package,
// which callers test with [errors.Is] and [errors.As]. A truncated stream never
// ends with [io.EOF].
package stream
