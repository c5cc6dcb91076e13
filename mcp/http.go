package mcp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
)

// RemoteUpstream describes an HTTP upstream from its endpoint URL: the
// lower-case host and the port (default 80/443 by scheme).
func RemoteUpstream(endpoint string) (Upstream, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return Upstream{}, fmt.Errorf("mcp: upstream URL %q: %w", endpoint, err)
	}
	scheme := strings.ToLower(u.Scheme)
	if (scheme != "http" && scheme != "https") || u.Hostname() == "" {
		return Upstream{}, fmt.Errorf("mcp: upstream URL %q: want http(s)://HOST[:PORT]/PATH", endpoint)
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[scheme]
	}
	n, err := strconv.ParseInt(port, 10, 64)
	if err != nil || n <= 0 || n > 65535 {
		return Upstream{}, fmt.Errorf("mcp: upstream URL %q: bad port %q", endpoint, port)
	}
	return Upstream{Host: strings.ToLower(u.Hostname()), Port: n}, nil
}

// Handler is the downstream streamable HTTP handler of a connected proxy.
// It rejects requests that arrive on a loopback address with a
// non-loopback Host header (DNS rebinding) and cross-origin browser
// requests, whatever the upstream does. Its event streams are kept in
// memory (the go-sdk's MemoryEventStore, bounded) so that a client of a
// protocol version that resumes streams (2025-11-25) can reconnect with
// Last-Event-ID and get what it missed; 2026-07-28 has no resumption.
func (p *Proxy) Handler() http.Handler {
	h := sdk.NewStreamableHTTPHandler(func(*http.Request) *sdk.Server { return p.Server() },
		&sdk.StreamableHTTPOptions{EventStore: sdk.NewMemoryEventStore(nil)})
	return http.NewCrossOriginProtection().Handler(h)
}

// RunHTTP runs the proxy in streamable HTTP mode: it connects to the
// upstream endpoint and serves the governed mirror on ln until ctx ends.
// All downstream sessions share the one upstream session; each downstream
// session is its own task.
func RunHTTP(ctx context.Context, b Boundary, ln net.Listener, endpoint string, opt Options) error {
	up, err := RemoteUpstream(endpoint)
	if err != nil {
		return err
	}
	if opt.Env == nil {
		opt.Env = map[string]string{}
	}
	if _, ok := opt.Env["mode"]; !ok {
		opt.Env["mode"] = "mcp-http"
	}
	p := New(b, opt)
	if err := p.Connect(ctx, &sdk.StreamableClientTransport{Endpoint: endpoint}, up); err != nil {
		return err
	}
	defer p.Close()
	srv := &http.Server{Handler: p.Handler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("mcp: serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	shut, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shut); err != nil {
		// Open event streams do not end on their own: cut them.
		if cerr := srv.Close(); cerr != nil && !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("mcp: shut down %s: %w", ln.Addr(), errors.Join(err, cerr))
		}
	}
	return nil
}
