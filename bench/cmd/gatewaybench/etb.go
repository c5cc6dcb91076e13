package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/etbproject/etb/client"
	"github.com/etbproject/etb/gateway"
	"github.com/etbproject/etb/identity"
	"github.com/etbproject/etb/policy"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// etbServer is an in-process `etb serve`: the gateway service over HTTPS
// with mTLS on 127.0.0.1, and one SDK client per benchmark client.
type etbServer struct {
	g       *gateway.Gateway
	srv     *http.Server
	url     string
	clients []*client.Client
	tls     *tls.Config // the first client's
}

// startEtb opens a gateway on a new home under dir, serves it and creates
// n clients, each with its own agent SVID.
func startEtb(ctx context.Context, dir string, n int) (_ *etbServer, err error) {
	g, err := gateway.Open(ctx, filepath.Join(dir, "home"), gateway.Options{})
	if err != nil {
		return nil, err
	}
	e := &etbServer{g: g}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	ca, cert, key, err := g.IssueServerSVID()
	if err != nil {
		return nil, err
	}
	svc, err := gateway.NewService(ctx, g, gateway.ServiceOptions{Bundle: ca.Bundle()})
	if err != nil {
		return nil, err
	}
	cfg, err := svc.TLSConfig(cert, key)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e.srv = &http.Server{Handler: svc, ErrorLog: log.New(io.Discard, "", 0), ReadHeaderTimeout: 10 * time.Second}
	go e.srv.Serve(tls.NewListener(ln, cfg))
	e.url = "https://" + ln.Addr().String()

	server, err := spiffeid.FromString(g.Config().Issuer)
	if err != nil {
		return nil, fmt.Errorf("gateway issuer %q: %w", g.Config().Issuer, err)
	}
	authorizeServer := func(id spiffeid.ID) error {
		if id != server {
			return fmt.Errorf("server is %s, want %s", id, server)
		}
		return nil
	}
	svids := filepath.Join(dir, "svids")
	if err := os.MkdirAll(svids, 0o700); err != nil {
		return nil, err
	}
	for i := range n {
		id, err := spiffeid.FromPath(ca.TrustDomain(), fmt.Sprintf("/agent/bench-%d", i))
		if err != nil {
			return nil, err
		}
		crt, key := filepath.Join(svids, fmt.Sprintf("%d.crt", i)), filepath.Join(svids, fmt.Sprintf("%d.key", i))
		if err := ca.IssueFiles(id, crt, key, time.Hour); err != nil {
			return nil, err
		}
		tlsCfg, err := identity.ClientTLSConfig(crt, key, ca.Bundle(), authorizeServer)
		if err != nil {
			return nil, err
		}
		c, err := client.New(e.url, client.Options{TLS: tlsCfg})
		if err != nil {
			return nil, err
		}
		e.clients = append(e.clients, c)
		if e.tls == nil {
			e.tls = tlsCfg
		}
	}
	return e, nil
}

// protocol reports the TLS version and application protocol the server
// negotiates with a client offering what client.New's transport offers
// (h2 and http/1.1).
func (e *etbServer) protocol(ctx context.Context) (string, error) {
	cfg := e.tls.Clone()
	cfg.NextProtos = []string{"h2", "http/1.1"}
	d := tls.Dialer{Config: cfg}
	conn, err := d.DialContext(ctx, "tcp", strings.TrimPrefix(e.url, "https://"))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	st := conn.(*tls.Conn).ConnectionState()
	proto := st.NegotiatedProtocol
	if proto == "" {
		proto = "http/1.1" // no ALPN agreed: net/http speaks HTTP/1.1
	}
	return tls.VersionName(st.Version) + ", " + proto, nil
}

func (e *etbServer) close() error {
	var errs []error
	for _, c := range e.clients {
		errs = append(errs, c.Close())
	}
	if e.srv != nil {
		errs = append(errs, e.srv.Close())
	}
	errs = append(errs, e.g.Close())
	return errors.Join(errs...)
}

// etbOutcome is the comparable part of an etb answer. A permit must carry
// a grant and a lease.
func etbOutcome(a *client.Authorization) (*outcome, error) {
	o := &outcome{Decision: a.Decision.Decision, Rules: a.Decision.Rules}
	if o.Decision == policy.Permit {
		if !a.Permitted() {
			return nil, fmt.Errorf("permit of execution %s has no grant or lease", a.Execution)
		}
		o.Timeout = time.Duration(a.Decision.Obligations.Timeout)
	} else if a.Grant != "" {
		return nil, fmt.Errorf("%s of execution %s carries a grant", o.Decision, a.Execution)
	}
	return o, nil
}

// runEtb measures etb's gateway service.
func runEtb(ctx context.Context, c *config) (*Result, error) {
	dir, err := os.MkdirTemp("", "gatewaybench-etb-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	e, err := startEtb(ctx, dir, c.Clients)
	if err != nil {
		return nil, err
	}
	defer e.close()
	sp, err := specs()
	if err != nil {
		return nil, err
	}
	ins := inputs()
	decide := func(ctx context.Context, cl, in int) (*outcome, error) {
		a, err := e.clients[cl].Decide(ctx, sp[in], client.Task{})
		if err != nil {
			return nil, err
		}
		return etbOutcome(a)
	}
	seen, err := precheck(ctx, c.Clients, decide)
	if err != nil {
		return nil, err
	}
	r, err := drive(ctx, c.Clients, c.Duration, func(ctx context.Context, cl, in int) error {
		o, err := decide(ctx, cl, in)
		if err == nil && o.Decision != ins[in].want.Decision {
			err = fmt.Errorf("decided %v, want %v", o, ins[in].want)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	proto, err := e.protocol(ctx)
	if err != nil {
		return nil, fmt.Errorf("probe the negotiated protocol: %w", err)
	}
	r.System, r.Outcomes = "etb", seen
	r.Detail = fmt.Sprintf("gateway service over HTTPS with mTLS (%s, one connection per client), policy %s; each decision: Ed25519-signed grant and lease if permitted, intent and decision events durable in the SQLite ledger and indexed",
		proto, policy.Engine)
	return r, nil
}
