package proof

import (
	"crypto/ed25519"
	"fmt"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/grant"
)

// EnvDelegation is the action env entry in which the gateway records the
// delegation grant (jti) a sub-agent acted under.
const EnvDelegation = "delegation.jti"

// bundleGrant is one grant of a bundle, verified.
type bundleGrant struct {
	token     string
	hash      string
	claims    *grant.Claims
	execution *execution // the execution whose grant event names it, if any
	isParent  bool       // some grant of the bundle names it as par
}

// grantSet indexes a bundle's verified grants.
type grantSet struct {
	list   []*bundleGrant
	byHash map[string]*bundleGrant
	byJTI  map[string]*bundleGrant
}

// verifyGrants checks the signature of every grant of a bundle under keys
// (grant.VerifySignature: header, signature, strict canonical claims) and
// indexes them. A grant that does not verify, or two grants with one jti,
// fail CheckGrant.
func verifyGrants(tokens []string, keys map[string]ed25519.PublicKey) (*grantSet, error) {
	gs := &grantSet{byHash: map[string]*bundleGrant{}, byJTI: map[string]*bundleGrant{}}
	for i, tok := range tokens {
		h := grant.TokenHash(tok)
		c, err := grant.VerifySignature(tok, keys)
		if err != nil {
			return nil, fail(CheckGrant, "grant %d (%s): %v", i, h, err)
		}
		if gs.byHash[h] != nil || gs.byJTI[c.ID] != nil {
			return nil, fail(CheckGrant, "grant %d (jti %s, %s) appears twice in the bundle", i, c.ID, h)
		}
		g := &bundleGrant{token: tok, hash: h, claims: c}
		gs.list = append(gs.list, g)
		gs.byHash[h], gs.byJTI[c.ID] = g, g
	}
	return gs, nil
}

// checkDelegations checks every parent → child link among the grants: the
// parent is in the bundle under the jti and token hash the child's par
// names (its signature was checked by verifyGrants); the child is a valid
// attenuation of it (grant.CheckAttenuation); a child that is some
// execution's grant was asked for by the parent's holder, in the
// delegation's task or a task directly below it, and, for an action grant,
// for an action within the parent's scope. Every grant must be some
// execution's, or some grant's parent. Failures are CheckDelegation.
func checkDelegations(gs *grantSet) error {
	for _, g := range gs.list {
		c := g.claims
		if c.Par == nil {
			continue
		}
		p := gs.byJTI[c.Par.JTI]
		if p == nil {
			return fail(CheckDelegation, "grant %s names parent %s, which is not in the bundle", c.ID, c.Par.JTI)
		}
		if p.hash != c.Par.Hash {
			return fail(CheckDelegation, "grant %s names parent %s with hash %s, the bundle's grant %s hashes to %s", c.ID, c.Par.JTI, c.Par.Hash, p.claims.ID, p.hash)
		}
		if err := grant.CheckAttenuation(p.claims, c); err != nil {
			return fail(CheckDelegation, "%v", err)
		}
		p.isParent = true
		x := g.execution
		if x == nil {
			continue
		}
		a := x.st.intent.Action
		if a.Principal.ID != p.claims.Subject {
			return fail(CheckDelegation, "execution %s: grant %s was asked for by %s, its parent %s is held by %s", x.id, c.ID, a.Principal.ID, p.claims.ID, p.claims.Subject)
		}
		if own := p.claims.Execution; a.Task.ID != own && a.Task.ParentID != own {
			return fail(CheckDelegation, "execution %s: task %s (parent %q) is outside delegation %s's task %s", x.id, a.Task.ID, a.Task.ParentID, p.claims.ID, own)
		}
		if c.Scp == nil {
			if err := grant.CheckActionInScope(p.claims, a.Action); err != nil {
				return fail(CheckDelegation, "execution %s: %v", x.id, err)
			}
		}
	}
	for _, g := range gs.list {
		// The gateway records in the intent which delegation the caller
		// acted under; the grant must descend from exactly that one (a
		// sub-agent's grant without par would escape the scope check).
		if x := g.execution; x != nil {
			under := x.st.intent.Action.Env[EnvDelegation]
			switch par := g.claims.Par; {
			case par == nil && under != "":
				return fail(CheckDelegation, "execution %s acted under delegation %s, its grant %s names no parent", x.id, under, g.claims.ID)
			case par != nil && par.JTI != under:
				return fail(CheckDelegation, "execution %s's grant %s names parent %s, the intent records delegation %q", x.id, g.claims.ID, par.JTI, under)
			}
		}
		if g.execution == nil && !g.isParent {
			return fail(CheckDelegation, "grant %s belongs to no execution of the bundle and is no grant's parent", g.claims.ID)
		}
	}
	return nil
}

// checkDelegationRequest checks that a delegation grant carries exactly
// what its agent.delegate action requested (scope, depth, no longer a
// lifetime), and that any other grant carries no scope.
func checkDelegationRequest(c *grant.Claims, spec action.Spec) error {
	if spec.Kind != grant.KindDelegate {
		if c.Scp != nil || c.Depth != 0 {
			return fmt.Errorf("grant %s for a %s action carries a scope or depth %d: only a %s grant may", c.ID, spec.Kind, c.Depth, grant.KindDelegate)
		}
		return nil
	}
	if len(spec.Args) != 1 {
		return fmt.Errorf("%s action has %d arguments, want the one delegation request", spec.Kind, len(spec.Args))
	}
	req, err := grant.ParseDelegationRequest(spec.Args[0])
	if err != nil {
		return err
	}
	switch {
	case c.Scp == nil:
		return fmt.Errorf("grant %s of a %s action has no scope", c.ID, spec.Kind)
	case !c.Scp.Equal(req.Scope):
		got, _ := action.Canonical(c.Scp)
		want, _ := action.Canonical(req.Scope)
		return fmt.Errorf("grant %s has scope %s, the request asked for %s", c.ID, got, want)
	case c.Depth != req.Depth:
		return fmt.Errorf("grant %s has depth %d, the request asked for %d", c.ID, c.Depth, req.Depth)
	case req.TTLSeconds > 0 && c.Expiry-c.IssuedAt > req.TTLSeconds:
		return fmt.Errorf("grant %s lives %ds, the request asked for at most %ds", c.ID, c.Expiry-c.IssuedAt, req.TTLSeconds)
	}
	return nil
}
