package kplocal

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Server is an in-process Key Protect emulator. It is an [http.Handler]
// serving the Key Protect API under /api/v2 and the IAM token exchange under
// /identity/token (and /oidc/token, the official Go client's default path).
// Its methods are safe for concurrent use.
type Server struct {
	cfg         Config
	tokenSecret []byte
	counters    counters

	rngMu     sync.Mutex
	rng       *rand.Rand // decides injected faults; seeded from Config.Seed
	faultHits []int      // per Config.Faults rule: requests it has faulted

	inFlight atomic.Int64 // /api/v2 requests being served

	principals []principal // callers; principals[0] is Config's APIKey

	mu        sync.Mutex
	instances map[string]*instance // by instance ID
	keys      map[string]*key      // by key ID, every instance's
	aliases   map[string]string    // aliasKey(instance, alias) -> key ID
}

// New returns a Server for cfg. With cfg.StateFile set it loads the file if
// it exists (an unreadable or inconsistent file is an error) and writes it
// at once, so a path that cannot be written fails here rather than on the
// first change.
func New(cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	principals, instances, err := setupAccounts(cfg)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:        cfg,
		rng:        rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x6b706c6f63616c)), // "kplocal"
		principals: principals,
		faultHits:  make([]int, len(cfg.Faults)),
		instances:  instances,
		keys:       make(map[string]*key),
		aliases:    make(map[string]string),
	}
	if cfg.StateFile != "" {
		loaded, err := s.load()
		if err != nil {
			return nil, err
		}
		if !loaded {
			s.tokenSecret = randomBytes(tokenSecretSize)
		}
		if err := s.persist(); err != nil {
			return nil, err
		}
	} else {
		s.tokenSecret = randomBytes(tokenSecretSize)
	}
	return s, nil
}

// Config returns the server's configuration with defaults filled in, so a
// test can read back a generated instance ID or API key.
func (s *Server) Config() Config { return s.cfg }

// KeyCRN returns the CRN of the key with the given ID:
// crn:v1:bluemix:public:SERVICE:REGION:a/ACCOUNT:INSTANCE:key:KEYID, where
// SERVICE is Config.Service and INSTANCE the key's instance (the primary
// instance, Config.InstanceID, for an unknown key).
func (s *Server) KeyCRN(keyID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	inst := s.cfg.InstanceID
	if k := s.keys[keyID]; k != nil {
		inst = k.Instance
	}
	return s.crn(inst, "key", keyID)
}

// crn returns the CRN of a resource of an instance.
func (s *Server) crn(instanceID, kind, id string) string {
	account := s.cfg.Account
	if inst := s.instances[instanceID]; inst != nil {
		account = inst.account
	}
	return fmt.Sprintf("crn:v1:bluemix:public:%s:%s:a/%s:%s:%s:%s", s.cfg.Service, s.cfg.Region, account, instanceID, kind, id)
}

func (s *Server) now() time.Time { return s.cfg.Now() }

// ServeHTTP implements [http.Handler].
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	corr := r.Header.Get("correlation-id")
	if corr == "" {
		corr = newUUID()
	}
	w.Header().Set("correlation-id", corr)

	if isAPI := r.URL.Path == "/api/v2" || strings.HasPrefix(r.URL.Path, "/api/v2/"); isAPI {
		n := s.inFlight.Add(1)
		defer s.inFlight.Add(-1)
		s.counters.notePeak(n)
		if max := s.cfg.MaxConcurrent; max > 0 && n > int64(max) {
			s.counters.requests.Add(1)
			s.counters.rateLimited.Add(1)
			w.Header().Set("Retry-After", retryAfter(s.cfg.RetryAfter))
			writeError(w, plainError(http.StatusTooManyRequests,
				"Too many requests: Please wait a few minutes and try again"))
			return
		}
	}

	if d := s.cfg.Latency; d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}

	var status int
	var opName string
	switch p := r.URL.Path; {
	case p == "/identity/token" || p == "/oidc/token":
		status, opName = s.handleToken(w, r)
	case p == "/api/v2" || strings.HasPrefix(p, "/api/v2/"):
		status, opName = s.serveAPI(w, r)
	case strings.HasPrefix(p, brokerPrefix):
		status, opName = s.handleBroker(w, r)
	default:
		status = writeError(w, plainError(http.StatusNotFound, "The requested resource could not be found"))
	}
	if l := s.cfg.Logger; l != nil {
		l.Info("request", "method", r.Method, "path", r.URL.Path, "status", status,
			"op", opName, "duration", time.Since(start), "correlation_id", corr)
	}
}

// call is one routed /api/v2 request.
type call struct {
	r      *http.Request
	inst   *instance // the bluemix-instance
	caller string    // IAM ID of the token's API key
	ref    string    // key ID or alias from the path
	alias  string    // alias path segment of /keys/{id}/aliases/{alias}
	body   []byte    // nil when the request has no body
	now    time.Time
}

// reply is a successful answer: a status and an optional JSON body.
type reply struct {
	status  int
	body    any
	headers map[string]string
}

type handlerFunc func(*call) (reply, error)

// serveAPI serves one /api/v2 request and returns the status written and
// the operation's name.
func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request) (int, string) {
	s.counters.requests.Add(1)
	if status, faulted := s.injectFault(w); faulted {
		return status, "fault"
	}
	now := s.now()
	claims, ok := s.validToken(r.Header.Get("authorization"), now)
	if !ok {
		s.counters.unauthorized.Add(1)
		return writeError(w, errUnauthorized()), ""
	}
	instID := r.Header.Get("bluemix-instance")
	if instID == "" {
		return writeError(w, plainError(http.StatusBadRequest, "Missing required header: bluemix-instance")), ""
	}
	inst := s.instances[instID] // never changes after New: no lock needed
	if inst == nil || !slices.Contains(claims.Instances, instID) {
		s.counters.unauthorized.Add(1)
		return writeError(w, errUnauthorized()), ""
	}

	if !s.allowedFrom(inst, r.RemoteAddr) {
		s.counters.unauthorized.Add(1)
		return writeError(w, errUnauthorized()), ""
	}

	c := &call{r: r, now: now, inst: inst, caller: claims.Sub}
	o, h, err := s.route(c)
	if err != nil {
		return writeError(w, err), ""
	}
	fault := s.pickFault(o)
	if fault != nil && !fault.afterServing() {
		s.counters.faults.Add(1)
		if fault.Mode == FaultReset {
			resetConnection(w)
			return 0, "fault"
		}
		return s.writeFaultStatus(w, fault), "fault"
	}
	s.count(o)
	if r.Body != nil && r.Method != http.MethodGet && r.Method != http.MethodHead {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
		if err != nil {
			return writeError(w, errBadBody("Request could not be processed",
				fmt.Sprintf("request body exceeds %d bytes or could not be read", MaxBodyBytes))), o.String()
		}
		if len(bytes.TrimSpace(body)) > 0 {
			c.body = body
		}
	}
	rep, herr := h(c)
	if fault != nil {
		s.counters.faults.Add(1)
		switch fault.Mode {
		case FaultStatusAfterServing:
			return s.writeFaultStatus(w, fault), o.String()
		case FaultResetAfterServing:
			resetConnection(w)
			return 0, o.String()
		case FaultSlowBody:
			if herr == nil {
				writeSlowly(r.Context(), w, rep, fault.SlowBodyDelay)
				return rep.status, o.String()
			}
		}
	}
	if herr != nil {
		var aerr *apiError
		if !errors.As(herr, &aerr) {
			if l := s.cfg.Logger; l != nil {
				l.Error("internal error", "op", o.String(), "error", herr)
			}
			aerr = plainError(http.StatusInternalServerError, "The request could not be completed")
		}
		return writeError(w, aerr), o.String()
	}
	for name, v := range rep.headers {
		w.Header().Set(name, v)
	}
	if rep.body == nil {
		if r.Method == http.MethodHead {
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
		}
		w.WriteHeader(rep.status)
		return rep.status, o.String()
	}
	writeJSON(w, rep.status, rep.body)
	return rep.status, o.String()
}

// allowedFrom reports whether the instance's allowedIP policy lets a
// request from remoteAddr (host:port) through. Key Protect answers a denied
// address 401.
func (s *Server) allowedFrom(inst *instance, remoteAddr string) bool {
	ap, err := netip.ParseAddrPort(remoteAddr)
	if err != nil {
		return true // not an IP connection (a test's fake address): nothing to judge
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return inst.allowsIP(ap.Addr())
}

// route maps a request to its operation and handler.
func (s *Server) route(c *call) (op, handlerFunc, *apiError) {
	r := c.r
	segs := strings.Split(strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/api/v2/"), "/"), "/")
	for _, seg := range segs {
		if seg == "" {
			return opNone, nil, errNoRoute()
		}
	}
	type methods map[string]struct {
		o op
		h handlerFunc
	}
	var m methods
	switch {
	case len(segs) == 1 && segs[0] == "keys":
		m = methods{
			http.MethodGet:  {opList, s.listKeys},
			http.MethodHead: {opCount, s.countKeys},
			http.MethodPost: {opCreate, func(c *call) (reply, error) { return s.createKey(c, false) }},
		}
	case len(segs) == 1 && segs[0] == "key_rings":
		m = methods{http.MethodGet: {opListKeyRings, s.listKeyRings}}
	case len(segs) == 2 && segs[0] == "key_rings":
		c.ref = segs[1]
		m = methods{
			http.MethodPost:   {opCreateKeyRing, s.createKeyRing},
			http.MethodDelete: {opDeleteKeyRing, s.deleteKeyRing},
		}
	case len(segs) == 2 && segs[0] == "instance" && segs[1] == "policies":
		m = methods{
			http.MethodGet: {opGetInstancePolicies, s.getInstancePolicies},
			http.MethodPut: {opPutInstancePolicies, s.putInstancePolicies},
		}
	case len(segs) == 1 && segs[0] == "import_token":
		m = methods{
			http.MethodPost: {opCreateImportToken, s.createImportToken},
			http.MethodGet:  {opGetImportToken, s.getImportToken},
		}
	case len(segs) == 1 && segs[0] == "lockers":
		m = methods{
			http.MethodPost: {opCreateLocker, s.createLocker},
			http.MethodGet:  {opListLockers, s.listLockers},
		}
	case len(segs) == 2 && segs[0] == "lockers":
		c.ref = segs[1]
		m = methods{http.MethodGet: {opGetLocker, s.getLocker}}
	case len(segs) == 1 && segs[0] == "keys_with_policy_overrides":
		m = methods{http.MethodPost: {opCreate, func(c *call) (reply, error) { return s.createKey(c, true) }}}
	case len(segs) >= 2 && segs[0] == "keys":
		c.ref = segs[1]
		switch {
		case len(segs) == 2:
			if r.Method == http.MethodPost {
				return s.routeAction(r.URL.Query().Get("action"), true)
			}
			m = methods{
				http.MethodGet:    {opGet, func(c *call) (reply, error) { return s.getKey(c, true) }},
				http.MethodDelete: {opDelete, s.deleteKey},
				http.MethodPatch:  {opSetKeyRing, s.setKeyRing},
			}
		case len(segs) == 3 && segs[2] == "metadata":
			m = methods{http.MethodGet: {opMetadata, func(c *call) (reply, error) { return s.getKey(c, false) }}}
		case len(segs) == 3 && segs[2] == "versions":
			m = methods{http.MethodGet: {opVersions, s.listVersions}}
		case len(segs) == 3 && segs[2] == "restore":
			m = methods{http.MethodPost: {opRestore, s.restoreKey}}
		case len(segs) == 3 && segs[2] == "purge":
			m = methods{http.MethodDelete: {opPurge, s.purgeKey}}
		case len(segs) == 3 && segs[2] == "policies":
			m = methods{
				http.MethodGet: {opGetPolicies, s.getPolicies},
				http.MethodPut: {opPutPolicies, s.putPolicies},
			}
		case len(segs) == 4 && segs[2] == "actions":
			if r.Method != http.MethodPost {
				return opNone, nil, errMethod(r.Method, http.MethodPost)
			}
			return s.routeAction(segs[3], false)
		case len(segs) == 4 && segs[2] == "aliases":
			c.alias = segs[3]
			m = methods{
				http.MethodPost:   {opCreateAlias, s.createAlias},
				http.MethodDelete: {opDeleteAlias, s.deleteAlias},
			}
		}
	}
	if m == nil {
		return opNone, nil, errNoRoute()
	}
	e, ok := m[r.Method]
	if !ok {
		allowed := make([]string, 0, len(m))
		for meth := range m {
			allowed = append(allowed, meth)
		}
		return opNone, nil, errMethod(r.Method, allowed...)
	}
	return e.o, e.h, nil
}

// routeAction maps a key action, from /keys/{id}/actions/{action} or the
// legacy /keys/{id}?action={action}, to its operation and handler.
func (s *Server) routeAction(action string, legacy bool) (op, handlerFunc, *apiError) {
	var o op
	var h handlerFunc
	switch action {
	case "wrap":
		o, h = opWrap, s.wrap
	case "unwrap":
		o, h = opUnwrap, s.unwrap
	case "rewrap":
		o, h = opRewrap, s.rewrap
	case "rotate":
		o, h = opRotate, s.rotate
	case "disable":
		o, h = opDisable, s.disable
	case "enable":
		o, h = opEnable, s.enable
	case "setKeyForDeletion":
		o, h = opSetKeyForDeletion, s.setKeyForDeletion
	case "unsetKeyForDeletion":
		o, h = opUnsetKeyForDeletion, s.unsetKeyForDeletion
	case "restore":
		if legacy {
			o, h = opRestore, s.restoreKey
		}
	case "sync":
		if !legacy {
			o, h = opSync, s.syncKey
		}
	}
	if h != nil {
		return o, h, nil
	}
	if legacy {
		return opNone, nil, errInvalidQuery(whatAction, "action",
			"one of wrap, unwrap, rewrap, rotate, disable, enable, restore, setKeyForDeletion, unsetKeyForDeletion")
	}
	return opNone, nil, errNoRoute()
}

func errNoRoute() *apiError {
	return plainError(http.StatusNotFound, "The requested resource could not be found")
}

func errMethod(got string, allowed ...string) *apiError {
	slices.Sort(allowed)
	e := plainError(http.StatusMethodNotAllowed, fmt.Sprintf("Method %s is not allowed on this resource", got))
	e.allow = strings.Join(allowed, ", ")
	return e
}

// injectFault decides whether this request gets an injected fault, and if
// so writes it.
func (s *Server) injectFault(w http.ResponseWriter) (int, bool) {
	if s.cfg.FaultRate <= 0 {
		return 0, false
	}
	s.rngMu.Lock()
	hit := s.rng.Float64() < s.cfg.FaultRate
	tooMany := s.rng.IntN(2) == 0
	s.rngMu.Unlock()
	if !hit {
		return 0, false
	}
	s.counters.faults.Add(1)
	w.Header().Set("Retry-After", retryAfter(s.cfg.RetryAfter))
	if tooMany {
		return writeError(w, plainError(http.StatusTooManyRequests,
			"Too many requests: Please wait a few minutes and try again (fault injected by kplocal)")), true
	}
	return writeError(w, plainError(http.StatusServiceUnavailable,
		"Key Protect is currently unavailable: Your request could not be processed: Please try again later (fault injected by kplocal)")), true
}

// writeJSON writes v as a JSON body with the given status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil { // only plain structs are written; cannot happen
		status, body = http.StatusInternalServerError, []byte(`{"errorMsg":"Internal Server Error"}`)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// writeError writes e as a Key Protect error envelope and returns its status.
func writeError(w http.ResponseWriter, e *apiError) int {
	if e.allow != "" {
		w.Header().Set("Allow", e.allow)
	}
	writeJSON(w, e.status, e.envelope())
	return e.status
}

// decodeBody decodes a JSON request body into v. It reports false when the
// body is absent or the literal null.
func decodeBody(c *call, what string, v any) (bool, error) {
	return decode(c, what, v, false)
}

// decodeStrict is decodeBody refusing fields v does not know: a misspelt
// field (say "additionalAuthData" for "aad") must not be silently ignored.
func decodeStrict(c *call, what string, v any) (bool, error) {
	return decode(c, what, v, true)
}

func decode(c *call, what string, v any, strict bool) (bool, error) {
	if c.body == nil || string(bytes.TrimSpace(c.body)) == "null" {
		return false, nil
	}
	dec := json.NewDecoder(bytes.NewReader(c.body))
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		return false, errBadBody(what, describeJSONError(err))
	}
	if dec.More() {
		return false, errBadBody(what, "unexpected data after the JSON value")
	}
	return true, nil
}

// describeJSONError describes a decoding error without quoting the body,
// which may hold key material.
func describeJSONError(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("malformed JSON at byte offset %d", syn.Offset)
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			field = "the body"
		}
		return fmt.Sprintf("%s must be a JSON %s", field, jsonKind(typ.Type.Kind().String()))
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		return "truncated JSON"
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return err.Error() // names the field only
	default:
		return "malformed JSON"
	}
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "string"
	case "bool":
		return "boolean"
	case "slice", "array":
		return "array"
	case "struct", "map", "ptr":
		return "object"
	default:
		return "number"
	}
}
