// Package local implements a KEK held in a local key file, for development
// and tests. The file holds a Tink AEAD keyset (AES-256-GCM keys) in Tink's
// JSON form, so that a local KEK has versions the way a KMS key does: Rotate
// adds a new primary key, and DEKs wrapped by older keys still unwrap. A key
// version is the decimal Tink key ID.
//
// The key file is secret. Open reads it only if it is a regular file, owned
// by the effective user or root, that group and others have no permissions
// on, of at most 1 MiB; it refuses a named pipe at once, without blocking. A
// path through symbolic links (as secret mounts are) is resolved once, and
// the file checked is the file read. On Windows only the regular-file and
// size checks are made. The URI of a key file is "local:" followed by its
// path as given; Rotate rewrites the file the path resolved to.
package local

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"sync"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/insecurecleartextkeyset"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/kpcrypt/kpcrypt/internal/atomicfile"
	"github.com/kpcrypt/kpcrypt/internal/filelock"
	"github.com/kpcrypt/kpcrypt/internal/securefile"
	"github.com/kpcrypt/kpcrypt/kms"
)

// Scheme is the URI scheme of local KEKs.
const Scheme = "local"

// maxFileSize bounds the key file read.
const maxFileSize = 1 << 20

// ErrInsecureFile means group or others have permissions on the key file.
// The error names the fix, chmod 600 PATH.
var ErrInsecureFile = securefile.ErrInsecureMode

// KEK is a local KEK. It is safe for concurrent use.
type KEK struct {
	uri  string
	path string // where Rotate saves: the path of the file read, links resolved

	rotating sync.Mutex // serialises Rotate

	mu      sync.RWMutex
	handle  *keyset.Handle
	aead    tink.AEAD
	primary uint32
}

var (
	_ kms.Rotator         = (*KEK)(nil)
	_ kms.VersionReporter = (*KEK)(nil)
	_ kms.VersionLister   = (*KEK)(nil)
)

// Open opens the local KEK named by uri ("local:PATH"). It has the signature
// of a [kms.OpenFunc].
func Open(ctx context.Context, uri string) (kms.KEK, error) {
	path, ok := strings.CutPrefix(uri, Scheme+":")
	if !ok || path == "" {
		return nil, &kms.Error{Op: "open", URI: uri, Err: fmt.Errorf("%w: want local:PATH", kms.ErrInvalidURI)}
	}
	return OpenFile(path)
}

// OpenFile opens the key file at path, after the checks of the package
// documentation. A missing file fails with [kms.ErrNotFound], a file others
// may read with [ErrInsecureFile]. Through a symbolic link, the KEK's URI
// holds path as given, and Rotate rewrites the file the link points to.
func OpenFile(path string) (*KEK, error) {
	uri := Scheme + ":" + path
	fail := func(err error) (*KEK, error) { return nil, &kms.Error{Op: "open", URI: uri, Err: err} }
	data, resolved, err := securefile.ReadPrivate(path, maxFileSize)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fail(fmt.Errorf("%w: %v", kms.ErrNotFound, err))
		}
		return fail(err)
	}
	defer clear(data)
	h, err := insecurecleartextkeyset.Read(keyset.NewJSONReader(bytes.NewReader(data)))
	if err != nil {
		// Tink's parse errors do not echo key material.
		return fail(fmt.Errorf("%s is not a Tink JSON keyset: %v", path, err))
	}
	k := &KEK{uri: uri, path: resolved}
	if err := k.setHandle(h); err != nil {
		return fail(err)
	}
	return k, nil
}

// Generate creates a key file at path holding one new AES-256-GCM key, with
// mode 0600. It fails if path exists.
func Generate(path string) (*KEK, error) {
	uri := Scheme + ":" + path
	h, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
	if err != nil {
		return nil, &kms.Error{Op: "generate", URI: uri, Err: err}
	}
	k := &KEK{uri: uri, path: path}
	if err := k.setHandle(h); err != nil {
		return nil, &kms.Error{Op: "generate", URI: uri, Err: err}
	}
	if err := k.save(h, false); err != nil {
		return nil, &kms.Error{Op: "generate", URI: uri, Err: err}
	}
	return k, nil
}

func (k *KEK) setHandle(h *keyset.Handle) error {
	a, err := aead.New(h)
	if err != nil {
		return fmt.Errorf("keyset is not an AEAD keyset: %v", err)
	}
	info := h.KeysetInfo()
	k.mu.Lock()
	k.handle, k.aead, k.primary = h, a, info.GetPrimaryKeyId()
	k.mu.Unlock()
	return nil
}

func (k *KEK) save(h *keyset.Handle, overwrite bool) error {
	var buf bytes.Buffer
	if err := insecurecleartextkeyset.Write(h, keyset.NewJSONWriter(&buf)); err != nil {
		return err
	}
	defer clear(buf.Bytes())
	err := atomicfile.WriteFile(k.path, buf.Bytes(), 0o600, overwrite)
	if errors.Is(err, atomicfile.ErrNotDurable) {
		// The new keyset is in place; only its directory entry may not
		// have reached the disk yet. Reporting a failure would make a
		// caller think the rotation did not happen.
		return nil
	}
	return err
}

// URI returns "local:" and the key file's path.
func (k *KEK) URI() string { return k.uri }

// Wrap wraps dek under the primary key.
func (k *KEK) Wrap(ctx context.Context, dek, aad []byte) (kms.WrappedKey, error) {
	k.mu.RLock()
	a, primary := k.aead, k.primary
	k.mu.RUnlock()
	ct, err := a.Encrypt(dek, aad)
	if err != nil {
		return kms.WrappedKey{}, &kms.Error{Op: "wrap", URI: k.uri, Err: err}
	}
	return kms.WrappedKey{Ciphertext: ct, KeyVersion: version(primary)}, nil
}

// Unwrap unwraps a DEK wrapped by any key of the keyset. The version
// reported is the ID of the key that wrapped it.
func (k *KEK) Unwrap(ctx context.Context, wrapped, aad []byte) (kms.UnwrapResult, error) {
	k.mu.RLock()
	a := k.aead
	k.mu.RUnlock()
	dek, err := a.Decrypt(wrapped, aad)
	if err != nil {
		return kms.UnwrapResult{}, &kms.Error{Op: "unwrap", URI: k.uri, Err: kms.ErrWrongKey}
	}
	// Tink's output prefix: 0x01 then the key ID, big-endian.
	var v string
	if len(wrapped) >= 5 && wrapped[0] == 1 {
		v = version(binary.BigEndian.Uint32(wrapped[1:5]))
	}
	return kms.UnwrapResult{DEK: dek, KeyVersion: v}, nil
}

// CurrentVersion returns the ID of the primary key.
func (k *KEK) CurrentVersion(context.Context) (string, error) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return version(k.primary), nil
}

// Versions returns the IDs of every key in the keyset, oldest first
// (rotation appends).
func (k *KEK) Versions(context.Context) ([]string, error) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	var vs []string
	for _, ki := range k.handle.KeysetInfo().GetKeyInfo() {
		vs = append(vs, version(ki.GetKeyId()))
	}
	return vs, nil
}

// Rotate adds a new AES-256-GCM key to the keyset, makes it primary, and
// rewrites the key file atomically. It returns the new version.
//
// Rotations are serialised, across goroutines by a mutex and across
// processes by an exclusive lock on the sidecar file PATH.lock (the key
// file itself is replaced by a rename, so it cannot carry the lock). Once
// the lock is held the keyset is read again from the file, so a version
// another process added is kept: no acknowledged version is ever lost. The
// wait for the lock honours ctx.
func (k *KEK) Rotate(ctx context.Context) (string, error) {
	fail := func(err error) (string, error) { return "", &kms.Error{Op: "rotate", URI: k.uri, Err: err} }
	k.rotating.Lock()
	defer k.rotating.Unlock()
	release, err := filelock.Sidecar(ctx, k.path+".lock")
	if err != nil {
		return fail(fmt.Errorf("locking the key file for rotation: %w", err))
	}
	defer release()
	data, _, err := securefile.ReadPrivate(k.path, maxFileSize)
	if err != nil {
		return fail(err)
	}
	cur, err := insecurecleartextkeyset.Read(keyset.NewJSONReader(bytes.NewReader(data)))
	clear(data)
	if err != nil {
		return fail(fmt.Errorf("the key file is no longer a Tink JSON keyset: %v", err))
	}
	m := keyset.NewManagerFromHandle(cur)
	id, err := m.Add(aead.AES256GCMKeyTemplate())
	if err != nil {
		return fail(err)
	}
	if err := m.SetPrimary(id); err != nil {
		return fail(err)
	}
	h, err := m.Handle()
	if err != nil {
		return fail(err)
	}
	if err := k.save(h, true); err != nil {
		return fail(err)
	}
	if err := k.setHandle(h); err != nil {
		return fail(err)
	}
	return version(id), nil
}

func version(id uint32) string { return strconv.FormatUint(uint64(id), 10) }
