package gateway_test

import (
	"context"
	"crypto/ed25519"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/client"
	"github.com/etbproject/etb/enforce"
	"github.com/etbproject/etb/grant"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/policy"
	"github.com/etbproject/etb/proof"
)

const delegationPolicy = `version: etb.policy/v1
name: delegation
defaults:
  obligations:
    timeout: 5m
rules:
  - id: run
    effect: permit
    match: {kind: shell.exec, name: [echo, sleep]}
  - id: delegate
    effect: permit
    match: {kind: agent.delegate}
`

func setPolicy(t testing.TB, e *testEnv, src string) {
	t.Helper()
	b, err := policy.Load([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.g.SetPolicy(context.Background(), b); err != nil {
		t.Fatal(err)
	}
}

func execSpec(t testing.TB, argv ...string) action.Spec {
	t.Helper()
	spec, err := enforce.DescribeExec(argv, os.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// Delegation end to end: A delegates to B, B to C (no wider); widening is
// refused, acting outside the scope is refused, another agent cannot use
// C's delegation; revoking A's delegation grant interrupts C's running
// grandchild execution and refuses C's next intent; the task tree's
// evidence verifies with every parent → child link.
func TestServiceDelegationChain(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, t.TempDir(), 0)
	setPolicy(t, e, delegationPolicy)
	a, b, c, d := e.client("/agent/a"), e.client("/agent/b"), e.client("/agent/c"), e.client("/agent/d")
	admin := e.client("/admin/ops")
	const td = "spiffe://etb.local/agent/"

	// A acts in its own task first, then delegates to B.
	root, err := a.Decide(ctx, execSpec(t, "echo", "root"), client.Task{ID: "root-task"})
	if err != nil || !root.Permitted() {
		t.Fatalf("A's own action: %+v %v", root, err)
	}
	wide := grant.Scope{Actions: []grant.ScopeAction{{Kind: "shell.exec", Name: "sleep"}, {Kind: "shell.exec", Name: "echo"}}}
	d1, err := a.Delegate(ctx, client.DelegationRequest{Agent: td + "b", Scope: wide, Depth: 1, TTLSeconds: 300, Task: client.Task{ID: "root-task"}})
	if err != nil {
		t.Fatal(err)
	}
	c1, err := grant.VerifySignature(d1.Grant, grantKeys(t, e))
	if err != nil || c1.Scp == nil || c1.Subject != td+"b" || c1.Depth != 1 {
		t.Fatalf("delegation grant %+v %v", c1, err)
	}

	// B may not widen: a scope beyond its own, or the same depth.
	for name, req := range map[string]client.DelegationRequest{
		"wider scope": {Agent: td + "c", Scope: grant.Scope{Actions: []grant.ScopeAction{{Kind: "shell.exec", Name: "*"}}}, Depth: 0, Delegation: d1.Grant},
		"same depth":  {Agent: td + "c", Scope: grant.Scope{Actions: []grant.ScopeAction{{Kind: "shell.exec", Name: "sleep"}}}, Depth: 1, Delegation: d1.Grant},
	} {
		if _, err := b.Delegate(ctx, req); !client.IsCode(err, "out_of_scope") {
			t.Fatalf("%s: %v, want out_of_scope", name, err)
		}
	}
	// B's task belongs to the delegation: nobody acts in it without
	// presenting it, not even B, nor A who delegated.
	for name, cl := range map[string]*client.Client{"A": a, "B": b} {
		if _, err := cl.Decide(ctx, execSpec(t, "echo", "in"), client.Task{ID: d1.Task}); !client.IsCode(err, "out_of_scope") {
			t.Fatalf("%s in the delegated task without the delegation: %v", name, err)
		}
	}
	// A cannot use B's delegation: it is held by B.
	if _, err := a.Decide(ctx, execSpec(t, "sleep", "1"), client.Task{Delegation: d1.Grant}); !client.IsCode(err, "delegation_invalid") {
		t.Fatalf("A presenting B's delegation: %v", err)
	}
	narrow := grant.Scope{Actions: []grant.ScopeAction{{Kind: "shell.exec", Name: "sleep"}}}
	d2, err := b.Delegate(ctx, client.DelegationRequest{Agent: td + "c", Scope: narrow, Depth: 0, TTLSeconds: 300, Delegation: d1.Grant})
	if err != nil {
		t.Fatal(err)
	}
	c2, err := grant.VerifySignature(d2.Grant, grantKeys(t, e))
	if err != nil || c2.Par == nil || c2.Par.JTI != c1.ID || c2.Txn != c1.Txn || c2.Expiry > c1.Expiry {
		t.Fatalf("child delegation %+v %v", c2, err)
	}
	// C acting outside its scope, or D using C's grant, is refused.
	if _, err := c.Decide(ctx, execSpec(t, "echo", "x"), client.Task{Delegation: d2.Grant}); !client.IsCode(err, "out_of_scope") {
		t.Fatalf("C outside its scope: %v", err)
	}
	if _, err := d.Decide(ctx, execSpec(t, "sleep", "1"), client.Task{Delegation: d2.Grant}); !client.IsCode(err, "delegation_invalid") {
		t.Fatalf("D presenting C's delegation: %v", err)
	}

	// C runs a long command under its delegation.
	done := make(chan *client.RunResult, 1)
	go func() {
		res, err := c.RunCommand(context.Background(), client.RunRequest{Argv: []string{"sleep", "600"}, Cwd: os.TempDir(),
			Task: client.Task{Delegation: d2.Grant}})
		if err != nil {
			t.Error(err)
		}
		done <- res
	}()
	var running string
	for deadline := time.Now().Add(10 * time.Second); running == "" && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		list, err := e.g.List(ctx, 1)
		if err == nil && len(list) == 1 && list[0].Outcome == "running" && list[0].Agent == td+"c" {
			running = list[0].ID
		}
	}
	if running == "" {
		t.Fatal("C's sleep did not start")
	}
	// Revoking A's delegation (the root of the chain) reaches the grandchild.
	rv, err := admin.Revoke(ctx, client.RevokeRequest{Grant: c1.ID})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-done:
		if res.Reason != client.ReasonRevoked || alive(res.Result.PID) {
			t.Fatalf("grandchild: reason %q, pid %d alive %v", res.Reason, res.Result.PID, alive(res.Result.PID))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the grandchild still runs 5s after its ancestor's revocation")
	}
	if !strings.Contains(strings.Join(rv.Revoked, ","), running) {
		t.Fatalf("revoked %v, want %s among them", rv.Revoked, running)
	}
	// Nothing more under the revoked chain.
	if _, err := c.Decide(ctx, execSpec(t, "sleep", "1"), client.Task{Delegation: d2.Grant}); !client.IsCode(err, "revoked") {
		t.Fatalf("C after the revocation: %v", err)
	}

	// One bundle for the whole tree, checked offline.
	bundle, err := e.g.EvidenceForTask(ctx, "root-task")
	if err != nil {
		t.Fatal(err)
	}
	if bundle.Task != "root-task" || len(bundle.Grants) < 4 {
		t.Fatalf("task bundle: task %q, %d grants", bundle.Task, len(bundle.Grants))
	}
	if _, err := proof.Verify(ctx, bundle, e.trust()); err != nil {
		t.Fatalf("task evidence: %v", err)
	}
	// The single execution's bundle carries the chain of delegations too.
	verifyEvidence(t, e, running)
	tree, err := e.g.TaskTree(ctx, "root-task")
	if err != nil || len(tree.Children) != 1 || len(tree.Children[0].Children) != 1 {
		t.Fatalf("tree %+v %v", tree, err)
	}
}

func grantKeys(t testing.TB, e *testEnv) map[string]ed25519.PublicKey {
	t.Helper()
	keys, err := e.trust().GrantPublicKeys()
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// A sub-agent's action that needs approval gets, once approved, a child of
// its delegation (par, tightened obligations); an action outside the scope
// is refused before any ticket exists, so no approver can let it through.
func TestServiceDelegatedApproval(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, t.TempDir(), 0)
	setPolicy(t, e, delegationPolicy+`  - id: ask-for-sleep
    effect: require_approval
    match: {kind: shell.exec, name: [sleep]}
    when: '"delegation.jti" in env'
  - id: rm
    effect: require_approval
    match: {kind: shell.exec, name: [rm]}
`)
	a, approver := e.client("/agent/a"), e.client("/approver/alice")
	b, err := client.New(e.url, client.Options{TLS: e.tlsFor("/agent/b"), StateDir: t.TempDir(), ApprovalWait: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	scope := grant.Scope{Actions: []grant.ScopeAction{{Kind: "shell.exec", Name: "sleep"}}}
	d, err := a.Delegate(ctx, client.DelegationRequest{Agent: "spiffe://etb.local/agent/b", Scope: scope, TTLSeconds: 300})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Decide(ctx, execSpec(t, "rm", "-f", "/nonexistent-etb"), client.Task{Delegation: d.Grant}); !client.IsCode(err, "out_of_scope") {
		t.Fatalf("out-of-scope action needing approval: %v", err)
	}
	done := make(chan *client.RunResult, 1)
	go func() {
		res, err := b.RunCommand(ctx, client.RunRequest{Argv: []string{"sleep", "0.01"}, Cwd: os.TempDir(), Task: client.Task{Delegation: d.Grant}})
		if err != nil {
			t.Error(err)
		}
		done <- res
	}()
	list := pending(t, approver, 1)
	if _, err := approver.Approve(ctx, list[0].ID, ""); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res == nil || res.ExitCode != 0 {
		t.Fatalf("approved run: %+v", res)
	}
	c, err := grant.VerifySignature(tokenOf(t, e, res.Execution), grantKeys(t, e))
	if err != nil || c.Par == nil || c.Par.JTI != d.Execution || c.Txn == "" {
		// d.Execution is the delegation's execution; its grant's jti is
		// checked below.
		dc, _ := grant.VerifySignature(d.Grant, grantKeys(t, e))
		if err != nil || c.Par == nil || dc == nil || c.Par.JTI != dc.ID {
			t.Fatalf("approved grant %+v %v, want a child of the delegation", c, err)
		}
	}
	verifyEvidence(t, e, res.Execution)
}

func tokenOf(t testing.TB, e *testEnv, execution string) string {
	t.Helper()
	b, err := e.g.Evidence(context.Background(), execution)
	if err != nil || len(b.Grants) == 0 {
		t.Fatalf("evidence of %s: %v", execution, err)
	}
	return b.Grants[0]
}

// An action a limit sends to a human spends from the limit once approved:
// the next decision sees its use.
func TestServiceApprovedActionSpendsLimit(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, t.TempDir(), 0)
	setPolicy(t, e, delegationPolicy+`limits:
  - id: one-echo
    match: {kind: shell.exec, name: [echo]}
    key: principal.id
    window: 1h
    max: 1
    on_exceed: require_approval
`)
	approver := e.client("/approver/alice")
	agent, err := client.New(e.url, client.Options{TLS: e.tlsFor("/agent/a"), StateDir: t.TempDir(), ApprovalWait: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	run := func() *client.RunResult {
		t.Helper()
		res, err := agent.RunCommand(ctx, client.RunRequest{Argv: []string{"echo", "x"}, Cwd: os.TempDir(), Stdout: io.Discard})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	if r := run(); r.ExitCode != 0 || r.Decision.Decision != policy.Permit {
		t.Fatalf("first echo: %+v", r)
	}
	done := make(chan *client.RunResult, 1)
	go func() { done <- run() }()
	list := pending(t, approver, 1)
	if _, err := approver.Approve(ctx, list[0].ID, ""); err != nil {
		t.Fatal(err)
	}
	if r := <-done; r.ExitCode != 0 || r.Decision.Decision != policy.RequireApproval {
		t.Fatalf("approved echo: %+v", r)
	}
	auth, err := agent.Decide(ctx, execSpec(t, "echo", "y"), client.Task{})
	if err != nil {
		t.Fatal(err)
	}
	events, _, err := e.g.Events(ctx, auth.Execution)
	if err != nil {
		t.Fatal(err)
	}
	var intent lineage.IntentBody
	if err := events[0].DecodeBody(&intent); err != nil {
		t.Fatal(err)
	}
	if u := intent.Action.Task.Usage["one-echo/spiffe://etb.local/agent/a"]; u != 2 {
		t.Fatalf("usage after a permit and an approval: %v, want 2", intent.Action.Task.Usage)
	}
}
