package kplocal

import "sync/atomic"

// op identifies an operation the server counts.
type op int

const (
	opNone op = iota
	opToken
	opCreate
	opList
	opCount
	opGet
	opMetadata
	opSetKeyRing
	opVersions
	opDelete
	opRestore
	opPurge
	opWrap
	opUnwrap
	opRewrap
	opRotate
	opDisable
	opEnable
	opSetKeyForDeletion
	opUnsetKeyForDeletion
	opSync
	opGetPolicies
	opPutPolicies
	opCreateAlias
	opDeleteAlias
	opCreateKeyRing
	opListKeyRings
	opDeleteKeyRing
	opGetInstancePolicies
	opPutInstancePolicies
	opCreateImportToken
	opGetImportToken
	opCreateLocker
	opListLockers
	opGetLocker
	opBroker
	numOps
)

var opNames = [numOps]string{
	opNone: "", opToken: "token", opCreate: "create", opList: "list", opCount: "count",
	opGet: "get", opMetadata: "metadata", opSetKeyRing: "setKeyRing", opVersions: "versions",
	opDelete: "delete", opRestore: "restore", opPurge: "purge", opWrap: "wrap",
	opUnwrap: "unwrap", opRewrap: "rewrap", opRotate: "rotate", opDisable: "disable",
	opEnable: "enable", opSetKeyForDeletion: "setKeyForDeletion",
	opUnsetKeyForDeletion: "unsetKeyForDeletion", opSync: "sync",
	opGetPolicies: "getPolicies", opPutPolicies: "putPolicies",
	opCreateAlias: "createAlias", opDeleteAlias: "deleteAlias",
	opCreateKeyRing: "createKeyRing", opListKeyRings: "listKeyRings", opDeleteKeyRing: "deleteKeyRing",
	opGetInstancePolicies: "getInstancePolicies", opPutInstancePolicies: "putInstancePolicies",
	opCreateImportToken: "createImportToken", opGetImportToken: "getImportToken",
	opCreateLocker: "createLocker", opListLockers: "listLockers", opGetLocker: "getLocker",
	opBroker: "broker",
}

func (o op) String() string { return opNames[o] }

// Stats counts requests. Requests, Faults and Unauthorized count /api/v2
// requests; Tokens counts token-endpoint requests. Each per-operation count
// is the number of requests routed to that operation (authenticated and not
// answered with an injected fault), whether or not the operation then
// succeeded.
type Stats struct {
	Requests     int64 // all /api/v2 requests
	Faults       int64 // /api/v2 requests given an injected fault (FaultRate or Faults)
	Unauthorized int64 // /api/v2 requests answered 401 (bad, missing or expired token, wrong instance)
	Tokens       int64 // requests to /identity/token and /oidc/token
	RateLimited  int64 // /api/v2 requests answered 429 for Config.MaxConcurrent
	PeakInFlight int64 // the most /api/v2 requests seen in flight at once

	Create, List, Count, Get, Metadata, SetKeyRing, Versions int64
	Delete, Restore, Purge                                   int64
	Wrap, Unwrap, Rewrap, Rotate                             int64
	Disable, Enable, SetKeyForDeletion, UnsetKeyForDeletion  int64
	Sync, GetPolicies, PutPolicies, CreateAlias, DeleteAlias int64
	CreateKeyRing, ListKeyRings, DeleteKeyRing               int64
	GetInstancePolicies, PutInstancePolicies                 int64
	CreateImportToken, GetImportToken                        int64
	CreateLocker, ListLockers, GetLocker                     int64
	Broker                                                   int64 // HPCS endpoint lookups
}

// counters holds the live counts behind [Stats].
type counters struct {
	requests, faults, unauthorized atomic.Int64
	rateLimited, peak              atomic.Int64
	ops                            [numOps]atomic.Int64
}

// notePeak records n requests in flight if it is a new peak.
func (c *counters) notePeak(n int64) {
	for {
		p := c.peak.Load()
		if n <= p || c.peak.CompareAndSwap(p, n) {
			return
		}
	}
}

func (s *Server) count(o op) { s.counters.ops[o].Add(1) }

// Stats returns a snapshot of the request counters.
func (s *Server) Stats() Stats {
	c := &s.counters
	n := func(o op) int64 { return c.ops[o].Load() }
	return Stats{
		Requests: c.requests.Load(), Faults: c.faults.Load(), Unauthorized: c.unauthorized.Load(),
		RateLimited: c.rateLimited.Load(), PeakInFlight: c.peak.Load(),
		Tokens: n(opToken),
		Create: n(opCreate), List: n(opList), Count: n(opCount), Get: n(opGet),
		Metadata: n(opMetadata), SetKeyRing: n(opSetKeyRing), Versions: n(opVersions),
		Delete: n(opDelete), Restore: n(opRestore), Purge: n(opPurge),
		Wrap: n(opWrap), Unwrap: n(opUnwrap), Rewrap: n(opRewrap), Rotate: n(opRotate),
		Disable: n(opDisable), Enable: n(opEnable),
		SetKeyForDeletion: n(opSetKeyForDeletion), UnsetKeyForDeletion: n(opUnsetKeyForDeletion),
		Sync: n(opSync), GetPolicies: n(opGetPolicies), PutPolicies: n(opPutPolicies),
		CreateAlias: n(opCreateAlias), DeleteAlias: n(opDeleteAlias),
		CreateKeyRing: n(opCreateKeyRing), ListKeyRings: n(opListKeyRings), DeleteKeyRing: n(opDeleteKeyRing),
		GetInstancePolicies: n(opGetInstancePolicies), PutInstancePolicies: n(opPutInstancePolicies),
		CreateImportToken: n(opCreateImportToken), GetImportToken: n(opGetImportToken),
		CreateLocker: n(opCreateLocker), ListLockers: n(opListLockers), GetLocker: n(opGetLocker),
		Broker: n(opBroker),
	}
}

// ResetStats sets every counter back to zero.
func (s *Server) ResetStats() {
	c := &s.counters
	c.requests.Store(0)
	c.faults.Store(0)
	c.unauthorized.Store(0)
	c.rateLimited.Store(0)
	c.peak.Store(0)
	for i := range c.ops {
		c.ops[i].Store(0)
	}
}
