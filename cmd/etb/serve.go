package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/etbproject/etb/client"
	"github.com/etbproject/etb/gateway"
	"github.com/etbproject/etb/identity"
	"github.com/etbproject/etb/ledger"
	"github.com/etbproject/etb/proof"
)

func newServeCmd(g *globals) *cobra.Command {
	var listen, socket, registrations, policyPath, logListen, cpuProfile string
	var lease time.Duration
	c := &cobra.Command{
		Use:   "serve",
		Short: "Serve the gateway API over mTLS and/or a local unix socket",
		Long: `Serve runs the gateway: the HTTP/JSON API of docs/api/openapi.yaml.

--listen serves HTTPS with mutual TLS. On start the home's embedded CA (ca/,
created on first use) issues the gateway's own X.509-SVID
(spiffe://TD/gateway/local) into tls/; it is re-issued before it expires and
picked up without a restart. Clients present X.509-SVIDs from the same CA
(etb identity issue); routes are authorized by the class of the caller's
SPIFFE ID: /agent/ and /enforcer/ submit intents and report events, /admin/
revokes, /approver/ approves.

--socket serves the same API on a unix socket. Each caller is attested by the
kernel (SO_PEERCRED: pid, uid, and the SHA-256 of its executable) and matched
against the registration entries in registrations.yaml in the home (or
--registrations); an unmatched caller is refused.

The ledger's tlog-tiles read API is served under /log/ (checkpoint, tiles)
on the mTLS listener, and with --log-listen also over plain HTTP for stock
clients, monitors ('etb log monitor') and witnesses. With "witnessing" in
config.json, serve keeps publishing checkpoints to the witnesses: the log
never waits for them; publication retries and catches up.`,
		Example: `  etb serve --listen 127.0.0.1:8443
  etb serve --socket /run/etb.sock --registrations ./registrations.yaml
  etb serve --listen 127.0.0.1:8443 --socket /tmp/etb.sock --lease 5s`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if listen == "" && socket == "" {
				listen = "127.0.0.1:8443"
			}
			if cpuProfile != "" {
				stop, err := startCPUProfile(cpuProfile)
				if err != nil {
					return err
				}
				defer stop()
			}
			gw, err := g.open(ctx, policyPath)
			if err != nil {
				return err
			}
			defer gw.Close()
			ca, certFile, keyFile, err := gw.IssueServerSVID()
			if err != nil {
				return err
			}
			host, _ := os.Hostname()
			svc, err := gateway.NewService(ctx, gw, gateway.ServiceOptions{Bundle: ca.Bundle(), LeaseTTL: lease, Host: host})
			if err != nil {
				return err
			}
			mux := http.NewServeMux()
			mux.Handle("/log/", http.StripPrefix("/log", ledger.NewHandler(gw.Log())))
			mux.Handle("/", svc)
			errLog := log.New(cmd.ErrOrStderr(), "etb serve: ", log.LstdFlags)
			// The sweep ends before the gateway closes (defers run last
			// first).
			sweepCtx, stopSweep := context.WithCancel(ctx)
			swept := make(chan struct{})
			go func() {
				defer close(swept)
				svc.Sweep(sweepCtx, func(err error) { errLog.Printf("sweep: %v", err) })
			}()
			defer func() { stopSweep(); <-swept }()
			out := cmd.OutOrStdout()

			var servers []*http.Server
			errc := make(chan error, 3)
			if listen != "" {
				cfg, err := svc.TLSConfig(certFile, keyFile)
				if err != nil {
					return err
				}
				ln, err := net.Listen("tcp", listen)
				if err != nil {
					return err
				}
				srv := &http.Server{Handler: mux, ErrorLog: errLog, ReadHeaderTimeout: 10 * time.Second}
				servers = append(servers, srv)
				go func() { errc <- srv.Serve(tls.NewListener(ln, cfg)) }()
				fmt.Fprintf(out, "etb serve: https://%s (mTLS, server %s, CA bundle %s)\n", ln.Addr(), gw.Config().Issuer,
					filepath.Join(gateway.Home{Dir: mustHome(g)}.CADir(), identity.CACertFile))
				go rotateServerSVID(ctx, gw, errLog)
			}
			if logListen != "" {
				// The log is public transparency data: read-only tlog-tiles
				// over plain HTTP, so stock clients, monitors and witnesses
				// can follow it without a client certificate.
				lmux := http.NewServeMux()
				lmux.Handle("/log/", http.StripPrefix("/log", ledger.NewHandler(gw.Log())))
				ln, err := net.Listen("tcp", logListen)
				if err != nil {
					return err
				}
				srv := &http.Server{Handler: lmux, ErrorLog: errLog, ReadHeaderTimeout: 10 * time.Second}
				servers = append(servers, srv)
				go func() { errc <- srv.Serve(ln) }()
				fmt.Fprintf(out, "etb serve: log http://%s/log/ (tlog-tiles, read-only)\n", ln.Addr())
			}
			if w := gw.Config().Witnessing; w != nil && len(w.Witnesses) > 0 {
				pub, err := gw.NewPublisher(ctx, *w, nil)
				if err != nil {
					return err
				}
				go pub.Run(ctx, 100*time.Millisecond, func(err error) { errLog.Printf("witnesses: %v", err) })
				fmt.Fprintf(out, "etb serve: publishing checkpoints to %d witnesses, quorum %d\n", len(w.Witnesses), w.Quorum)
			}
			if socket != "" {
				regPath := registrations
				if regPath == "" {
					regPath = gateway.Home{Dir: mustHome(g)}.RegistrationsPath()
				}
				entries, err := gateway.LoadRegistrations(regPath)
				if err != nil {
					return err
				}
				ln, err := listenUnix(socket)
				if err != nil {
					return err
				}
				att := &identity.Attestor{Entries: entries, Refused: func(err error) { errLog.Printf("refused: %v", err) }}
				srv := &http.Server{Handler: mux, ErrorLog: errLog, ConnContext: identity.ConnContext(att), ReadHeaderTimeout: 10 * time.Second}
				servers = append(servers, srv)
				go func() { errc <- srv.Serve(ln) }()
				fmt.Fprintf(out, "etb serve: unix socket %s (%d registration entries from %s)\n", socket, len(entries), regPath)
				defer os.Remove(socket)
			}
			var serveErr error
			select {
			case <-ctx.Done():
			case serveErr = <-errc:
			}
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			for _, s := range servers {
				if s.Shutdown(sctx) != nil {
					s.Close() // watch streams do not end on their own
				}
			}
			if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
				return serveErr
			}
			return nil
		},
	}
	c.Flags().StringVar(&logListen, "log-listen", "", "TCP address for the read-only tlog-tiles API over plain HTTP (/log/)")
	c.Flags().StringVar(&listen, "listen", "", "TCP address for HTTPS with mTLS (default 127.0.0.1:8443 when --socket is not given)")
	c.Flags().StringVar(&socket, "socket", "", "unix socket path for kernel-attested local callers")
	c.Flags().StringVar(&registrations, "registrations", "", "registration entries for socket callers (default registrations.yaml in the home)")
	c.Flags().StringVar(&policyPath, "policy", "", "policy file (default: the home's policy.yaml)")
	c.Flags().DurationVar(&lease, "lease", gateway.DefaultLeaseTTL, "lease lifetime of a running execution")
	c.Flags().StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of the server to this file when it stops (for 'go tool pprof')")
	return c
}

// startCPUProfile profiles the process into path until stop is called.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("--cpuprofile %s: %w", path, err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

func mustHome(g *globals) string {
	d, err := g.homeDir()
	if err != nil {
		return ""
	}
	return d
}

// rotateServerSVID re-issues the gateway's SVID at half its lifetime.
func rotateServerSVID(ctx context.Context, gw *gateway.Gateway, errLog *log.Logger) {
	t := time.NewTicker(gateway.ServerSVIDTTL / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, _, _, err := gw.IssueServerSVID(); err != nil {
				errLog.Printf("rotate server SVID: %v", err)
			}
		}
	}
}

// listenUnix listens on path, removing a stale socket file left by a dead
// server (one nobody answers on), never a live one or another file.
func listenUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another server is listening", path)
		}
		os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	// Who may call is decided by attestation, not file permissions.
	if err := os.Chmod(path, 0o666); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// gatewayFlags are the flags of commands that talk to a gateway.
type gatewayFlags struct {
	url, cert, key, ca, trust string
	wait                      time.Duration
	delegation                string // etb run: the delegation grant to act under
}

func (f *gatewayFlags) register(c *cobra.Command) {
	c.Flags().StringVar(&f.url, "gateway", os.Getenv("ETB_GATEWAY"), "gateway: https://HOST:PORT or unix:///PATH ($ETB_GATEWAY)")
	c.Flags().StringVar(&f.cert, "cert", os.Getenv("ETB_CERT"), "client X.509-SVID certificate file for mTLS ($ETB_CERT)")
	c.Flags().StringVar(&f.key, "key", os.Getenv("ETB_KEY"), "client key file ($ETB_KEY)")
	c.Flags().StringVar(&f.ca, "ca", os.Getenv("ETB_CA"), "CA bundle the gateway's SVID chains to ($ETB_CA; default the home's ca/ca.crt)")
	c.Flags().StringVar(&f.trust, "trust", "", "the gateway's trust file (default: fetched once and pinned in the home)")
}

// client returns a client of the gateway; its state (replay store, pinned
// trust, spool) is kept in HOME/enforcer.
func (f *gatewayFlags) client(g *globals) (*client.Client, error) {
	home, err := g.homeDir()
	if err != nil {
		return nil, err
	}
	opt := client.Options{StateDir: filepath.Join(home, "enforcer"), ApprovalWait: f.wait}
	if f.trust != "" {
		t, err := readWith(f.trust, proof.ParseTrust)
		if err != nil {
			return nil, err
		}
		opt.Trust = t
	}
	if path, ok := strings.CutPrefix(f.url, "unix://"); ok {
		opt.Socket = path
		return client.New("http://etb", opt)
	}
	if !strings.HasPrefix(f.url, "https://") {
		return nil, usageError("--gateway %q: want https://HOST:PORT or unix:///PATH", f.url)
	}
	if f.cert == "" || f.key == "" {
		return nil, usageError("--gateway %s needs --cert and --key (an X.509-SVID from etb identity issue)", f.url)
	}
	caPath := f.ca
	if caPath == "" {
		caPath = filepath.Join(gateway.Home{Dir: home}.CADir(), identity.CACertFile)
	}
	bundle, td, err := loadBundle(caPath)
	if err != nil {
		return nil, err
	}
	server, err := spiffeid.FromSegments(td, "gateway", "local")
	if err != nil {
		return nil, err
	}
	cfg, err := identity.ClientTLSConfig(f.cert, f.key, bundle, func(id spiffeid.ID) error {
		if id != server {
			return fmt.Errorf("the server is %s, not the gateway %s", id, server)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	opt.TLS = cfg
	return client.New(f.url, opt)
}

// loadBundle reads a CA certificate file and returns it as the bundle of
// the trust domain its URI SAN names.
func loadBundle(path string) (*x509bundle.Bundle, spiffeid.TrustDomain, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, spiffeid.TrustDomain{}, fmt.Errorf("CA bundle: %w", err)
	}
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, spiffeid.TrustDomain{}, fmt.Errorf("CA bundle %s: %w", path, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 || len(certs[0].URIs) != 1 {
		return nil, spiffeid.TrustDomain{}, fmt.Errorf("CA bundle %s: want a CA certificate whose URI SAN is spiffe://TRUST_DOMAIN", path)
	}
	id, err := spiffeid.FromURI(certs[0].URIs[0])
	if err != nil {
		return nil, spiffeid.TrustDomain{}, fmt.Errorf("CA bundle %s: %w", path, err)
	}
	return x509bundle.FromX509Authorities(id.TrustDomain(), certs), id.TrustDomain(), nil
}

func newRevokeCmd(g *globals) *cobra.Command {
	var gf gatewayFlags
	var req client.RevokeRequest
	c := &cobra.Command{
		Use:   "revoke (--execution ID | --grant JTI | --task ID | --agent SPIFFE_ID | --all)",
		Short: "Revoke running executions at a gateway (admin)",
		Long: `Revoke asks the gateway to revoke every open execution in scope: one
execution, a grant, a task, everything an agent runs, or --all (the kill
switch). A revocation reaches every descendant: the tasks below a revoked
task, and every grant delegated (directly or not) from a revoked grant,
from a revoked delegation execution or by a revoked agent; sub-agents can
no longer act under a revoked delegation. The
gateway records a revocation event for each and pushes it to the enforcers
running them, which kill the process trees; revoke returns once every
enforcer was told. The caller's SVID must be of the admin class
(spiffe://TD/admin/NAME).`,
		Example: `  etb revoke --gateway https://127.0.0.1:8443 --cert admin.crt --key admin.key --execution 3f2a...
  etb revoke --gateway https://127.0.0.1:8443 --cert admin.crt --key admin.key --all`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := gf.client(g)
			if err != nil {
				return err
			}
			defer cl.Close()
			res, err := cl.Revoke(cmd.Context(), req)
			if err != nil {
				return err
			}
			return printRevoke(cmd.OutOrStdout(), res)
		},
	}
	gf.register(c)
	c.Flags().StringVar(&req.Execution, "execution", "", "execution id")
	c.Flags().StringVar(&req.Grant, "grant", "", "grant id (jti): the grant and every grant delegated from it")
	c.Flags().StringVar(&req.Task, "task", "", "task id (and every task below it)")
	c.Flags().StringVar(&req.Agent, "agent", "", "agent SPIFFE ID (and everything delegated by it)")
	c.Flags().BoolVar(&req.All, "all", false, "every open execution (kill switch)")
	c.MarkFlagsOneRequired("execution", "grant", "task", "agent", "all")
	c.MarkFlagsMutuallyExclusive("execution", "grant", "task", "agent", "all")
	return c
}

func printRevoke(w io.Writer, res *client.RevokeResult) error {
	_, err := fmt.Fprintf(w, "revocation %s: %d execution(s) revoked\n", res.Revocation, len(res.Revoked))
	for _, id := range res.Revoked {
		fmt.Fprintf(w, "  %s\n", id)
	}
	return err
}

func newApprovalCmds(g *globals) []*cobra.Command {
	decideCmd := func(verb string, approve bool) *cobra.Command {
		var gf gatewayFlags
		var comment string
		c := &cobra.Command{
			Use:   verb + " TICKET_ID",
			Short: strings.ToUpper(verb[:1]) + verb[1:] + " a pending approval ticket at a gateway (approver)",
			Long: `The gateway records an approval event naming you (the SPIFFE ID of your
SVID, which must be of the approver class) and, for an approval, issues the
grant to the agent that asked, bound to exactly the action it asked for. A
ticket is decided once; an expired ticket cannot be decided.`,
			Example: "  etb " + verb + " --gateway https://127.0.0.1:8443 --cert alice.crt --key alice.key 5d1c...",
			Args:    usageArgs(cobra.ExactArgs(1)),
			RunE: func(cmd *cobra.Command, args []string) error {
				cl, err := gf.client(g)
				if err != nil {
					return err
				}
				defer cl.Close()
				var a *client.Approval
				if approve {
					a, err = cl.Approve(cmd.Context(), args[0], comment)
				} else {
					a, err = cl.Reject(cmd.Context(), args[0], comment)
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "ticket %s %s by %s (execution %s)\n", a.ID, a.Status, a.Approver, a.Execution)
				return nil
			},
		}
		gf.register(c)
		c.Flags().StringVar(&comment, "comment", "", "comment recorded with the decision")
		return c
	}
	var gf gatewayFlags
	list := &cobra.Command{
		Use:   "approvals",
		Short: "List pending approval tickets at a gateway (approver, admin)",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := gf.client(g)
			if err != nil {
				return err
			}
			defer cl.Close()
			list, err := cl.Approvals(cmd.Context())
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			for _, a := range list {
				what := ""
				if a.Action != nil {
					what = a.Action.Kind + " " + a.Action.Name + " " + strings.Join(a.Action.Args, " ")
				}
				fmt.Fprintf(w, "%s  expires %s  %s  %s\n", a.ID, a.Expires, a.Principal, what)
			}
			return nil
		},
	}
	gf.register(list)
	return []*cobra.Command{decideCmd("approve", true), decideCmd("reject", false), list}
}
