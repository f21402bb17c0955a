package kplocal

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"
)

// Running is a [Server] listening on a real TCP address. It embeds the
// Server, so its Stats, CreateKey, KeyCRN and Config methods are at hand.
type Running struct {
	*Server
	baseURL string
	tls     *serverTLS // nil without Config.TLS
	http    *http.Server
	done    chan struct{}
	err     error // set before done is closed
}

// Start creates a Server for cfg and serves it on 127.0.0.1 with a free
// port: over HTTP, or HTTPS with Config.TLS. Close it when done.
func Start(cfg Config) (*Running, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r, err := StartListener(cfg, ln)
	if err != nil {
		_ = ln.Close()
		return nil, err
	}
	return r, nil
}

// StartListener creates a Server for cfg and serves it on ln, which it
// takes over (Close closes it): over HTTP, or with Config.TLS over HTTPS
// with a fresh CA, written to Config.CAFile when that is set.
func StartListener(cfg Config, ln net.Listener) (*Running, error) {
	s, err := New(cfg)
	if err != nil {
		return nil, err
	}
	scheme := "http://"
	var st *serverTLS
	if cfg.TLS {
		if st, err = newServerTLS(); err != nil {
			return nil, err
		}
		if cfg.CAFile != "" {
			if err := writeFileAtomicMode(cfg.CAFile, st.caPEM, 0o644); err != nil {
				return nil, fmt.Errorf("kplocal: writing the CA file: %w", err)
			}
		}
		ln = tls.NewListener(ln, st.config)
		scheme = "https://"
	}
	r := &Running{
		Server:  s,
		tls:     st,
		baseURL: scheme + dialableAddr(ln.Addr()),
		http: &http.Server{
			Handler:           s,
			ReadHeaderTimeout: 10 * time.Second,
			MaxHeaderBytes:    64 << 10,
		},
		done: make(chan struct{}),
	}
	go func() {
		defer close(r.done)
		if err := r.http.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			r.err = err
		}
	}()
	return r, nil
}

// dialableAddr returns addr with an unspecified IP (0.0.0.0, ::) replaced
// by the loopback address, so the base URL can be dialled.
func dialableAddr(addr net.Addr) string {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok {
		return addr.String()
	}
	ip := tcp.IP
	switch {
	case ip == nil || ip.To4() != nil && ip.IsUnspecified():
		ip = net.IPv4(127, 0, 0, 1)
	case ip.IsUnspecified():
		ip = net.IPv6loopback
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(tcp.Port))
}

// BaseURL returns the server's base URL, such as http://127.0.0.1:41234
// (https://… with Config.TLS). The Key Protect API is under
// BaseURL()+"/api/v2" and the IAM token endpoint is
// BaseURL()+"/identity/token": the IAM base URL is BaseURL() itself.
func (r *Running) BaseURL() string { return r.baseURL }

// TokenURL returns the IAM token endpoint, BaseURL()+"/identity/token": the
// official Go client's ClientConfig.TokenURL. (This project's
// keyprotect.Config takes the IAM base URL instead: see [ClientInfo].)
func (r *Running) TokenURL() string { return r.baseURL + "/identity/token" }

// CertPool returns a pool holding the server's CA certificate, for a
// client's tls.Config.RootCAs, or nil without Config.TLS.
func (r *Running) CertPool() *x509.CertPool {
	if r.tls == nil {
		return nil
	}
	return r.tls.pool.Clone()
}

// CACertPEM returns the server's CA certificate in PEM form, or nil
// without Config.TLS.
func (r *Running) CACertPEM() []byte {
	if r.tls == nil {
		return nil
	}
	return bytes.Clone(r.tls.caPEM)
}

// HTTPClient returns a new HTTP client that trusts the server's CA (and
// only it) with Config.TLS, or a plain client without. It sets no timeout.
func (r *Running) HTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	if r.tls != nil {
		t.TLSClientConfig = &tls.Config{RootCAs: r.CertPool(), MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: t}
}

// ClientInfo is what a Key Protect client needs to reach a running kplocal,
// as plain strings (kplocal does not import the project's client).
//
// It fills this project's keyprotect.Config as BaseURL = BaseURL, IAMURL =
// IAMURL, APIKey = APIKey, InstanceID = InstanceID, with an HTTPClient
// whose RootCAs hold CAFile's certificate (or [Running.CertPool]) under
// TLS. It fills the official Go client's kp.ClientConfig as BaseURL =
// BaseURL, TokenURL = TokenURL (IAMURL + "/identity/token"), InstanceID =
// InstanceID, APIKey = APIKey.
type ClientInfo struct {
	BaseURL    string // base URL of the Key Protect API, without /api/v2
	IAMURL     string // IAM base URL (the token endpoint is IAMURL + "/identity/token")
	TokenURL   string // IAM token endpoint, IAMURL + "/identity/token"
	APIKey     string // Config.APIKey: the primary API key (a secret)
	InstanceID string // Config.InstanceID: the primary instance
	CAFile     string // Config.CAFile: the CA certificate's PEM file; empty without TLS or when not written
}

// ClientInfo returns the client configuration of the primary account and
// instance (Config.APIKey, Config.InstanceID).
func (r *Running) ClientInfo() ClientInfo {
	cfg := r.Config()
	return ClientInfo{
		BaseURL:    r.baseURL,
		IAMURL:     r.baseURL,
		TokenURL:   r.TokenURL(),
		APIKey:     cfg.APIKey,
		InstanceID: cfg.InstanceID,
		CAFile:     cfg.CAFile,
	}
}

// Done returns a channel that is closed when the server stops serving:
// after Shutdown or Close, or when serving fails (Close then reports why).
func (r *Running) Done() <-chan struct{} { return r.done }

// Shutdown stops the server gracefully: it stops accepting connections and
// waits, until ctx is done, for requests in flight to finish. If ctx ends
// first it returns ctx's error and the caller should Close.
func (r *Running) Shutdown(ctx context.Context) error {
	err := r.http.Shutdown(ctx)
	if err == nil {
		<-r.done
		err = r.err
	}
	return err
}

// Close stops the server at once, closing all connections.
func (r *Running) Close() error {
	err := r.http.Close()
	<-r.done
	if err == nil {
		err = r.err
	}
	return err
}
