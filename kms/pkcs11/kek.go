//go:build cgo

package pkcs11

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sync"
	"sync/atomic"

	p11 "github.com/miekg/pkcs11"

	"github.com/kpcrypt/kpcrypt/kms"
)

// KEK is a KEK held in a PKCS#11 token: the AES keys with one label, each
// a version named by its CKA_ID. It implements kms.KEK, kms.Rotator,
// kms.VersionReporter, kms.VersionLister and io.Closer, and is safe for
// concurrent use.
type KEK struct {
	tok     *token
	uri     string
	label   string
	id      []byte // pinned to one key object, or nil
	prefer  []Mechanism
	private bool // logged in: objects made are CKA_PRIVATE

	closeOnce sync.Once
	closed    atomic.Bool
}

var (
	_ kms.Rotator         = (*KEK)(nil)
	_ kms.VersionReporter = (*KEK)(nil)
	_ kms.VersionLister   = (*KEK)(nil)
	_ io.Closer           = (*KEK)(nil)
)

// URI returns the KEK's identity, the URI recorded in file headers:
// "pkcs11:token=TOKEN;object=LABEL", with ";id=…" for a KEK pinned to one
// key object. It never holds the module path or the PIN.
func (k *KEK) URI() string { return k.uri }

// Mechanism returns the mechanism Wrap uses: the first one of the
// configured preference that the token supports.
func (k *KEK) Mechanism() (Mechanism, error) {
	for _, m := range k.prefer {
		if k.tok.mechs[m] {
			return m, nil
		}
	}
	names := make([]string, len(k.prefer))
	for i, m := range k.prefer {
		names[i] = m.String()
	}
	return 0, fmt.Errorf("%w: token %q supports none of the wrapping mechanisms configured (%s)",
		ErrMechanismUnsupported, k.tok.label, joinOr(names))
}

// Close releases the KEK: the last KEK of a token closes its sessions and
// logs out, the last of a module finalises it. Other operations fail with
// [ErrClosed] afterwards.
func (k *KEK) Close() error {
	k.closeOnce.Do(func() {
		k.closed.Store(true)
		k.tok.release()
	})
	return nil
}

func (k *KEK) fail(op string, err error) error { return &kms.Error{Op: op, URI: k.uri, Err: err} }

// with runs f on a session of the KEK's token.
func (k *KEK) with(ctx context.Context, f func(c *p11.Ctx, s p11.SessionHandle) error) error {
	return k.run(ctx, false, f)
}

// withKeygen runs f, which creates a key, on a session of the KEK's token,
// while no other operation of this process runs on the token.
func (k *KEK) withKeygen(ctx context.Context, f func(c *p11.Ctx, s p11.SessionHandle) error) error {
	return k.run(ctx, true, f)
}

func (k *KEK) run(ctx context.Context, exclusive bool, f func(c *p11.Ctx, s p11.SessionHandle) error) error {
	if k.closed.Load() {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return k.tok.with(ctx, exclusive, func(s p11.SessionHandle) error { return f(k.tok.mod.ctx, s) })
}

// A kpcrypt CKA_ID is 12 bytes: the version's generation (1 for the first
// key, one more at each rotation), big-endian, then 4 random bytes that
// keep concurrent rotations apart.
const idLen = 12

func newID(gen uint64) ([]byte, error) {
	id := make([]byte, idLen)
	binary.BigEndian.PutUint64(id, gen)
	if _, err := rand.Read(id[8:]); err != nil {
		return nil, err
	}
	return id, nil
}

// generation returns the generation of a kpcrypt CKA_ID, and 0 for any
// other, so that keys made by other tools sort before kpcrypt's.
func generation(id []byte) uint64 {
	if len(id) != idLen {
		return 0
	}
	return binary.BigEndian.Uint64(id)
}

// compareIDs orders versions: by generation, then by CKA_ID bytes.
func compareIDs(a, b []byte) int {
	if c := cmp.Compare(generation(a), generation(b)); c != 0 {
		return c
	}
	return bytes.Compare(a, b)
}

type keyObject struct {
	id []byte
	h  p11.ObjectHandle
}

// find returns the KEK's key objects, oldest first; with id, only that one.
func (k *KEK) find(c *p11.Ctx, s p11.SessionHandle, id []byte) ([]keyObject, error) {
	tmpl := []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
		p11.NewAttribute(p11.CKA_LABEL, k.label),
	}
	if id != nil {
		tmpl = append(tmpl, p11.NewAttribute(p11.CKA_ID, id))
	}
	if err := c.FindObjectsInit(s, tmpl); err != nil {
		return nil, classify("searching the token", err)
	}
	var handles []p11.ObjectHandle
	for {
		hs, _, err := c.FindObjects(s, 64)
		if err != nil {
			c.FindObjectsFinal(s)
			return nil, classify("searching the token", err)
		}
		if len(hs) == 0 {
			break
		}
		handles = append(handles, hs...)
	}
	if err := c.FindObjectsFinal(s); err != nil {
		return nil, classify("searching the token", err)
	}
	objs := make([]keyObject, 0, len(handles))
	for _, h := range handles {
		attrs, err := c.GetAttributeValue(s, h, []*p11.Attribute{p11.NewAttribute(p11.CKA_ID, nil)})
		if err != nil {
			return nil, classify(fmt.Sprintf("reading the CKA_ID of key %q", k.label), err)
		}
		kid := attrs[0].Value
		if len(kid) == 0 {
			return nil, fmt.Errorf("a key labelled %q in token %q has no CKA_ID: kpcrypt names versions by CKA_ID; give it one, or make keys with kpcrypt keygen --pkcs11", k.label, k.tok.label)
		}
		if id != nil && !bytes.Equal(kid, id) {
			continue // a token that ignores CKA_ID in the template
		}
		objs = append(objs, keyObject{id: kid, h: h})
	}
	slices.SortFunc(objs, func(a, b keyObject) int { return compareIDs(a.id, b.id) })
	for i := 1; i < len(objs); i++ {
		if bytes.Equal(objs[i].id, objs[i-1].id) {
			return nil, fmt.Errorf("two keys labelled %q in token %q have CKA_ID %s: versions must have distinct CKA_IDs", k.label, k.tok.label, version(objs[i].id))
		}
	}
	return objs, nil
}

func (k *KEK) notFound() error {
	if k.id != nil {
		return fmt.Errorf("%w: no AES key labelled %q with CKA_ID %s in token %q", kms.ErrNotFound, k.label, version(k.id), k.tok.label)
	}
	return fmt.Errorf("%w: no AES key labelled %q in token %q (create one with kpcrypt keygen --pkcs11)", kms.ErrNotFound, k.label, k.tok.label)
}

// check verifies, when the KEK is opened, that it has a key and a
// mechanism to wrap with.
func (k *KEK) check(ctx context.Context) error {
	if _, err := k.Mechanism(); err != nil {
		return err
	}
	return k.with(ctx, func(c *p11.Ctx, s p11.SessionHandle) error {
		objs, err := k.find(c, s, k.id)
		if err == nil && len(objs) == 0 {
			err = k.notFound()
		}
		return err
	})
}

// keyTemplate is the template of a KEK version: an AES-256 token key that
// never leaves the token, for encrypt/decrypt (AES-GCM) and wrap/unwrap
// (key wrap) only.
func (k *KEK) keyTemplate(id []byte) []*p11.Attribute {
	return []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
		p11.NewAttribute(p11.CKA_VALUE_LEN, 32),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_PRIVATE, k.private),
		p11.NewAttribute(p11.CKA_SENSITIVE, true),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
		p11.NewAttribute(p11.CKA_ENCRYPT, true),
		p11.NewAttribute(p11.CKA_DECRYPT, true),
		p11.NewAttribute(p11.CKA_WRAP, true),
		p11.NewAttribute(p11.CKA_UNWRAP, true),
		p11.NewAttribute(p11.CKA_SIGN, false),
		p11.NewAttribute(p11.CKA_VERIFY, false),
		p11.NewAttribute(p11.CKA_DERIVE, false),
		p11.NewAttribute(p11.CKA_LABEL, k.label),
		p11.NewAttribute(p11.CKA_ID, id),
	}
}

func (k *KEK) createKey(c *p11.Ctx, s p11.SessionHandle, id []byte) error {
	if !k.tok.keygen {
		return fmt.Errorf("%w: token %q does not support CKM_AES_KEY_GEN", ErrMechanismUnsupported, k.tok.label)
	}
	_, err := c.GenerateKey(s, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)}, k.keyTemplate(id))
	if err != nil {
		return classify(fmt.Sprintf("generating an AES-256 key in token %q", k.tok.label), err)
	}
	return nil
}

// generate creates the KEK's first key; there must be none with its label.
func (k *KEK) generate(ctx context.Context) error {
	if _, err := k.Mechanism(); err != nil {
		return err
	}
	return k.withKeygen(ctx, func(c *p11.Ctx, s p11.SessionHandle) error {
		objs, err := k.find(c, s, nil)
		if err != nil {
			return err
		}
		if len(objs) > 0 {
			return fmt.Errorf("%w: token %q has %d key version(s) labelled %q: rotate it to add one", ErrKeyExists, k.tok.label, len(objs), k.label)
		}
		id := k.id
		if id == nil {
			if id, err = newID(1); err != nil {
				return err
			}
		}
		return k.createKey(c, s, id)
	})
}

// Rotate creates a new key in the token with the KEK's label and the next
// generation's CKA_ID, which makes it the current version, and returns
// that version. Older versions stay and still unwrap. A KEK pinned to one
// CKA_ID (id= in its URI) does not rotate.
func (k *KEK) Rotate(ctx context.Context) (string, error) {
	if k.id != nil {
		return "", k.fail("rotate", errors.New("this KEK is pinned to one key object by the id= of its URI; rotate the KEK named without id="))
	}
	var v string
	err := k.withKeygen(ctx, func(c *p11.Ctx, s p11.SessionHandle) error {
		objs, err := k.find(c, s, nil)
		if err != nil {
			return err
		}
		var gen uint64
		for _, o := range objs {
			gen = max(gen, generation(o.id))
		}
		if gen == math.MaxUint64 {
			return fmt.Errorf("a key labelled %q has the last possible generation: cannot rotate", k.label)
		}
		id, err := newID(gen + 1)
		if err != nil {
			return err
		}
		if err := k.createKey(c, s, id); err != nil {
			return err
		}
		v = version(id)
		return nil
	})
	if err != nil {
		return "", k.fail("rotate", err)
	}
	return v, nil
}

// Versions returns the KEK's versions, the hex CKA_IDs of its keys, oldest
// first: by the generation a kpcrypt CKA_ID starts with (keys made by
// other tools count as generation 0), then by CKA_ID.
func (k *KEK) Versions(ctx context.Context) ([]string, error) {
	var vs []string
	err := k.with(ctx, func(c *p11.Ctx, s p11.SessionHandle) error {
		objs, err := k.find(c, s, k.id)
		if err == nil && len(objs) == 0 {
			err = k.notFound()
		}
		for _, o := range objs {
			vs = append(vs, version(o.id))
		}
		return err
	})
	if err != nil {
		return nil, k.fail("list versions", err)
	}
	return vs, nil
}

// CurrentVersion returns the newest version, the one Wrap uses.
func (k *KEK) CurrentVersion(ctx context.Context) (string, error) {
	vs, err := k.Versions(ctx)
	if err != nil {
		return "", err
	}
	return vs[len(vs)-1], nil
}

// Layout of a wrapped DEK:
//
//	mechanism (1 byte) | n = len(CKA_ID) (1 byte) | CKA_ID (n bytes) | body
//
// The first 2+n bytes are the header. For AESGCM the body is the 12-byte IV
// then the ciphertext and its 16-byte tag, and GCM's AAD is the header then
// the associated data. For the key wraps the body is what C_WrapKey
// returned for the value
//
//	SHA-256(kwpLabel || header || associated data) | len(DEK) (2 bytes, big-endian) | DEK | zeros
//
// with zeros up to a multiple of 8 bytes, so that the value needs no
// padding from the mechanism: SoftHSM2 leaves CKM_AES_KEY_WRAP_PAD's
// padding on a generic secret it unwraps.
const (
	gcmIVSize  = 12
	gcmTagSize = 16
	kwpLabel   = "kpcrypt pkcs11 key wrap aad v1\x00"
	kwpPrefix  = sha256.Size + 2
	maxDEKSize = 1<<16 - 1
)

func header(m Mechanism, id []byte) []byte {
	return append([]byte{byte(m), byte(len(id))}, id...)
}

func parseWrapped(w []byte) (m Mechanism, id, hdr, body []byte, err error) {
	if len(w) < 3 {
		return 0, nil, nil, nil, fmt.Errorf("%w: %d bytes is too short for a DEK wrapped by a PKCS#11 KEK", kms.ErrWrongKey, len(w))
	}
	m, n := Mechanism(w[0]), int(w[1])
	if !m.valid() {
		return 0, nil, nil, nil, fmt.Errorf("%w: not a DEK wrapped by a PKCS#11 KEK (mechanism byte %#02x)", kms.ErrWrongKey, w[0])
	}
	if n == 0 || len(w) < 2+n+1 {
		return 0, nil, nil, nil, fmt.Errorf("%w: malformed wrapped DEK", kms.ErrWrongKey)
	}
	return m, w[2 : 2+n], w[:2+n], w[2+n:], nil
}

func kwpBinding(hdr, aad []byte) []byte {
	h := sha256.New()
	h.Write([]byte(kwpLabel))
	h.Write(hdr)
	h.Write(aad)
	return h.Sum(nil)
}

func gcmAAD(hdr, aad []byte) []byte {
	return append(append(make([]byte, 0, len(hdr)+len(aad)), hdr...), aad...)
}

// Wrap wraps dek under the KEK's current version, inside the token: with
// AES-GCM by C_Encrypt, or with a key wrap by C_WrapKey of the DEK imported
// as a session object (tokens do not key-wrap raw data with C_Encrypt).
func (k *KEK) Wrap(ctx context.Context, dek, aad []byte) (kms.WrappedKey, error) {
	if len(dek) == 0 || len(dek) > maxDEKSize {
		return kms.WrappedKey{}, k.fail("wrap", fmt.Errorf("a data key of %d bytes: want 1 to %d", len(dek), maxDEKSize))
	}
	mech, err := k.Mechanism()
	if err != nil {
		return kms.WrappedKey{}, k.fail("wrap", err)
	}
	var out []byte
	var v string
	err = k.with(ctx, func(c *p11.Ctx, s p11.SessionHandle) error {
		objs, err := k.find(c, s, k.id)
		if err != nil {
			return err
		}
		if len(objs) == 0 {
			return k.notFound()
		}
		cur := objs[len(objs)-1]
		if len(cur.id) > 255 {
			return fmt.Errorf("the CKA_ID of key %q is over 255 bytes", k.label)
		}
		hdr := header(mech, cur.id)
		if mech == AESGCM {
			out, err = gcmSeal(c, s, cur.h, hdr, dek, aad)
		} else {
			out, err = k.keyWrap(c, s, mech, cur.h, hdr, dek, aad)
		}
		v = version(cur.id)
		return err
	})
	if err != nil {
		return kms.WrappedKey{}, k.fail("wrap", err)
	}
	return kms.WrappedKey{Ciphertext: out, KeyVersion: v}, nil
}

func gcmSeal(c *p11.Ctx, s p11.SessionHandle, key p11.ObjectHandle, hdr, dek, aad []byte) ([]byte, error) {
	iv := make([]byte, gcmIVSize)
	if _, err := rand.Read(iv); err != nil {
		return nil, err
	}
	params := p11.NewGCMParams(iv, gcmAAD(hdr, aad), gcmTagSize*8)
	defer params.Free()
	if err := c.EncryptInit(s, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}, key); err != nil {
		return nil, classify("starting CKM_AES_GCM encryption", err)
	}
	ct, err := c.Encrypt(s, dek)
	if err != nil {
		return nil, classify("CKM_AES_GCM encryption", err)
	}
	// A token may choose the IV itself and write it back (AWS CloudHSM does).
	if got := params.IV(); len(got) == gcmIVSize {
		iv = got
	}
	if len(ct) != len(dek)+gcmTagSize {
		return nil, fmt.Errorf("CKM_AES_GCM returned %d bytes for %d, want the ciphertext and a %d-byte tag", len(ct), len(dek), gcmTagSize)
	}
	out := make([]byte, 0, len(hdr)+gcmIVSize+len(ct))
	return append(append(append(out, hdr...), iv...), ct...), nil
}

func gcmOpen(c *p11.Ctx, s p11.SessionHandle, key p11.ObjectHandle, hdr, body, aad []byte) ([]byte, error) {
	if len(body) <= gcmIVSize+gcmTagSize {
		return nil, fmt.Errorf("%w: the AES-GCM wrapped DEK is too short", kms.ErrWrongKey)
	}
	params := p11.NewGCMParams(body[:gcmIVSize], gcmAAD(hdr, aad), gcmTagSize*8)
	defer params.Free()
	if err := c.DecryptInit(s, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}, key); err != nil {
		return nil, classify("starting CKM_AES_GCM decryption", err)
	}
	dek, err := c.Decrypt(s, body[gcmIVSize:])
	if err != nil {
		if authFailure(err) {
			return nil, fmt.Errorf("%w: CKM_AES_GCM decryption failed: %w", kms.ErrWrongKey, err)
		}
		return nil, classify("CKM_AES_GCM decryption", err)
	}
	return dek, nil
}

// dataKeyTemplate is the template of a DEK in the token, a session object
// that exists for one wrap or unwrap.
func (k *KEK) dataKeyTemplate(value []byte) []*p11.Attribute {
	t := []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_GENERIC_SECRET),
		p11.NewAttribute(p11.CKA_TOKEN, false),
		p11.NewAttribute(p11.CKA_PRIVATE, k.private),
		p11.NewAttribute(p11.CKA_SENSITIVE, false),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, true),
	}
	if value != nil {
		t = append(t, p11.NewAttribute(p11.CKA_VALUE, value))
	}
	return t
}

// destroy destroys a DEK's session object. If that fails it returns an
// error, so that the session is closed, and its objects with it, rather
// than returned to the pool.
func destroy(c *p11.Ctx, s p11.SessionHandle, obj p11.ObjectHandle, err *error) {
	if derr := c.DestroyObject(s, obj); derr != nil && *err == nil {
		*err = classify("destroying the DEK's session object", derr)
	}
}

func (k *KEK) keyWrap(c *p11.Ctx, s p11.SessionHandle, m Mechanism, key p11.ObjectHandle, hdr, dek, aad []byte) (out []byte, err error) {
	value := make([]byte, (kwpPrefix+len(dek)+7)/8*8)
	defer clear(value)
	copy(value, kwpBinding(hdr, aad))
	binary.BigEndian.PutUint16(value[sha256.Size:], uint16(len(dek)))
	copy(value[kwpPrefix:], dek)
	obj, err := c.CreateObject(s, k.dataKeyTemplate(value))
	if err != nil {
		return nil, classify("importing the DEK into the token as a session object", err)
	}
	defer destroy(c, s, obj, &err)
	w, err := c.WrapKey(s, []*p11.Mechanism{p11.NewMechanism(m.ckm(), nil)}, key, obj)
	if err != nil {
		return nil, classify(m.String()+" wrapping", err)
	}
	return append(append(make([]byte, 0, len(hdr)+len(w)), hdr...), w...), nil
}

func (k *KEK) keyUnwrap(c *p11.Ctx, s p11.SessionHandle, m Mechanism, key p11.ObjectHandle, hdr, body, aad []byte) (dek []byte, err error) {
	obj, err := c.UnwrapKey(s, []*p11.Mechanism{p11.NewMechanism(m.ckm(), nil)}, key, body, k.dataKeyTemplate(nil))
	if err != nil {
		if authFailure(err) {
			return nil, fmt.Errorf("%w: %s unwrapping failed: %w", kms.ErrWrongKey, m, err)
		}
		return nil, classify(m.String()+" unwrapping", err)
	}
	defer func() {
		destroy(c, s, obj, &err)
		if err != nil {
			clear(dek)
			dek = nil
		}
	}()
	attrs, err := c.GetAttributeValue(s, obj, []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE, nil)})
	if err != nil {
		return nil, classify("reading the unwrapped DEK", err)
	}
	value := attrs[0].Value
	defer clear(value)
	if len(value) < kwpPrefix {
		return nil, fmt.Errorf("%w: the unwrapped value is too short", kms.ErrWrongKey)
	}
	if subtle.ConstantTimeCompare(value[:sha256.Size], kwpBinding(hdr, aad)) != 1 {
		return nil, fmt.Errorf("%w: the associated data differs from the one the DEK was wrapped with", kms.ErrWrongKey)
	}
	n := int(binary.BigEndian.Uint16(value[sha256.Size:]))
	// What follows the DEK is the zero padding, and whatever padding a
	// token failed to remove: less than 16 bytes in all.
	if pad := len(value) - kwpPrefix - n; n == 0 || pad < 0 || pad >= 16 {
		return nil, fmt.Errorf("%w: the unwrapped value is malformed", kms.ErrWrongKey)
	}
	return bytes.Clone(value[kwpPrefix : kwpPrefix+n]), nil
}

// Unwrap unwraps a DEK with the key version and the mechanism recorded in
// it. A DEK wrapped by another KEK, with other associated data, or modified
// fails with an error matching kms.ErrWrongKey; one wrapped with a
// mechanism the token lacks with [ErrMechanismUnsupported].
func (k *KEK) Unwrap(ctx context.Context, wrapped, aad []byte) (kms.UnwrapResult, error) {
	m, id, hdr, body, err := parseWrapped(wrapped)
	if err != nil {
		return kms.UnwrapResult{}, k.fail("unwrap", err)
	}
	if k.id != nil && !bytes.Equal(id, k.id) {
		return kms.UnwrapResult{}, k.fail("unwrap", fmt.Errorf("%w: wrapped by key version %s, and this KEK is pinned to %s", kms.ErrWrongKey, version(id), version(k.id)))
	}
	if !k.tok.mechs[m] {
		return kms.UnwrapResult{}, k.fail("unwrap", fmt.Errorf("%w: the DEK was wrapped with %v, which token %q does not support", ErrMechanismUnsupported, m, k.tok.label))
	}
	var dek []byte
	err = k.with(ctx, func(c *p11.Ctx, s p11.SessionHandle) error {
		objs, err := k.find(c, s, id)
		if err != nil {
			return err
		}
		if len(objs) == 0 {
			return fmt.Errorf("%w: key version %s is not a version of this KEK (another KEK wrapped the DEK, or the version was destroyed)", kms.ErrWrongKey, version(id))
		}
		if m == AESGCM {
			dek, err = gcmOpen(c, s, objs[0].h, hdr, body, aad)
		} else {
			dek, err = k.keyUnwrap(c, s, m, objs[0].h, hdr, body, aad)
		}
		return err
	})
	if err != nil {
		return kms.UnwrapResult{}, k.fail("unwrap", err)
	}
	return kms.UnwrapResult{DEK: dek, KeyVersion: version(id)}, nil
}

func joinOr(names []string) string {
	switch len(names) {
	case 0:
		return "none"
	case 1:
		return names[0]
	}
	return fmt.Sprintf("%s or %s", joinComma(names[:len(names)-1]), names[len(names)-1])
}

func joinComma(names []string) string {
	s := names[0]
	for _, n := range names[1:] {
		s += ", " + n
	}
	return s
}
