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
//     what is written to it; Close writes the final chunk, Abort abandons
//     the stream without it.
//   - [NewDecryptReader] (or [Cipher.NewReader]) decrypts a stream read in
//     order.
//   - [NewDecryptReaderAt] (or [Cipher.NewReaderAt]) decrypts only the chunks a
//     read touches, and implements [io.ReaderAt]; wrap it in an
//     [io.SectionReader] per caller for Read and Seek.
//
// # Parallelism, memory and goroutines
//
// Writers and readers use Options.Workers goroutines to seal and open chunks in
// parallel (GOMAXPROCS by default) and keep their output in order. With one
// worker they use a single chunk buffer and no goroutine.
//
// A memory budget, not the number of workers, bounds a stream: it holds at
// most min(2×workers+1, [MemoryBudget]/(ChunkSize+[TagSize])) chunk buffers,
// and at least two when it has workers, whatever the length of the stream
// and the number of cores. At the default 64 KiB chunks that is 2×workers+1
// buffers up to 255 workers, and never more than 32 MiB; at 1 MiB chunks, 31
// buffers; at 8 MiB, 3; at the largest chunks, 16 MiB, two buffers (32 MiB),
// so that one chunk is sealed or opened while the caller fills or drains
// the other. Parallelism thus falls with very large chunks: at most
// min(workers, buffers−1) chunks are sealed or opened at once, down to one
// at 16 MiB. Whoever encrypts chooses the chunk size; a reader's memory is
// bounded all the same.
//
// The caller's reader and writer are never used by the workers. A Writer
// calls the underlying writer, and ReadFrom its reader, on the caller's
// goroutine only. A Reader with workers reads ahead on a producer
// goroutine, so that it serves each chunk as soon as it authenticates even
// when the next is slow to come; a panic there is raised again in the
// caller's Read. Close (and a Writer's Abort) stop the goroutines and wait
// for them: once they return, nothing of the stream runs or touches the
// underlying reader or writer. A Writer or Reader dropped without Close lets
// its goroutines exit once it is garbage collected.
//
// # Errors end a Writer
//
// Any error a Writer sees — from the underlying writer, from ReadFrom's
// reader, from Options.Context, or [ErrTooLong] — is sticky: Close then
// returns it and writes no final chunk, so an interrupted encryption never
// leaves a stream that decrypts, not even to a prefix. A caller who meets
// an error of its own calls [Writer.Abort].
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
