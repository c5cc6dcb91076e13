package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// Environment variables that carry the helper's stage and configuration.
// They are set only in the helper's own environment, never in the target's.
const (
	envStage  = "ETB_SANDBOX_STAGE"
	envConfig = "ETB_SANDBOX_CONFIG"
)

// Stages of the re-executed binary.
const (
	stageInit  = "init"  // PID 1: sets up, starts the target, reaps
	stageProbe = "probe" // Probe: checks one namespace combination
)

// exitSetup is the helper's exit status when the sandbox could not be set up
// and the target never ran.
const exitSetup = 125

// helperConfig is what the helper needs, passed as JSON in envConfig.
type helperConfig struct {
	Path string   `json:"path"`
	Argv []string `json:"argv"`
	Env  []string `json:"env"`

	CPUSeconds   uint64 `json:"cpu_seconds,omitempty"`
	MemoryBytes  uint64 `json:"memory_bytes,omitempty"`
	MaxProcesses uint64 `json:"max_processes,omitempty"`
	MaxFileBytes uint64 `json:"max_file_bytes,omitempty"`

	// Resolved allow-lists; nil (JSON null) means not restricted.
	Read  []string `json:"read"`
	Write []string `json:"write"`
	Exec  []string `json:"exec"`

	Network bool `json:"network,omitempty"` // new network namespace
	Proxy   bool `json:"proxy,omitempty"`   // bridge to the egress proxy on fd 3
}

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
func Command(ctx context.Context, s Spec, path string, argv []string, env []string) (*exec.Cmd, error) {
	if err := validate(s); err != nil {
		return nil, err
	}
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("sandbox: target path %q is not absolute", path)
	}
	if s.MaxProcesses > 0 && os.Getuid() == 0 {
		return nil, fmt.Errorf("%w: max_processes (RLIMIT_NPROC) does not bind uid 0", ErrUnsupported)
	}
	if len(argv) == 0 {
		argv = []string{path}
	}
	cfg := helperConfig{
		Path:         path,
		Argv:         argv,
		CPUSeconds:   s.CPUSeconds,
		MemoryBytes:  s.MemoryBytes,
		MaxProcesses: s.MaxProcesses,
		MaxFileBytes: s.MaxFileBytes,
		Network:      s.Network != nil,
		Proxy:        s.Network != nil && len(s.Network.Allow) > 0,
	}
	var err error
	if cfg.Read, err = resolvePaths("read", s.Read); err != nil {
		return nil, err
	}
	if cfg.Write, err = resolvePaths("write", s.Write); err != nil {
		return nil, err
	}
	if cfg.Exec, err = resolvePaths("exec", s.Exec); err != nil {
		return nil, err
	}
	if env == nil {
		env = os.Environ()
	}
	cfg.Env = filterEnv(env, s.EnvAllow)
	if cfg.Proxy {
		proxyURL := "http://127.0.0.1:" + strconv.Itoa(ProxyPort)
		cfg.Env = append(cfg.Env,
			"HTTP_PROXY="+proxyURL, "HTTPS_PROXY="+proxyURL,
			"http_proxy="+proxyURL, "https_proxy="+proxyURL)
	}
	data, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("sandbox: encoding helper config: %w", err)
	}

	cmd := exec.CommandContext(ctx, "/proc/self/exe")
	cmd.Args = []string{"etb-sandbox-init"}
	// One P is plenty for the helper (it waits and bridges) and starts the
	// Go runtime measurably faster; the target never sees this variable.
	cmd.Env = []string{envStage + "=" + stageInit, envConfig + "=" + string(data), "GOMAXPROCS=1"}
	cmd.Dir = s.Dir
	cmd.SysProcAttr = nsAttr(cloneFlags(cfg.Network))

	if cfg.Proxy {
		allow, err := parseAllow(s.Network.Allow)
		if err != nil {
			return nil, err
		}
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("sandbox: control socket for the egress proxy: %w", err)
		}
		ours := os.NewFile(uintptr(fds[0]), "etb-sandbox-control")
		theirs := os.NewFile(uintptr(fds[1]), "etb-sandbox-control")
		cmd.ExtraFiles = []*os.File{theirs} // fd 3 in the helper
		p := &proxy{allow: allow, onConn: s.Network.OnConn}
		go p.serveControl(ctx, ours, theirs)
	}
	return cmd, nil
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
