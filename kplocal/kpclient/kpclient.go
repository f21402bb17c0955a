// Package kpclient configures this repository's Key Protect client
// (kms/keyprotect) for a running kplocal server. It is a package of its own
// so that kplocal need not import the client, whose tests import kplocal.
package kpclient

import (
	"github.com/kpcrypt/kpcrypt/kms/keyprotect"
	"github.com/kpcrypt/kpcrypt/kplocal"
)

// Config returns a ready keyprotect.Config for the primary account and
// instance of r: BaseURL, IAMURL, APIKey, InstanceID and Service; and, for
// a server with TLS, an HTTPClient that trusts only the server's CA (never
// the process-wide roots). Set the other fields (retries, timeouts) as
// needed.
func Config(r *kplocal.Running) keyprotect.Config {
	info := r.ClientInfo()
	cfg := keyprotect.Config{
		BaseURL:    info.BaseURL,
		IAMURL:     info.IAMURL,
		APIKey:     info.APIKey,
		InstanceID: info.InstanceID,
		Service:    keyprotect.KeyProtect,
	}
	if r.Config().Service == kplocal.ServiceHPCS {
		cfg.Service = keyprotect.HPCS
	}
	if r.Config().TLS {
		cfg.HTTPClient = r.HTTPClient()
	}
	return cfg
}

// Client returns a client for the primary instance of r.
func Client(r *kplocal.Running) (*keyprotect.Client, error) {
	return keyprotect.New(Config(r))
}
