package kplocal

import (
	"context"
	"errors"
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
	http    *http.Server
	done    chan struct{}
	err     error // set before done is closed
}

// Start creates a Server for cfg and serves it over HTTP on 127.0.0.1 with
// a free port. Close it when done.
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

// StartListener creates a Server for cfg and serves it over HTTP on ln,
// which it takes over (Close closes it).
func StartListener(cfg Config, ln net.Listener) (*Running, error) {
	s, err := New(cfg)
	if err != nil {
		return nil, err
	}
	r := &Running{
		Server:  s,
		baseURL: "http://" + dialableAddr(ln.Addr()),
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

// BaseURL returns the server's base URL, such as http://127.0.0.1:41234.
// The Key Protect API is under BaseURL()+"/api/v2" and the token endpoint
// is BaseURL()+"/identity/token".
func (r *Running) BaseURL() string { return r.baseURL }

// TokenURL returns the IAM token endpoint, BaseURL()+"/identity/token".
func (r *Running) TokenURL() string { return r.baseURL + "/identity/token" }

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
