package mcp

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/client"
	"github.com/etbproject/etb/gateway"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/policy"
)

// Boundary is where the proxy governs its requests: the embedded gateway
// (Embedded) or a gateway service reached through the client SDK
// (Remote). Both run the same steps (decide; for a verified grant and a
// durable start, forward; record the outcome) and refuse on every error.
type Boundary interface {
	run(ctx context.Context, r *request) (refused string, err error)
}

// request is one action the proxy wants to forward.
type request struct {
	a *action.Action // spec, task and env; the principal for Embedded
	// pid is recorded in the start event.
	pid int
	// refusal, if not empty, refuses the request after the decision (the
	// tool changed its definition, for example): recorded, not forwarded.
	refusal string
	// ask parks an execution awaiting approval and returns the state the
	// client resumes it with (embedded only); nil when the
	// downstream client cannot be asked.
	ask func(ex *gateway.Execution) (state string)
	// resume, if set, continues a parked execution with its approver's
	// answer instead of beginning a new one.
	resume *resumed
	// forward sends the request upstream; it must send exactly a.Action.
	forward forwardFunc
	// startOnly: the grant's timeout bounds forward only until it calls
	// granted.ready (the start of a long-lived server).
	startOnly bool
	log       func(format string, args ...any)
}

// forwardFunc sends a granted request upstream under the grant's
// obligations and returns its result (recorded as a digest and size) and
// whether the upstream reported an error in it. An *client.InterruptError
// names the reason of the interrupt recorded for a failure.
type forwardFunc func(ctx context.Context, g granted) (result any, isError bool, err error)

// granted is what a forwardFunc runs under.
type granted struct {
	// obl are the verified grant's obligations.
	obl action.Obligations
	// record appends an event (egress, for example) to the execution,
	// best effort: a failure is logged.
	record func(typ string, body any)
	// ready ends the part of a startOnly request its timeout bounds.
	ready func()
}

// Reasons of the interrupts the proxy records itself.
const (
	reasonUpstream     = "upstream_error"
	reasonToolChanged  = "tool_changed"
	reasonNoApprover   = "approval_unavailable"
	reasonGrantInvalid = "grant_invalid"
)

// Embedded governs with an in-process gateway.
func Embedded(gw *gateway.Gateway) Boundary { return embedded{gw} }

// Remote governs through a gateway service with c (see client.Client.Govern):
// this process verifies each grant itself, keeps the lease while the
// request runs, and a revocation cancels the upstream request.
func Remote(c *client.Client) Boundary { return remote{c} }

type embedded struct{ gw *gateway.Gateway }

func (b embedded) run(ctx context.Context, r *request) (string, error) {
	spec := r.a.Action
	rec := context.WithoutCancel(ctx)
	ex, refused, err := b.decide(ctx, r)
	if ex == nil || refused != "" || err != nil {
		return refused, err
	}
	interrupt := func(reason, detail, msg string) (string, error) {
		r.log("%s (execution %s): %s", spec.Name, ex.ID, msg)
		if err := ex.Record(rec, lineage.TypeInterrupt, lineage.InterruptBody{Reason: reason, Detail: detail}); err != nil {
			return "", fmt.Errorf("mcp: record interrupt of %s: %w", ex.ID, err)
		}
		return fmt.Sprintf("etb: %s (execution %s)", msg, ex.ID), nil
	}
	if r.refusal != "" {
		return interrupt(reasonToolChanged, r.refusal, "refused: "+r.refusal)
	}
	switch {
	case ex.StartErr() != nil:
		// BeginStart refused the start; its interrupt is recorded.
		msg := "refused by the enforcer: " + ex.StartErr().Error()
		r.log("%s (execution %s): %s", spec.Name, ex.ID, msg)
		return fmt.Sprintf("etb: %s (execution %s)", msg, ex.ID), nil
	case !ex.Started():
		// An approved execution: the grant is verified completely, then
		// its jti is consumed and the start recorded in one durable
		// ledger transaction: both or neither.
		digest, err := spec.Digest()
		if err == nil {
			err = ex.AuthorizeStart(ctx, digest, startBody(r))
		}
		if errors.Is(err, gateway.ErrStartNotDurable) {
			return interrupt(client.ReasonStartFailed, err.Error(), "refused: "+err.Error())
		}
		if err != nil {
			return interrupt(reasonGrantInvalid, err.Error(), "refused by the enforcer: "+err.Error())
		}
	}
	callCtx := ctx
	ready := func() {}
	if d := ex.Claims.Obl.Timeout.D(); d > 0 {
		var cancel context.CancelCauseFunc
		callCtx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
		t := time.AfterFunc(d, func() { cancel(context.DeadlineExceeded) })
		defer t.Stop()
		if r.startOnly {
			ready = func() { t.Stop() }
		}
	}
	started := time.Now()
	out, err := outcome(callCtx, granted{obl: ex.Claims.Obl, ready: ready, record: func(typ string, body any) {
		if err := ex.Record(rec, typ, body); err != nil {
			r.log("record %s of %s: %v", typ, ex.ID, err)
		}
	}}, r.forward)
	if err != nil {
		reason := reasonUpstream
		var ie *client.InterruptError
		switch {
		case errors.As(err, &ie):
			reason = ie.Reason
		case ctx.Err() != nil:
			reason = client.ReasonCancelled
		case errors.Is(context.Cause(callCtx), context.DeadlineExceeded):
			reason = client.ReasonTimeout
		}
		if rerr := ex.Record(rec, lineage.TypeInterrupt, lineage.InterruptBody{Reason: reason, Detail: err.Error()}); rerr != nil {
			return "", errors.Join(err, rerr)
		}
		if reason == client.ReasonTimeout {
			return fmt.Sprintf("etb: interrupted (timeout): the grant's timeout of %s expired; the upstream request was cancelled (execution %s)",
				ex.Claims.Obl.Timeout.D(), ex.ID), nil
		}
		return "", fmt.Errorf("upstream %s (execution %s): %w", spec.Name, ex.ID, err)
	}
	if err := ex.Record(rec, lineage.TypeEnd, lineage.EndBody{ExitCode: out.ExitCode, DurationNS: time.Since(started).Nanoseconds(),
		StdoutSHA256: out.ResultSHA256, StdoutBytes: out.ResultBytes}); err != nil {
		return "", fmt.Errorf("mcp: record end of %s: %w", ex.ID, err)
	}
	return "", nil
}

// decide begins the execution (or resumes a parked one with its
// approver's answer) and returns it when it may go on to the enforcer's
// checks; otherwise the refusal, a *needsApproval error, or an error.
func (b embedded) decide(ctx context.Context, r *request) (*gateway.Execution, string, error) {
	spec := r.a.Action
	rec := context.WithoutCancel(ctx)
	refuse := func(ex *gateway.Execution, msg string) (*gateway.Execution, string, error) {
		r.log("%s (execution %s): %s", spec.Name, ex.ID, msg)
		return nil, fmt.Sprintf("etb: %s (execution %s)", msg, ex.ID), nil
	}
	if rs := r.resume; rs != nil {
		ex := rs.ex
		ticket := "elicitation-" + ex.ID
		if !rs.ok {
			if err := ex.Reject(rec, ticket, rs.approver, "declined through MCP elicitation"); err != nil {
				return nil, "", fmt.Errorf("mcp: record rejection of %s: %w", ex.ID, err)
			}
			return refuse(ex, fmt.Sprintf("approval required by %s was declined by %s", joinOr(ex.Decision.Rules, "no rule"), rs.approver))
		}
		if err := ex.Approve(rec, ticket, rs.approver, "approved through MCP elicitation"); err != nil {
			return nil, "", fmt.Errorf("mcp: record approval of %s: %w", ex.ID, err)
		}
		return ex, "", nil
	}
	var ex *gateway.Execution
	var err error
	if r.refusal == "" {
		// A permit's grant is verified and its start recorded in the same
		// durable batch as the intent and decision: one synced commit
		// before the request is forwarded.
		ex, err = b.gw.BeginStart(ctx, r.a, func(*gateway.Execution) (string, lineage.StartBody, error) {
			digest, err := spec.Digest()
			return digest, startBody(r), err
		})
	} else {
		ex, err = b.gw.Begin(ctx, r.a)
	}
	if err != nil {
		return nil, "", fmt.Errorf("mcp: govern %s: %w", spec.Name, err)
	}
	why := fmt.Sprintf("%s (%s)", joinOr(ex.Decision.Rules, "no rule"), joinOr(ex.Decision.Messages, "no message"))
	switch ex.Decision.Decision {
	case policy.Permit:
		return ex, "", nil
	case policy.RequireApproval:
		if r.refusal != "" {
			return ex, "", nil // refused next, without asking anyone
		}
		if r.ask == nil {
			msg := "approval required by " + why + "; the MCP client cannot be asked (no elicitation capability), so the request is refused"
			if err := ex.Record(rec, lineage.TypeInterrupt, lineage.InterruptBody{Reason: reasonNoApprover, Detail: "the MCP client offers no elicitation"}); err != nil {
				return nil, "", fmt.Errorf("mcp: record interrupt of %s: %w", ex.ID, err)
			}
			return refuse(ex, msg)
		}
		prompt := fmt.Sprintf("etb: approval required by %s.\n%s %s with arguments %s\nApprove exactly this request?",
			why, spec.Kind, spec.Name, joinOr(spec.Args, "none"))
		return nil, "", &needsApproval{state: r.ask(ex), prompt: prompt}
	default:
		return refuse(ex, fmt.Sprintf("denied by %s: %s", joinOr(ex.Decision.Rules, "no rule (default deny)"), joinOr(ex.Decision.Messages, "no message")))
	}
}

// startBody is the start event of r's execution.
func startBody(r *request) lineage.StartBody {
	spec := r.a.Action
	return lineage.StartBody{PID: int64(r.pid), Program: spec.Target.Program, ProgramSHA256: spec.Target.ProgramSHA256}
}

// outcome forwards and summarises the result as its canonical digest and
// size (exit code 1 when the upstream flagged an error in it).
func outcome(ctx context.Context, g granted, forward forwardFunc) (client.Outcome, error) {
	res, isError, err := forward(ctx, g)
	if err != nil {
		return client.Outcome{}, err
	}
	c, err := action.Canonical(res)
	if err != nil {
		return client.Outcome{}, fmt.Errorf("mcp: canonical form of the result: %w", err)
	}
	o := client.Outcome{ResultSHA256: action.SHA256(c), ResultBytes: int64(len(c))}
	if isError {
		o.ExitCode = 1
	}
	return o, nil
}

type remote struct{ c *client.Client }

func (b remote) run(ctx context.Context, r *request) (string, error) {
	spec := r.a.Action
	task := client.Task{ID: r.a.Task.ID, ParentID: r.a.Task.ParentID}
	if r.refusal != "" {
		// Ask anyway, so that the refusal is in the record.
		auth, err := b.c.Decide(ctx, spec, task)
		if err != nil {
			return "", fmt.Errorf("mcp: govern %s: %w", spec.Name, err)
		}
		msg := "refused: " + r.refusal
		pending := auth.Approval != nil && auth.Approval.Status == "pending"
		if !auth.Permitted() && !pending {
			msg = fmt.Sprintf("%s by %s: %s", auth.Decision.Decision, joinOr(auth.Decision.Rules, "no rule (default deny)"),
				joinOr(auth.Decision.Messages, "no message"))
		} else if err := b.c.Report(context.WithoutCancel(ctx), auth.Execution, lineage.TypeInterrupt,
			lineage.InterruptBody{Reason: reasonToolChanged, Detail: r.refusal}); err != nil {
			// Ends a permit, or the pending approval no one should be
			// asked for now.
			return "", fmt.Errorf("mcp: report interrupt of %s: %w", auth.Execution, err)
		}
		r.log("%s (execution %s): %s", spec.Name, auth.Execution, msg)
		return fmt.Sprintf("etb: %s (execution %s)", msg, auth.Execution), nil
	}
	if tp := r.a.Env[EnvTraceParent]; tp != "" {
		// The gateway records it in the action's env from the header.
		ctx = client.WithTraceparent(ctx, tp)
	}
	gov, err := b.c.Govern(ctx, client.GovernRequest{Spec: spec, Task: task, PID: r.pid, StartOnly: r.startOnly},
		func(ctx context.Context, g *client.Granted) (client.Outcome, error) {
			o, err := outcome(ctx, granted{obl: g.Claims.Obl, ready: g.Ready, record: func(typ string, body any) {
				if err := b.c.Report(context.WithoutCancel(ctx), g.Execution, typ, body); err != nil {
					r.log("report %s of %s: %v", typ, g.Execution, err)
				}
			}}, r.forward)
			var ie *client.InterruptError
			if err != nil && ctx.Err() == nil && !errors.As(err, &ie) {
				err = &client.InterruptError{Reason: reasonUpstream, Err: err}
			}
			return o, err
		})
	if err != nil {
		return "", fmt.Errorf("mcp: govern %s: %w", spec.Name, err)
	}
	if gov.Spooled {
		r.log("%s (execution %s): the gateway could not take the outcome; it is spooled", spec.Name, gov.Execution)
	}
	switch {
	case gov.Refused != "":
		r.log("%s (execution %s): %s", spec.Name, gov.Execution, gov.Refused)
		return fmt.Sprintf("etb: %s (execution %s)", gov.Refused, gov.Execution), nil
	case gov.Reason == reasonUpstream:
		return "", fmt.Errorf("upstream %s (execution %s): %w", spec.Name, gov.Execution, gov.Err)
	case gov.Reason != "":
		detail := gov.Err
		if ie, ok := detail.(*client.InterruptError); ok {
			detail = ie.Err
		}
		msg := fmt.Sprintf("interrupted (%s): %v; the upstream request was cancelled", gov.Reason, detail)
		r.log("%s (execution %s): %s", spec.Name, gov.Execution, msg)
		return fmt.Sprintf("etb: %s (execution %s)", msg, gov.Execution), nil
	}
	return "", nil
}
