package enforce

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/enforce/sandbox"
	"golang.org/x/sys/unix"
)

const (
	// observeEvery is how often the running tree is sampled (see
	// tree.observe). One sample reads /proc/*/stat: about 30 µs of CPU a
	// process on the development machine (BenchmarkObserve).
	observeEvery = 200 * time.Millisecond
	// drainGrace bounds how long Run waits, once the tree is dead, for an
	// output pipe to make progress towards end of file. Only a process
	// outside the tree (handed the pipe over a socket) can keep it open.
	drainGrace = 2 * time.Second
)

// Run runs cmd after checking that it is still what was authorized and after
// authorize accepted its recomputed digest, and returns once the process and
// every process attributed to its tree are dead and all output was copied.
//
// Before starting anything Run re-describes cmd.Spec.Target.Argv in
// cmd.Spec.Target.Cwd from the filesystem, re-hashing the program through an
// open file; any difference from cmd.Spec is an error wrapping ErrChanged.
// A nil authorize, or one returning an error, is an error wrapping
// ErrNotAuthorized. In both cases, and on any other error before the start,
// nothing runs.
//
// onStart, if not nil, is called with the pid right after the process
// started; if it returns an error the tree is killed and Run returns the
// Result with an error wrapping it. The timeout counts while onStart runs.
//
// Expiry of cmd.Timeout or ctx kills the tree; that is reported in the
// Result (TimedOut, Interrupted), not as an error. An error returned together
// with a started Result means the command ran but its teardown or output
// delivery failed.
func Run(ctx context.Context, cmd Command, authorize Authorize, onStart func(pid int) error) (Result, error) {
	argv := cmd.Spec.Target.Argv
	if cmd.Spec.Kind != action.KindShellExec {
		return Result{}, fmt.Errorf("enforce: run: action kind %q is not %q", cmd.Spec.Kind, action.KindShellExec)
	}
	if len(argv) == 0 {
		return Result{}, errors.New("enforce: run: spec has an empty target argv")
	}
	if cmd.Timeout < 0 {
		return Result{}, fmt.Errorf("enforce: run %q: negative timeout %v", argv[0], cmd.Timeout)
	}
	if authorize == nil {
		return Result{}, fmt.Errorf("%w: run %q: no Authorize function", ErrNotAuthorized, argv[0])
	}
	if err := ctx.Err(); err != nil {
		return Result{}, fmt.Errorf("enforce: run %q: %w", argv[0], err)
	}
	want, err := cmd.Spec.Digest()
	if err != nil {
		return Result{}, fmt.Errorf("enforce: run %q: authorized spec: %w", argv[0], err)
	}
	spec, prog, err := describe(argv, cmd.Spec.Target.Cwd)
	if err != nil {
		return Result{}, fmt.Errorf("%w: %w", ErrChanged, err)
	}
	defer prog.Close()
	got, err := spec.Digest()
	if err != nil {
		return Result{}, fmt.Errorf("enforce: run %q: recomputed spec: %w", argv[0], err)
	}
	if got != want || spec.ArgsHash != cmd.Spec.ArgsHash {
		return Result{}, fmt.Errorf("%w: %s", ErrChanged, specDiff(cmd.Spec, spec))
	}
	if err := authorize(ctx, got); err != nil {
		return Result{}, fmt.Errorf("%w: %q (digest %s): %w", ErrNotAuthorized, argv[0], got, err)
	}
	if err := ctx.Err(); err != nil {
		return Result{}, fmt.Errorf("enforce: run %q: %w", argv[0], err)
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return Result{}, fmt.Errorf("enforce: run %q: becoming a child subreaper: %w", argv[0], err)
	}
	return start(ctx, cmd, spec, prog, onStart)
}

// start starts the verified command from the open executable prog and
// supervises it until its tree is dead and its output is drained.
func start(ctx context.Context, cmd Command, spec action.Spec, prog *os.File, onStart func(int) error) (Result, error) {
	argv := spec.Target.Argv
	p, err := newPipes(cmd.Stdin)
	if err != nil {
		return Result{}, fmt.Errorf("enforce: run %q: %w", argv[0], err)
	}
	defer p.closeAll()
	env := cmd.Env
	if env == nil {
		env = []string{}
	}
	c := &exec.Cmd{
		// The open, hashed executable is the child's fd 3 (ExtraFiles[0]).
		Path:        "/proc/self/fd/3",
		Args:        slices.Clone(argv),
		Env:         env,
		Dir:         spec.Target.Cwd,
		ExtraFiles:  []*os.File{prog},
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL},
	}
	if cmd.Sandbox != nil {
		// The sandbox helper becomes PID 1 of new namespaces and executes
		// the same open, hashed file (as the target's /proc/self/fd/3);
		// killing the helper kills the namespace.
		s := *cmd.Sandbox
		if s.Dir == "" {
			s.Dir = spec.Target.Cwd
		}
		sc, err := sandbox.CommandFile(ctx, s, prog, slices.Clone(argv), env)
		if err != nil {
			return Result{}, fmt.Errorf("enforce: run %q in its sandbox: %w", argv[0], err)
		}
		sc.SysProcAttr.Setpgid = true
		sc.SysProcAttr.Pdeathsig = syscall.SIGKILL
		c = sc
	}
	c.Stdin, c.Stdout, c.Stderr = p.childStdin, p.stdoutW, p.stderrW

	// Pdeathsig fires when the thread that forked the child exits, so the
	// goroutine that starts the child keeps its thread until the child is
	// reaped. The child is reaped only after teardown (see tree.teardown).
	started := make(chan error, 1)
	exited := make(chan error, 1)
	reap := make(chan struct{})
	reaped := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := c.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		exited <- waitExit(c.Process.Pid)
		<-reap
		reaped <- c.Wait()
	}()
	if err := <-started; err != nil {
		return Result{}, fmt.Errorf("enforce: starting %s (%s): %w", argv[0], spec.Target.Program, err)
	}
	res := Result{PID: c.Process.Pid, StartedAt: time.Now()}
	p.afterStart()
	t := newTree(res.PID, p.markers)
	// Should anything below panic, the tree still dies with it.
	finished := false
	defer func() {
		if !finished {
			t.teardown()
			close(reap)
		}
	}()

	var mu sync.Mutex
	var outN, errN atomic.Int64
	outc := make(chan copyResult, 1)
	errc := make(chan copyResult, 1)
	go func() { outc <- copyOut(p.stdoutR, cmd.Stdout, &mu, &outN) }()
	go func() { errc <- copyOut(p.stderrR, cmd.Stderr, &mu, &errN) }()
	if p.stdinW != nil {
		go func() {
			io.Copy(p.stdinW, cmd.Stdin)
			p.stdinW.Close()
		}()
	}

	var timeout <-chan time.Time
	if cmd.Timeout > 0 {
		timer := time.NewTimer(cmd.Timeout)
		defer timer.Stop()
		timeout = timer.C
	}
	var startErr error
	var onStartDone chan error
	if onStart != nil {
		onStartDone = make(chan error, 1)
		go func() { onStartDone <- onStart(res.PID) }()
	}
	tick := time.NewTicker(observeEvery)
	defer tick.Stop()
	done := ctx.Done()
	var errs []error
	killed, hasExited := false, false
	for !hasExited || onStartDone != nil {
		kill := false
		select {
		case err := <-exited:
			hasExited = true
			res.EndedAt = time.Now()
			if err != nil {
				errs = append(errs, err)
			}
		case err := <-onStartDone:
			onStartDone = nil
			if err != nil {
				startErr = fmt.Errorf("enforce: onStart(pid %d): %w", res.PID, err)
				kill = true
			}
		case <-timeout:
			timeout = nil
			if !hasExited {
				res.TimedOut = true
				kill = true
			}
		case <-done:
			done = nil
			if !hasExited {
				res.Interrupted = true
				kill = true
			}
		case <-tick.C:
			if !hasExited {
				t.observe() // best effort; teardown scans again
			}
		}
		if kill && !killed {
			killed = true
			if err := t.teardown(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// The child has exited but is not reaped yet: kill whatever it left
	// behind, then let os/exec collect its status.
	if err := t.teardown(); err != nil {
		errs = append(errs, err)
	}
	finished = true
	close(reap)
	if err := <-reaped; err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			errs = append(errs, fmt.Errorf("enforce: waiting for pid %d: %w", res.PID, err))
		}
	}
	res.ExitCode, res.Signal = exitStatus(c.ProcessState)

	// Every writer in the tree is dead, so the pipes reach end of file once
	// drained; a pipe that stops making progress is held by a process
	// outside the tree and is cut off.
	out := drain(p.stdoutR, outc, &outN)
	serr := drain(p.stderrR, errc, &errN)
	res.StdoutSHA256, res.StdoutBytes = out.sum, out.n
	res.StderrSHA256, res.StderrBytes = serr.sum, serr.n
	if out.err != nil {
		errs = append(errs, fmt.Errorf("enforce: stdout of pid %d: %w", res.PID, out.err))
	}
	if serr.err != nil {
		errs = append(errs, fmt.Errorf("enforce: stderr of pid %d: %w", res.PID, serr.err))
	}
	if startErr != nil {
		errs = append([]error{startErr}, errs...)
	}
	return res, errors.Join(errs...)
}

// waitExit blocks until process pid has exited, without reaping it.
func waitExit(pid int) error {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("enforce: waiting for pid %d to exit: %w", pid, err)
		}
		return nil
	}
}

// exitStatus returns the exit code and signal name of a finished process:
// (code, "") if it exited, (-1, name) if a signal killed it.
func exitStatus(ps *os.ProcessState) (int, string) {
	if ps == nil {
		return -1, ""
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return -1, ws.Signal().String()
	}
	return ps.ExitCode(), ""
}

// pipes are the command's standard streams. Output always goes through
// pipes this process reads, so it can be hashed and so the pipes mark the
// command's tree (see tree).
type pipes struct {
	stdoutR, stdoutW *os.File
	stderrR, stderrW *os.File
	childStdin       *os.File // given to the child; nil means /dev/null
	stdinW           *os.File // our end when Stdin is not an *os.File
	ownStdin         bool     // childStdin is ours to close
	markers          map[string]bool
}

func newPipes(stdin io.Reader) (*pipes, error) {
	p := &pipes{markers: map[string]bool{}}
	var err error
	if p.stdoutR, p.stdoutW, err = os.Pipe(); err != nil {
		return nil, fmt.Errorf("stdout pipe: %w", err)
	}
	if p.stderrR, p.stderrW, err = os.Pipe(); err != nil {
		p.closeAll()
		return nil, fmt.Errorf("stderr pipe: %w", err)
	}
	switch in := stdin.(type) {
	case nil:
	case *os.File:
		p.childStdin = in
	default:
		if p.childStdin, p.stdinW, err = os.Pipe(); err != nil {
			p.closeAll()
			return nil, fmt.Errorf("stdin pipe: %w", err)
		}
		p.ownStdin = true
	}
	for _, f := range []*os.File{p.stdoutR, p.stderrR} {
		// Not f.Fd(): that would make the read end blocking and
		// disable its deadline.
		fi, err := f.Stat()
		if err != nil {
			p.closeAll()
			return nil, fmt.Errorf("stat of output pipe: %w", err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			p.closeAll()
			return nil, fmt.Errorf("stat of output pipe: no inode in %T", fi.Sys())
		}
		p.markers[fmt.Sprintf("pipe:[%d]", st.Ino)] = true
	}
	return p, nil
}

// afterStart closes the child's ends of the pipes in this process.
func (p *pipes) afterStart() {
	p.stdoutW.Close()
	p.stderrW.Close()
	if p.ownStdin {
		p.childStdin.Close()
	}
}

func (p *pipes) closeAll() {
	for _, f := range []*os.File{p.stdoutR, p.stdoutW, p.stderrR, p.stderrW, p.stdinW} {
		if f != nil {
			f.Close()
		}
	}
	if p.ownStdin && p.childStdin != nil {
		p.childStdin.Close()
	}
}

type copyResult struct {
	sum string
	n   int64
	err error
}

// drain waits for the copier of r to finish, cutting r off once it has made
// no progress for drainGrace.
func drain(r *os.File, done <-chan copyResult, progress *atomic.Int64) copyResult {
	tick := time.NewTicker(drainGrace)
	defer tick.Stop()
	last := progress.Load()
	for {
		select {
		case res := <-done:
			return res
		case <-tick.C:
			n := progress.Load()
			if n == last {
				r.SetReadDeadline(time.Now())
			}
			last = n
		}
	}
}

// copyOut copies r to dst (under mu) until end of file, hashing and counting
// every byte read, and adding each chunk done to progress. A failing dst
// does not stop the reading: the command is not blocked on a full pipe, the
// digest still covers all it wrote, and the first write error is returned.
func copyOut(r *os.File, dst io.Writer, mu *sync.Mutex, progress *atomic.Int64) copyResult {
	h := sha256.New()
	var res copyResult
	buf := make([]byte, 64<<10)
	for {
		k, err := r.Read(buf)
		if k > 0 {
			h.Write(buf[:k])
			res.n += int64(k)
			if dst != nil && res.err == nil {
				mu.Lock()
				w, werr := dst.Write(buf[:k])
				mu.Unlock()
				if werr == nil && w < k {
					werr = io.ErrShortWrite
				}
				if werr != nil {
					res.err = fmt.Errorf("writing output: %w", werr)
				}
			}
			progress.Add(int64(k))
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				err = errors.New("pipe still held open by a process outside the command's tree")
			}
			res.err = errors.Join(res.err, fmt.Errorf("reading output: %w", err))
			break
		}
	}
	res.sum = "sha256:" + hex.EncodeToString(h.Sum(nil))
	return res
}

// specDiff names the first field in which got differs from the authorized
// spec want.
func specDiff(want, got action.Spec) string {
	w, g := want.Target, got.Target
	switch {
	case w.Program != g.Program:
		return fmt.Sprintf("program resolves to %s, authorized %s", g.Program, w.Program)
	case w.ProgramSHA256 != g.ProgramSHA256:
		return fmt.Sprintf("program %s has digest %s, authorized %s", g.Program, g.ProgramSHA256, w.ProgramSHA256)
	case w.Cwd != g.Cwd:
		return fmt.Sprintf("cwd is %s, authorized %s", g.Cwd, w.Cwd)
	case want.Name != got.Name:
		return fmt.Sprintf("name is %q, authorized %q", got.Name, want.Name)
	case !slices.Equal(want.Args, got.Args):
		return fmt.Sprintf("args are %q, authorized %q", got.Args, want.Args)
	case want.ArgsHash != got.ArgsHash:
		return fmt.Sprintf("args hash is %s, authorized %s", got.ArgsHash, want.ArgsHash)
	}
	return "target differs from the authorized spec (paths, host or port)"
}
