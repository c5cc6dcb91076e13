// Package sandbox confines one command with kernel-enforced limits that work
// without root: new user, PID, network and mount namespaces, resource limits,
// a seccomp filter, Landlock filesystem and TCP rules, and egress through an
// allow-listing HTTP proxy that runs outside the sandbox.
//
// The package owns the mechanism only: it turns a Spec into a process tree
// that cannot exceed it. It never decides what a command may do (that is
// policy's job) and it must never start the target with a limit of the Spec
// silently dropped: a limit the host cannot enforce is an error from Check
// before anything runs, and any setup failure inside the sandbox ends it
// before the target is executed.
//
// # Process structure
//
// Command (or CommandFile, which executes an already opened file instead
// of a path) returns an *exec.Cmd that re-executes the current binary
// (/proc/self/exe) as the helper. The helper runs from the init function of
// package internal/stage, which imports only the runtime, syscall, os and
// os/signal so that it runs before the rest of the binary is initialised;
// the caller computes everything it can (seccomp program, Landlock access
// masks, the target's environment) and passes it in. The helper is PID 1
// of the new PID namespace and runs as the caller's own uid and gid, mapped one to one into
// the new user namespace, with CAP_SYS_ADMIN and CAP_NET_ADMIN of that
// namespace only (ambient capabilities), which it uses to mount a private
// /proc and bring up the loopback interface. It then restricts its own OS
// thread: no_new_privs, every capability dropped (and SECBIT_NOROOT for uid
// 0), the seccomp filter, the Landlock ruleset. From that thread it forks
// and executes the target under ptrace, so the target stops before its
// first instruction; the helper sets the target's resource limits (which
// belong to the process, not the thread) with prlimit while it is stopped,
// then detaches. Nothing of the target runs before every limit is in place;
// the binary is started once, not twice.
//
// The helper reaps every process of the namespace and exits with the
// target's status, 128+n if the target died of signal n, 126 or 127 if the
// target could not be executed, and 125 if the sandbox could not be set up
// (the target never ran). It forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT,
// SIGUSR1 and SIGUSR2 to the target. When the helper dies, the kernel kills
// every process left in its PID namespace, including setsid grandchildren:
// killing the *exec.Cmd's process (context cancellation, timeout,
// revocation) kills the whole tree, and so does the target's exit.
//
// The binary must call MaybeRunHelper first thing in main (and in TestMain):
// Probe relies on it.
//
// # Egress
//
// With Network.Allow set, the sandbox has only a loopback interface. The
// helper listens on 127.0.0.1:3128 inside it and hands the listening
// socket, as a file descriptor over an inherited unix socket, to a proxy
// running in the calling process, which accepts the target's connections
// on it. The proxy speaks HTTP CONNECT and plain
// HTTP (absolute-form requests), resolves names itself, allows exactly the
// listed host:port pairs and reports each attempt to Network.OnConn. The
// target gets HTTP_PROXY and HTTPS_PROXY pointing at the bridge; Landlock
// allows it to connect to TCP port 3128 only and to bind no TCP port.
package sandbox

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Spec is the set of kernel-enforced limits for one command. Zero values mean
// "not restricted" except where noted.
type Spec struct {
	CPUSeconds   uint64 // RLIMIT_CPU: SIGXCPU at the limit, SIGKILL one second later
	MemoryBytes  uint64 // RLIMIT_AS: address space of each process
	MaxProcesses uint64 // RLIMIT_NPROC: tasks (processes and threads) the target may have at once
	MaxFileBytes uint64 // RLIMIT_FSIZE: largest file the target may write

	// Read, Write and Exec are filesystem allow-lists of absolute paths
	// (directories cover everything beneath them). A nil slice is not
	// restricted; when any of the three is non-nil, Landlock is applied and
	// everything not listed is denied. Write implies read; Exec implies read.
	// Paths are resolved (symlinks followed) by Command and must exist.
	Read, Write, Exec []string

	// Network nil keeps the host network. Non-nil runs the command in a new
	// network namespace with only a loopback interface, reaching out only
	// through the egress proxy when Network.Allow lists destinations.
	Network *Network

	// EnvAllow nil keeps the environment; non-nil keeps only these names.
	EnvAllow []string

	// Dir is the working directory of the command; empty keeps the
	// caller's.
	Dir string
}

// Network restricts egress.
type Network struct {
	// Allow lists "host:port" destinations reachable through the proxy.
	// Hosts are compared lower-cased, without a trailing dot, exactly (no
	// wildcards); an IP literal must be listed as an IP literal. Empty
	// means no network at all.
	Allow []string

	// OnConn, if non-nil, is called for every connection attempt through
	// the proxy, allowed or denied. It is called from the proxy's
	// goroutines, possibly concurrently, and must not block for long.
	OnConn func(ConnEvent)
}

// ConnEvent records one connection attempt through the egress proxy.
type ConnEvent struct {
	Time    time.Time
	Method  string // "CONNECT" or the plain HTTP method
	Target  string // normalised "host:port" as requested
	Allowed bool   // whether Target is on the allow-list
	Err     string // why it was refused or failed; empty on success
}

// Features reports what this host can enforce (for `etb doctor`).
type Features struct {
	UserNS, PIDNS, NetNS, MountNS bool
	LandlockABI                   int // 0: no Landlock
	Seccomp                       bool
	// ProcessLimit reports whether RLIMIT_NPROC binds the sandbox's user.
	// It is false when the caller's uid is 0: the kernel exempts uid 0
	// from RLIMIT_NPROC in every user namespace.
	ProcessLimit bool
	Notes        []string
}

// ProxyPort is the TCP port of the egress bridge on the sandbox's loopback
// interface.
const ProxyPort = 3128

// ErrUnsupported is wrapped by errors about limits this host cannot enforce.
var ErrUnsupported = errors.New("sandbox: not enforceable on this host")

// Minimum Landlock ABI versions for the features used.
const (
	landlockFSABI  = 1 // filesystem rules
	landlockNetABI = 4 // TCP bind/connect rules
)

// Check returns an error naming the first limit of s the host (described by
// f) cannot enforce, or a malformed field of s. A nil error means Command can
// enforce every limit of s; callers refuse the action otherwise (fail
// closed). The helper itself never relaxes a limit: it re-checks everything
// it applies.
func Check(s Spec, f Features) error {
	if err := validate(s); err != nil {
		return err
	}
	// The helper always uses these, whatever the Spec.
	switch {
	case !f.UserNS:
		return fmt.Errorf("%w: user namespaces are not available (needed for every sandbox)", ErrUnsupported)
	case !f.PIDNS:
		return fmt.Errorf("%w: PID namespaces are not available (needed for every sandbox)", ErrUnsupported)
	case !f.MountNS:
		return fmt.Errorf("%w: mount namespaces with a private /proc are not available (needed for every sandbox)", ErrUnsupported)
	case !f.Seccomp:
		return fmt.Errorf("%w: seccomp filters are not available (needed for every sandbox)", ErrUnsupported)
	}
	if s.MaxProcesses > 0 && !f.ProcessLimit {
		return fmt.Errorf("%w: max_processes (RLIMIT_NPROC) does not bind uid 0; run etb as an unprivileged user", ErrUnsupported)
	}
	if fsRestricted(s) && f.LandlockABI < landlockFSABI {
		return fmt.Errorf("%w: filesystem allow-lists need Landlock, host has none", ErrUnsupported)
	}
	if s.Network != nil {
		if !f.NetNS {
			return fmt.Errorf("%w: network restriction needs network namespaces", ErrUnsupported)
		}
		if len(s.Network.Allow) > 0 && f.LandlockABI < landlockNetABI {
			return fmt.Errorf("%w: network allow-list needs Landlock ABI >= %d for TCP rules, host has %d",
				ErrUnsupported, landlockNetABI, f.LandlockABI)
		}
	}
	return nil
}

// fsRestricted reports whether s restricts the filesystem.
func fsRestricted(s Spec) bool {
	return s.Read != nil || s.Write != nil || s.Exec != nil
}

// validate checks the form of s without looking at the host.
func validate(s Spec) error {
	for _, l := range []struct {
		name  string
		paths []string
	}{{"read", s.Read}, {"write", s.Write}, {"exec", s.Exec}} {
		for _, p := range l.paths {
			if !filepath.IsAbs(p) {
				return fmt.Errorf("sandbox: %s path %q is not absolute", l.name, p)
			}
		}
	}
	if s.Dir != "" && !filepath.IsAbs(s.Dir) {
		return fmt.Errorf("sandbox: working directory %q is not absolute", s.Dir)
	}
	for _, name := range s.EnvAllow {
		if name == "" || strings.ContainsAny(name, "=\x00") {
			return fmt.Errorf("sandbox: environment name %q is invalid", name)
		}
	}
	if s.Network != nil {
		if _, err := parseAllow(s.Network.Allow); err != nil {
			return err
		}
	}
	return nil
}

// parseAllow normalises an allow-list into a set of "host:port" keys.
func parseAllow(allow []string) (map[string]bool, error) {
	set := make(map[string]bool, len(allow))
	for _, a := range allow {
		key, err := normalizeHostPort(a, "")
		if err != nil {
			return nil, fmt.Errorf("sandbox: network allow entry %q: %w", a, err)
		}
		set[key] = true
	}
	return set, nil
}

// normalizeHostPort returns hostport as "host:port" with the host lower-cased
// and without a trailing dot. If hostport has no port, defaultPort is used
// when non-empty; otherwise it is an error. The port must be 1-65535.
func normalizeHostPort(hostport, defaultPort string) (string, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		if defaultPort == "" || strings.Contains(hostport, ":") && !strings.HasPrefix(hostport, "[") {
			return "", fmt.Errorf("want host:port: %w", err)
		}
		host, port = strings.Trim(hostport, "[]"), defaultPort
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host == "" {
		return "", errors.New("empty host")
	}
	if strings.ContainsAny(host, "/ \t\r\n@") || strings.Contains(host, "..") ||
		strings.HasPrefix(host, ".") || strings.HasSuffix(host, ".") {
		return "", fmt.Errorf("invalid host %q", host)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return "", fmt.Errorf("invalid port %q", port)
	}
	return net.JoinHostPort(host, strconv.FormatUint(n, 10)), nil
}

// filterEnv returns the entries of env whose names are in allow, or env
// itself when allow is nil.
func filterEnv(env, allow []string) []string {
	if allow == nil {
		return env
	}
	keep := make(map[string]bool, len(allow))
	for _, name := range allow {
		keep[name] = true
	}
	var out []string
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if keep[name] {
			out = append(out, kv)
		}
	}
	return out
}
