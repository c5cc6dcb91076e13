package gateway

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/grant"
	"github.com/etbproject/etb/policy"
)

const delegatePolicy = `version: etb.policy/v1
name: d
rules:
  - id: delegate
    effect: permit
    match: {kind: agent.delegate}
  - id: read
    effect: permit
    match: {kind: fs.read}
`

// A delegation grant is refused when it is not this gateway's, not a
// delegation, held by someone else, expired, not yet valid, or unknown to
// the record; a good one is accepted.
func TestVerifyDelegationRefusals(t *testing.T) {
	ctx := context.Background()
	clock := time.Now()
	g, err := Open(ctx, t.TempDir(), Options{Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	b, err := policy.Load([]byte(delegatePolicy))
	if err != nil {
		t.Fatal(err)
	}
	if err := g.SetPolicy(ctx, b); err != nil {
		t.Fatal(err)
	}
	const a, sub = "spiffe://etb.local/agent/a", "spiffe://etb.local/agent/b"
	spec, err := DelegationSpec(sub, grant.DelegationRequest{Scope: grant.Scope{Actions: []grant.ScopeAction{{Kind: "fs.read", Name: "*"}}}, TTLSeconds: 60})
	if err != nil {
		t.Fatal(err)
	}
	ex, err := g.Begin(ctx, &action.Action{Principal: action.Principal{ID: a}, Action: spec})
	if err != nil || ex.Token == "" {
		t.Fatalf("delegation: %v %+v", err, ex.Decision)
	}
	if _, err := g.verifyDelegation(ctx, ex.Token, sub); err != nil {
		t.Fatalf("a good delegation: %v", err)
	}
	// A grant signed by another key, and an action grant of this gateway.
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	fresh := *ex.Claims // times filled again by the issuer, on the same clock
	fresh.IssuedAt, fresh.NotBefore, fresh.Expiry = 0, 0, 0
	forged, _, err := grant.NewIssuer(other, g.cfg.Issuer, time.Minute, func() time.Time { return clock }).Issue(fresh)
	if err != nil {
		t.Fatal(err)
	}
	read, err := g.Begin(ctx, &action.Action{Principal: action.Principal{ID: a}, Action: action.Spec{Kind: "fs.read", Name: "/x"}})
	if err != nil || read.Token == "" {
		t.Fatalf("read: %v", err)
	}
	for name, tc := range map[string]struct {
		token, holder string
		at            time.Time
		want          string
	}{
		"another key":    {forged, sub, clock, "unknown"},
		"not delegation": {read.Token, a, clock, "not a delegation grant"},
		"another holder": {ex.Token, a, clock, "held by"},
		"expired":        {ex.Token, sub, clock.Add(2 * time.Minute), "expired"},
		"not yet valid":  {ex.Token, sub, clock.Add(-time.Minute), "not valid before"},
	} {
		saved := clock
		clock = tc.at
		_, err := g.verifyDelegation(ctx, tc.token, tc.holder)
		clock = saved
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", name, err, tc.want)
		}
	}
	// A validly signed delegation the record does not know is refused.
	unknown := fresh
	unknown.ID = ""
	tok, _, err := g.issuer.Issue(unknown)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.verifyDelegation(ctx, tok, sub); err == nil || !strings.Contains(err.Error(), "not on record") {
		t.Fatalf("unrecorded delegation: %v", err)
	}
}
