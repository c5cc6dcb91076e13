package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	llsys "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"golang.org/x/sys/unix"
)

// init locks the main goroutine to the main thread in a helper process, so
// that MaybeRunHelper runs there (LockOSThread in an init function makes main
// run on that thread). The helper's tracing thread must be the thread group
// leader: orphans are reparented to it, and one that calls PTRACE_TRACEME
// makes that thread its tracer, which alone can detach it.
func init() {
	if _, ok := os.LookupEnv(envStage); ok {
		runtime.LockOSThread()
	}
}

// MaybeRunHelper must be called first thing in main() (and in TestMain): if
// this process was started by Command or Probe as a sandbox stage, it runs
// that stage and never returns. Otherwise it returns at once.
func MaybeRunHelper() {
	stage, ok := os.LookupEnv(envStage)
	if !ok {
		return
	}
	switch {
	case stage == stageInit:
		os.Exit(runInit())
	case strings.HasPrefix(stage, stageProbe+":"):
		os.Exit(runProbe(strings.TrimPrefix(stage, stageProbe+":")))
	}
	fmt.Fprintf(os.Stderr, "etb-sandbox: unknown stage %q\n", stage)
	os.Exit(exitSetup)
}

// setupFailed reports a setup error of stage and returns exitSetup.
func setupFailed(stage string, err error) int {
	fmt.Fprintf(os.Stderr, "etb-sandbox: %s: %v\n", stage, err)
	return exitSetup
}

// loadConfig decodes the helper configuration from the environment.
func loadConfig() (helperConfig, error) {
	var cfg helperConfig
	data, ok := os.LookupEnv(envConfig)
	if !ok {
		return cfg, errors.New("no configuration in environment")
	}
	if err := json.Unmarshal([]byte(data), &cfg); err != nil {
		return cfg, fmt.Errorf("decoding configuration: %w", err)
	}
	if cfg.Path == "" || len(cfg.Argv) == 0 {
		return cfg, errors.New("configuration has no target")
	}
	return cfg, nil
}

// runInit is PID 1 of the sandbox. It prepares the namespaces; restricts
// its own, locked, OS thread with seccomp, Landlock and the loss of every
// capability; forks and executes the target from that thread under ptrace,
// so that the target stops at its first instruction; sets the target's
// resource limits while it is stopped; and lets it run. It then forwards
// termination signals to the target, reaps every process of the namespace
// and returns the target's exit status (128+n for death by signal n).
//
// Only the locked thread (and threads it creates) is restricted: seccomp
// filters, Landlock domains and capabilities belong to threads and are
// inherited by the child forked from them, whereas resource limits belong to
// the process, so they are set on the stopped target instead. This keeps the
// helper at one start of the binary.
func runInit() int {
	runtime.LockOSThread() // never unlocked: this thread forks and traces the target
	cfg, err := loadConfig()
	if err != nil {
		return setupFailed("init", err)
	}
	if tid := unix.Gettid(); tid != unix.Getpid() {
		return setupFailed("init", fmt.Errorf("running on thread %d, not the main thread: call MaybeRunHelper from main or TestMain", tid))
	}
	// Greet the proxy first, so that it learns of the helper's exit (EOF
	// on the control socket) even if a later setup step fails.
	var ctl *net.UnixConn
	if cfg.Proxy {
		if ctl, err = openControl(); err != nil {
			return setupFailed("init", err)
		}
	}
	if os.Getpid() != 1 {
		return setupFailed("init", fmt.Errorf("not PID 1 of a new PID namespace (pid %d)", os.Getpid()))
	}
	// Not dumpable: processes of the same uid cannot open /proc/1/mem.
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return setupFailed("init", fmt.Errorf("prctl(PR_SET_DUMPABLE): %w", err))
	}
	if err := privateProc(); err != nil {
		return setupFailed("init", err)
	}
	if cfg.Network {
		if err := loopbackUp(); err != nil {
			return setupFailed("init", err)
		}
	}
	if cfg.Proxy {
		if err := startBridge(ctl); err != nil {
			return setupFailed("init", err)
		}
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2)

	tasks, err := countTasks() // before /proc is out of reach
	if err != nil {
		return setupFailed("init", err)
	}
	if err := restrictThread(cfg); err != nil {
		return setupFailed("init", err)
	}
	cmd := &exec.Cmd{
		Path:        cfg.Path,
		Args:        cfg.Argv,
		Env:         cfg.Env,
		Stdin:       os.Stdin,
		Stdout:      os.Stdout,
		Stderr:      os.Stderr,
		SysProcAttr: &syscall.SysProcAttr{Ptrace: true},
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "etb-sandbox: exec %s: %v\n", cfg.Path, err)
		if errors.Is(err, unix.ENOENT) {
			return 127
		}
		return 126
	}
	pid := cmd.Process.Pid
	if code, err := releaseTarget(pid, cfg, tasks); err != nil {
		unix.Kill(pid, unix.SIGKILL)
		return setupFailed("init", err)
	} else if code >= 0 {
		return code // the target ended before it ran
	}
	go func() {
		for s := range sigs {
			_ = unix.Kill(pid, s.(syscall.Signal))
		}
	}()
	for {
		var ws unix.WaitStatus
		wpid, err := unix.Wait4(-1, &ws, unix.WALL, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return setupFailed("init", fmt.Errorf("wait4: %w", err))
		}
		switch {
		case ws.Stopped():
			// An orphan that made this process its tracer
			// (PTRACE_TRACEME): let it go, delivering the signal
			// that stopped it unless that is the exec trap.
			sig := ws.StopSignal()
			if sig == unix.SIGTRAP {
				sig = 0
			}
			if ptraceDetach(wpid, sig) != nil {
				unix.Kill(wpid, unix.SIGKILL) // never leave it stopped for good
			}
		case wpid == pid:
			return exitStatus(ws)
		}
	}
}

// releaseTarget waits for the target to stop after its execve, sets its
// resource limits and detaches from it. It returns the target's exit status
// if it ended instead of stopping, or -1 once it runs.
func releaseTarget(pid int, cfg helperConfig, helperTasks uint64) (int, error) {
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(pid, &ws, unix.WALL, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("waiting for the target to stop at exec: %w", err)
		}
		break
	}
	if !ws.Stopped() {
		return exitStatus(ws), nil
	}
	if ws.StopSignal() != unix.SIGTRAP {
		return 0, fmt.Errorf("target stopped by %v, want SIGTRAP at exec", ws.StopSignal())
	}
	if err := setRlimits(pid, cfg, helperTasks); err != nil {
		return 0, err
	}
	if err := ptraceDetach(pid, 0); err != nil {
		return 0, fmt.Errorf("releasing the target: %w", err)
	}
	return -1, nil
}

// exitStatus maps a wait status to a shell-style exit status.
func exitStatus(ws unix.WaitStatus) int {
	switch {
	case ws.Exited():
		return ws.ExitStatus()
	case ws.Signaled():
		return 128 + int(ws.Signal())
	}
	return exitSetup
}

// privateProc makes every mount private to the new mount namespace and
// mounts a /proc that shows only the sandbox's PID namespace.
func privateProc() error {
	if err := unix.Mount("none", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private: %w", err)
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mounting /proc for the PID namespace: %w", err)
	}
	return nil
}

// loopbackUp brings up lo, the only interface of a new network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket for loopback setup: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("ifreq lo: %w", err)
	}
	ifr.SetUint16(unix.IFF_UP | unix.IFF_LOOPBACK | unix.IFF_RUNNING)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bringing up lo: %w", err)
	}
	return nil
}

// countTasks returns the number of threads of this process.
func countTasks() (uint64, error) {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return 0, fmt.Errorf("counting helper threads: %w", err)
	}
	return uint64(len(ents)), nil
}

// openControl opens the control socket inherited as fd 3, keeps it from
// the target, and greets the proxy.
func openControl() (*net.UnixConn, error) {
	const ctlFD = 3
	unix.CloseOnExec(ctlFD)
	f := os.NewFile(ctlFD, "etb-sandbox-control")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	ctl, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("control socket is a %T, want a unix socket", c)
	}
	if _, err := ctl.Write([]byte{msgHello}); err != nil {
		return nil, fmt.Errorf("greeting the egress proxy: %w", err)
	}
	return ctl, nil
}

// startBridge listens on 127.0.0.1:ProxyPort and passes every accepted
// connection to the egress proxy outside, over ctl, as one end of a fresh
// socket pair.
func startBridge(ctl *net.UnixConn) error {
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:"+strconv.Itoa(ProxyPort))
	if err != nil {
		return fmt.Errorf("bridge listener: %w", err)
	}
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			go bridgeConn(ctl, in)
		}
	}()
	return nil
}

// Messages on the control socket.
const (
	msgHello = 'h' // helper is running: the proxy closes its copy of the helper's end
	msgConn  = 'c' // carries one connection's descriptor
)

// bridgeConn hands in to the proxy and copies bytes both ways until both
// directions are closed.
func bridgeConn(ctl *net.UnixConn, in net.Conn) {
	defer in.Close()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return
	}
	_, _, err = ctl.WriteMsgUnix([]byte{msgConn}, unix.UnixRights(fds[1]), nil)
	unix.Close(fds[1])
	if err != nil {
		unix.Close(fds[0])
		return
	}
	f := os.NewFile(uintptr(fds[0]), "etb-sandbox-bridge")
	out, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return
	}
	defer out.Close()
	pipe(in, out)
}

// pipe copies a to b and b to a, half-closing each side as its source ends.
func pipe(a, b net.Conn) {
	done := make(chan struct{})
	go func() {
		io.Copy(b, a)
		closeWrite(b)
		close(done)
	}()
	io.Copy(a, b)
	closeWrite(a)
	<-done
}

// closeWrite half-closes c if it supports it, else closes it.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		return
	}
	c.Close()
}

// ptraceDetach detaches from tracee pid, delivering sig (0: none).
func ptraceDetach(pid int, sig unix.Signal) error {
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_DETACH, uintptr(pid), 0, uintptr(sig), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// setRlimits sets the hard and soft limits of process pid. The task limit
// counts the helper's threads too (same uid in the same user namespace), so
// it is raised by their number to leave MaxProcesses to the target.
func setRlimits(pid int, cfg helperConfig, helperTasks uint64) error {
	set := func(name string, res int, v, slack uint64) error {
		if v == 0 {
			return nil
		}
		lim := unix.Rlimit{Cur: v, Max: v + slack}
		if err := unix.Prlimit(pid, res, &lim, nil); err != nil {
			return fmt.Errorf("prlimit(%s, %d): %w", name, v, err)
		}
		return nil
	}
	if err := set("RLIMIT_CPU", unix.RLIMIT_CPU, cfg.CPUSeconds, 1); err != nil {
		return err
	}
	if err := set("RLIMIT_FSIZE", unix.RLIMIT_FSIZE, cfg.MaxFileBytes, 0); err != nil {
		return err
	}
	if err := set("RLIMIT_AS", unix.RLIMIT_AS, cfg.MemoryBytes, 0); err != nil {
		return err
	}
	if cfg.MaxProcesses > 0 {
		return set("RLIMIT_NPROC", unix.RLIMIT_NPROC, cfg.MaxProcesses+helperTasks, 0)
	}
	return nil
}

// restrictThread applies, to the calling OS thread only, no_new_privs, the
// seccomp filter, the Landlock ruleset of cfg and the loss of every
// capability for the next execve. Everything that needs files is done
// before the filesystem is restricted.
func restrictThread(cfg helperConfig) error {
	fsOn := cfg.Read != nil || cfg.Write != nil || cfg.Exec != nil
	landlockCoversUnix := fsOn && landlockABI() >= landlockUnixABI
	denyUnix := (fsOn || cfg.Network) && !landlockCoversUnix
	filter, err := seccompFilter(denyUnix)
	if err != nil {
		return err
	}
	rulesetFD, err := landlockRuleset(cfg)
	if err != nil {
		return err
	}
	if rulesetFD >= 0 {
		defer unix.Close(rulesetFD)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_NO_NEW_PRIVS): %w", err)
	}
	if err := dropCapabilities(); err != nil {
		return err
	}
	if err := loadSeccomp(filter); err != nil {
		return err
	}
	if rulesetFD >= 0 {
		if err := llsys.LandlockRestrictSelf(rulesetFD, 0); err != nil {
			return fmt.Errorf("landlock_restrict_self: %w", err)
		}
	}
	return nil
}

// dropCapabilities leaves the calling thread without capabilities, now and
// after execve: ambient set cleared, and for uid 0 the "root gets all
// capabilities" rule switched off and locked, then every set emptied.
func dropCapabilities() error {
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clearing ambient capabilities: %w", err)
	}
	if os.Getuid() == 0 || os.Geteuid() == 0 {
		const secbitNoRoot, secbitNoRootLocked = 1 << 0, 1 << 1 // linux/securebits.h
		bits := secbitNoRoot | secbitNoRootLocked
		if err := unix.Prctl(unix.PR_SET_SECUREBITS, uintptr(bits), 0, 0, 0); err != nil {
			return fmt.Errorf("setting SECBIT_NOROOT: %w", err)
		}
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData // all zero: no effective, permitted or inheritable capability
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("clearing capabilities: %w", err)
	}
	return nil
}

// runProbe checks that the namespaces in flags can be created and set up:
// it is started in them by Probe and exits 0 if it can prepare them.
func runProbe(flags string) int {
	n, err := strconv.ParseUint(flags, 10, 64)
	if err != nil {
		return setupFailed("probe", err)
	}
	if n&unix.CLONE_NEWNS != 0 {
		if err := privateProc(); err != nil {
			return setupFailed("probe", err)
		}
	}
	if n&unix.CLONE_NEWNET != 0 {
		if err := loopbackUp(); err != nil {
			return setupFailed("probe", err)
		}
	}
	return 0
}
