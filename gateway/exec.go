package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/enforce"
	"github.com/etbproject/etb/enforce/sandbox"
	"github.com/etbproject/etb/identity"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/policy"
	"github.com/etbproject/etb/telemetry"
)

// Exit statuses of a governed command that did not exit on its own.
const (
	ExitDenied   = 77  // EX_NOPERM: policy denied, or the grant was refused
	ExitNotFound = 127 // the program could not be resolved
	ExitTimeout  = 124 // the timeout obligation expired (as timeout(1))
	ExitInternal = 70  // EX_SOFTWARE: etb could not govern the command
)

// ExecRequest is a local command to govern.
type ExecRequest struct {
	Argv   []string
	Cwd    string
	Task   string
	Parent string
	Env    []string
	// Traceparent is the caller's W3C trace context (`etb run` reads
	// $TRACEPARENT): recorded in the action's env and the parent of the
	// execution's span. An invalid value is ignored.
	Traceparent string
	Stdin       io.Reader
	Stdout      io.Writer
	Stderr      io.Writer
}

// ExecResult is how a governed command ended.
type ExecResult struct {
	Execution *Execution
	Result    enforce.Result
	// ExitCode is what `etb run` exits with: the command's own status, or
	// one of the Exit* codes.
	ExitCode int
	// Message explains a denial, refusal or interruption ("" when the
	// command ran and ended on its own).
	Message string
}

// Exec governs one local command end to end: describe it, decide, grant,
// verify the grant, run it under its obligations and record how it ended.
// An error return means etb could not govern the command; the command then
// did not run, or was killed.
func (g *Gateway) Exec(ctx context.Context, req ExecRequest) (*ExecResult, error) {
	spec, err := enforce.DescribeExec(req.Argv, req.Cwd)
	if err != nil {
		return &ExecResult{ExitCode: ExitNotFound, Message: err.Error()}, nil
	}
	principal, err := identity.Local(ctx, g.cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("gateway: identify caller: %w", err)
	}
	host, _ := os.Hostname()
	a := &action.Action{
		Time:      action.FormatTime(g.now()),
		Principal: principal,
		Action:    spec,
		Task:      action.Task{ID: req.Task, ParentID: req.Parent},
		Env:       map[string]string{"mode": "embedded", "host": host},
	}
	if _, err := telemetry.ParseTraceparent(req.Traceparent); err == nil {
		a.Env[telemetry.EnvTraceparent] = req.Traceparent
	}
	ex, err := g.Begin(ctx, a)
	if err != nil {
		return nil, err
	}
	res := &ExecResult{Execution: ex}
	if ex.Decision.Decision != policy.Permit {
		res.ExitCode = ExitDenied
		res.Message = fmt.Sprintf("denied by %s: %s", joinOr(ex.Decision.Rules, "no rule"), joinOr(ex.Decision.Messages, "no message"))
		if ex.Decision.Decision == policy.RequireApproval {
			res.Message = fmt.Sprintf("approval required by %s (%s); embedded mode has no approver, so the action is refused — run it through `etb serve` to approve it",
				joinOr(ex.Decision.Rules, "no rule"), joinOr(ex.Decision.Messages, "no message"))
			if err := ex.Record(ctx, lineage.TypeInterrupt, lineage.InterruptBody{Reason: "approval_unavailable", Detail: "embedded mode has no approver"}); err != nil {
				return nil, err
			}
		}
		return res, nil
	}

	cmd := enforce.Command{Spec: ex.Action.Action, Env: req.Env, Stdin: req.Stdin, Stdout: req.Stdout, Stderr: req.Stderr,
		Timeout: ex.Claims.Obl.Timeout.D()}
	// Obligations beyond the timeout are the kernel's to enforce. One the
	// host cannot enforce is a refusal before anything runs.
	rec := context.WithoutCancel(ctx)
	sb, err := SandboxSpec(ex.Claims.Obl, spec, func(c sandbox.ConnEvent) {
		// An egress attempt that cannot be recorded is still refused or
		// allowed by the proxy; the end of the run reports the failure.
		ex.Record(rec, lineage.TypeEgress, lineage.EgressBody{Method: c.Method, Target: c.Target, Allowed: c.Allowed, Error: c.Err})
	})
	if err == nil && sb != nil {
		err = sandbox.Check(*sb, g.features())
	}
	if err != nil {
		res.ExitCode, res.Message = ExitDenied, "refused: the grant's obligations cannot be enforced here: "+err.Error()
		return res, ex.Record(rec, lineage.TypeInterrupt, lineage.InterruptBody{Reason: "obligation_unenforceable", Detail: err.Error()})
	}
	cmd.Sandbox = sb
	onStart := func(pid int) error {
		return ex.Record(ctx, lineage.TypeStart, lineage.StartBody{PID: int64(pid), Program: spec.Target.Program,
			ProgramSHA256: spec.Target.ProgramSHA256, GrantJTI: ex.Claims.ID})
	}
	// The run itself must not be cut short by ctx before the enforcer has
	// recorded how it ended; enforce.Run kills the tree on ctx.Done.
	r, runErr := enforce.Run(ctx, cmd, ex.Authorize, onStart)
	res.Result = r
	// Record the end with rec, which outlives a cancelled ctx: the
	// interruption itself must reach the ledger.
	switch {
	case errors.Is(runErr, enforce.ErrChanged), errors.Is(runErr, enforce.ErrNotAuthorized):
		res.ExitCode, res.Message = ExitDenied, "refused by the enforcer: "+runErr.Error()
		return res, ex.Record(rec, lineage.TypeInterrupt, lineage.InterruptBody{Reason: "grant_invalid", Detail: runErr.Error()})
	case runErr != nil && r.PID == 0:
		res.ExitCode, res.Message = ExitInternal, "could not start: "+runErr.Error()
		return res, ex.Record(rec, lineage.TypeInterrupt, lineage.InterruptBody{Reason: "start_failed", Detail: runErr.Error()})
	case runErr != nil:
		res.ExitCode, res.Message = ExitInternal, "interrupted: "+runErr.Error()
		return res, ex.Record(rec, lineage.TypeInterrupt, lineage.InterruptBody{Reason: "ledger_failed", Detail: runErr.Error()})
	case r.TimedOut:
		res.ExitCode = ExitTimeout
		res.Message = fmt.Sprintf("timed out after %s (obligation of %s); the process tree was killed", cmd.Timeout, joinOr(ex.Decision.Rules, "the policy"))
		return res, ex.Record(rec, lineage.TypeInterrupt, lineage.InterruptBody{Reason: "timeout", Detail: res.Message})
	case r.Interrupted:
		res.ExitCode = ExitInternal
		res.Message = "interrupted; the process tree was killed"
		return res, ex.Record(rec, lineage.TypeInterrupt, lineage.InterruptBody{Reason: "cancelled", Detail: res.Message})
	}
	res.ExitCode = r.ExitCode
	if r.Signal != "" {
		res.ExitCode = 128 + signalNumber(r.Signal)
	}
	return res, ex.Record(rec, lineage.TypeEnd, lineage.EndBody{ExitCode: int64(r.ExitCode), Signal: r.Signal,
		DurationNS: r.EndedAt.Sub(r.StartedAt).Nanoseconds(), StdoutSHA256: r.StdoutSHA256, StdoutBytes: r.StdoutBytes,
		StderrSHA256: r.StderrSHA256, StderrBytes: r.StderrBytes})
}

// signalNumber maps a signal's description ("killed", as
// syscall.Signal.String gives it) back to its number; 9 if unknown.
func signalNumber(name string) int {
	for i := 1; i < 65; i++ {
		if syscall.Signal(i).String() == name {
			return i
		}
	}
	return int(syscall.SIGKILL)
}

func joinOr(s []string, empty string) string {
	if len(s) == 0 {
		return empty
	}
	out := s[0]
	for _, x := range s[1:] {
		out += ", " + x
	}
	return out
}

// SandboxSpec maps a grant's obligations to the kernel sandbox of the
// command spec: nil when nothing beyond the timeout is asked. The program
// the grant authorizes is added to the exec (and so read) allow-list: the
// permit is for running exactly it, and nothing else is widened.
func SandboxSpec(o action.Obligations, spec action.Spec, onConn func(sandbox.ConnEvent)) (*sandbox.Spec, error) {
	if !o.Sandboxed() {
		return nil, nil
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	s := &sandbox.Spec{CPUSeconds: o.CPUSeconds, MemoryBytes: o.MemoryBytes, MaxProcesses: o.MaxProcesses,
		MaxFileBytes: o.MaxFileBytes, Dir: o.Cwd}
	if o.FS != nil {
		s.Read = append([]string{}, o.FS.Read...)
		s.Write = append([]string{}, o.FS.Write...)
		s.Exec = append([]string{spec.Target.Program}, o.FS.Exec...)
	}
	if o.Net != nil {
		s.Network = &sandbox.Network{Allow: append([]string{}, o.Net.Allow...), OnConn: onConn}
	}
	if o.Env != nil {
		s.EnvAllow = append([]string{}, o.Env.Allow...)
	}
	return s, nil
}
