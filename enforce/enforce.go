// Package enforce runs an authorized action inside its obligations and tears
// it down: the executing side of the trust boundary for local commands
// (kind shell.exec).
//
// Run re-describes the command from the filesystem (DescribeExec: resolve
// argv[0], hash the executable) and refuses with ErrChanged if anything
// differs from the spec that was authorized; it then asks the caller's
// Authorize to verify the grant against the recomputed action digest, and
// refuses with ErrNotAuthorized if that fails. Only then does it start the
// process, stream its output through unchanged while hashing it, and kill
// the whole process tree when the timeout expires, when the context is
// cancelled, when the OnStart hook fails, or — for leftovers — when the
// command exits: a governed command may not leave daemons behind.
//
// The package must never start a process before Authorize succeeded, and
// never let a command's process tree outlive its timeout.
//
// # Executing what was hashed
//
// Run hashes the executable through an open file and executes that same open
// file (passed to the child as descriptor 3 and executed as /proc/self/fd/3,
// fexecve-style), so renaming or replacing the path after the check cannot
// swap the program; in a sandbox the same open file is handed to the
// sandbox helper, which executes it the same way (sandbox.CommandFile).
// Two consequences for the command: descriptor 3 is open on
// its own executable (the kernel needs it to run #! scripts), and a script
// sees /proc/self/fd/3 as $0. The interpreter of a #! script is not hashed;
// only the script is. What remains open is an in-place rewrite of the same
// file (same inode) by someone with write access to it, between hashing and
// exec; only a sealed copy would close that, at the price of /proc/self/exe
// no longer naming the real program.
//
// # Process trees
//
// The command runs in its own process group, with a parent-death signal of
// SIGKILL, and the calling process makes itself a child subreaper
// (PR_SET_CHILD_SUBREAPER, a process-wide setting), so descendants orphaned by
// the command are reparented to it instead of init. (Orphans of any other
// subprocess of the calling process are then reparented to it as well; whoever
// starts those must reap them.) Teardown SIGKILLs the
// process group and every process attributed to the command — descendants of
// the child, members of its group, processes seen in its tree earlier (the
// tree is sampled while it runs), and orphans holding the write end of its
// output pipes — repeating until none is left, and reaps the orphans that
// were reparented here. Other children of the calling process, such as
// commands run concurrently by other Runs, are never touched. A Tracker
// does the same for a command that someone else starts and waits for (an
// MCP SDK's command transport: `etb mcp`'s upstream), after Subreaper.
//
// Without a PID namespace this attribution has gaps. A descendant that,
// within one sampling interval, leaves the process group (setsid), closes
// every inherited descriptor and loses its parent cannot be told apart from
// an unrelated child, and survives. A process the caller may not signal (a
// setuid program in the tree) survives too, and Run reports an error. The
// other way round, a child forked elsewhere in this process that is, at the
// instant of a teardown scan, still between fork and exec and holds a copy of
// the output pipes (close-on-exec) would be taken for a member: a window of
// microseconds, failing closed. The sandbox (a PID namespace whose init is
// killed, no_new_privs) closes these gaps.
//
// Output is delivered synchronously: a Stdout or Stderr writer that blocks
// blocks Run after the tree is dead.
//
// Run is implemented for Linux only; elsewhere it refuses.
package enforce

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/enforce/sandbox"
)

// ErrChanged means the command as it would run now differs from the spec
// that was authorized: the program was swapped or modified, or argv, cwd or
// the resolution of argv[0] differ. Nothing was started.
var ErrChanged = errors.New("enforce: command changed since it was authorized")

// ErrNotAuthorized means Authorize refused the recomputed action digest, or
// no Authorize was given. Nothing was started.
var ErrNotAuthorized = errors.New("enforce: command not authorized")

// Command is one authorized local command to run.
type Command struct {
	// Spec is what was authorized (from DescribeExec at decision time).
	Spec action.Spec
	// Env is the command's environment. Nil means an empty environment,
	// not the caller's: pass os.Environ() explicitly to inherit it.
	Env []string
	// Stdin is the command's standard input; nil means /dev/null.
	Stdin io.Reader
	// Stdout and Stderr receive the command's output byte for byte; nil
	// discards it (it is still hashed and counted). When both are the
	// same writer, writes to it are serialised.
	Stdout io.Writer
	Stderr io.Writer
	// Timeout bounds the run time from the start of the process, from the
	// grant's obligations; 0 means no timeout beyond ctx.
	Timeout time.Duration
	// Sandbox, when non-nil, runs the command confined by the kernel
	// (package sandbox): namespaces, rlimits, seccomp, Landlock, egress
	// proxy. The caller must have checked that the host can enforce it
	// (sandbox.Check). Inside a sandbox too, the program executed is the
	// open file Run hashed (sandbox.CommandFile), at descriptor 3 of the
	// command as without a sandbox; a Landlock exec list must allow the
	// program's resolved path.
	Sandbox *sandbox.Spec
}

// Result is how a command ended and digests of what it wrote.
type Result struct {
	PID int
	// ExitCode is the process's exit status, or -1 when it was killed by a
	// signal.
	ExitCode int
	// Signal names the signal that killed the process ("killed" for
	// SIGKILL), or is "" if it exited.
	Signal string
	// TimedOut reports that Run killed the tree because Timeout expired.
	TimedOut bool
	// Interrupted reports that Run killed the tree because ctx was done.
	Interrupted        bool
	StartedAt, EndedAt time.Time
	// StdoutSHA256 and StderrSHA256 are "sha256:<hex>" of everything the
	// command's tree wrote to the stream; the Bytes fields count it.
	StdoutSHA256 string
	StdoutBytes  int64
	StderrSHA256 string
	StderrBytes  int64
}

// Authorize is called by Run after it has re-described the command from the
// filesystem, with the recomputed action digest; it must verify the grant
// against that digest. If it returns an error, Run starts nothing and returns
// an error wrapping ErrNotAuthorized and that error.
type Authorize func(ctx context.Context, recomputedDigest string) error
