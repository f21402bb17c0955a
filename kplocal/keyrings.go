package kplocal

import (
	"net/http"
	"slices"
	"strings"
)

const (
	keyRingType       = "application/vnd.ibm.kms.key_ring+json"
	whatKeyRing       = "Key ring could not be created"
	whatKeyRingDelete = "Key ring could not be deleted"
	whatKeyRings      = "Key rings could not be retrieved"
)

// keyRingView is the wire shape of a key ring.
type keyRingView struct {
	ID           string    `json:"id"`
	CreationDate *jsonTime `json:"creationDate"`
	CreatedBy    string    `json:"createdBy"`
}

func errKeyRingNotFound(what string) *apiError {
	return plainError(http.StatusNotFound, what+": the key ring does not exist")
}

// createKeyRing serves POST /key_rings/{id}: 201 with an empty body.
func (s *Server) createKeyRing(c *call) (reply, error) {
	if !keyRingPattern.MatchString(c.ref) {
		return reply{}, errInvalidField(whatKeyRing, "key_ring_id", "2 to 100 letters, digits or dashes")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.inst.rings[c.ref] != nil {
		return reply{}, plainError(http.StatusConflict, whatKeyRing+": a key ring with this ID already exists")
	}
	c.inst.rings[c.ref] = &keyRing{ID: c.ref, Created: c.now, CreatedBy: c.caller}
	if err := s.persist(); err != nil {
		delete(c.inst.rings, c.ref)
		return reply{}, err
	}
	return reply{status: http.StatusCreated}, nil
}

// listKeyRings serves GET /key_rings[?limit&offset&totalCount], sorted by
// ID ("default" included).
func (s *Server) listKeyRings(c *call) (reply, error) {
	query := c.r.URL.Query()
	limit, err := intParam(query, "limit", 51, 1, 5000, whatKeyRings)
	if err != nil {
		return reply{}, err
	}
	offset, err := intParam(query, "offset", 0, 0, maxInt, whatKeyRings)
	if err != nil {
		return reply{}, err
	}
	totalCount, err := boolParam(query, "totalCount", whatKeyRings)
	if err != nil {
		return reply{}, err
	}
	s.mu.Lock()
	all := make([]keyRingView, 0, len(c.inst.rings))
	for _, r := range c.inst.rings {
		all = append(all, keyRingView{ID: r.ID, CreationDate: jt(r.Created), CreatedBy: r.CreatedBy})
	}
	s.mu.Unlock()
	slices.SortFunc(all, func(a, b keyRingView) int { return strings.Compare(a.ID, b.ID) })
	views := page(all, offset, limit)
	if views == nil {
		views = []keyRingView{}
	}
	md := collectionMetadata{CollectionType: keyRingType, CollectionTotal: len(views)}
	if totalCount {
		n := len(all)
		md.TotalCount = &n
	}
	return reply{status: http.StatusOK, body: collection[keyRingView]{Metadata: md, Resources: views}}, nil
}

// deleteKeyRing serves DELETE /key_rings/{id}[?force=true] → 204. A ring
// holding a key that is not destroyed cannot be deleted; without force,
// neither can a ring holding destroyed keys (force moves them to
// "default").
func (s *Server) deleteKeyRing(c *call) (reply, error) {
	force, err := boolParam(c.r.URL.Query(), "force", whatKeyRingDelete)
	if err != nil {
		return reply{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ring := c.inst.rings[c.ref]
	switch {
	case ring == nil:
		return reply{}, errKeyRingNotFound(whatKeyRingDelete)
	case ring.ID == defaultKeyRing:
		return reply{}, newAPIError(http.StatusBadRequest, whatKeyRingDelete, "INVALID_FIELD_ERR",
			"The field 'key_ring_id' must be: a key ring other than the default key ring", fieldTarget("key_ring_id"))
	}
	var destroyed []*key
	for _, k := range s.keys {
		if k.Instance != c.inst.id || k.KeyRingID != ring.ID {
			continue
		}
		if k.stateAt(c.now) != stateDestroyed || !force {
			return reply{}, newAPIError(http.StatusConflict, whatKeyRingDelete, "KEY_RING_NOT_EMPTY_ERR",
				"The specified key ring contains at least one key (in any state)", nil)
		}
		destroyed = append(destroyed, k)
	}
	for _, k := range destroyed {
		k.KeyRingID = defaultKeyRing
	}
	delete(c.inst.rings, ring.ID)
	if err := s.persist(); err != nil {
		for _, k := range destroyed {
			k.KeyRingID = ring.ID
		}
		c.inst.rings[ring.ID] = ring
		return reply{}, err
	}
	return reply{status: http.StatusNoContent}, nil
}
