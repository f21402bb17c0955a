//go:build cgo

package pkcs11

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	p11 "github.com/miekg/pkcs11"

	"github.com/kpcrypt/kpcrypt/kms"
)

// Provider opens PKCS#11 KEKs. It loads and initialises each module once,
// logs in to each token once, and keeps a pool of sessions per token that
// its KEKs share. Create it with a Config and call Close when done. It is
// safe for concurrent use.
//
// A module can be initialised only once per process: use one Provider per
// process. A second Provider on a module already initialised uses it as it
// is and leaves it initialised when it closes.
type Provider struct {
	Config Config

	mu      sync.Mutex
	modules map[string]*module
	closed  bool
}

// Open opens the KEK named by a PKCS#11 URI. It has the signature of a
// [kms.OpenFunc].
func (p *Provider) Open(ctx context.Context, uri string) (kms.KEK, error) {
	k, err := p.OpenKEK(ctx, uri)
	if err != nil {
		return nil, err
	}
	return k, nil
}

// OpenKEK opens the KEK named by a PKCS#11 URI: every secret AES key with
// the URI's object label, in the token it selects. It fails with an error
// matching [kms.ErrNotFound] when there is no such token or key.
func (p *Provider) OpenKEK(ctx context.Context, uri string) (*KEK, error) {
	return p.open(ctx, "open", uri, false)
}

// Generate creates an AES-256 key in the token, labelled with the URI's
// object (and with the URI's id as its CKA_ID, if it has one), and returns
// its KEK. It fails with [ErrKeyExists] if a key has that label: add a
// version with [KEK.Rotate] instead.
func (p *Provider) Generate(ctx context.Context, uri string) (*KEK, error) {
	return p.open(ctx, "generate", uri, true)
}

func (p *Provider) open(ctx context.Context, op, uri string, generate bool) (*KEK, error) {
	fail := func(err error) (*KEK, error) { return nil, &kms.Error{Op: op, URI: Redact(uri), Err: err} }
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	u, err := ParseURI(uri)
	if err != nil {
		return fail(err)
	}
	if u.Object == "" {
		return fail(fmt.Errorf("%w: object= (the key's label) is required", kms.ErrInvalidURI))
	}
	prefer := p.Config.Mechanisms
	if len(prefer) == 0 {
		prefer = DefaultMechanisms()
	}
	for _, m := range prefer {
		if !m.valid() {
			return fail(fmt.Errorf("configured %v is not a wrapping mechanism", m))
		}
	}
	modPath := u.ModulePath
	if modPath == "" {
		if modPath, err = FindModule(p.Config.Module); err != nil {
			return fail(err)
		}
	}
	pin, err := resolvePIN(u, p.Config.PIN)
	if err != nil {
		return fail(err)
	}
	tok, loggedIn, err := p.acquireToken(ctx, modPath, u, pin)
	if err != nil {
		return fail(err)
	}
	k := &KEK{tok: tok, uri: identityURI(tok.label, u.Object, u.ID), label: u.Object, id: u.ID, prefer: prefer, private: loggedIn}
	if generate {
		err = k.generate(ctx)
	} else {
		err = k.check(ctx)
	}
	if err != nil {
		k.Close()
		return nil, &kms.Error{Op: op, URI: k.uri, Err: err}
	}
	return k, nil
}

// Close closes every session, logs out of every token and finalises every
// module the Provider initialised. Its KEKs fail with [ErrClosed]
// afterwards.
func (p *Provider) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	var errs []error
	for _, m := range p.modules {
		for _, t := range m.tokens {
			t.close()
		}
		errs = append(errs, m.close())
	}
	p.modules = nil
	return errors.Join(errs...)
}

// module is a loaded PKCS#11 module.
type module struct {
	path   string
	key    string // path with symbolic links resolved: the cache key
	ctx    *p11.Ctx
	owner  bool // this Provider initialised it and finalises it
	tokens map[uint]*token
}

// token is an open token: its login and its session pool. It is shared by
// the KEKs opened on it and closed with the last of them.
type token struct {
	p      *Provider
	mod    *module
	slot   uint
	label  string
	mechs  map[Mechanism]bool
	keygen bool // CKM_AES_KEY_GEN supported

	loggedIn  bool
	pinSalt   [16]byte
	pinSum    [32]byte
	anchor    p11.SessionHandle // open for the token's life: it holds the login
	hasAnchor bool

	pool *pool
	refs int // guarded by p.mu

	// keysMu is held exclusively while a key is created (Rotate, Generate)
	// and shared by every other operation: a token need not create an
	// object atomically (SoftHSM2 does not), and a half-made key must not
	// be taken for the current version.
	keysMu sync.RWMutex
}

// acquireToken returns the token u selects, logged in with pin, with a
// reference taken for the caller, and whether it is logged in.
func (p *Provider) acquireToken(ctx context.Context, modPath string, u *URI, pin string) (*token, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, false, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	m, err := p.loadModule(modPath)
	if err != nil {
		return nil, false, err
	}
	slot, label, err := m.findSlot(u)
	if err != nil {
		p.releaseModuleIfUnused(m)
		return nil, false, err
	}
	t, ok := m.tokens[slot]
	if !ok {
		t, err = p.openToken(m, slot, label)
		if err != nil {
			p.releaseModuleIfUnused(m)
			return nil, false, err
		}
		m.tokens[slot] = t
	}
	if err := t.login(pin); err != nil {
		if t.refs == 0 {
			t.close()
			delete(m.tokens, slot)
			p.releaseModuleIfUnused(m)
		}
		return nil, false, err
	}
	t.refs++
	return t, t.loggedIn, nil
}

func (p *Provider) loadModule(path string) (*module, error) {
	key := path
	if r, err := filepath.EvalSymlinks(path); err == nil {
		key = r
	}
	if m, ok := p.modules[key]; ok {
		return m, nil
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("cannot load PKCS#11 module %s: no such file (set module-path in the URI or %s)", path, EnvModule)
	case err != nil:
		return nil, fmt.Errorf("cannot load PKCS#11 module %s: %v", path, err)
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("cannot load PKCS#11 module %s: not a regular file", path)
	}
	ctx := p11.New(path)
	if ctx == nil {
		return nil, fmt.Errorf("cannot load PKCS#11 module %s: it is not a shared library for this system, or it lacks C_GetFunctionList", path)
	}
	m := &module{path: path, key: key, ctx: ctx, owner: true, tokens: map[uint]*token{}}
	if err := ctx.Initialize(); err != nil {
		if rv(err) != p11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
			ctx.Destroy()
			return nil, fmt.Errorf("cannot initialise PKCS#11 module %s: %w", path, err)
		}
		m.owner = false // another user in this process initialised it
	}
	if p.modules == nil {
		p.modules = map[string]*module{}
	}
	p.modules[key] = m
	return m, nil
}

// releaseModuleIfUnused closes m if no token of it is open. p.mu is held.
func (p *Provider) releaseModuleIfUnused(m *module) {
	if len(m.tokens) == 0 {
		m.close()
		delete(p.modules, m.key)
	}
}

func (m *module) close() error {
	var err error
	if m.owner {
		if e := m.ctx.Finalize(); e != nil {
			err = fmt.Errorf("finalising PKCS#11 module %s: %w", m.path, e)
		}
	}
	m.ctx.Destroy()
	return err
}

// findSlot returns the one slot whose initialised token matches u's token
// attributes.
func (m *module) findSlot(u *URI) (uint, string, error) {
	slots, err := m.ctx.GetSlotList(true)
	if err != nil {
		return 0, "", classify("listing the module's slots", err)
	}
	var present []string
	var found []uint
	var label string
	for _, s := range slots {
		if u.HasSlotID && s != u.SlotID {
			continue
		}
		ti, err := m.ctx.GetTokenInfo(s)
		if err != nil || ti.Flags&p11.CKF_TOKEN_INITIALIZED == 0 {
			continue
		}
		present = append(present, fmt.Sprintf("%q", ti.Label))
		if u.Token != "" && ti.Label != u.Token ||
			u.Serial != "" && ti.SerialNumber != u.Serial ||
			u.Manufacturer != "" && ti.ManufacturerID != u.Manufacturer ||
			u.Model != "" && ti.Model != u.Model {
			continue
		}
		found = append(found, s)
		label = ti.Label
	}
	switch len(found) {
	case 1:
		return found[0], label, nil
	case 0:
		what := "no initialised token"
		if len(present) > 0 {
			what = "tokens " + strings.Join(present, ", ")
		}
		return 0, "", fmt.Errorf("%w: no token matches %s in module %s (it has %s)", kms.ErrNotFound, describeToken(u), m.path, what)
	default:
		return 0, "", fmt.Errorf("%d tokens match %s in module %s: select one with token=, serial= or slot-id=", len(found), describeToken(u), m.path)
	}
}

func describeToken(u *URI) string {
	var parts []string
	if u.Token != "" {
		parts = append(parts, fmt.Sprintf("token=%q", u.Token))
	}
	if u.Serial != "" {
		parts = append(parts, fmt.Sprintf("serial=%q", u.Serial))
	}
	if u.HasSlotID {
		parts = append(parts, fmt.Sprintf("slot-id=%d", u.SlotID))
	}
	if u.Manufacturer != "" {
		parts = append(parts, fmt.Sprintf("manufacturer=%q", u.Manufacturer))
	}
	if u.Model != "" {
		parts = append(parts, fmt.Sprintf("model=%q", u.Model))
	}
	if len(parts) == 0 {
		return "the URI"
	}
	return strings.Join(parts, ";")
}

func (p *Provider) openToken(m *module, slot uint, label string) (*token, error) {
	t := &token{p: p, mod: m, slot: slot, label: label, mechs: map[Mechanism]bool{}}
	list, err := m.ctx.GetMechanismList(slot)
	if err != nil {
		return nil, classify(fmt.Sprintf("listing the mechanisms of token %q", label), err)
	}
	for _, mech := range list {
		if mech.Mechanism == p11.CKM_AES_KEY_GEN {
			t.keygen = true
		}
		for _, w := range DefaultMechanisms() {
			if mech.Mechanism != w.ckm() {
				continue
			}
			info, err := m.ctx.GetMechanismInfo(slot, []*p11.Mechanism{p11.NewMechanism(w.ckm(), nil)})
			if err == nil && info.Flags&w.flags() == w.flags() && (info.MaxKeySize == 0 || info.MaxKeySize >= 32) {
				t.mechs[w] = true
			}
		}
	}
	if len(t.mechs) == 0 {
		return nil, fmt.Errorf("%w: token %q supports none of CKM_AES_GCM (encrypt/decrypt), CKM_AES_KEY_WRAP_KWP or CKM_AES_KEY_WRAP_PAD (wrap/unwrap)",
			ErrMechanismUnsupported, label)
	}
	max := p.Config.MaxSessions
	if max <= 0 {
		max = DefaultMaxSessions
	}
	t.pool = newPool(m.ctx, slot, max)
	// The anchor session stays open while the token is: the login state
	// lasts as long as one session of the application does.
	if t.anchor, err = m.ctx.OpenSession(slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION); err != nil {
		return nil, classify(fmt.Sprintf("opening a session on token %q", label), err)
	}
	t.hasAnchor = true
	if _, err := rand.Read(t.pinSalt[:]); err != nil {
		t.close()
		return nil, err
	}
	return t, nil
}

func (t *token) pinDigest(pin string) [32]byte {
	h := sha256.New()
	h.Write(t.pinSalt[:])
	h.Write([]byte(pin))
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

// login logs in with pin, once per token. A token already logged in by
// this Provider accepts only the PIN it was logged in with: the token would
// not check another.
func (t *token) login(pin string) error {
	if t.loggedIn {
		sum := t.pinDigest(pin)
		if subtle.ConstantTimeCompare(sum[:], t.pinSum[:]) != 1 {
			return fmt.Errorf("%w: token %q is logged in with another PIN than the one given", kms.ErrPermissionDenied, t.label)
		}
		return nil
	}
	if pin == "" {
		ti, err := t.mod.ctx.GetTokenInfo(t.slot)
		if err == nil && ti.Flags&p11.CKF_LOGIN_REQUIRED != 0 {
			return fmt.Errorf("%w: token %q needs a PIN: give pin-source=FILE in the URI or set %s", kms.ErrPermissionDenied, t.label, EnvPIN)
		}
		return nil
	}
	err := t.mod.ctx.Login(t.anchor, p11.CKU_USER, pin)
	if rv(err) == p11.CKR_USER_ALREADY_LOGGED_IN {
		// Another user of the module in this process logged in: the token
		// would accept any PIN now, so fail rather than not check it.
		return fmt.Errorf("%w: token %q is already logged in by another user of module %s in this process, so the PIN given cannot be checked: use one Provider per process",
			kms.ErrPermissionDenied, t.label, t.mod.path)
	}
	if err != nil {
		return classify(fmt.Sprintf("logging in to token %q", t.label), err)
	}
	t.loggedIn, t.pinSum = true, t.pinDigest(pin)
	return nil
}

// release drops a KEK's reference; the last one closes the token, and the
// module with its last token.
func (t *token) release() {
	p := t.p
	p.mu.Lock()
	defer p.mu.Unlock()
	t.refs--
	if t.refs > 0 || p.closed {
		return
	}
	t.close()
	delete(t.mod.tokens, t.slot)
	p.releaseModuleIfUnused(t.mod)
}

// close waits for the operations in flight, then closes every session,
// which logs out. p.mu is held.
func (t *token) close() {
	if t.pool != nil {
		t.pool.close()
	}
	if t.hasAnchor {
		t.mod.ctx.CloseSession(t.anchor)
		t.hasAnchor = false
	}
	t.loggedIn = false
}

// pool is a token's sessions. At most max are open; get waits for one when
// all are in use.
type pool struct {
	ctx  *p11.Ctx
	slot uint
	sem  chan struct{} // a slot per session in use
	done chan struct{} // closed by close

	mu     sync.Mutex
	idle   []p11.SessionHandle
	closed bool
}

func newPool(ctx *p11.Ctx, slot uint, max int) *pool {
	return &pool{ctx: ctx, slot: slot, sem: make(chan struct{}, max), done: make(chan struct{})}
}

func (p *pool) get(ctx context.Context) (p11.SessionHandle, error) {
	select {
	case p.sem <- struct{}{}:
	case <-p.done:
		return 0, ErrClosed
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		<-p.sem
		return 0, ErrClosed
	}
	if n := len(p.idle); n > 0 {
		s := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return s, nil
	}
	p.mu.Unlock()
	s, err := p.ctx.OpenSession(p.slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if err != nil {
		<-p.sem
		return 0, classify("opening a session", err)
	}
	return s, nil
}

// put returns a session after use; err is what the use returned, and a
// session that failed is closed rather than reused.
func (p *pool) put(s p11.SessionHandle, err error) {
	p.mu.Lock()
	if p.closed || sessionBroken(err) {
		p.mu.Unlock()
		p.ctx.CloseSession(s)
	} else {
		p.idle = append(p.idle, s)
		p.mu.Unlock()
	}
	<-p.sem
}

// close refuses new gets, waits until every session in use is returned,
// and closes them all.
func (p *pool) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	close(p.done)
	p.mu.Unlock()
	for range cap(p.sem) {
		p.sem <- struct{}{}
	}
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, s := range idle {
		p.ctx.CloseSession(s)
	}
}

// with runs f on a session of the token; exclusive says whether f
// creates keys.
func (t *token) with(ctx context.Context, exclusive bool, f func(s p11.SessionHandle) error) error {
	if exclusive {
		t.keysMu.Lock()
		defer t.keysMu.Unlock()
	} else {
		t.keysMu.RLock()
		defer t.keysMu.RUnlock()
	}
	s, err := t.pool.get(ctx)
	if err != nil {
		return err
	}
	err = f(s)
	t.pool.put(s, err)
	return err
}
