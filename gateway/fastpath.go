package gateway

import (
	"context"
	"fmt"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/grant"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/policy"
)

// Approve records that approver approved ex's require_approval decision
// outside the gateway service (an embedded adapter asked its user, for
// example an MCP client through elicitation), then issues ex's grant and
// records it, as the service does for an approved ticket. ticket names the
// request the approver answered. The approval event's actor is approver,
// and it is bound to ex's action digest.
//
// It refuses an execution whose decision is not require_approval or that
// already has a grant. An error means no grant was issued: nothing may
// run.
func (ex *Execution) Approve(ctx context.Context, ticket, approver, comment string) error {
	switch {
	case ex.Decision.Decision != policy.RequireApproval:
		return fmt.Errorf("gateway: execution %s: decision %s needs no approval", ex.ID, ex.Decision.Decision)
	case ex.Token != "":
		return fmt.Errorf("gateway: execution %s already has a grant", ex.ID)
	case approver == "" || ticket == "":
		return fmt.Errorf("gateway: execution %s: approval without an approver (%q) or ticket (%q)", ex.ID, approver, ticket)
	}
	if err := ex.recordAs(ctx, lineage.TypeApproval, approver, lineage.ApprovalBody{Ticket: ticket, Decision: "approved",
		Approver: approver, ActionDigest: ex.Digest, Comment: comment}); err != nil {
		return err
	}
	g := ex.g
	token, claims, err := g.issuer.Issue(grant.Claims{
		Subject: ex.Action.Principal.ID, Audience: g.cfg.Enforcer, Txn: ex.Action.Task.RootID,
		ADG: ex.Digest, Pol: ex.Decision.Policy.BundleHash, Obl: ex.Decision.Obligations, Execution: ex.ID,
	})
	if err != nil {
		err = fmt.Errorf("gateway: issue grant for approved %s: %w", ex.ID, err)
		if rerr := ex.recordAs(ctx, lineage.TypeInterrupt, g.cfg.Issuer, lineage.InterruptBody{Reason: "grant_failed", Detail: err.Error()}); rerr != nil {
			return fmt.Errorf("%w; and recording that failed: %w", err, rerr)
		}
		return err
	}
	// The grant's index row is written from ex (in the same transaction).
	ex.Token, ex.Claims = token, &claims
	if err := ex.recordAs(ctx, lineage.TypeGrant, g.cfg.Issuer, lineage.GrantBody{JTI: claims.ID, TokenSHA256: grant.TokenHash(token),
		ADG: claims.ADG, Pol: claims.Pol, Aud: claims.Audience, Exp: claims.Expiry}); err != nil {
		ex.Token, ex.Claims = "", nil
		return err
	}
	return nil
}

// Reject records that approver rejected ex's require_approval decision
// and the interrupt that ends it.
func (ex *Execution) Reject(ctx context.Context, ticket, approver, comment string) error {
	if ex.Decision.Decision != policy.RequireApproval || ex.Token != "" {
		return fmt.Errorf("gateway: execution %s: nothing to reject (decision %s)", ex.ID, ex.Decision.Decision)
	}
	if err := ex.recordAs(ctx, lineage.TypeApproval, approver, lineage.ApprovalBody{Ticket: ticket, Decision: "rejected",
		Approver: approver, ActionDigest: ex.Digest, Comment: comment}); err != nil {
		return err
	}
	return ex.recordAs(ctx, lineage.TypeInterrupt, ex.g.cfg.Issuer, lineage.InterruptBody{Reason: "approval_rejected",
		Detail: "rejected by " + approver})
}

// recordAs is Record with another actor than the enforcer.
func (ex *Execution) recordAs(ctx context.Context, typ, actor string, body any) error {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	e, b, err := ex.chain.Next(typ, actor, action.FormatTime(ex.g.now()), body)
	if err != nil {
		return err
	}
	return ex.g.append(ctx, ex, []*lineage.Event{e}, [][]byte{b})
}
