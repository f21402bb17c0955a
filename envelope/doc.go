// Package envelope is kpcrypt's public API: envelope encryption of files and
// streams under one or more key-encryption keys (KEKs).
//
// Every file gets a fresh 32-byte data key (DEK). Each KEK wraps the DEK into
// a key slot of the file's header; the body is a [stream] of AES-256-GCM
// chunks under keys derived from the DEK. Any one of the KEKs opens the file.
//
// # The header
//
// The header has an immutable core (format version, chunk size, salt, key
// commitment, plaintext size when known, encryption context) authenticated
// by an HMAC keyed from the DEK, and a key-slot table kept in two copies of
// fixed size. Each slot records the KEK's URI, the key version that wrapped
// the DEK, and the wrapped DEK. The associated data given to the KEK binds
// the slot to the core, so a slot copied into another file does not open.
// Since the slot table has a fixed size and the slots are not under the
// core's MAC, a slot can be replaced (after a KEK rotation, or to add or
// remove a KEK) by rewriting the table in place, without touching the body
// and, with a KMS that rewraps on its side, without the DEK ever leaving the
// KMS. The tables are 2 KiB each (about four Key Protect slots), except in a
// file known to be small (under [SmallFileSize]), whose tables hold its
// slots and room to rotate them: a 4 KiB object grows by about 1.3 KiB
// rather than 4.1. FORMAT.md specifies every byte.
//
// # Entry points
//
//   - [Encrypt] and [Encrypter.NewWriter] encrypt a stream; [Seal] a small
//     byte slice. A [Writer] ends with Close, which writes the final chunk,
//     or, on any error, with Abort: an abandoned file never decrypts.
//   - [Decrypt] and [NewReader] decrypt a stream; [Open] a byte slice.
//   - [NewReaderAt] decrypts at random offsets, opening only the chunks a
//     read touches.
//   - [Inspect] reads the header alone and calls no KEK.
//
// Decryption takes a [Keyring] that finds the KEKs to try on each slot: a
// fixed list ([KEKs]) or one that opens slot URIs through a [kms.Resolver]
// ([ResolvingKeyring]). Nothing in a header is authenticated before a KEK
// has unwrapped the DEK, so a slot's KEK URI is a hint: ResolvingKeyring
// opens one only when its [kms.DiscoveryFilter] allows, and package
// kms/trust is the filter of a user's trust configuration.
//
// Everything here is safe for concurrent use, except that a single Writer or
// Reader belongs to one goroutine at a time.
package envelope
