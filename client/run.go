package client

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/etbproject/etb/enforce"
	"github.com/etbproject/etb/enforce/sandbox"
	"github.com/etbproject/etb/gateway"
	"github.com/etbproject/etb/grant"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/policy"
)

// Exit statuses of RunCommand, as `etb run` uses them.
const (
	ExitDenied   = 77  // denied by policy, or the grant was refused
	ExitNotFound = 127 // the program could not be resolved
	ExitTimeout  = 124 // the timeout obligation expired
	ExitInternal = 70  // etb could not govern the command, or it was interrupted
)

// Reasons of the interrupt events RunCommand reports.
const (
	ReasonRevoked       = "revoked"
	ReasonPolicyDenied  = "policy_denied"
	ReasonLeaseLost     = "lease_lost"
	ReasonTimeout       = "timeout"
	ReasonGrantInvalid  = "grant_invalid"
	ReasonStartFailed   = "start_failed"
	ReasonReport        = "report_failed"
	ReasonCancelled     = "cancelled"
	ReasonUnenforceable = "obligation_unenforceable"
)

// RunRequest is a local command to govern through the gateway.
type RunRequest struct {
	Argv   []string
	Cwd    string
	Task   Task
	Env    []string
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
}

// RunResult is how a governed command ended.
type RunResult struct {
	// Execution is the gateway's execution id ("" if no intent was made).
	Execution string
	Decision  policy.Decision
	Result    enforce.Result
	ExitCode  int
	// Reason is the interrupt reason reported, "" if the command ended on
	// its own or never ran.
	Reason  string
	Message string
	// Spooled reports that the final event could not be delivered and was
	// spooled locally (FlushSpool delivers it).
	Spooled bool
}

// stopped is the cause a supervised run is cancelled with.
func stopped(reason, detail string) *InterruptError {
	return &InterruptError{Reason: reason, Err: errors.New(detail)}
}

// RunCommand governs one local command through the gateway, as `etb run
// --gateway` does: it describes the command, submits the intent, verifies
// the grant itself (against the pinned trust file, its own replay store,
// the recomputed action digest and its own certificate as holder), runs
// the command while renewing the lease and watching for revocation, and
// reports start and end (or interrupt). A revocation or a renewal refused
// kills the process tree at once; a lease that expires unrenewed (the
// gateway unreachable) kills it at expiry. An end or interrupt report
// that cannot be delivered is spooled.
//
// An error means the command could not be governed; it then did not run,
// or was killed.
func (c *Client) RunCommand(ctx context.Context, req RunRequest) (*RunResult, error) {
	c.FlushSpool(ctx) // best effort: earlier undelivered reports first
	spec, err := enforce.DescribeExec(req.Argv, req.Cwd)
	if err != nil {
		return &RunResult{ExitCode: ExitNotFound, Message: err.Error()}, nil
	}
	ek, err := c.enforcer(ctx)
	if err != nil {
		return nil, err
	}
	auth, err := c.DecideWait(ctx, spec, req.Task, c.opt.ApprovalWait)
	if err != nil {
		return nil, err
	}
	res := &RunResult{Execution: auth.Execution, Decision: auth.Decision}
	if !auth.Permitted() {
		res.ExitCode, res.Message = ExitDenied, refusal(auth)
		return res, nil
	}
	// The obligations come from the signed grant, not the answer's decision.
	claims, err := grant.VerifySignature(auth.Grant, ek.keys)
	if err != nil {
		return c.refuse(ctx, res, ReasonGrantInvalid, err)
	}
	// Obligations beyond the timeout are the kernel sandbox's to enforce;
	// one this host cannot enforce is a refusal before anything runs.
	rec := context.WithoutCancel(ctx)
	sb, err := gateway.SandboxSpec(claims.Obl, spec, func(ev sandbox.ConnEvent) {
		c.reportOrSpool(rec, auth.Execution, lineage.TypeEgress, lineage.EgressBody{Method: ev.Method, Target: ev.Target, Allowed: ev.Allowed, Error: ev.Err})
	})
	if err == nil && sb != nil {
		err = sandbox.Check(*sb, c.features())
	}
	if err != nil {
		return c.refuse(ctx, res, ReasonUnenforceable, fmt.Errorf("the grant's obligations cannot be enforced here: %w", err))
	}
	authorize := func(ctx context.Context, digest string) error {
		_, err := c.verify(ctx, ek, auth.Grant, digest)
		return err
	}

	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sup := c.supervise(runCtx, cancel, auth.Execution, *auth.Lease)
	onStart := func(pid int) error {
		return c.Report(ctx, auth.Execution, lineage.TypeStart, lineage.StartBody{PID: int64(pid),
			Program: spec.Target.Program, ProgramSHA256: spec.Target.ProgramSHA256, GrantJTI: claims.ID})
	}
	cmd := enforce.Command{Spec: spec, Env: req.Env, Stdin: req.Stdin, Stdout: req.Stdout, Stderr: req.Stderr, Timeout: claims.Obl.Timeout.D(),
		Sandbox: sb}
	r, runErr := enforce.Run(runCtx, cmd, authorize, onStart)
	cancel(nil)
	<-sup
	res.Result = r
	var why *InterruptError
	cause := context.Cause(runCtx)
	if !errors.As(cause, &why) {
		why = nil
	}
	switch {
	case errors.Is(runErr, enforce.ErrChanged), errors.Is(runErr, enforce.ErrNotAuthorized):
		return c.refuse(ctx, res, ReasonGrantInvalid, runErr)
	case runErr != nil && r.PID == 0:
		if why != nil {
			res.ExitCode = ExitInternal
			return c.finish(ctx, res, lineage.TypeInterrupt, lineage.InterruptBody{Reason: why.Reason, Detail: why.Err.Error()})
		}
		res.ExitCode = ExitInternal
		res.Message = "could not start: " + runErr.Error()
		return c.finish(ctx, res, lineage.TypeInterrupt, lineage.InterruptBody{Reason: ReasonStartFailed, Detail: runErr.Error()})
	case runErr != nil:
		res.ExitCode = ExitInternal
		res.Message = "interrupted: " + runErr.Error()
		reason := ReasonReport
		switch {
		case why != nil:
			reason = why.Reason
		case IsCode(runErr, CodeRevoked):
			reason = ReasonRevoked // the gateway refused the start
		}
		return c.finish(ctx, res, lineage.TypeInterrupt, lineage.InterruptBody{Reason: reason, Detail: runErr.Error()})
	case r.TimedOut:
		res.ExitCode = ExitTimeout
		res.Message = fmt.Sprintf("timed out after %s; the process tree was killed", cmd.Timeout)
		return c.finish(ctx, res, lineage.TypeInterrupt, lineage.InterruptBody{Reason: ReasonTimeout, Detail: res.Message})
	case r.Interrupted:
		res.ExitCode = ExitInternal
		body := lineage.InterruptBody{Reason: ReasonCancelled, Detail: "the run was cancelled; the process tree was killed"}
		if why != nil {
			body = lineage.InterruptBody{Reason: why.Reason, Detail: why.Err.Error() + "; the process tree was killed"}
		}
		res.Message = "interrupted (" + body.Reason + "): " + body.Detail
		return c.finish(ctx, res, lineage.TypeInterrupt, body)
	}
	res.ExitCode = r.ExitCode
	if r.Signal != "" {
		res.ExitCode = 128 + signalNumber(r.Signal)
	}
	return c.finish(ctx, res, lineage.TypeEnd, lineage.EndBody{ExitCode: int64(r.ExitCode), Signal: r.Signal,
		DurationNS: r.EndedAt.Sub(r.StartedAt).Nanoseconds(), StdoutSHA256: r.StdoutSHA256, StdoutBytes: r.StdoutBytes,
		StderrSHA256: r.StderrSHA256, StderrBytes: r.StderrBytes})
}

// reportOrSpool reports an event, spooling it if the gateway cannot take
// it now.
func (c *Client) reportOrSpool(ctx context.Context, execution, typ string, body any) {
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	if err := c.Report(rctx, execution, typ, body); err != nil && !IsCode(err, CodeEnded) {
		c.spool(execution, typ, body)
	}
}

// features probes once what this host's kernel sandbox can enforce.
func (c *Client) features() sandbox.Features {
	c.probe.Do(func() { c.feat = sandbox.Probe() })
	return c.feat
}

// refuse ends an execution the enforcer refused to start.
func (c *Client) refuse(ctx context.Context, res *RunResult, reason string, err error) (*RunResult, error) {
	res.ExitCode, res.Message = ExitDenied, "refused by the enforcer: "+err.Error()
	return c.finish(ctx, res, lineage.TypeInterrupt, lineage.InterruptBody{Reason: reason, Detail: err.Error()})
}

// finish reports the final event of a RunCommand (see deliver).
func (c *Client) finish(ctx context.Context, res *RunResult, typ string, body any) (*RunResult, error) {
	if ib, ok := body.(lineage.InterruptBody); ok {
		res.Reason = ib.Reason
	}
	spooled, err := c.deliver(ctx, res.Execution, typ, body)
	res.Spooled = spooled
	return res, err
}

// deliver reports an execution's final event, spooling it if the gateway
// cannot take it now; it reports whether it spooled it. The report
// outlives a cancelled ctx. An error means it was neither delivered nor
// spooled.
func (c *Client) deliver(ctx context.Context, execution, typ string, body any) (bool, error) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), requestTimeout)
	defer cancel()
	err := c.Report(rctx, execution, typ, body)
	var ge *Error
	if err == nil || errors.As(err, &ge) && ge.Status/100 == 4 && ge.Status != http.StatusUnauthorized && ge.Status != http.StatusForbidden {
		// Delivered, or refused for good (the gateway already holds a
		// terminal event): nothing to keep.
		return false, nil
	}
	if serr := c.spool(execution, typ, body); serr != nil {
		return false, fmt.Errorf("client: report %s of %s: %w; and spooling it failed: %w", typ, execution, err, serr)
	}
	return true, nil
}

// supervise keeps the lease of execution renewed and watches for
// revocation until ctx ends; it cancels ctx with an *InterruptError when the
// execution must stop. The returned channel is closed when it has stopped.
func (c *Client) supervise(ctx context.Context, cancel context.CancelCauseFunc, execution string, lease Lease) <-chan struct{} {
	done := make(chan struct{})
	ttl := lease.TTL()
	if ttl <= 0 {
		cancel(stopped(ReasonLeaseLost, "the gateway gave no lease"))
		close(done)
		return done
	}
	stop := func(reason, detail string) { cancel(stopped(reason, detail)) }
	go func() {
		watchDone := make(chan struct{})
		go func() { defer close(watchDone); c.watch(ctx, execution, stop) }()
		c.keepLease(ctx, execution, ttl, time.Now().Add(ttl), stop)
		<-watchDone
		close(done)
	}()
	return done
}

// keepLease renews the lease every third of its lifetime. A refusal stops
// the run at once; failures to reach the gateway are retried until the
// lease expires, which stops the run (fail closed).
func (c *Client) keepLease(ctx context.Context, execution string, ttl time.Duration, deadline time.Time, stop func(reason, detail string)) {
	type renewal struct {
		sent  time.Time
		lease Lease
		err   error
	}
	expiry := time.NewTimer(time.Until(deadline))
	defer expiry.Stop()
	next := time.NewTimer(ttl / 3)
	defer next.Stop()
	results := make(chan renewal, 1)
	inflight := false
	var lastErr error
	for {
		select {
		case <-ctx.Done():
			return
		case <-expiry.C:
			detail := fmt.Sprintf("the lease expired at %s without a renewal", deadline.UTC().Format(time.RFC3339Nano))
			if lastErr != nil {
				detail += " (last error: " + lastErr.Error() + ")"
			}
			stop(ReasonLeaseLost, detail)
			return
		case <-next.C:
			if inflight {
				next.Reset(ttl / 10)
				continue
			}
			inflight = true
			go func() {
				rctx, cancel := context.WithTimeout(ctx, ttl/3)
				defer cancel()
				sent := time.Now()
				l, err := c.Renew(rctx, execution)
				results <- renewal{sent, l, err}
			}()
		case r := <-results:
			inflight = false
			switch {
			case r.err == nil && r.lease.TTL() > 0:
				lastErr = nil
				// Count the lease from when the request was sent: the
				// local clock never extends it past the gateway's.
				deadline = r.sent.Add(r.lease.TTL())
				expiry.Reset(time.Until(deadline))
				next.Reset(r.lease.TTL() / 3)
			case IsCode(r.err, CodeRevoked):
				stop(ReasonRevoked, r.err.Error())
				return
			case IsCode(r.err, CodePolicyDenied):
				stop(ReasonPolicyDenied, r.err.Error())
				return
			case IsCode(r.err, CodeEnded):
				return
			default:
				lastErr = r.err
				if lastErr == nil {
					lastErr = errors.New("renewal gave no lease")
				}
				next.Reset(min(ttl/10, time.Until(deadline)/2+time.Millisecond))
			}
		}
	}
}

// watch follows the execution's watch stream, reconnecting when it breaks,
// and stops the run when the gateway pushes a revocation.
func (c *Client) watch(ctx context.Context, execution string, stop func(reason, detail string)) {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		ended, err := c.watchOnce(ctx, execution, stop)
		if ended {
			return
		}
		if IsCode(err, CodeRevoked) {
			stop(ReasonRevoked, err.Error())
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// WatchEvent is one message of a watch stream.
type WatchEvent struct {
	Event      string `json:"event"`
	Reason     string `json:"reason,omitempty"`
	Revocation string `json:"revocation,omitempty"`
}

func (c *Client) watchOnce(ctx context.Context, execution string, stop func(reason, detail string)) (ended bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/v1/executions/"+execution+"/watch", nil)
	if err != nil {
		return false, err
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := c.stream.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		e := &Error{Status: resp.StatusCode}
		if json.Unmarshal(b, e) != nil {
			e.Code = "http"
		}
		return false, e
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			continue
		}
		var ev WatchEvent
		if err := json.Unmarshal([]byte(data), &ev); err != nil {
			return false, fmt.Errorf("client: watch %s: %w", execution, err)
		}
		switch ev.Event {
		case "revoked":
			reason := ReasonRevoked
			if ev.Reason == ReasonPolicyDenied {
				reason = ReasonPolicyDenied
			}
			stop(reason, fmt.Sprintf("the gateway revoked execution %s (%s %s)", execution, ev.Reason, ev.Revocation))
			return true, nil
		case "ended":
			return true, nil
		}
	}
	return false, sc.Err()
}

func thumbprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// signalNumber maps a signal's description back to its number (9 if
// unknown).
func signalNumber(name string) int {
	for i := 1; i < 65; i++ {
		if syscall.Signal(i).String() == name {
			return i
		}
	}
	return int(syscall.SIGKILL)
}
