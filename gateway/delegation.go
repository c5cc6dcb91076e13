package gateway

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/grant"
	"github.com/etbproject/etb/ledger"
	"github.com/etbproject/etb/policy"
	"github.com/etbproject/etb/proof"
)

// KindDelegate is the kind of the action by which an agent asks for a
// delegation grant for a sub-agent: name is the sub-agent's SPIFFE ID, the
// only argument the canonical JSON of a grant.DelegationRequest. It goes
// through policy like any other action.
const KindDelegate = grant.KindDelegate

// EnvDelegation is the action env entry in which the gateway records the
// jti of the delegation grant a sub-agent acts under (rules may test it;
// the lineage is restored from it).
const EnvDelegation = proof.EnvDelegation

// MaxDelegationDepth bounds the depth a root delegation may ask for.
const MaxDelegationDepth = 8

// ErrOutOfScope is returned (wrapped) when a sub-agent asks for something
// its delegation grant does not cover, or a child grant would be wider than
// its parent.
var ErrOutOfScope = errors.New("gateway: outside the delegation's scope")

// delegation is a verified delegation grant a sub-agent acts under, and
// the lineage it extends.
type delegation struct {
	token  string
	claims *grant.Claims
	// chain is the delegation grants from the root down to this one.
	chain []lineageLink
}

// lineageLink is one delegation grant of an execution's lineage.
type lineageLink struct {
	JTI       string `json:"jti"`
	Execution string `json:"execution"` // the delegation's execution = the sub-agent's task
	Delegator string `json:"delegator"` // who delegated
	Task      string `json:"task"`      // the delegator's task
}

// lineageRefs is everything a revocation of an execution's ancestors
// must reach it by: its task's ancestors and the delegation chain it acts
// under.
type lineageRefs struct {
	tasks []string // ancestor tasks, root first
	links []lineageLink
}

// DelegationRequestOf decodes the request an agent.delegate action carries
// (exactly its canonical form, as the verifier requires).
func DelegationRequestOf(spec action.Spec) (*grant.DelegationRequest, error) {
	if spec.Kind != KindDelegate {
		return nil, fmt.Errorf("gateway: action kind %q is not %q", spec.Kind, KindDelegate)
	}
	if len(spec.Args) != 1 {
		return nil, fmt.Errorf("gateway: %s takes one argument (the delegation request), got %d", KindDelegate, len(spec.Args))
	}
	req, err := grant.ParseDelegationRequest(spec.Args[0])
	if err != nil {
		return nil, fmt.Errorf("gateway: delegation request: %w", err)
	}
	return req, nil
}

// DelegationSpec is the action spec of delegating req to agent.
func DelegationSpec(agent string, req grant.DelegationRequest) (action.Spec, error) {
	arg, err := req.Arg()
	if err != nil {
		return action.Spec{}, err
	}
	return action.Spec{Kind: KindDelegate, Name: agent, Args: []string{arg}}, nil
}

// placeTask puts an action of the sub-agent in the delegation's task (its
// execution id), or in a task directly below it; anywhere else is refused.
func (d *delegation) placeTask(t *action.Task) error {
	own := d.claims.Execution
	switch {
	case t.ID == "" || t.ID == own:
		t.ID, t.ParentID = own, ""
	case t.ParentID == own:
	default:
		return fmt.Errorf("%w: the delegation's task is %s; task %q (parent %q) is outside it", ErrOutOfScope, own, t.ID, t.ParentID)
	}
	return nil
}

// verifyDelegation checks a delegation grant presented by principal: a
// valid signature of this gateway's key, a delegation (scp), held by
// principal (sub), not expired; and loads its lineage. Revocation is the
// service's to check.
func (g *Gateway) verifyDelegation(ctx context.Context, token, principal string) (*delegation, error) {
	c, err := grant.VerifySignature(token, map[string]ed25519.PublicKey{grant.KeyID(g.grantPub): g.grantPub})
	if err != nil {
		return nil, fmt.Errorf("gateway: delegation grant: %w", err)
	}
	if c.Scp == nil {
		return nil, fmt.Errorf("gateway: grant %s is not a delegation grant (no scp)", c.ID)
	}
	if c.Subject != principal {
		return nil, fmt.Errorf("gateway: delegation grant %s is held by %s, not %s", c.ID, c.Subject, principal)
	}
	now := g.now().Unix()
	if now >= c.Expiry {
		return nil, fmt.Errorf("gateway: delegation grant %s expired at %d (now %d)", c.ID, c.Expiry, now)
	}
	if skew := int64(g.cfg.ClockSkew.D() / time.Second); now+skew < c.NotBefore {
		return nil, fmt.Errorf("gateway: delegation grant %s is not valid before %d (now %d)", c.ID, c.NotBefore, now)
	}
	if c.Audience != g.cfg.Enforcer || c.Issuer != g.cfg.Issuer {
		return nil, fmt.Errorf("gateway: delegation grant %s is for %s from %s", c.ID, c.Audience, c.Issuer)
	}
	chain, err := g.delegationChain(ctx, c.ID)
	if err != nil {
		return nil, err
	}
	return &delegation{token: token, claims: c, chain: chain}, nil
}

// delegationChain returns the delegation grants from the root down to jti
// (inclusive), as recorded when they were issued.
func (g *Gateway) delegationChain(ctx context.Context, jti string) ([]lineageLink, error) {
	var chain []lineageLink
	for cur := jti; cur != ""; {
		if len(chain) > MaxDelegationDepth+1 {
			return nil, fmt.Errorf("gateway: delegation chain of %s is deeper than %d", jti, MaxDelegationDepth+1)
		}
		var l lineageLink
		var parent string
		err := g.db.QueryRowContext(ctx, `SELECT jti, parent, execution, delegator, task FROM etb_grant_links WHERE jti = ? AND delegation = 1`, cur).
			Scan(&l.JTI, &parent, &l.Execution, &l.Delegator, &l.Task)
		if err != nil {
			return nil, fmt.Errorf("gateway: delegation grant %s is not on record: %w", cur, err)
		}
		chain = append([]lineageLink{l}, chain...)
		cur = parent
	}
	return chain, nil
}

// grantClaims builds the claims of the grant for a permit of in. Under a
// delegation the grant is a child of it: par and txn from the parent, the
// obligations tightened by the parent's, the expiry no later than the
// parent's, and the action within the parent's scope. A delegation
// request's grant carries the requested scope and depth.
func (g *Gateway) grantClaims(in *action.Action, digest string, d policy.Decision, opt beginOptions) (grant.Claims, error) {
	c := grant.Claims{Subject: in.Principal.ID, Audience: g.cfg.Enforcer, Txn: in.Task.RootID,
		ADG: digest, Pol: d.Policy.BundleHash, Obl: d.Obligations, Execution: in.ID}
	if opt.holder != "" {
		c.Cnf = &grant.Confirmation{X5tS256: opt.holder}
	}
	now := g.now()
	exp := now.Add(g.cfg.GrantTTL.D())
	if in.Action.Kind == KindDelegate {
		req, err := DelegationRequestOf(in.Action)
		if err != nil {
			return c, err
		}
		if opt.delegation == nil && req.Depth > MaxDelegationDepth {
			return c, fmt.Errorf("delegation depth %d is over the limit %d", req.Depth, MaxDelegationDepth)
		}
		scope := req.Scope
		c.Subject, c.Scp, c.Depth, c.Cnf = in.Action.Name, &scope, req.Depth, nil
		ttl := time.Duration(req.TTLSeconds) * time.Second
		if ttl == 0 { // 0 asks for the longest a grant may live
			ttl = grant.MaxLifetime
		}
		exp = now.Add(ttl)
	}
	if p := opt.delegation; p != nil {
		if in.Action.Kind != KindDelegate {
			if err := grant.CheckActionInScope(p.claims, in.Action); err != nil {
				return c, fmt.Errorf("%w: %w", ErrOutOfScope, err)
			}
		}
		obl, err := c.Obl.Tighten(p.claims.Obl)
		if err != nil {
			return c, fmt.Errorf("%w: the obligations cannot be reconciled with the delegation's: %w", ErrOutOfScope, err)
		}
		c.Obl = obl
		c.Par = &grant.Parent{JTI: p.claims.ID, Hash: grant.TokenHash(p.token)}
		c.Txn = p.claims.Txn
		if pexp := time.Unix(p.claims.Expiry, 0); pexp.Before(exp) {
			exp = pexp
		}
	}
	c.Expiry = exp.Unix()
	if c.Expiry <= now.Unix() {
		return c, fmt.Errorf("%w: the delegation expires now", ErrOutOfScope)
	}
	return c, nil
}

// issueChecked signs c and, under a delegation, checks the signed child
// against its parent once more: the gateway never hands out a grant wider
// than the one it descends from, whatever the code above computed.
func (g *Gateway) issueChecked(c grant.Claims, d *delegation) (string, grant.Claims, error) {
	token, claims, err := g.issuer.Issue(c)
	if err != nil {
		return "", claims, err
	}
	if d != nil {
		if err := grant.CheckAttenuation(d.claims, &claims); err != nil {
			return "", claims, fmt.Errorf("%w: %w", ErrOutOfScope, err)
		}
	}
	return token, claims, nil
}

const delegationSchema = `
CREATE TABLE IF NOT EXISTS etb_grant_links(jti TEXT PRIMARY KEY, parent TEXT NOT NULL, execution TEXT NOT NULL,
	delegator TEXT NOT NULL, task TEXT NOT NULL, delegation INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS etb_grant_links_parent ON etb_grant_links(parent);
`

// writeGrantLinks records, in the ledger transaction of ex's grant, the
// grant's place in the delegation tree; a delegation grant also creates the
// sub-agent's task (its id is the delegation's execution id) below the
// delegator's task.
func writeGrantLinks(ctx context.Context, tx ledger.SQLExecer, ex *Execution) error {
	c := ex.Claims
	if c == nil || (c.Par == nil && c.Scp == nil) {
		return nil
	}
	parent, isDelegation := "", 0
	if c.Par != nil {
		parent = c.Par.JTI
	}
	if c.Scp != nil {
		isDelegation = 1
	}
	if err := insertRow(ctx, tx, "etb_grant_links", "jti, parent, execution, delegator, task, delegation",
		c.ID, parent, ex.ID, ex.Action.Principal.ID, ex.Action.Task.ID, isDelegation); err != nil {
		return fmt.Errorf("gateway: record the lineage of grant %s: %w", c.ID, err)
	}
	if c.Scp == nil {
		return nil
	}
	anc := append(append([]string{}, ex.lineage.tasks...), ex.Action.Task.ID)
	ancJSON, err := json.Marshal(anc)
	if err != nil {
		return err
	}
	if err := insertRow(ctx, tx, "etb_tasks", "id, root, parent, ancestors, version, recent, delegation, created",
		ex.ID, ex.Action.Task.RootID, ex.Action.Task.ID, string(ancJSON), 0, "[]", c.ID, ex.Action.Time); err != nil {
		return fmt.Errorf("gateway: create the task of delegation %s: %w", ex.ID, err)
	}
	return nil
}

// lineageOf loads what revocations must reach ex by: its task's ancestors
// and, if its grant descends from delegations, their chain.
func (g *Gateway) lineageOf(ctx context.Context, ex *Execution) (lineageRefs, error) {
	var refs lineageRefs
	var anc string
	err := g.db.QueryRowContext(ctx, `SELECT ancestors FROM etb_tasks WHERE id = ?`, ex.Action.Task.ID).Scan(&anc)
	if err == nil {
		err = json.Unmarshal([]byte(anc), &refs.tasks)
	}
	if err != nil {
		return refs, fmt.Errorf("gateway: lineage of %s: task %s: %w", ex.ID, ex.Action.Task.ID, err)
	}
	if jti := ex.Action.Env[EnvDelegation]; jti != "" {
		if refs.links, err = g.delegationChain(ctx, jti); err != nil {
			return refs, err
		}
	}
	return refs, nil
}

// parentDelegation restores the delegation an execution was begun under
// (for a grant issued later, on approval), from its recorded lineage: the
// last link of the chain is its parent. Nil if it acts under none.
func (g *Gateway) parentDelegation(ctx context.Context, ex *Execution) (*delegation, error) {
	links := ex.lineage.links
	if len(links) == 0 {
		return nil, nil
	}
	jti := links[len(links)-1].JTI
	tok, err := g.Token(ctx, jti)
	if err != nil {
		return nil, err
	}
	c, err := grant.VerifySignature(tok, map[string]ed25519.PublicKey{grant.KeyID(g.grantPub): g.grantPub})
	if err != nil {
		return nil, fmt.Errorf("gateway: stored delegation grant %s: %w", jti, err)
	}
	return &delegation{token: tok, claims: c, chain: links}, nil
}
