package gateway

import (
	"context"
	"encoding/base64"
	"fmt"

	"github.com/etbproject/etb/grant"
	"github.com/etbproject/etb/ledger"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/policy"
	"github.com/etbproject/etb/proof"
)

// Evidence builds the evidence bundle of one execution: its events from the
// ledger, each with an inclusion proof against the latest checkpoint, the
// grant it was issued and the policy its decision names.
func (g *Gateway) Evidence(ctx context.Context, id string) (*proof.Bundle, error) {
	events, idx, err := g.Events(ctx, id)
	if err != nil {
		return nil, err
	}
	cp, err := g.log.Checkpoint(ctx)
	if err != nil {
		return nil, err
	}
	b := &proof.Bundle{V: proof.BundleVersion, Execution: id, Checkpoint: string(cp.Note), Grants: []string{}, Policies: []proof.Policy{}}
	for i, e := range events {
		if idx[i] >= cp.Size {
			return nil, fmt.Errorf("gateway: entry %d is not yet covered by checkpoint of size %d", idx[i], cp.Size)
		}
		entry, err := e.Canonical()
		if err != nil {
			return nil, err
		}
		p, err := g.log.ProveEntry(ctx, idx[i], cp)
		if err != nil {
			return nil, err
		}
		b.Events = append(b.Events, proof.Entry{Entry: string(entry), Proof: string(p)})
		switch e.Type {
		case lineage.TypeDecision:
			var d policy.Decision
			if err := e.DecodeBody(&d); err != nil {
				return nil, err
			}
			src, err := g.PolicySource(ctx, d.Policy.BundleHash)
			if err != nil {
				return nil, err
			}
			b.Policies = append(b.Policies, proof.Policy{Hash: d.Policy.BundleHash, Source: string(src)})
		case lineage.TypeGrant:
			var gb lineage.GrantBody
			if err := e.DecodeBody(&gb); err != nil {
				return nil, err
			}
			tok, err := g.Token(ctx, gb.JTI)
			if err != nil {
				return nil, err
			}
			b.Grants = append(b.Grants, tok)
		}
	}
	return b, nil
}

// Trust returns the trust file a verifier of this home's evidence needs.
func (g *Gateway) Trust() (*proof.Trust, error) {
	vkey, err := ledger.VerifierKey(g.cfg.LogOrigin, g.logPub)
	if err != nil {
		return nil, err
	}
	t := &proof.Trust{V: proof.TrustVersion, Issuer: g.cfg.Issuer, Enforcer: g.cfg.Enforcer,
		GrantKeys: map[string]string{grant.KeyID(g.grantPub): base64.StdEncoding.EncodeToString(g.grantPub)}}
	t.Log.Origin = g.cfg.LogOrigin
	t.Log.Key = vkey
	if w := g.cfg.Witnessing; w != nil {
		for _, e := range w.Witnesses {
			t.Witnesses = append(t.Witnesses, e.Key)
		}
		t.Quorum = w.Quorum
	}
	return t, nil
}
