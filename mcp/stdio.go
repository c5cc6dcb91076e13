package mcp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/client"
	"github.com/etbproject/etb/enforce"
	"github.com/etbproject/etb/enforce/sandbox"
	"github.com/etbproject/etb/gateway"
	"github.com/etbproject/etb/lineage"
)

// KindServerStart is the kind of the action that starts a stdio upstream
// server.
const KindServerStart = "mcp.server_start"

// Reason of the interrupt of a server start whose obligations this host
// cannot enforce.
const reasonUnenforceable = client.ReasonUnenforceable

// RefusedError is the error of RunStdio when the boundary did not let the
// upstream server start (a denial, or obligations this host cannot
// enforce): nothing was started.
type RefusedError struct{ Msg string }

func (e *RefusedError) Error() string { return e.Msg }

// DescribeServerStart maps starting argv as a stdio upstream server to the
// action etb governs: kind mcp.server_start, name the program's base name,
// args argv[1:], and the target of a shell.exec (the resolved program, its
// sha256, the full argv and the working directory cwd).
func DescribeServerStart(argv []string, cwd string) (action.Spec, error) {
	spec, err := enforce.DescribeExec(argv, cwd)
	if err != nil {
		return action.Spec{}, fmt.Errorf("mcp: upstream command: %w", err)
	}
	spec.Kind = KindServerStart
	spec.Name = baseName(spec.Target.Program)
	return spec, nil
}

func baseName(p string) string {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			return p[i+1:]
		}
	}
	return p
}

// RunStdio runs the proxy in stdio mode. Starting argv as the upstream
// server is itself an action (DescribeServerStart) governed by b before
// anything is spawned: a refusal returns a *RefusedError. A permit whose
// obligations need the kernel sandbox starts the upstream inside it (one
// the host cannot enforce is refused before the start); otherwise the
// upstream gets its own process group. The proxy then connects to it and
// serves the governed mirror on in/out until the downstream client
// disconnects, ctx ends, or the boundary stops the start's execution
// (revocation, lease loss, its timeout). The start's execution ends with
// the proxy: its end event records how. When RunStdio returns, the
// upstream's whole process tree has been killed.
func RunStdio(ctx context.Context, b Boundary, argv []string, in io.ReadCloser, out io.WriteCloser, opt Options) error {
	// The upstream is started with Pdeathsig, which fires when the thread
	// that forked it exits: keep this goroutine on its thread meanwhile.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	// Descendants the upstream orphans are reparented to this process,
	// where the upstream's tracker still finds them (see serveStdio).
	if err := enforce.Subreaper(); err != nil {
		return fmt.Errorf("mcp: upstream command: %w", err)
	}
	if opt.Cwd == "" {
		opt.Cwd, _ = os.Getwd()
	}
	if opt.Log == nil {
		opt.Log = func(string, ...any) {}
	}
	// The program is hashed from an open file, and that very file is what
	// runs (as the upstream's /proc/self/fd/3): replacing the path after
	// the decision changes nothing.
	spec, prog, err := enforce.OpenExec(argv, opt.Cwd)
	if err != nil {
		return fmt.Errorf("mcp: upstream command: %w", err)
	}
	defer prog.Close()
	spec.Kind, spec.Name = KindServerStart, baseName(spec.Target.Program)
	cmd, up := commandFile(spec, prog)
	if opt.Env == nil {
		opt.Env = map[string]string{}
	}
	if _, ok := opt.Env["mode"]; !ok {
		opt.Env["mode"] = "mcp-stdio"
	}
	env := map[string]string{}
	for k, v := range opt.Env {
		env[k] = v
	}
	// The start is its own task (the sessions' tasks are below
	// opt.ParentTask): revoking the calls leaves the server running.
	a := &action.Action{Principal: opt.Principal, Action: spec, Env: env}
	var served, unenforceable error
	started := false
	// The grant's timeout bounds the start (until the upstream has
	// answered initialize), not the server's life: that is the session's.
	refused, err := b.run(ctx, &request{a: a, log: opt.Log, startOnly: true, forward: func(ctx context.Context, g granted) (any, bool, error) {
		started = true
		// Each connection attempt through the egress proxy is an event of
		// the start's execution.
		sb, err := gateway.SandboxSpec(g.obl, spec, func(ev sandbox.ConnEvent) {
			g.record(lineage.TypeEgress, lineage.EgressBody{Method: ev.Method, Target: ev.Target, Allowed: ev.Allowed, Error: ev.Err})
		})
		if err == nil && sb != nil {
			err = sandbox.Check(*sb, sandbox.Probe())
		}
		if err == nil && sb != nil {
			cmd, err = sandbox.CommandFile(ctx, *sb, prog, append([]string{up.Program}, up.Argv...), nil)
			if err == nil {
				cmd.SysProcAttr.Setpgid = true // a group of its own, as an unsandboxed upstream's
			}
		}
		if err != nil {
			unenforceable = fmt.Errorf("the grant's obligations cannot be enforced here: %w", err)
			return nil, false, &client.InterruptError{Reason: reasonUnenforceable, Err: unenforceable}
		}
		if sb != nil {
			cmd.Stderr = os.Stderr
			opt.Log("starting %s in the kernel sandbox the grant's obligations require", up.Program)
		}
		served = serveStdio(ctx, b, cmd, up, in, out, opt, g.ready)
		st := cmd.ProcessState
		res := struct {
			ExitCode int    `json:"exit_code"`
			Error    string `json:"error,omitempty"`
		}{ExitCode: -1}
		if st != nil {
			res.ExitCode = st.ExitCode()
		}
		if served != nil {
			res.Error = served.Error()
		}
		if served == nil && ctx.Err() != nil {
			// Stopped by the boundary (revocation, timeout) or by etb's
			// own shutdown: an interrupt, not an end.
			return nil, false, context.Cause(ctx)
		}
		return res, served != nil, nil
	}})
	if unenforceable != nil {
		// Refused before anything was spawned (the interrupt says why).
		return &RefusedError{Msg: fmt.Sprintf("etb: refused by the enforcer: %v; the MCP server %s was not started", unenforceable, spec.Name)}
	}
	if err != nil && ctx.Err() != nil && served == nil {
		// etb is shutting down (SIGTERM): the start's interrupt could not
		// be recorded in time, or the proxy was stopped; not a failure of
		// the proxy.
		opt.Log("%v", err)
		return nil
	}
	if err != nil {
		return errors.Join(err, served)
	}
	switch {
	case refused != "" && started && ctx.Err() != nil:
		return nil // etb's own shutdown
	case refused != "" && started:
		return fmt.Errorf("mcp: the MCP server %s was stopped: %s", spec.Name, refused)
	case refused != "":
		return &RefusedError{Msg: fmt.Sprintf("%s; the MCP server %s was not started", refused, spec.Name)}
	}
	return served
}

// serveStdio starts cmd as the upstream, connects the proxy to it and
// serves downstream until the client disconnects or ctx ends; then it
// kills what is left of the upstream's process tree: its process group,
// its descendants, and what was seen in its tree while it ran
// (enforce.Tracker), a sandboxed upstream's helper (PID 1 of its
// namespace) among them.
func serveStdio(ctx context.Context, b Boundary, cmd *exec.Cmd, up Upstream, in io.ReadCloser, out io.WriteCloser, opt Options, ready func()) (err error) {
	p := New(b, opt)
	t := &trackedCommand{CommandTransport: sdk.CommandTransport{Command: cmd, TerminateDuration: 2 * time.Second}}
	connectErr := p.Connect(ctx, t, up)
	tr := t.tracker
	if tr != nil {
		tr.Sample() // the upstream has started up: what it spawned is there
	}
	if connectErr == nil && ready != nil {
		ready() // started: from now on the session bounds it
	}
	defer func() {
		if cmd.Process == nil {
			return
		}
		if tr != nil {
			if kerr := tr.Kill(); kerr != nil {
				err = errors.Join(err, fmt.Errorf("mcp: kill the upstream's process tree: %w", kerr))
			}
			return
		}
		kerr := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if errors.Is(kerr, syscall.ESRCH) {
			kerr = nil
		}
		if perr := cmd.Process.Kill(); perr != nil && !errors.Is(perr, os.ErrProcessDone) && kerr != nil {
			err = errors.Join(err, fmt.Errorf("mcp: kill upstream process group %d: %w", cmd.Process.Pid, kerr))
		}
	}()
	if connectErr != nil {
		return connectErr
	}
	defer p.Close()
	if err := p.Server().Run(ctx, &sdk.IOTransport{Reader: in, Writer: out}); err != nil && ctx.Err() == nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("mcp: serve downstream: %w", err)
	}
	return nil
}

// trackedCommand is the go-sdk's command transport that starts following
// the upstream's process tree (enforce.Track) as soon as the command has
// started, before the MCP handshake. If it cannot, the connection fails:
// without the tracker the tree could outlive the proxy.
type trackedCommand struct {
	sdk.CommandTransport
	tracker *enforce.Tracker
}

func (t *trackedCommand) Connect(ctx context.Context) (sdk.Connection, error) {
	conn, err := t.CommandTransport.Connect(ctx)
	if err != nil {
		return nil, err
	}
	if t.tracker, err = enforce.Track(t.Command.Process.Pid); err != nil {
		conn.Close()
		return nil, fmt.Errorf("mcp: follow the upstream's process tree: %w", err)
	}
	return conn, nil
}
