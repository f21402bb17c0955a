package kplocal

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// lookup finds the key named by c.ref (a key ID or an alias), narrowed to
// the x-kms-key-ring header's ring when one is given. Keys deleted more than
// 90 days ago count as purged. The caller holds s.mu.
func (s *Server) lookup(c *call) (*key, error) {
	if !isUUID(c.ref) && !aliasPattern.MatchString(c.ref) {
		return nil, errMalformedID()
	}
	k := s.keys[c.ref]
	if k == nil {
		k = s.keys[s.aliases[aliasKey(c.inst.id, c.ref)]]
	}
	if k == nil || k.Instance != c.inst.id {
		return nil, errKeyNotFound()
	}
	if ring := c.r.Header.Get("x-kms-key-ring"); ring != "" && ring != k.KeyRingID {
		return nil, errKeyNotFound()
	}
	if k.Deleted != nil && !c.now.Before(k.Deleted.Add(autoPurgeAfter)) {
		return nil, errKeyNotFound()
	}
	return k, nil
}

// update runs change on k and persists the result. If change fails, or
// persisting fails, k is left as it was. The caller holds s.mu.
func (s *Server) update(k *key, change func(k *key) error) error {
	saved := k.clone()
	if err := change(k); err != nil {
		*k = *saved
		return err
	}
	if err := s.persist(); err != nil {
		*k = *saved
		return err
	}
	return nil
}

// aliasKey is the key of s.aliases for an alias of an instance: aliases
// are unique within an instance only.
func aliasKey(instanceID, alias string) string { return instanceID + "/" + alias }

// insert adds a new key and persists. The caller holds s.mu.
func (s *Server) insert(k *key) error {
	s.keys[k.ID] = k
	for _, a := range k.Aliases {
		s.aliases[aliasKey(k.Instance, a)] = k.ID
	}
	if err := s.persist(); err != nil {
		s.remove(k)
		return err
	}
	return nil
}

// remove drops a key and its aliases from memory. The caller holds s.mu.
func (s *Server) remove(k *key) {
	delete(s.keys, k.ID)
	for _, a := range k.Aliases {
		delete(s.aliases, aliasKey(k.Instance, a))
	}
}

// stateFile is the persisted form of a server's state.
type stateFile struct {
	Format      int    `json:"format"`
	InstanceID  string `json:"instanceID"`
	TokenSecret []byte `json:"tokenSecret"`
	Keys        []*key `json:"keys"`

	// Instances holds the key rings and instance policies of every
	// instance (absent in files of older kplocal versions).
	Instances []instanceState `json:"instances,omitempty"`
}

const stateFormat = 1

// persist writes the state file, if there is one. The caller holds s.mu
// (or is New, before the server is shared).
func (s *Server) persist() error {
	if s.cfg.StateFile == "" {
		return nil
	}
	st := stateFile{Format: stateFormat, InstanceID: s.cfg.InstanceID, TokenSecret: s.tokenSecret, Keys: make([]*key, 0, len(s.keys))}
	for _, k := range s.keys {
		st.Keys = append(st.Keys, k)
	}
	slices.SortFunc(st.Keys, func(a, b *key) int { return strings.Compare(a.ID, b.ID) })
	for _, inst := range s.instances {
		is := instanceState{ID: inst.id}
		for _, r := range inst.rings {
			is.Rings = append(is.Rings, r)
		}
		for _, p := range inst.policies {
			is.Policies = append(is.Policies, p)
		}
		slices.SortFunc(is.Rings, func(a, b *keyRing) int { return strings.Compare(a.ID, b.ID) })
		slices.SortFunc(is.Policies, func(a, b *instancePolicy) int { return strings.Compare(a.Type, b.Type) })
		st.Instances = append(st.Instances, is)
	}
	slices.SortFunc(st.Instances, func(a, b instanceState) int { return strings.Compare(a.ID, b.ID) })
	data, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("kplocal: encoding state: %w", err)
	}
	if err := writeFileAtomic(s.cfg.StateFile, data); err != nil {
		if l := s.cfg.Logger; l != nil {
			l.Error("writing state file failed", "path", s.cfg.StateFile, "error", err)
		}
		return err
	}
	return nil
}

// load reads the state file. It reports false when the file does not exist.
func (s *Server) load() (bool, error) {
	data, err := os.ReadFile(s.cfg.StateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("kplocal: reading state: %w", err)
	}
	var st stateFile
	if err := json.Unmarshal(data, &st); err != nil {
		return false, fmt.Errorf("kplocal: state file %s: %s", s.cfg.StateFile, describeJSONError(err))
	}
	if st.Format != stateFormat {
		return false, fmt.Errorf("kplocal: state file %s has format %d, want %d", s.cfg.StateFile, st.Format, stateFormat)
	}
	if st.InstanceID != s.cfg.InstanceID {
		return false, fmt.Errorf("kplocal: state file %s belongs to instance %q, not %q", s.cfg.StateFile, st.InstanceID, s.cfg.InstanceID)
	}
	if len(st.TokenSecret) != tokenSecretSize {
		return false, fmt.Errorf("kplocal: state file %s: bad token secret", s.cfg.StateFile)
	}
	s.tokenSecret = st.TokenSecret
	for _, is := range st.Instances {
		inst := s.instances[is.ID]
		if inst == nil {
			continue // an instance no longer configured: its rings and policies are dropped
		}
		for _, r := range is.Rings {
			if r == nil || !keyRingPattern.MatchString(r.ID) {
				return false, fmt.Errorf("kplocal: state file %s: malformed key ring", s.cfg.StateFile)
			}
			inst.rings[r.ID] = r
		}
		for _, p := range is.Policies {
			if p == nil || !knownInstancePolicy(p.Type) {
				return false, fmt.Errorf("kplocal: state file %s: malformed instance policy", s.cfg.StateFile)
			}
			inst.policies[p.Type] = p
		}
	}
	for _, k := range st.Keys {
		if err := checkStoredKey(k); err != nil {
			return false, fmt.Errorf("kplocal: state file %s: %w", s.cfg.StateFile, err)
		}
		if k.Instance == "" {
			k.Instance = s.cfg.InstanceID
		}
		inst := s.instances[k.Instance]
		if inst == nil {
			return false, fmt.Errorf("kplocal: state file %s: key %s belongs to instance %s, which is not configured", s.cfg.StateFile, k.ID, k.Instance)
		}
		if inst.rings[k.KeyRingID] == nil {
			inst.rings[k.KeyRingID] = &keyRing{ID: k.KeyRingID, Created: k.Created, CreatedBy: createdByID}
		}
		if s.keys[k.ID] != nil {
			return false, fmt.Errorf("kplocal: state file %s: duplicate key %s", s.cfg.StateFile, k.ID)
		}
		s.keys[k.ID] = k
		for _, a := range k.Aliases {
			if _, dup := s.aliases[aliasKey(k.Instance, a)]; dup {
				return false, fmt.Errorf("kplocal: state file %s: alias %q used twice", s.cfg.StateFile, a)
			}
			s.aliases[aliasKey(k.Instance, a)] = k.ID
		}
	}
	return true, nil
}

// checkStoredKey rejects a key that the handlers could not serve safely.
func checkStoredKey(k *key) error {
	if k == nil || !isUUID(k.ID) || len(k.Versions) == 0 {
		return errors.New("malformed key record")
	}
	if k.Standard && len(k.Versions) != 1 {
		return fmt.Errorf("standard key %s has %d versions", k.ID, len(k.Versions))
	}
	for _, v := range k.Versions {
		n := len(v.Material)
		if v.ID == "" || (!k.Standard && n != 16 && n != 24 && n != 32) || (k.Standard && (n == 0 || n > maxStandardMaterial)) {
			return fmt.Errorf("key %s has a malformed version", k.ID)
		}
	}
	return nil
}

// writeFileAtomic replaces path with data: it writes a temporary file in the
// same directory with mode 0600, syncs it, renames it over path and syncs
// the directory.
func writeFileAtomic(path string, data []byte) error {
	return writeFileAtomicMode(path, data, 0o600)
}

// writeFileAtomicMode is writeFileAtomic with the given file mode.
func writeFileAtomicMode(path string, data []byte, mode os.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("kplocal: writing state: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if err = f.Chmod(mode); err != nil {
		return fmt.Errorf("kplocal: writing state: %w", err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("kplocal: writing state: %w", err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("kplocal: writing state: %w", err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("kplocal: writing state: %w", err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("kplocal: writing state: %w", err)
	}
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync() // best effort: some file systems cannot sync a directory
		_ = d.Close()
	}
	return nil
}
