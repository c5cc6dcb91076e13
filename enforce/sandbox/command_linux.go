package sandbox

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/etbproject/etb/enforce/sandbox/internal/stage"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Stages of the re-executed binary. The init stage is run by package
// stage from its init function (before the rest of the binary is
// initialised); the probe stage by MaybeRunHelper.
const (
	envStage   = stage.EnvStage
	stageProbe = "probe" // Probe: checks one namespace combination
	exitSetup  = stage.ExitSetup
	helperName = "etb-sandbox-init"
)

// Command returns an *exec.Cmd that starts the helper (a re-exec of the
// current binary through /proc/self/exe) which becomes PID 1 in new user,
// PID, mount and, if s.Network is non-nil, network namespaces, and runs the
// target path with argv (argv[0] included) and env (nil: os.Environ())
// under every limit of s. Killing the returned command's process kills the
// whole namespace; cancelling ctx does so, as for exec.CommandContext.
//
// The caller sets Stdin, Stdout and Stderr on the returned command and
// starts it. With a network allow-list, Command also starts the egress proxy
// in a goroutine that ends when the helper exits or ctx is done.
//
// The helper gets SIGKILL when the OS thread that started it exits (its
// parent-death signal), as for any process started with Pdeathsig: do not
// start it from a goroutine locked to a thread that may exit first. Files
// added to ExtraFiles reach the helper only, never the target.
//
// Command resolves the allow-listed paths now (symlinks followed) and fails
// if one does not exist. It does not consult Probe: call Check first to
// refuse with a clear message; a limit that cannot be applied anyway makes
// the helper exit with status 125 before the target runs.
//
// The target is looked up by path when the helper executes it; to execute
// exactly a file that was checked (hashed) before, use CommandFile.
func Command(ctx context.Context, s Spec, path string, argv []string, env []string) (*exec.Cmd, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("sandbox: target path %q is not absolute", path)
	}
	if len(argv) == 0 {
		argv = []string{path}
	}
	return command(ctx, s, stage.Config{Path: path, ExeFD: -1, Argv: argv}, nil, env)
}

// CommandFile is Command for the executable open as exe: the helper
// executes that open file (as /proc/self/fd/3 of the target, fexecve
// style), never a path, so replacing or renaming the file that exe was
// opened from after it was checked cannot change what runs. The target
// keeps descriptor 3 open on its executable (a #! script needs it: its
// interpreter opens /proc/self/fd/3, which is also the script's $0); only
// the script is pinned this way, not its interpreter. What remains is an
// in-place rewrite of the same inode by someone with write access to it.
//
// exe must be open for reading (os.Open) on a regular file; it is passed
// to the helper at start and the caller may close it once the command has
// started. argv must not be empty. Landlock's exec list, when set, must
// still allow the file itself (its resolved path).
func CommandFile(ctx context.Context, s Spec, exe *os.File, argv []string, env []string) (*exec.Cmd, error) {
	if exe == nil {
		return nil, errors.New("sandbox: no executable file")
	}
	if len(argv) == 0 {
		return nil, fmt.Errorf("sandbox: empty argv for %s", exe.Name())
	}
	fi, err := exe.Stat()
	if err != nil {
		return nil, fmt.Errorf("sandbox: executable %s: %w", exe.Name(), err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("sandbox: executable %s is not a regular file (%v)", exe.Name(), fi.Mode().Type())
	}
	return command(ctx, s, stage.Config{Argv: argv}, exe, env)
}

// command builds the helper command for cfg (target, argv) and exe (nil:
// by path).
func command(ctx context.Context, s Spec, cfg stage.Config, exe *os.File, env []string) (*exec.Cmd, error) {
	if err := validate(s); err != nil {
		return nil, err
	}
	if s.MaxProcesses > 0 && os.Getuid() == 0 {
		return nil, fmt.Errorf("%w: max_processes (RLIMIT_NPROC) does not bind uid 0", ErrUnsupported)
	}
	cfg.CPUSeconds = s.CPUSeconds
	cfg.MemoryBytes = s.MemoryBytes
	cfg.MaxProcesses = s.MaxProcesses
	cfg.MaxFileBytes = s.MaxFileBytes
	cfg.Network = s.Network != nil
	cfg.ControlFD = -1
	cfg.ProxyPort = ProxyPort
	useProxy := s.Network != nil && len(s.Network.Allow) > 0

	read, err := resolvePaths("read", s.Read)
	if err != nil {
		return nil, err
	}
	write, err := resolvePaths("write", s.Write)
	if err != nil {
		return nil, err
	}
	execs, err := resolvePaths("exec", s.Exec)
	if err != nil {
		return nil, err
	}
	abi := landlockABI()
	if err := landlockRules(&cfg, read, write, execs, cfg.Network, useProxy, abi); err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	fsOn := read != nil || write != nil || execs != nil
	denyUnix := (fsOn || cfg.Network) && !(fsOn && abi >= landlockUnixABI)
	filter, err := seccompProgram(denyUnix)
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	cfg.Seccomp = encodeFilter(filter)

	if env == nil {
		env = os.Environ()
	}
	cfg.Env = filterEnv(env, s.EnvAllow)
	if useProxy {
		proxyURL := "http://127.0.0.1:" + strconv.Itoa(ProxyPort)
		cfg.Env = append(cfg.Env,
			"HTTP_PROXY="+proxyURL, "HTTPS_PROXY="+proxyURL,
			"http_proxy="+proxyURL, "https_proxy="+proxyURL)
	}

	cmd := exec.CommandContext(ctx, "/proc/self/exe")
	cmd.Args = []string{helperName}
	cmd.Dir = s.Dir
	cmd.SysProcAttr = nsAttr(cloneFlags(cfg.Network))
	var allow map[string]bool
	if useProxy {
		if allow, err = parseAllow(s.Network.Allow); err != nil {
			return nil, err
		}
	}
	// Descriptors of the helper from 3 on, in this order; a caller may
	// append more to ExtraFiles.
	if exe != nil {
		cfg.ExeFD = 3 + len(cmd.ExtraFiles)
		cmd.ExtraFiles = append(cmd.ExtraFiles, exe)
	}
	var ours, theirs *os.File
	if useProxy {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("sandbox: control socket for the egress proxy: %w", err)
		}
		ours = os.NewFile(uintptr(fds[0]), "etb-sandbox-control")
		theirs = os.NewFile(uintptr(fds[1]), "etb-sandbox-control")
		cfg.ControlFD = 3 + len(cmd.ExtraFiles)
		cmd.ExtraFiles = append(cmd.ExtraFiles, theirs)
	}
	data, err := cfg.Encode()
	if err != nil {
		if ours != nil {
			ours.Close()
			theirs.Close()
		}
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	// One P: the Go runtime starts measurably faster, and two were slower
	// side by side (BenchmarkStartTrue, docs/PERFORMANCE.md). The target
	// never sees these variables.
	cmd.Env = []string{envStage + "=" + stage.StageInit, stage.EnvConfig + "=" + data, "GOMAXPROCS=1"}
	if useProxy {
		p := &proxy{allow: allow, onConn: s.Network.OnConn}
		go p.serveControl(ctx, ours, int(theirs.Fd()))
	}
	return cmd, nil
}

// encodeFilter returns a seccomp program as the kernel's struct
// sock_filter array, in native byte order.
func encodeFilter(raw []bpf.RawInstruction) []byte {
	out := make([]byte, 0, 8*len(raw))
	for _, r := range raw {
		out = binary.NativeEndian.AppendUint16(out, r.Op)
		out = append(out, r.Jt, r.Jf)
		out = binary.NativeEndian.AppendUint32(out, r.K)
	}
	return out
}

// cloneFlags returns the namespaces of a sandbox.
func cloneFlags(network bool) uintptr {
	f := uintptr(syscall.CLONE_NEWUSER | syscall.CLONE_NEWPID | syscall.CLONE_NEWNS)
	if network {
		f |= syscall.CLONE_NEWNET
	}
	return f
}

// nsAttr returns the process attributes of a helper in namespaces flags:
// the caller's uid and gid mapped to themselves, setgroups denied, the two
// capabilities the helper needs kept across its exec, and SIGKILL if the
// creating thread dies.
func nsAttr(flags uintptr) *syscall.SysProcAttr {
	uid, gid := os.Getuid(), os.Getgid()
	return &syscall.SysProcAttr{
		Cloneflags:                 flags,
		UidMappings:                []syscall.SysProcIDMap{{ContainerID: uid, HostID: uid, Size: 1}},
		GidMappings:                []syscall.SysProcIDMap{{ContainerID: gid, HostID: gid, Size: 1}},
		GidMappingsEnableSetgroups: false,
		AmbientCaps:                []uintptr{unix.CAP_SYS_ADMIN, unix.CAP_NET_ADMIN},
		Pdeathsig:                  syscall.SIGKILL,
	}
}

// resolvePaths returns paths with symlinks resolved, keeping nil as nil and
// an empty list as an empty, non-nil list.
func resolvePaths(list string, paths []string) ([]string, error) {
	if paths == nil {
		return nil, nil
	}
	out := make([]string, 0, len(paths))
	for _, p := range paths {
		r, err := filepath.EvalSymlinks(p)
		if err != nil {
			return nil, fmt.Errorf("sandbox: %s path %q: %w", list, p, err)
		}
		out = append(out, r)
	}
	return out, nil
}
