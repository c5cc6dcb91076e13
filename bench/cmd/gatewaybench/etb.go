package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/etbproject/etb/client"
	"github.com/etbproject/etb/gateway"
	"github.com/etbproject/etb/identity"
	"github.com/etbproject/etb/policy"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// etbServer is a running `etb serve` child process (the etb binary built
// from this repository) serving HTTPS with mTLS on 127.0.0.1, and one SDK
// client per benchmark client.
type etbServer struct {
	proc    *serverProc // nil until it is ready
	url     string
	clients []*client.Client
	tls     *tls.Config // the first client's
}

// ensureEtb builds the etb command of the module this benchmark replaces
// github.com/etbproject/etb with (the enclosing repository) into dir and
// returns the binary's path. go's output goes to log.
func ensureEtb(ctx context.Context, dir string, log io.Writer) (string, error) {
	list := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "github.com/etbproject/etb")
	list.Stderr = log
	out, err := list.Output()
	if err != nil {
		return "", fmt.Errorf("etb: find the module's directory: %w", err)
	}
	root := strings.TrimSpace(string(out))
	bin := filepath.Join(dir, "etb")
	fmt.Fprintf(log, "gatewaybench: building %s/cmd/etb into %s...\n", root, bin)
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/etb")
	build.Dir = root
	build.Stdout, build.Stderr = log, log
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("etb: go build ./cmd/etb in %s: %w (or pass -etb PATH)", root, err)
	}
	return bin, nil
}

// startEtb creates a home under dir (its CA issues n agent SVIDs), runs
// `etb serve` from bin on it, waits until /healthz answers (up to 30 s) and
// creates n clients, each with its own SVID. With profile set, the server
// writes a CPU profile there when it stops.
func startEtb(ctx context.Context, bin, dir string, n int, profile string, verbose io.Writer) (_ *etbServer, err error) {
	if bin == "" {
		return nil, errors.New("etb: no binary (-etb)")
	}
	home := filepath.Join(dir, "home")
	// The home and its CA are made here, as `etb identity issue` would;
	// the gateway is closed before serve opens the same home.
	g, err := gateway.Open(ctx, home, gateway.Options{})
	if err != nil {
		return nil, err
	}
	ca, _, _, err := g.IssueServerSVID()
	issuer := g.Config().Issuer
	if cerr := g.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	server, err := spiffeid.FromString(issuer)
	if err != nil {
		return nil, fmt.Errorf("gateway issuer %q: %w", issuer, err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	e := &etbServer{url: "https://" + addr}
	defer func() {
		if err != nil {
			e.close()
		}
	}()

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
	args := []string{"--home", home, "serve", "--listen", addr}
	if profile != "" {
		args = append(args, "--cpuprofile", profile)
	}
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: e.tls}}
	defer hc.CloseIdleConnections()
	if e.proc, err = startServer(ctx, "etb", exec.Command(bin, args...), verbose, hc, e.url+"/healthz"); err != nil {
		return nil, err
	}
	return e, nil
}

// protocol reports the TLS version and application protocol the server
// negotiates with a client offering what the SDK offers for its calls
// (client.New sends calls over HTTP/1.1; only watch streams use HTTP/2).
func (e *etbServer) protocol(ctx context.Context) (string, error) {
	cfg := e.tls.Clone()
	cfg.NextProtos = []string{"http/1.1"}
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

// close closes the clients and stops the server: an interrupt, so that it
// closes its ledger (and writes its profile), then a kill after 10 s.
func (e *etbServer) close() error {
	var errs []error
	for _, c := range e.clients {
		errs = append(errs, c.Close())
	}
	if e.proc != nil {
		errs = append(errs, e.proc.stop(10*time.Second))
	}
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
	profile := ""
	if c.CPUProfile != "" {
		profile = c.CPUProfile + ".etb-serve"
	}
	var verbose io.Writer = io.Discard
	if c.Verbose {
		verbose = os.Stderr
	}
	e, err := startEtb(ctx, c.Etb, dir, c.Clients, profile, verbose)
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
	r, err := drive(ctx, e.proc.cmd.Process.Pid, c.Clients, c.Duration, func(ctx context.Context, cl, in int) error {
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
	r.Detail = fmt.Sprintf("`etb serve` (this repository's, its own process) over HTTPS with mTLS (%s, one connection per client), policy %s; each decision: Ed25519-signed grant and lease if permitted, intent and decision events durable in the SQLite ledger and indexed",
		proto, policy.Engine)
	return r, nil
}
