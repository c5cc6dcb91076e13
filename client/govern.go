package client

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/grant"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/policy"
	"github.com/etbproject/etb/proof"
)

// traceparentKey is the context key of WithTraceparent.
type traceparentKey struct{}

// WithTraceparent returns ctx carrying a W3C traceparent that requests
// made with it send as their traceparent header: the gateway records a
// valid one in the action's env (trace.traceparent) and parents the
// execution's span on it.
func WithTraceparent(ctx context.Context, traceparent string) context.Context {
	return context.WithValue(ctx, traceparentKey{}, traceparent)
}

// Reasons of the interrupts only Govern reports: run failed without saying
// why; a require_approval decision was not approved within ApprovalWait.
const (
	ReasonFailed          = "failed"
	ReasonApprovalTimeout = "approval_timeout"
)

// GovernRequest is one action to govern through the gateway with Govern.
type GovernRequest struct {
	// Spec is exactly what will be done: the grant is verified against its
	// digest, so run must do this and nothing else.
	Spec action.Spec
	Task Task
	// PID is recorded in the start event (0 when the action is not a
	// process of its own, as for a request to a server).
	PID int
	// StartOnly is for a long-lived action whose action is its start (a
	// server): the grant's timeout bounds run only until it calls
	// Granted.Ready; revocation and lease loss still stop it at any time.
	StartOnly bool
}

// Granted is what run executes under: a grant the client verified itself.
type Granted struct {
	Execution string
	// Claims are the verified grant's claims; Claims.Obl are the
	// obligations run must honour (Govern enforces the timeout).
	Claims *grant.Claims
	// Approval is the ticket a require_approval decision was approved
	// with, nil for a permit.
	Approval *Approval
	ready    func()
}

// Ready tells Govern that a StartOnly action has started: its timeout no
// longer applies. Without StartOnly it does nothing.
func (g *Granted) Ready() {
	if g.ready != nil {
		g.ready()
	}
}

// Outcome is how run ended when it returns no error; Govern reports it as
// the end event (result digest and size, never the result).
type Outcome struct {
	ExitCode     int64
	Signal       string
	ResultSHA256 string
	ResultBytes  int64
}

// InterruptError is an error run returns to name the reason of the
// interrupt Govern reports (otherwise ReasonFailed, or the cause Govern
// itself cancelled run's context with).
type InterruptError struct {
	Reason string
	Err    error
}

func (e *InterruptError) Error() string { return e.Reason + ": " + e.Err.Error() }
func (e *InterruptError) Unwrap() error { return e.Err }

// Governed is what Govern did.
type Governed struct {
	// Execution is the gateway's execution id.
	Execution string
	Decision  policy.Decision
	// Approval is the ticket of a require_approval decision.
	Approval *Approval
	// Ran reports that run was called (the grant verified and the start
	// was recorded); Refused is then empty.
	Ran bool
	// Refused says why run was not called: a decision other than a permit
	// (naming its rules and messages), or the enforcer's refusal.
	Refused string
	// Outcome is run's outcome when it ended on its own.
	Outcome Outcome
	// Err is run's error, or the cause run's context was cancelled with.
	Err error
	// Reason is the reason of the interrupt reported, "" for an end.
	Reason string
	// Spooled reports that the final event could not be delivered and was
	// spooled locally (FlushSpool delivers it).
	Spooled bool
}

// enforcerKeys is what verifying a grant locally needs.
type enforcerKeys struct {
	trust  *proof.Trust
	keys   map[string]ed25519.PublicKey
	replay grant.ReplayStore
	holder string
}

// enforcer loads the trust file, the replay store and this client's holder
// thumbprint: everything the local grant check needs.
func (c *Client) enforcer(ctx context.Context) (*enforcerKeys, error) {
	trust, err := c.Trust(ctx)
	if err != nil {
		return nil, err
	}
	keys, err := trust.GrantPublicKeys()
	if err != nil {
		return nil, fmt.Errorf("client: trust: %w", err)
	}
	replay, err := c.replayStore(ctx)
	if err != nil {
		return nil, err
	}
	holder, err := c.Holder()
	if err != nil {
		return nil, err
	}
	return &enforcerKeys{trust: trust, keys: keys, replay: replay, holder: holder}, nil
}

// verify checks token completely (signature, type, time, audience, the
// digest recomputed by the caller, holder) and consumes its jti.
func (c *Client) verify(ctx context.Context, e *enforcerKeys, token, digest string) (*grant.Claims, error) {
	v := grant.NewVerifier(e.keys, e.replay, c.opt.ClockSkew, nil)
	return v.Verify(ctx, token, grant.Expect{Audience: e.trust.Enforcer, ADG: digest, Holder: e.holder})
}

// refusal renders a decision that carries no grant.
func refusal(auth *Authorization) string {
	msg := fmt.Sprintf("%s by %s: %s", auth.Decision.Decision, joinOr(auth.Decision.Rules, "no rule (default deny)"),
		joinOr(auth.Decision.Messages, "no message"))
	if a := auth.Approval; a != nil {
		msg += fmt.Sprintf(" (approval ticket %s is %s)", a.ID, a.Status)
	}
	return msg
}

func joinOr(s []string, empty string) string {
	if len(s) == 0 {
		return empty
	}
	return strings.Join(s, ", ")
}

// Govern governs one action of any kind through the gateway, with this
// process as its enforcer: it submits the intent (waiting up to
// Options.ApprovalWait for a human when the policy requires approval),
// verifies the grant itself (signature, audience, the digest of req.Spec,
// holder binding to this client's certificate, single use against the
// local replay store), reports start, and calls run while keeping the
// lease renewed and watching for revocation. A revocation, a renewal the
// gateway refuses, a lease that expires unrenewed, or the grant's timeout
// obligation cancels run's context (with an *InterruptError cause naming
// the reason). Afterwards it reports end (the Outcome) or interrupt; a
// report the gateway cannot take is spooled.
//
// A require_approval decision still pending after ApprovalWait is ended
// with an interrupt (approval_timeout): the action is refused.
//
// run is called only for a verified grant and a durable start. A decision
// other than a permit, or an enforcer refusal, is not an error: Governed
// says why run was not called. An error means the action could not be
// governed (the gateway could not be asked, or the local state is
// unusable); run was then not called.
func (c *Client) Govern(ctx context.Context, req GovernRequest, run func(ctx context.Context, g *Granted) (Outcome, error)) (*Governed, error) {
	digest, err := req.Spec.Digest()
	if err != nil {
		return nil, fmt.Errorf("client: digest of %s %s: %w", req.Spec.Kind, req.Spec.Name, err)
	}
	ek, err := c.enforcer(ctx)
	if err != nil {
		return nil, err
	}
	auth, err := c.DecideWait(ctx, req.Spec, req.Task, c.opt.ApprovalWait)
	if err != nil {
		return nil, err
	}
	res := &Governed{Execution: auth.Execution, Decision: auth.Decision, Approval: auth.Approval}
	rec := context.WithoutCancel(ctx)
	if !auth.Permitted() {
		res.Refused = refusal(auth)
		if a := auth.Approval; a != nil && a.Status == "pending" {
			// Not approved in time: the action is refused, and its
			// execution ended rather than left for an approver.
			return c.conclude(rec, res, lineage.TypeInterrupt, lineage.InterruptBody{Reason: ReasonApprovalTimeout,
				Detail: fmt.Sprintf("approval ticket %s was not decided within %s", a.ID, c.opt.ApprovalWait)})
		}
		return res, nil
	}
	refuse := func(reason string, err error) (*Governed, error) {
		res.Refused, res.Err = "refused by the enforcer: "+err.Error(), err
		return c.conclude(rec, res, lineage.TypeInterrupt, lineage.InterruptBody{Reason: reason, Detail: err.Error()})
	}
	claims, err := c.verify(ctx, ek, auth.Grant, digest)
	if err != nil {
		return refuse(ReasonGrantInvalid, err)
	}
	if err := c.Report(ctx, auth.Execution, lineage.TypeStart, lineage.StartBody{PID: int64(req.PID),
		Program: req.Spec.Target.Program, ProgramSHA256: req.Spec.Target.ProgramSHA256, GrantJTI: claims.ID}); err != nil {
		reason := ReasonReport
		if IsCode(err, CodeRevoked) {
			reason = ReasonRevoked
		}
		return refuse(reason, fmt.Errorf("report start: %w", err))
	}
	res.Ran = true
	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	g := &Granted{Execution: auth.Execution, Claims: claims, Approval: auth.Approval}
	if d := claims.Obl.Timeout.D(); d > 0 {
		stop := time.AfterFunc(d, func() {
			cancel(stopped(ReasonTimeout, fmt.Sprintf("the grant's timeout of %s expired", d)))
		})
		defer stop.Stop()
		if req.StartOnly {
			g.ready = func() { stop.Stop() }
		}
	}
	sup := c.supervise(runCtx, cancel, auth.Execution, *auth.Lease)
	started := time.Now()
	out, runErr := run(runCtx, g)
	elapsed := time.Since(started)
	var why *InterruptError
	if !errors.As(context.Cause(runCtx), &why) {
		why = nil
	}
	cancel(nil)
	<-sup
	if why != nil {
		// Stopped by the boundary: whatever run returned, it was cut short.
		res.Err = why
		return c.conclude(rec, res, lineage.TypeInterrupt, lineage.InterruptBody{Reason: why.Reason, Detail: why.Err.Error()})
	}
	if runErr != nil {
		res.Err = runErr
		body := lineage.InterruptBody{Reason: ReasonFailed, Detail: runErr.Error()}
		var ie *InterruptError
		switch {
		case errors.As(runErr, &ie):
			body.Reason = ie.Reason
		case ctx.Err() != nil:
			body.Reason = ReasonCancelled
		}
		return c.conclude(rec, res, lineage.TypeInterrupt, body)
	}
	res.Outcome = out
	return c.conclude(rec, res, lineage.TypeEnd, lineage.EndBody{ExitCode: out.ExitCode, Signal: out.Signal,
		DurationNS: elapsed.Nanoseconds(), StdoutSHA256: out.ResultSHA256, StdoutBytes: out.ResultBytes})
}

// conclude delivers a Govern's final event (spooling it when the gateway
// cannot take it now).
func (c *Client) conclude(ctx context.Context, res *Governed, typ string, body any) (*Governed, error) {
	if ib, ok := body.(lineage.InterruptBody); ok {
		res.Reason = ib.Reason
	}
	spooled, err := c.deliver(ctx, res.Execution, typ, body)
	res.Spooled = spooled
	return res, err
}
