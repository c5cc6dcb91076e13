package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/client"
	"github.com/etbproject/etb/enforce"
	"github.com/etbproject/etb/gateway"
	"github.com/etbproject/etb/grant"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/policy"
)

const approvalPolicy = `version: etb.policy/v1
name: approvals
defaults:
  obligations:
    timeout: 1m
rules:
  - id: approve-sleep
    effect: require_approval
    match: {kind: shell.exec, name: sleep}
    message: sleeping needs a human
`

func approvalEnv(t *testing.T, ttl time.Duration) *testEnv {
	t.Helper()
	e := newEnvWith(t, t.TempDir(), gateway.ServiceOptions{ApprovalTTL: ttl})
	b, err := policy.Load([]byte(approvalPolicy))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.g.SetPolicy(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	return e
}

func sleepSpec(t *testing.T, secs string) action.Spec {
	t.Helper()
	s, err := enforce.DescribeExec([]string{"sleep", secs}, os.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// pending waits for n pending tickets and returns them.
func pending(t *testing.T, c *client.Client, n int) []client.Approval {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		list, err := c.Approvals(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(list) >= n {
			return list
		}
	}
	t.Fatalf("no %d pending approvals", n)
	return nil
}

// A waiting RunCommand receives the grant when an approver approves; the
// approver is recorded; the ticket is single use.
func TestApprovalApproveWhileWaiting(t *testing.T) {
	ctx := context.Background()
	e := approvalEnv(t, 0)
	agent, err := client.New(e.url, client.Options{TLS: e.tlsFor("/agent/a"), StateDir: t.TempDir(), ApprovalWait: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	approver := e.client("/approver/alice")
	done := make(chan *client.RunResult, 1)
	go func() {
		res, err := agent.RunCommand(ctx, client.RunRequest{Argv: []string{"sleep", "0.01"}, Cwd: os.TempDir()})
		if err != nil {
			t.Error(err)
		}
		done <- res
	}()
	list := pending(t, approver, 1)
	tk := list[0]
	if tk.Principal != "spiffe://etb.local/agent/a" || tk.Action == nil || tk.Action.Name != "sleep" || tk.Grant != "" {
		t.Fatalf("ticket %+v", tk)
	}
	// An agent may not approve.
	if _, err := e.client("/agent/b").Approve(ctx, tk.ID, ""); err == nil {
		t.Fatal("agent approved")
	}
	got, err := approver.Approve(ctx, tk.ID, "looks fine")
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != gateway.TicketApproved || got.Approver != "spiffe://etb.local/approver/alice" || got.Grant != "" {
		t.Fatalf("approved ticket %+v", got)
	}
	res := <-done
	if res == nil || res.ExitCode != 0 {
		t.Fatalf("run after approval: %+v", res)
	}
	if _, err := approver.Approve(ctx, tk.ID, ""); !client.IsCode(err, "decided") {
		t.Fatalf("second approval: %v", err)
	}
	events, _, err := e.g.Events(ctx, res.Execution)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, ev := range events {
		types = append(types, ev.Type)
	}
	if strings.Join(types, ",") != "intent,decision,approval,grant,start,end" {
		t.Fatalf("events %v", types)
	}
	var ab gateway.ApprovalBody
	if err := json.Unmarshal(events[2].Body, &ab); err != nil || ab.Approver != "spiffe://etb.local/approver/alice" ||
		events[2].Actor != ab.Approver || ab.Decision != "approved" || ab.ActionDigest != tk.Digest || ab.Comment != "looks fine" {
		t.Fatalf("approval event %s by %s", events[2].Body, events[2].Actor)
	}
	if rep := verifyEvidence(t, e, res.Execution); rep.Decision != policy.RequireApproval || rep.Outcome != "exit 0" {
		t.Fatalf("verified %s → %s", rep.Decision, rep.Outcome)
	}
}

func TestApprovalRejectAndExpiry(t *testing.T) {
	ctx := context.Background()
	e := approvalEnv(t, 0)
	agent, approver := e.client("/agent/a"), e.client("/approver/alice")

	// Rejected while waiting: no grant.
	done := make(chan *client.Authorization, 1)
	go func() {
		a, err := agent.DecideWait(ctx, sleepSpec(t, "1"), client.Task{}, 5*time.Second)
		if err != nil {
			t.Error(err)
		}
		done <- a
	}()
	tk := pending(t, approver, 1)[0]
	if _, err := approver.Reject(ctx, tk.ID, "no"); err != nil {
		t.Fatal(err)
	}
	a := <-done
	if a.Permitted() || a.Grant != "" || a.Approval.Status != gateway.TicketRejected {
		t.Fatalf("rejected: %+v, ticket %+v", a, a.Approval)
	}
	if got := strings.Join(eventTypes(t, e.g, a.Execution), ","); got != "intent,decision,approval,interrupt" {
		t.Fatalf("rejected events %s", got)
	}
	if rep := verifyEvidence(t, e, a.Execution); !strings.HasPrefix(rep.Outcome, "interrupted") {
		t.Fatalf("verified rejected outcome %q", rep.Outcome)
	}

	// Nobody decides: the waiting caller gets a denial when the ticket
	// expires, and a late approval is refused.
	e = approvalEnv(t, 300*time.Millisecond)
	agent, approver = e.client("/agent/a"), e.client("/approver/alice")
	start := time.Now()
	a, err := agent.DecideWait(ctx, sleepSpec(t, "2"), client.Task{}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if a.Permitted() || a.Approval.Status != gateway.TicketExpired || time.Since(start) > 3*time.Second {
		t.Fatalf("expired: %+v after %v", a.Approval, time.Since(start))
	}
	if _, err := approver.Approve(ctx, a.Approval.ID, ""); err == nil {
		t.Fatal("expired ticket approved")
	}
	if got := strings.Join(eventTypes(t, e.g, a.Execution), ","); got != "intent,decision,interrupt" {
		t.Fatalf("expired events %s", got)
	}
	if rep := verifyEvidence(t, e, a.Execution); !strings.HasPrefix(rep.Outcome, "interrupted") {
		t.Fatalf("verified expired outcome %q", rep.Outcome)
	}
}

// An approval does not carry over to changed arguments: the approved grant
// is refused for another digest, and the changed intent needs its own.
func TestApprovalBoundToDigest(t *testing.T) {
	ctx := context.Background()
	e := approvalEnv(t, 0)
	agent, approver := e.client("/agent/a"), e.client("/approver/alice")
	a, err := agent.Decide(ctx, sleepSpec(t, "1"), client.Task{ID: "t1"})
	if err != nil || a.Approval == nil || a.Approval.Status != gateway.TicketPending || a.Grant != "" {
		t.Fatalf("%+v %v", a, err)
	}
	if _, err := approver.Approve(ctx, a.Approval.ID, ""); err != nil {
		t.Fatal(err)
	}
	tk, err := agent.Approval(ctx, a.Approval.ID, 0)
	if err != nil || tk.Grant == "" {
		t.Fatalf("requester's view: %+v %v", tk, err)
	}
	// Another caller does not get the grant.
	if other, err := approver.Approval(ctx, a.Approval.ID, 0); err != nil || other.Grant != "" {
		t.Fatalf("approver's view: %+v %v", other, err)
	}
	changed := sleepSpec(t, "600")
	d, _ := changed.Digest()
	keys := mustKeys(t, e.trust())
	db := openReplay(t)
	h, _ := agent.Holder()
	v := grant.NewVerifier(keys, db, 0, nil)
	if _, err := v.Verify(ctx, tk.Grant, grant.Expect{Audience: e.trust().Enforcer, ADG: d, Holder: h}); !errors.Is(err, grant.ErrDigest) {
		t.Fatalf("approved grant for changed args: %v", err)
	}
	b, err := agent.Decide(ctx, changed, client.Task{ID: "t1"})
	if err != nil || b.Permitted() || b.Approval == nil || b.Approval.Status != gateway.TicketPending || b.Approval.ID == a.Approval.ID {
		t.Fatalf("changed intent: %+v %v", b, err)
	}
	// The revoked or started execution cannot be re-approved; a report of
	// start for the pending one is refused (no grant).
	if err := agent.Report(ctx, b.Execution, lineage.TypeStart, lineage.StartBody{PID: 1, GrantJTI: "x"}); !client.IsCode(err, "no_grant") {
		t.Fatalf("start without approval: %v", err)
	}
}

// A requester that gives up (reports an interrupt) withdraws its pending
// ticket: approvers no longer see it and cannot approve it.
func TestApprovalWithdrawnByInterrupt(t *testing.T) {
	ctx := context.Background()
	e := approvalEnv(t, 0)
	agent, approver := e.client("/agent/a"), e.client("/approver/alice")
	spec, err := enforce.DescribeExec([]string{"sleep", "0.01"}, os.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	auth, err := agent.Decide(ctx, spec, client.Task{})
	if err != nil || auth.Approval == nil || auth.Approval.Status != gateway.TicketPending {
		t.Fatalf("%+v %v", auth, err)
	}
	tk := pending(t, approver, 1)[0]
	if err := agent.Report(ctx, auth.Execution, lineage.TypeInterrupt, lineage.InterruptBody{Reason: "approval_timeout", Detail: "gave up"}); err != nil {
		t.Fatal(err)
	}
	if list, err := approver.Approvals(ctx); err != nil || len(list) != 0 {
		t.Fatalf("pending after the interrupt: %+v %v", list, err)
	}
	if _, err := approver.Approve(ctx, tk.ID, ""); !client.IsCode(err, "decided") && !client.IsCode(err, "ended") {
		t.Fatalf("approving a withdrawn ticket: %v", err)
	}
	got, err := approver.Approval(ctx, tk.ID, 0)
	if err != nil || got.Status != gateway.TicketWithdrawn {
		t.Fatalf("ticket %+v %v", got, err)
	}
}
