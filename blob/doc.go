// Package blob keeps kpcrypt envelope files in object stores through
// gocloud.dev/blob (S3, Google Cloud Storage, Azure Blob Storage, local
// directories, memory).
//
// It lives in a module of its own, so that gocloud.dev's dependencies never
// enter those of the library.
//
// # Objects
//
// An object is written in one of two layouts (FORMAT.md §8):
//
//   - attached (the default): the object is an envelope file, byte for byte
//     what envelope.Encrypter writes to a file. Any envelope decryptor opens
//     it once downloaded.
//   - detached ([WriterOptions.Detached]): the object NAME holds the core and
//     the body with both slot tables zeroed, and the key slots live in small
//     header objects beside it, NAME.kpch.<sequence>. [Rewrap] then changes
//     the key slots by writing a new header object of a few KiB, without
//     re-uploading the body: object stores have neither in-place writes nor
//     conditional replacement (If-Match) in gocloud.dev/blob, so the slots of
//     an attached object cannot be rewritten safely.
//
// [NewWriter] encrypts to an object; a failed or abandoned upload leaves no
// object (the upload is aborted by cancelling its context, as
// gocloud.dev/blob specifies). [NewReader] decrypts an object in order, and
// [NewReaderAt] at random offsets over ranged reads. Both find out the layout
// by themselves. [RewrapAll] rewraps every detached object under a prefix,
// with bounded concurrency and one KMS rewrap per shared data key, and
// [ScanAll] finds those with outdated key slots; both report per object with
// the types of package envelope/batch.
//
// # Requests
//
// [NewReaderAt] makes one ranged read of the object's first
// [DefaultHeaderReadSize] bytes (a second one only for a larger header), one
// for the final chunk, which it authenticates before it returns, so that a
// truncated object is refused at once, and for a detached object one List
// and one read of the header object. After that a read of plaintext fetches
// only the ciphertext chunks it needs that are not in its cache, in one
// ranged read per run of consecutive chunks. The cache holds
// [DefaultCacheChunks] ciphertext chunks (about 512 KiB at the default 64 KiB
// chunk size) unless [ReaderAtOptions.CacheChunks] says otherwise.
//
// # Concurrency
//
// Concurrent rewraps of one detached object are safe where the bucket's
// IfNotExist is exclusive: on S3 (If-None-Match), Google Cloud Storage and
// Azure it is done by the service; memblob's holds within its process, and
// so does fileblob's (a lock of the process around a check and a rename), so
// on a directory shared by several processes rewraps of one object must not
// run at once. Concurrent uploads of one key in the detached layout are not
// supported (FORMAT.md §8.3).
//
// # Errors
//
// Errors of gocloud.dev/blob (gcerrors.Code) and of package envelope
// (envelope.ErrNoKEK, stream.ErrTruncated, …) pass through wrapped, so
// callers test them with errors.Is and gcerrors.Code; this package adds
// [ErrNoHeader], [ErrNotDetached] and [ErrConflict].
package blob
