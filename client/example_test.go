package client_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/client"
	"github.com/etbproject/etb/enforce"
	"github.com/etbproject/etb/gateway"
	"github.com/etbproject/etb/identity"
	"github.com/etbproject/etb/proof"
)

// An agent governs each tool execution through the gateway: Decide before
// acting, or RunCommand to have the SDK enforce a local command end to end.
// Here the gateway runs in-process on an httptest server with mTLS.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "etb-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// The gateway: a home, its embedded CA and server SVID, the API.
	g, err := gateway.Open(ctx, filepath.Join(dir, "home"), gateway.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer g.Close()
	ca, cert, key, err := g.IssueServerSVID()
	if err != nil {
		log.Fatal(err)
	}
	svc, err := gateway.NewService(ctx, g, gateway.ServiceOptions{Bundle: ca.Bundle()})
	if err != nil {
		log.Fatal(err)
	}
	srvTLS, err := svc.TLSConfig(cert, key)
	if err != nil {
		log.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(svc)
	srv.Listener = tls.NewListener(srv.Listener, srvTLS)
	srv.Start()
	defer srv.Close()

	// The agent: an X.509-SVID from the same CA, and a client presenting it.
	agent := spiffeid.RequireFromString("spiffe://etb.local/agent/builder")
	agentCert, agentKey := filepath.Join(dir, "agent.crt"), filepath.Join(dir, "agent.key")
	if err := ca.IssueFiles(agent, agentCert, agentKey, time.Hour); err != nil {
		log.Fatal(err)
	}
	gatewayID := spiffeid.RequireFromString("spiffe://etb.local/gateway/local")
	cliTLS, err := identity.ClientTLSConfig(agentCert, agentKey, ca.Bundle(), func(id spiffeid.ID) error {
		if id != gatewayID {
			return fmt.Errorf("unexpected server %s", id)
		}
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	c, err := client.New("https://"+srv.Listener.Addr().String(), client.Options{TLS: cliTLS, StateDir: filepath.Join(dir, "enforcer")})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// Ask before acting.
	spec, err := enforce.DescribeExec([]string{"rm", "-rf", "/tmp/build"}, dir)
	if err == nil {
		auth, err := c.Decide(ctx, spec, client.Task{ID: "build-42"})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("rm -rf:", auth.Decision.Decision, auth.Decision.Rules)
	}

	// Or let the SDK enforce a command: verify, run, renew, report.
	res, err := c.RunCommand(ctx, client.RunRequest{Argv: []string{"echo", "hello"}, Cwd: dir, Stdout: os.Stdout})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("exit:", res.ExitCode)

	// Anyone with the trust file can verify the evidence offline.
	b, err := c.Evidence(ctx, res.Execution)
	if err != nil {
		log.Fatal(err)
	}
	trust, err := c.Trust(ctx)
	if err != nil {
		log.Fatal(err)
	}
	rep, err := proof.Verify(ctx, b, trust)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("evidence:", rep.Decision, rep.Outcome)
	// Output:
	// rm -rf: deny [forbid-recursive-delete]
	// hello
	// exit: 0
	// evidence: permit exit 0
}

// Govern puts any action through the gateway with this process as its
// enforcer: here an HTTP request an agent wants to make. run is called only
// with a grant the client verified itself, while the lease is kept and
// revocations are watched; its outcome (a digest and size, never the
// content) is reported as the execution's end.
func ExampleClient_Govern() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "etb-example-govern-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	policyPath := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyPath, []byte(`version: etb.policy/v1
name: example
defaults:
  obligations: {timeout: 30s}
rules:
  - id: read-the-docs
    effect: permit
    match: {kind: http.request, name: GET}
    when: action.target.host == "docs.example.org" && action.target.port == 443
`), 0o644); err != nil {
		log.Fatal(err)
	}
	g, err := gateway.Open(ctx, filepath.Join(dir, "home"), gateway.Options{PolicyPath: policyPath})
	if err != nil {
		log.Fatal(err)
	}
	defer g.Close()
	ca, cert, key, err := g.IssueServerSVID()
	if err != nil {
		log.Fatal(err)
	}
	svc, err := gateway.NewService(ctx, g, gateway.ServiceOptions{Bundle: ca.Bundle()})
	if err != nil {
		log.Fatal(err)
	}
	srvTLS, err := svc.TLSConfig(cert, key)
	if err != nil {
		log.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(svc)
	srv.Listener = tls.NewListener(srv.Listener, srvTLS)
	srv.Start()
	defer srv.Close()
	agentCert, agentKey := filepath.Join(dir, "agent.crt"), filepath.Join(dir, "agent.key")
	if err := ca.IssueFiles(spiffeid.RequireFromString("spiffe://etb.local/agent/researcher"), agentCert, agentKey, time.Hour); err != nil {
		log.Fatal(err)
	}
	cliTLS, err := identity.ClientTLSConfig(agentCert, agentKey, ca.Bundle(), func(id spiffeid.ID) error {
		if id.String() != "spiffe://etb.local/gateway/local" {
			return fmt.Errorf("unexpected server %s", id)
		}
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	c, err := client.New("https://"+srv.Listener.Addr().String(), client.Options{TLS: cliTLS, StateDir: filepath.Join(dir, "enforcer")})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	request := func(url, host string) action.Spec {
		return action.Spec{Kind: "http.request", Name: "GET", Args: []string{url}, Target: action.Target{Host: host, Port: 443}}
	}
	for _, spec := range []action.Spec{
		request("https://docs.example.org/guide", "docs.example.org"),
		request("https://paste.example.net/upload", "paste.example.net"),
	} {
		res, err := c.Govern(ctx, client.GovernRequest{Spec: spec, Task: client.Task{ID: "research-7"}},
			func(ctx context.Context, gr *client.Granted) (client.Outcome, error) {
				// Do exactly spec here, within ctx (cancelled on revocation,
				// lease loss or the grant's timeout).
				body := []byte("<html>the guide</html>")
				return client.Outcome{ResultSHA256: action.SHA256(body), ResultBytes: int64(len(body))}, nil
			})
		if err != nil {
			log.Fatal(err)
		}
		if !res.Ran {
			fmt.Println(spec.Target.Host+":", res.Refused)
			continue
		}
		b, err := c.Evidence(ctx, res.Execution)
		if err != nil {
			log.Fatal(err)
		}
		trust, err := c.Trust(ctx)
		if err != nil {
			log.Fatal(err)
		}
		rep, err := proof.Verify(ctx, b, trust)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(spec.Target.Host+":", rep.Decision, rep.Outcome)
	}
	// Output:
	// docs.example.org: permit exit 0
	// paste.example.net: deny by etb.default-deny: no rule permits this action
}
