package gateway

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"sort"

	"github.com/etbproject/etb/grant"
	"github.com/etbproject/etb/ledger"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/policy"
	"github.com/etbproject/etb/proof"
)

// Evidence builds the evidence bundle of one execution: its events from the
// ledger, each with an inclusion proof against the latest checkpoint, the
// grant it was issued (and, for a sub-agent's grant, the delegation grants
// it descends from) and the policy its decision names.
func (g *Gateway) Evidence(ctx context.Context, id string) (*proof.Bundle, error) {
	cp, err := g.log.Checkpoint(ctx)
	if err != nil {
		return nil, err
	}
	b := &proof.Bundle{V: proof.BundleVersion, Execution: id, Checkpoint: string(cp.Note), Grants: []string{}, Policies: []proof.Policy{}}
	if _, err := g.addEvidence(ctx, b, cp, id, map[string]bool{}); err != nil {
		return nil, err
	}
	return b, nil
}

// EvidenceForTask builds one evidence bundle for the whole task tree that
// task belongs to (from its root): every execution of every task in it, in
// ledger order, with their grants and policies.
func (g *Gateway) EvidenceForTask(ctx context.Context, task string) (*proof.Bundle, error) {
	_, root, err := g.ResolveTask(ctx, task)
	if err != nil {
		return nil, err
	}
	ids, err := g.TaskExecutionIDs(ctx, root)
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("gateway: task tree %s has no executions", root)
	}
	cp, err := g.log.Checkpoint(ctx)
	if err != nil {
		return nil, err
	}
	b := &proof.Bundle{V: proof.BundleVersion, Task: root, Checkpoint: string(cp.Note), Grants: []string{}, Policies: []proof.Policy{}}
	seen := map[string]bool{}
	var idx []uint64
	for _, id := range ids {
		more, err := g.addEvidence(ctx, b, cp, id, seen)
		if err != nil {
			return nil, err
		}
		idx = append(idx, more...)
	}
	// The tree's events in ledger order: the order the verifier folds the
	// task state in.
	order := make([]int, len(idx))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(i, j int) bool { return idx[order[i]] < idx[order[j]] })
	sorted := make([]proof.Entry, len(order))
	for i, o := range order {
		sorted[i] = b.Events[o]
	}
	b.Events = sorted
	return b, nil
}

// addEvidence adds execution id's events, grants and policies to b and
// returns the events' ledger indices; seen holds the grants and policies
// already in b.
func (g *Gateway) addEvidence(ctx context.Context, b *proof.Bundle, cp ledger.Checkpoint, id string, seen map[string]bool) ([]uint64, error) {
	events, idx, err := g.Events(ctx, id)
	if err != nil {
		return nil, err
	}
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
			if seen["policy "+d.Policy.BundleHash] {
				continue
			}
			src, err := g.PolicySource(ctx, d.Policy.BundleHash)
			if err != nil {
				return nil, err
			}
			seen["policy "+d.Policy.BundleHash] = true
			b.Policies = append(b.Policies, proof.Policy{Hash: d.Policy.BundleHash, Source: string(src)})
		case lineage.TypeGrant:
			var gb lineage.GrantBody
			if err := e.DecodeBody(&gb); err != nil {
				return nil, err
			}
			if err := g.addGrant(ctx, b, gb.JTI, seen); err != nil {
				return nil, err
			}
		}
	}
	return idx, nil
}

// addGrant adds the grant jti to b, and the delegation grants above it.
func (g *Gateway) addGrant(ctx context.Context, b *proof.Bundle, jti string, seen map[string]bool) error {
	for depth := 0; jti != "" && !seen["grant "+jti]; depth++ {
		if depth > MaxDelegationDepth+1 {
			return fmt.Errorf("gateway: delegation chain above grant %s is too deep", jti)
		}
		tok, err := g.Token(ctx, jti)
		if err != nil {
			return err
		}
		seen["grant "+jti] = true
		b.Grants = append(b.Grants, tok)
		var parent string
		err = g.db.QueryRowContext(ctx, `SELECT parent FROM etb_grant_links WHERE jti = ?`, jti).Scan(&parent)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("gateway: lineage of grant %s: %w", jti, err)
		}
		jti = parent
	}
	return nil
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
