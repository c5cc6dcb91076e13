package gateway

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"time"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/grant"
	"github.com/etbproject/etb/ledger"
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
	fail := func(err error) error {
		err = fmt.Errorf("gateway: issue grant for approved %s: %w", ex.ID, err)
		if rerr := ex.recordAs(ctx, lineage.TypeInterrupt, g.cfg.Issuer, lineage.InterruptBody{Reason: "grant_failed", Detail: err.Error()}); rerr != nil {
			return fmt.Errorf("%w; and recording that failed: %w", err, rerr)
		}
		return err
	}
	// As the service's grantApproved: a sub-agent's approved action gets
	// a child of its delegation, and what it spends counts against its
	// limits as a permit's would.
	parent, err := g.parentDelegation(ctx, ex)
	if err != nil {
		return fail(err)
	}
	c, err := g.grantClaims(&ex.Action, ex.Digest, ex.Decision, beginOptions{delegation: parent})
	if err != nil {
		return fail(err)
	}
	token, claims, err := g.issueChecked(c, parent)
	if err != nil {
		return fail(err)
	}
	slots, err := g.Policy().LimitSlots(ctx, &ex.Action)
	if err != nil {
		return fail(err)
	}
	ex.approvedUse = slots
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

// ErrStartNotDurable is the error of AuthorizeStart when the grant
// verified but the start and the jti could not be committed (a storage
// failure); a jti used before is grant.ErrReplayed instead.
var ErrStartNotDurable = errors.New("gateway: the start could not be made durable")

// AuthorizeStart is Authorize followed by Record of start, made durable
// together in one ledger transaction: the grant is checked completely
// (signature, type, algorithm, time, audience, and the action digest
// recomputed from what is about to run) first, then the start event, its
// index rows and the grant's jti (single use, in the replay store's table
// grant_jti) are committed at once. Either both are durable or neither
// is; a jti used before fails the whole transaction (an error wrapping
// grant.ErrReplayed) and no start is recorded. It saves one synced commit
// per governed request over Authorize then Record.
//
// An error means the request must not be forwarded. The caller records
// the refusal (an interrupt) as after a failed Authorize.
func (ex *Execution) AuthorizeStart(ctx context.Context, recomputedDigest string, start lineage.StartBody) error {
	if ex.Token == "" {
		return fmt.Errorf("gateway: execution %s has no grant (decision %s)", ex.ID, ex.Decision.Decision)
	}
	g := ex.g
	// The same verification as BeginStart: ex.use then carries the jti to
	// consume in the start's transaction (Gateway.append).
	body, err := g.verifyForStart(ctx, ex, func(*Execution) (string, lineage.StartBody, error) {
		return recomputedDigest, start, nil
	})
	if err != nil {
		return err
	}
	ex.mu.Lock()
	defer ex.mu.Unlock()
	saved := *ex.chain
	e, b, err := ex.chain.Next(lineage.TypeStart, g.cfg.Enforcer, action.FormatTime(g.now()), body)
	if err == nil {
		err = g.append(ctx, ex, []*lineage.Event{e}, [][]byte{b})
	}
	if err != nil {
		// Nothing is durable: the chain goes back to before the start, so
		// that the interrupt recording the refusal links to what the
		// ledger holds.
		ex.use = nil
		*ex.chain = saved
		if errors.Is(err, grant.ErrReplayed) {
			return fmt.Errorf("gateway: execution %s: %w", ex.ID, err)
		}
		return fmt.Errorf("%w: execution %s: %w", ErrStartNotDurable, ex.ID, err)
	}
	return nil
}

// consumeJTI burns use's jti inside an append transaction: the statement of
// grant.SQLiteReplayStore.Use. A jti used before fails the transaction
// with an error wrapping grant.ErrReplayed.
func consumeJTI(ctx context.Context, x ledger.SQLExecer, use *deferredUse) error {
	res, err := x.ExecContext(ctx, `INSERT INTO grant_jti (jti, exp) VALUES (?, ?) ON CONFLICT (jti) DO NOTHING`, use.jti, use.exp.Unix())
	if err != nil {
		return fmt.Errorf("grant: replay store: record jti %s: %w", use.jti, err)
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		return errors.Join(fmt.Errorf("grant: jti %s: %w: jti %s was used before", use.jti, grant.ErrReplayed, use.jti), err)
	}
	return nil
}

// BeginStart is Begin and, for a permit, AuthorizeStart in one durable
// ledger batch: prepare is called with the decided execution and returns
// the action digest recomputed from exactly what is about to run and the
// start event's body; the grant is then verified completely against that
// digest, and the intent, decision, grant, the grant's single use and the
// start are committed together. One synced commit, where Begin then
// AuthorizeStart take two; nothing may run before BeginStart returns, and
// everything it authorizes is durable when it does.
//
// If prepare fails or the grant does not verify, the batch records an
// interrupt (grant_invalid) instead of the start and StartErr says why; a
// decision other than permit is returned as by Begin (Started is false,
// StartErr nil). An error means nothing was authorized.
func (g *Gateway) BeginStart(ctx context.Context, a *action.Action, prepare func(ex *Execution) (digest string, start lineage.StartBody, err error)) (*Execution, error) {
	if prepare == nil {
		return nil, errors.New("gateway: BeginStart without prepare")
	}
	return g.begin(ctx, a, beginOptions{start: prepare})
}

// Started reports whether the execution's start is durable.
func (ex *Execution) Started() bool { return ex.started }

// StartErr is why BeginStart refused to start a permitted execution (its
// interrupt is recorded), nil otherwise.
func (ex *Execution) StartErr() error { return ex.startErr }

// verifyForStart runs prepare and verifies ex's fresh grant against its
// digest, deferring the single use to the batch (ex.use).
func (g *Gateway) verifyForStart(ctx context.Context, ex *Execution, prepare func(*Execution) (string, lineage.StartBody, error)) (lineage.StartBody, error) {
	digest, body, err := prepare(ex)
	if err != nil {
		return body, err
	}
	use := &deferredUse{}
	v := grant.NewVerifier(map[string]ed25519.PublicKey{grant.KeyID(g.grantPub): g.grantPub}, use, g.cfg.ClockSkew.D(), g.now)
	claims, err := v.Verify(ctx, ex.Token, grant.Expect{Audience: g.cfg.Enforcer, ADG: digest})
	if err != nil {
		return body, err
	}
	if use.jti != claims.ID {
		return body, fmt.Errorf("gateway: execution %s: the verifier did not reach the single-use check of jti %s", ex.ID, claims.ID)
	}
	if body.GrantJTI == "" {
		body.GrantJTI = claims.ID
	}
	ex.use = use
	return body, nil
}

// deferredUse is a grant.ReplayStore that only notes the jti the verifier
// would consume, so that AuthorizeStart consumes it in the ledger's
// transaction instead.
type deferredUse struct {
	jti string
	exp time.Time
}

func (d *deferredUse) Use(_ context.Context, jti string, exp time.Time) error {
	d.jti, d.exp = jti, exp
	return nil
}
