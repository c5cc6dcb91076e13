package proof

import (
	"strings"
	"testing"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/policy"
)

// chainOf builds a linked chain for an action decided as decision, with the
// given further events (type, actor, body).
func chainOf(t *testing.T, decision string, rest ...[3]any) []*lineage.Event {
	t.Helper()
	a := action.Action{ID: "x1", Action: action.Spec{Kind: action.KindShellExec, Name: "sleep", Args: []string{"1"}}}
	if err := a.Normalize(); err != nil {
		t.Fatal(err)
	}
	dg, _ := a.Action.Digest()
	c := lineage.NewChain("x1", "x1", "")
	var out []*lineage.Event
	add := func(typ, actor string, body any) {
		e, _, err := c.Next(typ, actor, "2026-11-26T06:00:00Z", body)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	add(lineage.TypeIntent, "agent", lineage.IntentBody{Action: a, ActionDigest: dg})
	add(lineage.TypeDecision, "gw", policy.Decision{Decision: decision, Rules: []string{}, Messages: []string{}, LabelsToAdd: []string{}})
	for _, r := range rest {
		body := r[2]
		if ab, ok := body.(lineage.ApprovalBody); ok && ab.ActionDigest == "" {
			ab.ActionDigest = dg
			body = ab
		}
		add(r[0].(string), r[1].(string), body)
	}
	return out
}

func TestLifecycleOrder(t *testing.T) {
	approved := lineage.ApprovalBody{Decision: "approved", Approver: "alice"}
	rejected := lineage.ApprovalBody{Decision: "rejected", Approver: "alice"}
	grant := lineage.GrantBody{JTI: "j"}
	start := lineage.StartBody{GrantJTI: "j"}
	end := lineage.EndBody{}
	intr := lineage.InterruptBody{Reason: "revoked"}
	rev := lineage.RevocationBody{Revocation: "r", Scope: "all"}
	ev := func(typ, actor string, body any) [3]any { return [3]any{typ, actor, body} }
	tests := []struct {
		name     string
		decision string
		rest     [][3]any
		want     string // "" valid, else a fragment of the error
	}{
		{"permit run", policy.Permit, [][3]any{ev("grant", "gw", grant), ev("start", "e", start), ev("end", "e", end)}, ""},
		{"deny", policy.Deny, nil, ""},
		{"approved run", policy.RequireApproval, [][3]any{ev("approval", "alice", approved), ev("grant", "gw", grant), ev("start", "e", start), ev("end", "e", end)}, ""},
		{"rejected", policy.RequireApproval, [][3]any{ev("approval", "alice", rejected), ev("interrupt", "gw", intr)}, ""},
		{"revoked while running", policy.Permit, [][3]any{ev("grant", "gw", grant), ev("start", "e", start), ev("revocation", "admin", rev), ev("interrupt", "e", intr)}, ""},
		{"grant without approval", policy.RequireApproval, [][3]any{ev("grant", "gw", grant), ev("start", "e", start), ev("end", "e", end)}, "without a permit"},
		{"grant after rejection", policy.RequireApproval, [][3]any{ev("approval", "alice", rejected), ev("grant", "gw", grant)}, "without a permit"},
		{"grant for a deny", policy.Deny, [][3]any{ev("grant", "gw", grant)}, "without a permit"},
		{"approval recorded by another actor", policy.RequireApproval, [][3]any{ev("approval", "mallory", approved)}, "recorded by"},
		{"approval for another action", policy.RequireApproval, [][3]any{ev("approval", "alice", lineage.ApprovalBody{Decision: "approved", Approver: "alice", ActionDigest: "sha256:00"})}, "is for action"},
		{"approval of a permit", policy.Permit, [][3]any{ev("approval", "alice", approved)}, "without a pending"},
		{"start after revocation", policy.Permit, [][3]any{ev("grant", "gw", grant), ev("revocation", "admin", rev), ev("start", "e", start)}, "after a revocation"},
		{"start without grant", policy.Permit, [][3]any{ev("start", "e", start), ev("end", "e", end)}, "without a durable permit"},
		{"event after end", policy.Permit, [][3]any{ev("grant", "gw", grant), ev("start", "e", start), ev("end", "e", end), ev("heartbeat", "e", struct{}{})}, "terminal"},
		{"egress before start", policy.Permit, [][3]any{ev("grant", "gw", grant), ev("egress", "e", lineage.EgressBody{})}, "before start"},
		{"pending approval is not terminal", policy.RequireApproval, nil, "no terminal event"},
		{"running is not terminal", policy.Permit, [][3]any{ev("grant", "gw", grant), ev("start", "e", start)}, "no terminal event"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := readLifecycle(chainOf(t, tt.decision, tt.rest...), false)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("valid lifecycle refused: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

// A delegation (agent.delegate) is complete once its grant is recorded; it
// never starts anything.
func TestLifecycleOfDelegation(t *testing.T) {
	ev := func(typ string, body any) [3]any { return [3]any{typ, "gw", body} }
	grant := lineage.GrantBody{JTI: "j"}
	tests := []struct {
		name    string
		rest    [][3]any
		outcome string
		want    string
	}{
		{"delegated", [][3]any{ev("grant", grant)}, "delegated", ""},
		{"delegated then revoked", [][3]any{ev("grant", grant), ev("revocation", lineage.RevocationBody{Scope: "task"})}, "delegated, revoked", ""},
		{"grant refused", [][3]any{ev("interrupt", lineage.InterruptBody{Reason: "grant_failed"})}, "interrupted: grant_failed", ""},
		{"start", [][3]any{ev("grant", grant), ev("start", lineage.StartBody{GrantJTI: "j"})}, "", "runs nothing"},
		{"end", [][3]any{ev("grant", grant), ev("end", lineage.EndBody{})}, "", "runs nothing"},
		{"heartbeat", [][3]any{ev("grant", grant), ev("heartbeat", struct{}{})}, "", "runs nothing"},
		{"no grant", nil, "", "no terminal event"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := action.Action{ID: "d1", Action: action.Spec{Kind: "agent.delegate", Name: "spiffe://etb.local/agent/b", Args: []string{"{}"}}}
			if err := a.Normalize(); err != nil {
				t.Fatal(err)
			}
			dg, _ := a.Action.Digest()
			c := lineage.NewChain("d1", "d1", "")
			var evs []*lineage.Event
			for _, r := range append([][3]any{
				{"intent", "agent", lineage.IntentBody{Action: a, ActionDigest: dg}},
				{"decision", "gw", policy.Decision{Decision: policy.Permit, Rules: []string{}, Messages: []string{}, LabelsToAdd: []string{}}},
			}, tt.rest...) {
				e, _, err := c.Next(r[0].(string), r[1].(string), "2026-11-26T06:00:00Z", r[2])
				if err != nil {
					t.Fatal(err)
				}
				evs = append(evs, e)
			}
			st, err := readLifecycle(evs, false)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("valid delegation refused: %v", err)
			case tt.want == "" && st.outcome != tt.outcome:
				t.Fatalf("outcome %q, want %q", st.outcome, tt.outcome)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}
