package mcp_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/etbproject/etb/client"
	"github.com/etbproject/etb/gateway"
	"github.com/etbproject/etb/identity"
	"github.com/etbproject/etb/internal/etbtest"
	"github.com/etbproject/etb/mcp"
)

// served is a running `etb serve` with identities issued from its CA.
type served struct {
	home, addr string
	proc       *etbtest.Proc
	ca         *identity.CA
}

// startGateway initialises home, starts `etb serve --policy pol` on a
// free port and waits until it listens.
func startGateway(t testing.TB, pol string) *served {
	t.Helper()
	ctx := context.Background()
	home := t.TempDir()
	if _, err := (gateway.Home{Dir: home}).Init(ctx); err != nil {
		t.Fatal(err)
	}
	ca, err := identity.LoadOrCreateCA(filepath.Join(home, "ca"), spiffeid.RequireTrustDomainFromString("etb.local"))
	if err != nil {
		t.Fatal(err)
	}
	addr := etbtest.FreeAddr(t)
	p := etbtest.Start(t, etbBin, "etb serve: https://", "--home", home, "serve", "--listen", addr, "--policy", pol)
	return &served{home: home, addr: addr, proc: p, ca: ca}
}

// identity issues an SVID for id and returns its certificate and key files.
func (s *served) identity(t testing.TB, id string) (cert, key string) {
	t.Helper()
	name := strings.ReplaceAll(strings.TrimPrefix(id, "spiffe://etb.local/"), "/", "-")
	cert, key = filepath.Join(s.home, name+".crt"), filepath.Join(s.home, name+".key")
	if err := s.ca.IssueFiles(spiffeid.RequireFromString(id), cert, key, time.Hour); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// client returns a client of the gateway presenting id.
func (s *served) client(t *testing.T, id string) *client.Client {
	t.Helper()
	cert, key := s.identity(t, id)
	gwID := spiffeid.RequireFromString("spiffe://etb.local/gateway/local")
	cfg, err := identity.ClientTLSConfig(cert, key, s.ca.Bundle(), func(got spiffeid.ID) error {
		if got != gwID {
			return fmt.Errorf("server %s, want %s", got, gwID)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New("https://"+s.addr, client.Options{TLS: cfg, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// stop ends `etb serve` (so that verifyAll can open its home).
func (s *served) stop(t *testing.T) { s.proc.Stop(t) }

// mcpSession starts `etb mcp --gateway` as agent id in front of upstream
// and connects a go-sdk client to it.
func (s *served) mcpSession(t testing.TB, id string, extra []string, upstream ...string) *sdk.ClientSession {
	t.Helper()
	return s.mcpSessionWith(t, id, nil, extra, upstream...)
}

// mcpSessionWith is mcpSession with the client's options.
func (s *served) mcpSessionWith(t testing.TB, id string, copt *sdk.ClientOptions, extra []string, upstream ...string) *sdk.ClientSession {
	t.Helper()
	cert, key := s.identity(t, id)
	args := append([]string{"--home", t.TempDir(), "mcp", "--gateway", "https://" + s.addr, "--cert", cert, "--key", key,
		"--ca", filepath.Join(s.home, "ca", identity.CACertFile)}, extra...)
	cmd := etbCommand(t, append(append(args, "--"), upstream...)...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cs, err := sdk.NewClient(&sdk.Implementation{Name: "etb-test-client", Version: "1"}, copt).Connect(ctx, &sdk.CommandTransport{Command: cmd}, nil)
	if err != nil {
		t.Fatalf("connect to etb mcp --gateway: %v", err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

// Through `etb serve`: a permitted call passes; a long-running call is
// cut short by `revoke` within the bound, the client gets an error result,
// and the interrupt (revoked) is in the evidence, which verifies.
func TestGatewayRevokeCancelsLongCall(t *testing.T) {
	ev := peer(t, "server-everything")
	pol := policyFile(t, `version: etb.policy/v1
name: mcp-gateway
defaults:
  obligations: {timeout: 60s}
rules:
  - id: everything-tools
    effect: permit
    match: {kind: mcp.tool_call, name: [mcp-servers/everything/echo, mcp-servers/everything/trigger-long-running-operation]}
`)
	gw := startGateway(t, pol)
	admin := gw.client(t, "spiffe://etb.local/admin/ops")
	cs := gw.mcpSession(t, "spiffe://etb.local/agent/a", []string{"--task", "session-1"}, append(ev, "stdio")...)

	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	res, err := cs.CallTool(context.Background(), &sdk.CallToolParams{Name: "echo", Arguments: map[string]any{"message": "via the gateway"},
		Meta: sdk.Meta{"traceparent": tp}})
	if err != nil || res.IsError || !strings.Contains(text(res), "via the gateway") {
		t.Fatalf("echo: %v %+v", err, res)
	}

	type result struct {
		res *sdk.CallToolResult
		err error
		at  time.Time
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		r, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "trigger-long-running-operation", Arguments: map[string]any{"duration": 40, "steps": 40}})
		done <- result{r, err, time.Now()}
	}()
	// Revoke the session's task once the long call is running in it (it
	// runs for 40 s once started); the server's start is a task of its
	// own and keeps running.
	time.Sleep(time.Second)
	var revoked time.Time
	for deadline := time.Now().Add(20 * time.Second); ; {
		r, err := admin.Revoke(context.Background(), client.RevokeRequest{Task: "session-1"})
		if err != nil {
			t.Fatalf("revoke: %v", err)
		}
		if len(r.Revoked) > 0 {
			revoked = time.Now()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the long-running call never became a running execution")
		}
		time.Sleep(100 * time.Millisecond)
	}
	var got result
	select {
	case got = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the long-running call still runs 10 s after revocation")
	}
	if d := got.at.Sub(revoked); d > 2*time.Second {
		t.Errorf("the call ended %v after revoke returned, want ≤ 2s", d)
	}
	t.Logf("revoke returned → client got its result in %v", got.at.Sub(revoked))
	if got.err == nil && (got.res == nil || !got.res.IsError) {
		t.Fatalf("revoked call: err %v, result %+v; want an error", got.err, got.res)
	}
	if got.err == nil && !strings.Contains(text(got.res), "revoked") {
		t.Errorf("revoked call's error does not say revoked: %q", text(got.res))
	}
	// The server still serves the session.
	res = call(t, cs, "echo", map[string]any{"message": "after the revocation"})
	if res.IsError || !strings.Contains(text(res), "after the revocation") {
		t.Fatalf("echo after the revocation: isError=%v %q", res.IsError, text(res))
	}
	cs.Close()
	gw.stop(t)
	list := verifyAll(t, gw.home, pol, 4)
	if list[1].Name != "mcp-servers/everything/trigger-long-running-operation" || list[1].Outcome != "interrupted: revoked" {
		t.Errorf("long call: %s %s, want interrupted: revoked", list[1].Name, list[1].Outcome)
	}
	if list[2].Outcome != "exit 0" || list[3].Kind != mcp.KindServerStart || list[3].Outcome != "exit 0" {
		t.Errorf("echo %q, server start %s %q", list[2].Outcome, list[3].Kind, list[3].Outcome)
	}
	// The echo's traceparent is in its evidence (the intent's env), and
	// every call's events carry the session task.
	g, err := gateway.Open(context.Background(), gw.home, gateway.Options{PolicyPath: pol})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	b, err := g.Evidence(context.Background(), list[2].ID)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.Events[0].Entry, `"trace.traceparent":"`+tp+`"`) {
		t.Errorf("the echo's intent does not record its traceparent: %s", b.Events[0].Entry)
	}
	for _, s := range list[:3] {
		if s.Task != "session-1" {
			t.Errorf("execution %s (%s) in task %q, want session-1", s.ID, s.Name, s.Task)
		}
	}
}

// require_approval through `etb serve`: the edit waits for `etb approve`
// and passes only after approval of exactly those arguments; a rejected
// one never reaches the upstream.
func TestGatewayApprovalOfExactArguments(t *testing.T) {
	fs := peer(t, "server-filesystem")
	work := tempDir(t)
	file := writeFile(t, filepath.Join(work, "config.txt"), "mode = safe\n")
	pol := policyFile(t, fmt.Sprintf(`version: etb.policy/v1
name: mcp-approval
rules:
  - id: edits-need-a-human
    effect: require_approval
    match: {kind: mcp.tool_call, name: secure-filesystem-server/edit_file}
    when: action.target.paths.all(p, p.startsWith("%s/"))
    message: a human approves every edit
`, work))
	gw := startGateway(t, pol)
	approver := gw.client(t, "spiffe://etb.local/approver/alice")
	cs := gw.mcpSession(t, "spiffe://etb.local/agent/a", []string{"--approval-wait", "20s"}, append(fs, work)...)

	edit := func(newText string) chan *sdk.CallToolResult {
		out := make(chan *sdk.CallToolResult, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
			defer cancel()
			r, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "edit_file", Arguments: map[string]any{
				"path": file, "edits": []map[string]any{{"oldText": "mode = safe", "newText": newText}}}})
			if err != nil {
				r = &sdk.CallToolResult{IsError: true, Content: []sdk.Content{&sdk.TextContent{Text: err.Error()}}}
			}
			out <- r
		}()
		return out
	}
	// pending waits for the ticket of the edit whose arguments hold want.
	pending := func(want string) client.Approval {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			list, err := approver.Approvals(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range list {
				if a.Status == "pending" && a.Action != nil && strings.Contains(strings.Join(a.Action.Args, " "), want) {
					return a
				}
			}
		}
		t.Fatalf("no pending approval for %q", want)
		return client.Approval{}
	}

	// A rejected edit is refused and never reaches the file.
	evil := edit("mode = unsafe")
	tk := pending("mode = unsafe")
	if _, err := approver.Reject(context.Background(), tk.ID, "no"); err != nil {
		t.Fatal(err)
	}
	if r := <-evil; !r.IsError || !strings.Contains(text(r), "rejected") {
		t.Fatalf("rejected edit: isError=%v %q", r.IsError, text(r))
	}
	// The approved edit passes, with exactly the approved arguments.
	good := edit("mode = audited")
	tk = pending("mode = audited")
	spec := *tk.Action
	if d, err := spec.Digest(); err != nil || d != tk.Digest {
		t.Fatalf("the ticket's digest %s is not its action's (%s, %v)", tk.Digest, d, err)
	}
	if _, err := approver.Approve(context.Background(), tk.ID, "ok"); err != nil {
		t.Fatal(err)
	}
	if r := <-good; r.IsError {
		t.Fatalf("approved edit: %q", text(r))
	}
	if b, _ := os.ReadFile(file); string(b) != "mode = audited\n" {
		t.Fatalf("file after the approved edit: %q", b)
	}
	cs.Close()
	gw.stop(t)
	list := verifyAll(t, gw.home, pol, 3)
	if list[0].Outcome != "exit 0" || !strings.Contains(list[1].Outcome, "rejected") {
		t.Errorf("outcomes: approved %q, rejected %q", list[0].Outcome, list[1].Outcome)
	}
}

// Through `etb serve`, a tool that changed its definition is refused and
// the refusal is in the gateway's evidence; calls whose approval did not
// come within --approval-wait are ended (approval_timeout), so every
// execution's evidence is complete.
func TestGatewayToolChanged(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("ETB_MCP_TEST_SERVER", "1")
	pol := policyFile(t, `version: etb.policy/v1
name: mcp-gateway-pin
rules:
  - id: swap
    effect: permit
    match: {kind: mcp.tool_call, name: etb-pin-test/swap}
  - id: greet-asks
    effect: require_approval
    match: {kind: mcp.tool_call, name: etb-pin-test/greet}
`)
	gw := startGateway(t, pol)
	cs := gw.mcpSession(t, "spiffe://etb.local/agent/a", []string{"--approval-wait", "1ms"}, self)
	if res := call(t, cs, "swap", nil); res.IsError {
		t.Fatalf("swap: %q", text(res))
	}
	var res *sdk.CallToolResult
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		res = call(t, cs, "greet", map[string]any{"name": "ada"})
		if strings.Contains(text(res), "changed its definition") || time.Now().After(deadline) {
			break
		}
	}
	if !res.IsError || !strings.Contains(text(res), "changed its definition") {
		t.Fatalf("greet after the swap: isError=%v %q", res.IsError, text(res))
	}
	cs.Close()
	gw.stop(t)
	list := verifyAll(t, gw.home, pol, len(verifyAllList(t, gw.home, pol)))
	if !strings.Contains(text(res), list[0].ID) || list[0].Outcome != "interrupted: tool_changed" {
		t.Errorf("the refused greet: %s %q", list[0].ID, list[0].Outcome)
	}
	for _, s := range list[1:] {
		if s.Name == "etb-pin-test/greet" && s.Outcome != "interrupted: approval_timeout" {
			t.Errorf("greet before the change: %s %q, want interrupted: approval_timeout", s.ID, s.Outcome)
		}
	}
}

// verifyAllList lists the executions of a stopped gateway's home.
func verifyAllList(t *testing.T, home, pol string) []gateway.Summary {
	t.Helper()
	g, err := gateway.Open(context.Background(), home, gateway.Options{PolicyPath: pol})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	list, err := g.List(context.Background(), 100)
	if err != nil {
		t.Fatal(err)
	}
	return list
}
