package gateway_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/client"
	"github.com/etbproject/etb/enforce"
	"github.com/etbproject/etb/gateway"
	"github.com/etbproject/etb/grant"
	"github.com/etbproject/etb/identity"
	"github.com/etbproject/etb/ledger"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/policy"
	"github.com/etbproject/etb/proof"
)

// testEnv is a gateway home served over mTLS by an in-process server.
type testEnv struct {
	t    testing.TB
	home string
	g    *gateway.Gateway
	svc  *gateway.Service
	srv  *httptest.Server
	ca   *identity.CA
	dir  string // where client SVIDs are written
	url  string
}

func newEnv(t testing.TB, home string, lease time.Duration) *testEnv {
	t.Helper()
	return newEnvWith(t, home, gateway.ServiceOptions{LeaseTTL: lease})
}

func newEnvWith(t testing.TB, home string, opt gateway.ServiceOptions) *testEnv {
	t.Helper()
	ctx := context.Background()
	g, err := gateway.Open(ctx, home, gateway.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ca, cert, key, err := g.IssueServerSVID()
	if err != nil {
		t.Fatal(err)
	}
	opt.Bundle = ca.Bundle()
	svc, err := gateway.NewService(ctx, g, opt)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(svc)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
	cfg, err := svc.TLSConfig(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	// Not StartTLS: it would put httptest's own certificate first.
	srv.Listener = tls.NewListener(srv.Listener, cfg)
	srv.Start()
	e := &testEnv{t: t, home: home, g: g, svc: svc, srv: srv, ca: ca, dir: t.TempDir(), url: "https://" + srv.Listener.Addr().String()}
	t.Cleanup(e.stop)
	return e
}

// stop kills the server abruptly and closes the gateway.
func (e *testEnv) stop() {
	if e.srv != nil {
		e.srv.CloseClientConnections()
		e.srv.Close()
		e.srv = nil
	}
	if e.g != nil {
		e.g.Close()
		e.g = nil
	}
}

// tlsFor issues an SVID for name (a path such as /agent/a) and returns a
// client TLS configuration presenting it.
func (e *testEnv) tlsFor(name string) *tls.Config {
	e.t.Helper()
	id := spiffeid.RequireFromString("spiffe://etb.local" + name)
	base := filepath.Join(e.dir, strings.ReplaceAll(strings.Trim(name, "/"), "/", "-"))
	if err := e.ca.IssueFiles(id, base+".crt", base+".key", time.Hour); err != nil {
		e.t.Fatal(err)
	}
	gw := spiffeid.RequireFromString("spiffe://etb.local/gateway/local")
	cfg, err := identity.ClientTLSConfig(base+".crt", base+".key", e.ca.Bundle(), func(id spiffeid.ID) error {
		if id != gw {
			return fmt.Errorf("server is %s, want %s", id, gw)
		}
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return cfg
}

// client returns an SDK client for name with its own state directory.
func (e *testEnv) client(name string) *client.Client {
	e.t.Helper()
	c, err := client.New(e.url, client.Options{TLS: e.tlsFor(name), StateDir: e.t.TempDir()})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

func (e *testEnv) trust() *proof.Trust {
	e.t.Helper()
	tr, err := e.g.Trust()
	if err != nil {
		e.t.Fatal(err)
	}
	return tr
}

// verifyEvidence builds an execution's evidence and checks it offline,
// returning the outcome the verifier established.
func verifyEvidence(t testing.TB, e *testEnv, id string) *proof.Report {
	t.Helper()
	b, err := e.g.Evidence(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := proof.Verify(context.Background(), b, e.trust())
	if err != nil {
		t.Fatalf("evidence of %s does not verify: %v", id, err)
	}
	return rep
}

func eventTypes(t testing.TB, g *gateway.Gateway, id string) []string {
	t.Helper()
	events, _, err := g.Events(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range events {
		out = append(out, e.Type)
	}
	return out
}

func TestServiceRunCommandEvidenceVerifies(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, t.TempDir(), 0)
	c := e.client("/agent/a")
	var out bytes.Buffer
	res, err := c.RunCommand(ctx, client.RunRequest{Argv: []string{"echo", "governed"}, Cwd: os.TempDir(), Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || out.String() != "governed\n" || res.Spooled {
		t.Fatalf("exit %d, out %q, spooled %v, message %q", res.ExitCode, out.String(), res.Spooled, res.Message)
	}
	b, err := c.Evidence(ctx, res.Execution)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := proof.Verify(ctx, b, e.trust())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Outcome != "exit 0" || rep.Decision != policy.Permit {
		t.Fatalf("report %+v", rep)
	}
	// The principal is the caller's SVID, never anything from the body.
	events, _, err := e.g.Events(ctx, res.Execution)
	if err != nil {
		t.Fatal(err)
	}
	var intent lineage.IntentBody
	if err := events[0].DecodeBody(&intent); err != nil {
		t.Fatal(err)
	}
	if p := intent.Action.Principal; p.ID != "spiffe://etb.local/agent/a" || p.Attestation != identity.AttestationX509SVID {
		t.Fatalf("principal %+v", p)
	}
	// The grant is bound to the caller's certificate.
	c2, err := grant.VerifySignature(b.Grants[0], mustKeys(t, e.trust()))
	if err != nil {
		t.Fatal(err)
	}
	h, _ := c.Holder()
	if c2.Cnf == nil || c2.Cnf.X5tS256 != h || h == "" {
		t.Fatalf("grant cnf %+v, holder %q", c2.Cnf, h)
	}
	// A denied command never runs and exits 77.
	res, err = c.RunCommand(ctx, client.RunRequest{Argv: []string{"rm", "-rf", "/nonexistent-etb"}, Cwd: os.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != client.ExitDenied || res.Decision.Decision != policy.Deny {
		t.Fatalf("rm -rf: %+v", res)
	}
}

func mustKeys(t testing.TB, tr *proof.Trust) map[string]ed25519.PublicKey {
	t.Helper()
	k, err := tr.GrantPublicKeys()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestServiceRefusesWrongOrMissingCertificate(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, t.TempDir(), 0)
	echo, err := enforce.DescribeExec([]string{"echo", "x"}, os.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// Another CA of the same trust domain: its SVIDs do not chain to ours.
	otherCA, err := identity.LoadOrCreateCA(t.TempDir(), spiffeid.RequireTrustDomainFromString("etb.local"))
	if err != nil {
		t.Fatal(err)
	}
	rogue := &testEnv{t: t, ca: otherCA, dir: t.TempDir()}
	rogueTLS := rogue.tlsFor("/agent/a")
	rogueTLS.VerifyConnection = nil // the rogue does not care who the server is
	noCert := &tls.Config{InsecureSkipVerify: true}
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
	}{
		{"no certificate", noCert},
		{"certificate from another CA", rogueTLS},
		{"SVID of no caller class", e.tlsFor("/workload/x")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := client.New(e.url, client.Options{TLS: tc.cfg})
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Decide(ctx, echo, client.Task{})
			if err == nil {
				t.Fatal("intent accepted")
			}
		})
	}
	n, err := e.g.List(ctx, 10)
	if err != nil || len(n) != 0 {
		t.Fatalf("refused callers left executions: %v %v", n, err)
	}
	// The caller cannot name itself in the body: a principal field is an
	// unknown field, refused before anything is decided.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: e.tlsFor("/agent/a")}}
	body := `{"action":{"kind":"shell.exec","name":"echo","args":["x"]},"principal":{"id":"spiffe://etb.local/admin/root"}}`
	resp, err := hc.Post(e.url+"/v1/intents", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("intent naming a principal: %d", resp.StatusCode)
	}
	if n, _ := e.g.List(ctx, 10); len(n) != 0 {
		t.Fatalf("refused intents left executions: %v", n)
	}
	// An approver may not submit intents, an agent may not revoke.
	_, err = e.client("/approver/x").Decide(ctx, echo, client.Task{})
	if !errors.As(err, new(*client.Error)) || err.(*client.Error).Status != http.StatusForbidden {
		t.Fatalf("approver intent: %v", err)
	}
	_, err = e.client("/agent/a").Revoke(ctx, client.RevokeRequest{All: true})
	if !errors.As(err, new(*client.Error)) || err.(*client.Error).Status != http.StatusForbidden {
		t.Fatalf("agent revoke: %v", err)
	}
}

// A grant issued to agent A is refused when agent B's enforcer presents it,
// and B cannot report on A's execution.
func TestServiceGrantReplayedByAnotherAgent(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, t.TempDir(), 0)
	a, b := e.client("/agent/a"), e.client("/agent/b")
	spec, err := enforce.DescribeExec([]string{"echo", "x"}, os.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	auth, err := a.Decide(ctx, spec, client.Task{})
	if err != nil || !auth.Permitted() {
		t.Fatalf("decide: %+v %v", auth, err)
	}
	keys, err := e.trust().GrantPublicKeys()
	if err != nil {
		t.Fatal(err)
	}
	replay := openReplay(t)
	v := grant.NewVerifier(keys, replay, 0, nil)
	hb, _ := b.Holder()
	ha, _ := a.Holder()
	if _, err := v.Verify(ctx, auth.Grant, grant.Expect{Audience: e.trust().Enforcer, ADG: auth.Digest, Holder: hb}); !errors.Is(err, grant.ErrHolder) {
		t.Fatalf("B presenting A's grant: %v, want ErrHolder", err)
	}
	if err := b.Report(ctx, auth.Execution, lineage.TypeStart, lineage.StartBody{PID: 1, GrantJTI: "x"}); err == nil || err.(*client.Error).Status != http.StatusForbidden {
		t.Fatalf("B reporting on A's execution: %v", err)
	}
	if _, err := v.Verify(ctx, auth.Grant, grant.Expect{Audience: e.trust().Enforcer, ADG: auth.Digest, Holder: ha}); err != nil {
		t.Fatalf("A's own grant: %v", err)
	}
	if _, err := v.Verify(ctx, auth.Grant, grant.Expect{Audience: e.trust().Enforcer, ADG: auth.Digest, Holder: ha}); !errors.Is(err, grant.ErrReplayed) {
		t.Fatalf("second use: %v, want ErrReplayed", err)
	}
}

// startSleep runs `sleep 600` through c in the background and waits until
// its start is in the ledger. It returns the execution id and the result.
func startSleep(t *testing.T, e *testEnv, c *client.Client) (string, <-chan *client.RunResult) {
	t.Helper()
	done := make(chan *client.RunResult, 1)
	go func() {
		res, err := c.RunCommand(context.Background(), client.RunRequest{Argv: []string{"sleep", "600"}, Cwd: os.TempDir()})
		if err != nil {
			t.Error(err)
		}
		done <- res
	}()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		list, err := e.g.List(context.Background(), 1)
		if err == nil && len(list) == 1 && list[0].Outcome == "running" {
			return list[0].ID, done
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("sleep did not start")
	return "", nil
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

func TestServiceRevocationKillsProcessTree(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, t.TempDir(), 0)
	agent, admin := e.client("/agent/a"), e.client("/admin/ops")
	for _, scope := range []string{"execution", "agent", "all"} {
		t.Run(scope, func(t *testing.T) {
			id, done := startSleep(t, e, agent)
			req := map[string]client.RevokeRequest{"execution": {Execution: id}, "agent": {Agent: "spiffe://etb.local/agent/a"}, "all": {All: true}}[scope]
			rv, err := admin.Revoke(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			returned := time.Now()
			var res *client.RunResult
			select {
			case res = <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("revoked sleep still running after 5s")
			}
			elapsed := time.Since(returned)
			if elapsed > 2*time.Second {
				t.Fatalf("tree died %v after revoke returned", elapsed)
			}
			t.Logf("revoke returned → tree dead: %v", elapsed)
			if alive(res.Result.PID) {
				t.Fatalf("pid %d alive", res.Result.PID)
			}
			if len(rv.Revoked) != 1 || rv.Revoked[0] != id || res.Reason != client.ReasonRevoked {
				t.Fatalf("revoked %v, reason %q (%s)", rv.Revoked, res.Reason, res.Message)
			}
			got := strings.Join(eventTypes(t, e.g, id), ",")
			if got != "intent,decision,grant,start,revocation,interrupt" {
				t.Fatalf("events %s", got)
			}
			if rep := verifyEvidence(t, e, id); rep.Outcome != "interrupted: revoked" {
				t.Fatalf("verified outcome %q", rep.Outcome)
			}
		})
	}
	// The revocation requests are persisted.
	n, err := countRows(e.home)
	if err != nil || n != 3 {
		t.Fatalf("revocations stored: %d %v", n, err)
	}
}

func countRows(home string) (int, error) {
	g, err := gateway.Open(context.Background(), home, gateway.Options{})
	if err != nil {
		return 0, err
	}
	defer g.Close()
	svc, err := gateway.NewService(context.Background(), g, gateway.ServiceOptions{})
	if err != nil {
		return 0, err
	}
	return svc.RevocationCount(context.Background())
}

// The gateway dies mid-execution: the enforcer kills the tree when the
// lease expires, spools the interruption, and delivers it to the
// restarted gateway, which rebuilds the execution from its ledger chain.
func TestServiceGatewayDiesLeaseExpires(t *testing.T) {
	ctx := context.Background()
	home := t.TempDir()
	const lease = time.Second
	e := newEnv(t, home, lease)
	state := t.TempDir()
	c, err := client.New(e.url, client.Options{TLS: e.tlsFor("/agent/a"), StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	id, done := startSleep(t, e, c)
	killed := time.Now()
	e.stop()
	res := <-done
	if d := time.Since(killed); d > lease+2*time.Second {
		t.Fatalf("tree died %v after the gateway, lease %v", d, lease)
	}
	// The gateway may die while the enforcer's start report is in flight
	// (report_failed) or later (lease_lost): either way the tree is killed,
	// fail closed, and the interruption is spooled.
	if (res.Reason != client.ReasonLeaseLost && res.Reason != client.ReasonReport) || !res.Spooled || alive(res.Result.PID) {
		t.Fatalf("result %+v", res)
	}
	c.Close()

	e2 := newEnv(t, home, lease)
	c2, err := client.New(e2.url, client.Options{TLS: e2.tlsFor("/agent/a"), StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	n, err := c2.FlushSpool(ctx)
	if err != nil || n != 1 {
		t.Fatalf("flush: %d %v", n, err)
	}
	if left, _ := c2.Spooled(); len(left) != 0 {
		t.Fatalf("spool not empty: %v", left)
	}
	events, _, err := e2.g.Events(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	last := events[len(events)-1]
	var ib lineage.InterruptBody
	if last.Type != lineage.TypeInterrupt || last.DecodeBody(&ib) != nil || ib.Reason != res.Reason {
		t.Fatalf("last event %s %s, the enforcer reported %s", last.Type, last.Body, res.Reason)
	}
	b, err := c2.Evidence(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if rep, err := proof.Verify(ctx, b, e2.trust()); err != nil || rep.Outcome != "interrupted: "+res.Reason {
		t.Fatalf("verify: %+v %v", rep, err)
	}
	// A second delivery of a terminal event is refused: the chain is closed.
	if err := c2.Report(ctx, id, lineage.TypeEnd, lineage.EndBody{}); !client.IsCode(err, client.CodeEnded) {
		t.Fatalf("report after end: %v", err)
	}
}

// permitted decides spec for c and fails the test unless it is permitted.
func permitted(t testing.TB, c *client.Client, spec action.Spec) *client.Authorization {
	t.Helper()
	auth, err := c.Decide(context.Background(), spec, client.Task{})
	if err != nil || !auth.Permitted() {
		t.Fatalf("decide %s: %+v %v", spec.Name, auth, err)
	}
	return auth
}

func TestServiceRenewalReevaluatesPolicy(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, t.TempDir(), 0)
	c := e.client("/agent/a")
	auth := permitted(t, c, execSpec(t, "echo", "x"))
	if _, err := c.Renew(ctx, auth.Execution); err != nil {
		t.Fatal(err)
	}
	deny, err := policy.Load([]byte("version: etb.policy/v1\nname: nothing\nrules: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.g.SetPolicy(ctx, deny); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Renew(ctx, auth.Execution); !client.IsCode(err, client.CodePolicyDenied) {
		t.Fatalf("renew under a denying policy: %v", err)
	}
	if err := c.Report(ctx, auth.Execution, lineage.TypeStart, lineage.StartBody{PID: 1, GrantJTI: "x"}); !client.IsCode(err, client.CodeRevoked) {
		t.Fatalf("start after the policy denied: %v", err)
	}
}

// A permit never started cannot be revived once its lease has expired:
// renewing it is refused like starting it (410 lease_expired), while a
// renewal within the lease extends it.
func TestServiceNeverStartedLeaseExpires(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, t.TempDir(), 200*time.Millisecond)
	c := e.client("/agent/a")
	auth := permitted(t, c, execSpec(t, "echo", "x"))
	if _, err := c.Renew(ctx, auth.Execution); err != nil {
		t.Fatalf("renewal within the lease: %v", err)
	}
	claims, err := grant.VerifySignature(auth.Grant, mustKeys(t, e.trust()))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if _, err := c.Renew(ctx, auth.Execution); !client.IsCode(err, client.CodeLeaseExpired) {
		t.Fatalf("renewal of a never-started permit after its lease: %v", err)
	}
	if err := c.Report(ctx, auth.Execution, lineage.TypeStart, lineage.StartBody{PID: 1, GrantJTI: claims.ID}); !client.IsCode(err, client.CodeLeaseExpired) {
		t.Fatalf("start after the lease: %v", err)
	}
}

// Many clients at once: no event is lost, every execution's evidence
// verifies.
func TestServiceConcurrentLoad(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, t.TempDir(), 0)
	const clients, per = 32, 10
	spec, err := enforce.DescribeExec([]string{"echo", "x"}, os.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cs := make([]*client.Client, clients)
	for i := range cs {
		cs[i] = e.client(fmt.Sprintf("/agent/a%d", i))
	}
	var (
		mu  sync.Mutex
		ids []string
		wg  sync.WaitGroup
	)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := cs[i]
			for range per {
				auth, err := c.Decide(ctx, spec, client.Task{ID: fmt.Sprintf("task-%d", i)})
				if err != nil || !auth.Permitted() {
					t.Errorf("decide: %v", err)
					return
				}
				jti, err := grant.VerifySignature(auth.Grant, mustKeys(t, e.trust()))
				if err != nil {
					t.Error(err)
					return
				}
				if err := c.Report(ctx, auth.Execution, lineage.TypeStart, lineage.StartBody{PID: 1, Program: "/usr/bin/echo", GrantJTI: jti.ID}); err != nil {
					t.Error(err)
					return
				}
				if err := c.Report(ctx, auth.Execution, lineage.TypeEnd, lineage.EndBody{ExitCode: 0}); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				ids = append(ids, auth.Execution)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(ids) != clients*per {
		t.Fatalf("%d executions, want %d", len(ids), clients*per)
	}
	admin := e.client("/admin/ops")
	for _, id := range ids {
		b, err := admin.Evidence(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		rep, err := proof.Verify(ctx, b, e.trust())
		if err != nil || rep.Events != 5 || rep.Outcome != "exit 0" {
			t.Fatalf("%s: %+v %v", id, rep, err)
		}
	}
}

// Unix socket callers are attested by the kernel; an unregistered caller
// is refused.
func TestServiceUnixSocketAttestation(t *testing.T) {
	ctx := context.Background()
	home := t.TempDir()
	g, err := gateway.Open(ctx, home, gateway.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	svc, err := gateway.NewService(ctx, g, gateway.ServiceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	uid := uint32(os.Getuid())
	other := uid + 4242
	for _, tc := range []struct {
		name string
		reg  identity.Registration
		ok   bool
	}{
		{"registered", identity.Registration{ID: "spiffe://etb.local/agent/local", UID: &uid}, true},
		{"unregistered", identity.Registration{ID: "spiffe://etb.local/agent/local", UID: &other}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "etb.sock")
			ln, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			srv := &http.Server{Handler: svc, ConnContext: identity.ConnContext(&identity.Attestor{Entries: []identity.Registration{tc.reg}})}
			go srv.Serve(ln)
			defer srv.Close()
			c, err := client.New("http://etb", client.Options{Socket: sock, StateDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			spec, err := enforce.DescribeExec([]string{"echo", "x"}, os.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			auth, err := c.Decide(ctx, spec, client.Task{})
			if !tc.ok {
				if err == nil {
					t.Fatalf("unregistered caller got %+v", auth)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p := auth.Principal; p.ID != "spiffe://etb.local/agent/local" || p.Attestation != identity.AttestationUnixPeerCred || p.ExeSHA256 == "" {
				t.Fatalf("principal %+v", p)
			}
			res, err := c.RunCommand(ctx, client.RunRequest{Argv: []string{"true"}, Cwd: os.TempDir()})
			if err != nil || res.ExitCode != 0 {
				t.Fatalf("run: %+v %v", res, err)
			}
		})
	}
}

func openReplay(t testing.TB) *grant.SQLiteReplayStore {
	t.Helper()
	ctx := context.Background()
	db, err := ledger.OpenSQLite(ctx, filepath.Join(t.TempDir(), "replay.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	replay, err := grant.NewSQLiteReplayStore(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	return replay
}
