package client_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http/httptest"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/client"
	"github.com/etbproject/etb/gateway"
	"github.com/etbproject/etb/identity"
	"github.com/etbproject/etb/proof"
)

// testGateway serves a gateway with policy src over mTLS and returns
// clients for SPIFFE IDs of its trust domain.
func testGateway(t *testing.T, src string) (clientFor func(id string) *client.Client, stop func()) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	g, err := gateway.Open(ctx, filepath.Join(dir, "home"), gateway.Options{PolicyPath: pol})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	ca, cert, key, err := g.IssueServerSVID()
	if err != nil {
		t.Fatal(err)
	}
	svc, err := gateway.NewService(ctx, g, gateway.ServiceOptions{Bundle: ca.Bundle(), LeaseTTL: 600 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	srvTLS, err := svc.TLSConfig(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(svc)
	srv.Listener = tls.NewListener(srv.Listener, srvTLS)
	srv.Start()
	t.Cleanup(srv.Close)
	stop = func() { srv.CloseClientConnections(); srv.Listener.Close() }
	gatewayID := spiffeid.RequireFromString("spiffe://etb.local/gateway/local")
	return func(id string) *client.Client {
		name := strings.ReplaceAll(strings.TrimPrefix(id, "spiffe://etb.local/"), "/", "-")
		c, k := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
		if err := ca.IssueFiles(spiffeid.RequireFromString(id), c, k, time.Hour); err != nil {
			t.Fatal(err)
		}
		cfg, err := identity.ClientTLSConfig(c, k, ca.Bundle(), func(got spiffeid.ID) error {
			if got != gatewayID {
				return fmt.Errorf("server %s", got)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		cl, err := client.New("https://"+srv.Listener.Addr().String(), client.Options{TLS: cfg, StateDir: filepath.Join(dir, name)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		return cl
	}, stop
}

const governPolicy = `version: etb.policy/v1
name: govern
defaults:
  obligations: {timeout: 20s}
rules:
  - id: allow-fetch
    effect: permit
    match: {kind: http.request, name: fetch}
  - id: ask-first
    effect: require_approval
    match: {kind: http.request, name: ask}
  - id: quick-fetch
    effect: permit
    match: {kind: http.request, name: quick}
    obligations: {timeout: 200ms}
`

func fetch(name string) action.Spec {
	return action.Spec{Kind: "http.request", Name: name, Args: []string{"GET", "https://example.org/"},
		Target: action.Target{Host: "example.org", Port: 443}}
}

// verify checks the execution's evidence offline and returns its outcome.
func verify(t *testing.T, c *client.Client, execution string) string {
	t.Helper()
	ctx := context.Background()
	b, err := c.Evidence(ctx, execution)
	if err != nil {
		t.Fatal(err)
	}
	trust, err := c.Trust(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := proof.Verify(ctx, b, trust)
	if err != nil {
		t.Fatalf("evidence of %s does not verify: %v", execution, err)
	}
	return rep.Outcome
}

func TestGovern(t *testing.T) {
	clientFor, _ := testGateway(t, governPolicy)
	agent := clientFor("spiffe://etb.local/agent/a")
	admin := clientFor("spiffe://etb.local/admin/ops")
	ctx := context.Background()

	t.Run("permit runs once, end reported", func(t *testing.T) {
		calls := 0
		g, err := agent.Govern(ctx, client.GovernRequest{Spec: fetch("fetch")}, func(ctx context.Context, gr *client.Granted) (client.Outcome, error) {
			calls++
			if gr.Claims == nil || gr.Claims.Obl.Timeout.D() != 20*time.Second {
				t.Errorf("granted %+v", gr)
			}
			return client.Outcome{ResultSHA256: action.SHA256([]byte("ok")), ResultBytes: 2}, nil
		})
		if err != nil || !g.Ran || g.Refused != "" || calls != 1 || g.Reason != "" {
			t.Fatalf("Govern: %v %+v, calls %d", err, g, calls)
		}
		if o := verify(t, agent, g.Execution); o != "exit 0" {
			t.Errorf("outcome %q", o)
		}
	})
	t.Run("deny never runs", func(t *testing.T) {
		g, err := agent.Govern(ctx, client.GovernRequest{Spec: fetch("other")}, func(context.Context, *client.Granted) (client.Outcome, error) {
			t.Error("run called for a denied action")
			return client.Outcome{}, nil
		})
		if err != nil || g.Ran || !strings.Contains(g.Refused, "deny") {
			t.Fatalf("Govern: %v %+v", err, g)
		}
	})
	t.Run("approval not given in time refuses and ends the execution", func(t *testing.T) {
		g, err := agent.Govern(ctx, client.GovernRequest{Spec: fetch("ask")}, func(context.Context, *client.Granted) (client.Outcome, error) {
			t.Error("run called without an approval")
			return client.Outcome{}, nil
		})
		if err != nil || g.Ran || g.Reason != client.ReasonApprovalTimeout || !strings.Contains(g.Refused, "pending") {
			t.Fatalf("Govern: %v %+v", err, g)
		}
		if o := verify(t, agent, g.Execution); o != "interrupted: approval_timeout" {
			t.Errorf("outcome %q", o)
		}
	})
	t.Run("revocation cancels run", func(t *testing.T) {
		started := make(chan string, 1)
		go func() {
			ex := <-started
			if _, err := admin.Revoke(ctx, client.RevokeRequest{Execution: ex}); err != nil {
				t.Errorf("revoke: %v", err)
			}
		}()
		var revokedAt time.Time
		g, err := agent.Govern(ctx, client.GovernRequest{Spec: fetch("fetch")}, func(ctx context.Context, gr *client.Granted) (client.Outcome, error) {
			started <- gr.Execution
			<-ctx.Done()
			revokedAt = time.Now()
			var ie *client.InterruptError
			if !errors.As(context.Cause(ctx), &ie) || ie.Reason != client.ReasonRevoked {
				t.Errorf("run's context ended with %v, want an InterruptError revoked", context.Cause(ctx))
			}
			return client.Outcome{}, ctx.Err()
		})
		if err != nil || !g.Ran || g.Reason != client.ReasonRevoked || revokedAt.IsZero() {
			t.Fatalf("Govern: %v %+v", err, g)
		}
		if o := verify(t, agent, g.Execution); o != "interrupted: revoked" {
			t.Errorf("outcome %q", o)
		}
	})
	t.Run("timeout obligation cancels run", func(t *testing.T) {
		start := time.Now()
		g, err := agent.Govern(ctx, client.GovernRequest{Spec: fetch("quick")}, func(ctx context.Context, _ *client.Granted) (client.Outcome, error) {
			<-ctx.Done()
			return client.Outcome{}, ctx.Err()
		})
		if err != nil || g.Reason != client.ReasonTimeout || time.Since(start) > 5*time.Second {
			t.Fatalf("Govern: %v %+v after %v", err, g, time.Since(start))
		}
		if o := verify(t, agent, g.Execution); o != "interrupted: timeout" {
			t.Errorf("outcome %q", o)
		}
	})
	t.Run("run's own failure is an interrupt with its reason", func(t *testing.T) {
		g, err := agent.Govern(ctx, client.GovernRequest{Spec: fetch("fetch")}, func(context.Context, *client.Granted) (client.Outcome, error) {
			return client.Outcome{}, &client.InterruptError{Reason: "upstream_error", Err: errors.New("connection reset")}
		})
		if err != nil || g.Reason != "upstream_error" || g.Err == nil {
			t.Fatalf("Govern: %v %+v", err, g)
		}
		if o := verify(t, agent, g.Execution); o != "interrupted: upstream_error" {
			t.Errorf("outcome %q", o)
		}
	})
}

// With the gateway gone, the lease expires unrenewed and stops run (fail
// closed), and the interrupt is spooled, not lost.
func TestGovernLeaseLossSpools(t *testing.T) {
	clientFor, stop := testGateway(t, governPolicy)
	agent := clientFor("spiffe://etb.local/agent/a")
	start := time.Now()
	g, err := agent.Govern(context.Background(), client.GovernRequest{Spec: fetch("fetch")}, func(ctx context.Context, _ *client.Granted) (client.Outcome, error) {
		stop()
		<-ctx.Done()
		return client.Outcome{}, ctx.Err()
	})
	if err != nil || g.Reason != client.ReasonLeaseLost || !g.Spooled {
		t.Fatalf("Govern: %v %+v", err, g)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("run stopped %v after the gateway went away; the lease is 600ms", d)
	}
	if names, err := agent.Spooled(); err != nil || len(names) != 1 {
		t.Errorf("spool: %v %v, want the interrupt", names, err)
	}
}

// TestGovernOneConnection: a client's governed actions share two TLS
// connections to the gateway, however many actions run: one HTTP/1.1
// keep-alive connection for the calls and one HTTP/2 connection for the
// watch streams. When the streams took HTTP/1.1 connections, every
// action's stream took one that its end then closed, and the next action
// paid a new mTLS handshake.
func TestGovernOneConnection(t *testing.T) {
	clientFor, _ := testGateway(t, governPolicy)
	agent := clientFor("spiffe://etb.local/agent/a")
	var mu sync.Mutex
	var fresh int
	protos := map[string]bool{}
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		mu.Lock()
		defer mu.Unlock()
		if !info.Reused {
			fresh++
		}
		if tc, ok := info.Conn.(*tls.Conn); ok {
			protos[tc.ConnectionState().NegotiatedProtocol] = true
		}
	}})
	for i := range 5 {
		g, err := agent.Govern(ctx, client.GovernRequest{Spec: fetch("fetch")}, func(context.Context, *client.Granted) (client.Outcome, error) {
			time.Sleep(20 * time.Millisecond) // the watch stream is open meanwhile
			return client.Outcome{}, nil
		})
		if err != nil || !g.Ran {
			t.Fatalf("action %d: %v %+v", i, err, g)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if fresh != 2 || len(protos) != 2 || !protos["h2"] || !protos["http/1.1"] {
		t.Errorf("5 governed actions opened %d connections, protocols %v; want 2: http/1.1 for calls, h2 for watch streams", fresh, protos)
	}
}
