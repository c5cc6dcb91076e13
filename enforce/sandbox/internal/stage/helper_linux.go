package stage

import (
	"errors"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"
	"unsafe"
)

// init runs the helper when this process was started as one (EnvStage is
// StageInit) and never returns then; otherwise it does nothing. It runs on
// the main thread (the runtime runs package initialisation there), which
// it locks for good: this thread forks and traces the target, and orphans
// that make PID 1 their tracer are traced by the thread group leader.
func init() {
	if v, _ := syscall.Getenv(EnvStage); v != StageInit {
		return
	}
	runtime.LockOSThread()
	os.Exit(Run())
}

// Run is the helper: it prepares the namespaces; restricts its own, locked,
// OS thread with seccomp, Landlock and the loss of every capability; forks
// and executes the target from that thread under ptrace, so that the
// target stops before its first instruction; sets the target's resource
// limits while it is stopped; and lets it run. It then forwards termination
// signals to the target, reaps every process of the namespace and returns
// the target's exit status (128+n for death by signal n), 126 or 127 if the
// target could not be executed, ExitSetup if a setup step failed.
//
// Only the locked thread (and the target forked from it) is restricted:
// seccomp filters, Landlock domains and capabilities belong to threads and
// are inherited by a child forked from them, whereas resource limits belong
// to the process, so they are set on the stopped target instead.
func Run() int {
	// Termination signals are forwarded to the target. Subscribing
	// starts a thread, and counting this process's threads (for
	// RLIMIT_NPROC) reads /proc, which the restricted main thread may not:
	// another thread does both while this one sets up, and they are
	// awaited while the target is stopped at its exec, before it runs.
	sigs := make(chan os.Signal, 8)
	type readiness struct {
		tasks uint64
		err   error
	}
	ready := make(chan readiness, 1)
	go func() {
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)
		n, err := countTasks()
		ready <- readiness{n, err}
	}()
	cfg, err := Decode(os.Getenv(EnvConfig))
	if err != nil {
		return failed(err)
	}
	if tid, pid := syscall.Gettid(), syscall.Getpid(); tid != pid {
		return failed(errors.New("running on thread " + strconv.Itoa(tid) + ", not the main thread " + strconv.Itoa(pid)))
	}
	// Greet the proxy first, so that it learns of the helper's exit (EOF
	// on the control socket) even if a later step fails.
	if cfg.ControlFD >= 0 {
		if _, err := syscall.Write(cfg.ControlFD, []byte{MsgHello}); err != nil {
			return failed(errors.New("greeting the egress proxy: " + err.Error()))
		}
	}
	// Every inherited descriptor but the standard streams (the caller's
	// ExtraFiles, the executable, the control socket) stays with the
	// helper; the executable is passed to the target explicitly, as 3.
	if err := cloexecFrom(3); err != nil {
		return failed(err)
	}
	if pid := syscall.Getpid(); pid != 1 {
		return failed(errors.New("not PID 1 of a new PID namespace (pid " + strconv.Itoa(pid) + ")"))
	}
	// Not dumpable: processes of the same uid cannot open /proc/1/mem.
	if err := prctl(prSetDumpable, 0); err != nil {
		return failed(errors.New("prctl(PR_SET_DUMPABLE): " + err.Error()))
	}
	if err := PrivateProc(); err != nil {
		return failed(err)
	}
	if cfg.Network {
		if err := LoopbackUp(); err != nil {
			return failed(err)
		}
	}
	if cfg.ControlFD >= 0 {
		if err := startBridge(cfg.ControlFD, cfg.ProxyPort); err != nil {
			return failed(err)
		}
	}
	if err := restrictThread(&cfg); err != nil {
		return failed(err)
	}
	path, files := cfg.Path, []uintptr{0, 1, 2}
	if cfg.ExeFD >= 0 {
		path, files = "/proc/self/fd/3", append(files, uintptr(cfg.ExeFD))
	}
	pid, err := syscall.ForkExec(path, cfg.Argv, &syscall.ProcAttr{
		Env:   cfg.Env,
		Files: files,
		Sys:   &syscall.SysProcAttr{Ptrace: true},
	})
	if err != nil {
		os.Stderr.WriteString("etb-sandbox: exec " + cfg.Argv[0] + " (" + path + "): " + err.Error() + "\n")
		if errors.Is(err, syscall.ENOENT) {
			return 127
		}
		return 126
	}
	r := <-ready // from now on a signal goes to the target
	if r.err != nil {
		syscall.Kill(pid, syscall.SIGKILL)
		return failed(r.err)
	}
	if code, err := releaseTarget(pid, &cfg, r.tasks); err != nil {
		syscall.Kill(pid, syscall.SIGKILL)
		return failed(err)
	} else if code >= 0 {
		return code // the target ended before it ran
	}
	go func() {
		for s := range sigs {
			syscall.Kill(pid, s.(syscall.Signal))
		}
	}()
	return reap(pid)
}

// reap waits for every process of the namespace until the target has
// exited, and returns its status. Orphans that made this process their
// tracer (PTRACE_TRACEME) are released at once.
func reap(target int) int {
	for {
		var ws syscall.WaitStatus
		wpid, err := syscall.Wait4(-1, &ws, syscall.WALL, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return failed(errors.New("wait4: " + err.Error()))
		}
		switch {
		case ws.Stopped():
			// Deliver the signal that stopped it unless that is
			// the exec trap.
			sig := ws.StopSignal()
			if sig == syscall.SIGTRAP {
				sig = 0
			}
			if ptraceDetach(wpid, sig) != nil {
				syscall.Kill(wpid, syscall.SIGKILL) // never leave it stopped for good
			}
		case wpid == target:
			return exitStatus(ws)
		}
	}
}

// cloexecFrom sets close-on-exec on every descriptor from first on.
func cloexecFrom(first int) error {
	const closeRangeCloexec = 1 << 2 // CLOSE_RANGE_CLOEXEC
	_, _, e := syscall.RawSyscall(sysCloseRange, uintptr(first), ^uintptr(0), closeRangeCloexec)
	if e == 0 {
		return nil
	}
	if e != syscall.ENOSYS && e != syscall.EINVAL {
		return errors.New("close_range: " + e.Error())
	}
	// Before Linux 5.11: one by one.
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return errors.New("listing descriptors: " + err.Error())
	}
	for _, ent := range ents {
		fd, err := strconv.Atoi(ent.Name())
		if err != nil || fd < first {
			continue
		}
		if _, _, e := syscall.RawSyscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_SETFD, syscall.FD_CLOEXEC); e != 0 && e != syscall.EBADF {
			return errors.New("fcntl(" + ent.Name() + ", FD_CLOEXEC): " + e.Error())
		}
	}
	return nil
}

// failed reports a setup error and returns ExitSetup.
func failed(err error) int {
	os.Stderr.WriteString("etb-sandbox: init: " + err.Error() + "\n")
	return ExitSetup
}

// releaseTarget waits for the target to stop after its execve, sets its
// resource limits and detaches from it. It returns the target's exit status
// if it ended instead of stopping, or -1 once it runs.
func releaseTarget(pid int, cfg *Config, helperTasks uint64) (int, error) {
	var ws syscall.WaitStatus
	for {
		_, err := syscall.Wait4(pid, &ws, syscall.WALL, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return 0, errors.New("waiting for the target to stop at exec: " + err.Error())
		}
		break
	}
	if !ws.Stopped() {
		return exitStatus(ws), nil
	}
	if ws.StopSignal() != syscall.SIGTRAP {
		return 0, errors.New("target stopped by " + ws.StopSignal().String() + ", want SIGTRAP at exec")
	}
	if err := setRlimits(pid, cfg, helperTasks); err != nil {
		return 0, err
	}
	if err := ptraceDetach(pid, 0); err != nil {
		return 0, errors.New("releasing the target: " + err.Error())
	}
	return -1, nil
}

// exitStatus maps a wait status to a shell-style exit status.
func exitStatus(ws syscall.WaitStatus) int {
	switch {
	case ws.Exited():
		return ws.ExitStatus()
	case ws.Signaled():
		return 128 + int(ws.Signal())
	}
	return ExitSetup
}

// PrivateProc makes every mount private to the new mount namespace and
// mounts a /proc that shows only the sandbox's PID namespace.
func PrivateProc() error {
	if err := syscall.Mount("none", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return errors.New("making mounts private: " + err.Error())
	}
	if err := syscall.Mount("proc", "/proc", "proc", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, ""); err != nil {
		return errors.New("mounting /proc for the PID namespace: " + err.Error())
	}
	return nil
}

// LoopbackUp brings up lo, the only interface of a new network namespace.
func LoopbackUp() error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return errors.New("socket for loopback setup: " + err.Error())
	}
	defer syscall.Close(fd)
	var ifr [40]byte // struct ifreq: name[16], then flags (short) in the union
	copy(ifr[:], "lo")
	flags := uint16(syscall.IFF_UP | syscall.IFF_LOOPBACK | syscall.IFF_RUNNING)
	*(*uint16)(unsafe.Pointer(&ifr[16])) = flags
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.SIOCSIFFLAGS, uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
		return errors.New("bringing up lo: " + e.Error())
	}
	return nil
}

// countTasks returns the number of threads of this process.
func countTasks() (uint64, error) {
	data, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0, errors.New("counting helper threads: " + err.Error())
	}
	// Field 20 (num_threads), counted after the ")" that ends comm.
	i := len(data) - 1
	for i >= 0 && data[i] != ')' {
		i--
	}
	field, start := 2, -1
	for j := i + 1; j <= len(data); j++ {
		if j == len(data) || data[j] == ' ' {
			if start >= 0 {
				if field == 20 {
					n, err := strconv.ParseUint(string(data[start:j]), 10, 64)
					if err != nil || n == 0 {
						break
					}
					return n, nil
				}
				start = -1
			}
			continue
		}
		if start < 0 {
			start = j
			field++
		}
	}
	return 0, errors.New("counting helper threads: no thread count in /proc/self/stat")
}

// Messages on the control socket to the egress proxy.
const (
	MsgHello    = 'h' // helper is running: the proxy closes its copy of the helper's end
	MsgListener = 'l' // carries the bridge's listening socket
)

// startBridge listens on 127.0.0.1:port inside the sandbox (plain TCP,
// never MPTCP) and hands the listening socket to the egress proxy over ctl:
// the proxy accepts and serves the target's connections itself, so the
// helper neither accepts nor copies anything.
func startBridge(ctl, port int) error {
	ln, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, syscall.IPPROTO_TCP)
	if err != nil {
		return errors.New("bridge socket: " + err.Error())
	}
	defer syscall.Close(ln)
	addr := &syscall.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}
	if err := syscall.Bind(ln, addr); err != nil {
		return errors.New("bridge bind 127.0.0.1:" + strconv.Itoa(port) + ": " + err.Error())
	}
	if err := syscall.Listen(ln, 128); err != nil {
		return errors.New("bridge listen: " + err.Error())
	}
	if err := syscall.Sendmsg(ctl, []byte{MsgListener}, syscall.UnixRights(ln), nil, 0); err != nil {
		return errors.New("handing the bridge to the egress proxy: " + err.Error())
	}
	return nil
}

// Constants not in package syscall.
const (
	prSetDumpable      = 4  // PR_SET_DUMPABLE
	prSetNoNewPrivs    = 38 // PR_SET_NO_NEW_PRIVS
	prSetSecurebits    = 28 // PR_SET_SECUREBITS
	prCapAmbient       = 47 // PR_CAP_AMBIENT
	prCapAmbientClear  = 4  // PR_CAP_AMBIENT_CLEAR_ALL
	seccompSetModeFilt = 1  // SECCOMP_SET_MODE_FILTER
	capVersion3        = 0x20080522
	oPath              = 0x200000 // O_PATH

	sysCloseRange            = 436
	sysLandlockCreateRuleset = 444
	sysLandlockAddRule       = 445
	sysLandlockRestrictSelf  = 446
	landlockRulePathBeneath  = 1
	landlockRuleNetPort      = 2

	rlimitCPU   = 0
	rlimitFSIZE = 1
	rlimitNPROC = 6
	rlimitAS    = 9
)

func prctl(option, arg uintptr) error {
	if _, _, e := syscall.RawSyscall6(syscall.SYS_PRCTL, option, arg, 0, 0, 0, 0); e != 0 {
		return e
	}
	return nil
}

// ptraceDetach detaches from tracee pid, delivering sig (0: none).
func ptraceDetach(pid int, sig syscall.Signal) error {
	if _, _, e := syscall.RawSyscall6(syscall.SYS_PTRACE, syscall.PTRACE_DETACH, uintptr(pid), 0, uintptr(sig), 0, 0); e != 0 {
		return e
	}
	return nil
}

// setRlimits sets the hard and soft limits of process pid. The task limit
// counts the helper's threads too (same uid in the same user namespace), so
// it is raised by their number to leave MaxProcesses to the target.
func setRlimits(pid int, cfg *Config, helperTasks uint64) error {
	nproc := cfg.MaxProcesses
	if nproc > 0 {
		nproc += helperTasks
	}
	for _, l := range []struct {
		name     string
		res      uintptr
		v, slack uint64
	}{
		{"RLIMIT_CPU", rlimitCPU, cfg.CPUSeconds, 1},
		{"RLIMIT_FSIZE", rlimitFSIZE, cfg.MaxFileBytes, 0},
		{"RLIMIT_AS", rlimitAS, cfg.MemoryBytes, 0},
		{"RLIMIT_NPROC", rlimitNPROC, nproc, 0},
	} {
		if l.v == 0 {
			continue
		}
		lim := syscall.Rlimit{Cur: l.v, Max: l.v + l.slack}
		_, _, e := syscall.RawSyscall6(syscall.SYS_PRLIMIT64, uintptr(pid), l.res, uintptr(unsafe.Pointer(&lim)), 0, 0, 0)
		if e != 0 {
			return errors.New("prlimit(" + l.name + ", " + strconv.FormatUint(l.v, 10) + "): " + e.Error())
		}
	}
	return nil
}

// restrictThread applies, to the calling OS thread only, no_new_privs, the
// loss of every capability for the next execve, the seccomp filter and the
// Landlock ruleset of cfg. The ruleset is built first, while files can
// still be opened.
func restrictThread(cfg *Config) error {
	rulesetFD := -1
	if cfg.Landlock {
		fd, err := landlockRuleset(cfg)
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		rulesetFD = fd
	}
	if err := prctl(prSetNoNewPrivs, 1); err != nil {
		return errors.New("prctl(PR_SET_NO_NEW_PRIVS): " + err.Error())
	}
	if err := dropCapabilities(); err != nil {
		return err
	}
	if err := loadSeccomp(cfg.Seccomp); err != nil {
		return err
	}
	if rulesetFD >= 0 {
		if _, _, e := syscall.RawSyscall(sysLandlockRestrictSelf, uintptr(rulesetFD), 0, 0); e != 0 {
			return errors.New("landlock_restrict_self: " + e.Error())
		}
	}
	return nil
}

// dropCapabilities leaves the calling thread without capabilities, now and
// after execve: ambient set cleared, and for uid 0 the "root gets all
// capabilities" rule switched off and locked, then every set emptied.
func dropCapabilities() error {
	if _, _, e := syscall.RawSyscall6(syscall.SYS_PRCTL, prCapAmbient, prCapAmbientClear, 0, 0, 0, 0); e != 0 {
		return errors.New("clearing ambient capabilities: " + e.Error())
	}
	if syscall.Getuid() == 0 || syscall.Geteuid() == 0 {
		const secbitNoRoot, secbitNoRootLocked = 1 << 0, 1 << 1 // linux/securebits.h
		if err := prctl(prSetSecurebits, secbitNoRoot|secbitNoRootLocked); err != nil {
			return errors.New("setting SECBIT_NOROOT: " + err.Error())
		}
	}
	hdr := struct {
		version uint32
		pid     int32
	}{version: capVersion3}
	var data [2]struct{ effective, permitted, inheritable uint32 } // all zero
	if _, _, e := syscall.RawSyscall(syscall.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); e != 0 {
		return errors.New("clearing capabilities: " + e.Error())
	}
	return nil
}

// loadSeccomp installs filter (struct sock_filter array) on the calling
// thread only (no TSYNC); the thread must have no_new_privs set.
func loadSeccomp(filter []byte) error {
	if sysSeccomp < 0 {
		return errors.New("seccomp: system call number unknown on " + runtime.GOARCH)
	}
	prog := struct {
		len    uint16
		filter *byte
	}{uint16(len(filter) / 8), &filter[0]}
	_, _, e := syscall.RawSyscall(uintptr(sysSeccomp), seccompSetModeFilt, 0, uintptr(unsafe.Pointer(&prog)))
	runtime.KeepAlive(filter)
	if e != 0 {
		return errors.New("seccomp: installing filter: " + e.Error())
	}
	return nil
}

// landlockRuleset creates the ruleset of cfg and returns its descriptor.
// Allow-listed paths are opened now: one that is gone is an error.
func landlockRuleset(cfg *Config) (int, error) {
	attr := [3]uint64{cfg.HandledFS, cfg.HandledNet, cfg.ScopedMask}
	r, _, e := syscall.RawSyscall(sysLandlockCreateRuleset, uintptr(unsafe.Pointer(&attr[0])), unsafe.Sizeof(attr), 0)
	if e != 0 {
		return -1, errors.New("landlock_create_ruleset: " + e.Error())
	}
	fd := int(r)
	syscall.CloseOnExec(fd)
	for _, pr := range cfg.PathRules {
		if err := addPathRule(fd, pr); err != nil {
			syscall.Close(fd)
			return -1, err
		}
	}
	for _, nr := range cfg.PortRules {
		attr := [2]uint64{nr.Access, nr.Port} // struct landlock_net_port_attr
		if _, _, e := syscall.RawSyscall6(sysLandlockAddRule, uintptr(fd), landlockRuleNetPort, uintptr(unsafe.Pointer(&attr[0])), 0, 0, 0); e != 0 {
			syscall.Close(fd)
			return -1, errors.New("landlock: rule for TCP port " + strconv.FormatUint(nr.Port, 10) + ": " + e.Error())
		}
	}
	return fd, nil
}

// addPathRule adds one path_beneath rule to ruleset fd.
func addPathRule(fd int, pr PathRule) error {
	pfd, err := syscall.Open(pr.Path, oPath|syscall.O_CLOEXEC, 0)
	if err != nil {
		return errors.New("landlock: opening " + pr.Path + ": " + err.Error())
	}
	defer syscall.Close(pfd)
	// struct landlock_path_beneath_attr is packed: u64 allowed_access, s32 parent_fd.
	var attr [12]byte
	*(*uint64)(unsafe.Pointer(&attr[0])) = pr.Access
	*(*int32)(unsafe.Pointer(&attr[8])) = int32(pfd)
	if _, _, e := syscall.RawSyscall6(sysLandlockAddRule, uintptr(fd), landlockRulePathBeneath, uintptr(unsafe.Pointer(&attr[0])), 0, 0, 0); e != 0 {
		return errors.New("landlock: rule for " + pr.Path + ": " + e.Error())
	}
	return nil
}
