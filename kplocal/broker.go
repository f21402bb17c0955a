package kplocal

import (
	"net/http"
	"slices"
	"strings"
)

// The HPCS broker's instance lookup, served when Config.Service is
// ServiceHPCS:
//
//	GET /crypto_v2/instances/{instance_id}
//	authorization: Bearer <IAM token>
//
// answers the instance's key-management endpoints as host:port without a
// scheme, as the HPCS broker does:
//
//	{"instance_id":"…","kms":{"public":"127.0.0.1:PORT","private":"127.0.0.1:PORT"},
//	 "ep11":{"public":"127.0.0.1:PORT","private":"127.0.0.1:PORT"}}
//
// Every host:port is the address the request was sent to (its Host), so a
// client reaches the key-management API at https://<kms.public>/api/v2 —
// on this same server. EP11 (GREP11) is not served; its entries only give
// the answer its usual shape. A missing or invalid token, or a token whose
// API key has no access to the instance, is 401; an unknown instance 404.

const brokerPrefix = "/crypto_v2/instances/"

type brokerEndpoints struct {
	Public  string `json:"public"`
	Private string `json:"private"`
}

type brokerInstance struct {
	InstanceID string          `json:"instance_id"`
	KMS        brokerEndpoints `json:"kms"`
	EP11       brokerEndpoints `json:"ep11"`
}

// handleBroker serves GET /crypto_v2/instances/{instance_id}.
func (s *Server) handleBroker(w http.ResponseWriter, r *http.Request) (int, string) {
	if s.cfg.Service != ServiceHPCS {
		return writeError(w, errNoRoute()), ""
	}
	s.count(opBroker)
	id := strings.TrimPrefix(r.URL.Path, brokerPrefix)
	if r.Method != http.MethodGet {
		return writeError(w, errMethod(r.Method, http.MethodGet)), opBroker.String()
	}
	claims, ok := s.validToken(r.Header.Get("authorization"), s.now())
	switch {
	case !ok:
		return writeError(w, errUnauthorized()), opBroker.String()
	case s.instances[id] == nil || strings.Contains(id, "/"):
		return writeError(w, plainError(http.StatusNotFound, "The instance could not be found")), opBroker.String()
	case !slices.Contains(claims.Instances, id):
		return writeError(w, errUnauthorized()), opBroker.String()
	}
	ep := brokerEndpoints{Public: r.Host, Private: r.Host}
	writeJSON(w, http.StatusOK, brokerInstance{InstanceID: id, KMS: ep, EP11: ep})
	return http.StatusOK, opBroker.String()
}
