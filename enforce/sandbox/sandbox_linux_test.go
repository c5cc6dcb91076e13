package sandbox

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// testModeEnv makes the test binary, started as a sandbox target, run one
// of the probes in runTestMode instead of the tests.
const testModeEnv = "ETB_SANDBOX_TEST_MODE"

// host is what this machine can enforce, probed once in TestMain.
var host Features

func TestMain(m *testing.M) {
	MaybeRunHelper()
	if mode, ok := os.LookupEnv(testModeEnv); ok {
		os.Exit(runTestMode(mode, os.Args[1:]))
	}
	host = Probe()
	os.Exit(m.Run())
}

// runTestMode runs inside the sandbox and prints "name=result" lines.
func runTestMode(mode string, args []string) int {
	switch mode {
	case "net":
		netProbes(args)
	case "syscalls":
		syscallProbes()
	case "spawn-orphan":
		// Start a child that outlives this process, then exit.
		c := exec.Command(os.Args[0], args...)
		c.Env = append(os.Environ(), testModeEnv+"=late-traceme")
		if err := c.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	case "late-traceme":
		// Once orphaned (reparented to the helper, PID 1), make the
		// helper our tracer and exec: the exec stops us until the
		// helper lets us go.
		for os.Getppid() != 1 {
			time.Sleep(10 * time.Millisecond)
		}
		runtime.LockOSThread()
		if _, _, e := unix.RawSyscall(unix.SYS_PTRACE, unix.PTRACE_TRACEME, 0, 0); e != 0 {
			fmt.Fprintln(os.Stderr, "traceme:", e)
			return 1
		}
		err := syscall.Exec("/usr/bin/touch", []string{"touch", args[0]}, nil)
		fmt.Fprintln(os.Stderr, err)
		return 1
	default:
		fmt.Fprintf(os.Stderr, "unknown test mode %q\n", mode)
		return 2
	}
	return 0
}

// errName renders an error as its errno name, "ok" for nil.
func errName(err error) string {
	if err == nil {
		return "ok"
	}
	var errno unix.Errno
	if errors.As(err, &errno) {
		return unix.ErrnoName(errno)
	}
	return "error"
}

// netProbes tries every way out; args are the allowed server, the denied
// server and a server on a non-loopback host address.
func netProbes(args []string) {
	allowed, denied, hostAddr := args[0], args[1], args[2]
	if len(args) > 3 {
		c, err := net.DialTimeout("unix", args[3], 2*time.Second)
		if err == nil {
			c.Close()
		}
		fmt.Printf("unix_outside=%s\n", errName(err))
	}
	dial := func(addr string) error {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}
	fmt.Printf("direct_allowed=%s\n", errName(dial(allowed)))
	fmt.Printf("direct_host=%s\n", errName(dial(hostAddr)))
	fmt.Printf("proxy_direct_other_port=%s\n", errName(dial("127.0.0.1:3129")))

	_, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_MPTCP)
	fmt.Printf("mptcp=%s\n", errName(err))
	// The kernel truncates the protocol to an int: 262 with high bits set
	// is still MPTCP.
	_, _, e := unix.RawSyscall(unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM, 1<<32|unix.IPPROTO_MPTCP)
	fmt.Printf("mptcp_high_bits=%s\n", errName(errnoErr(e)))

	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err == nil {
		ap, _ := netipAddr(hostAddr)
		err = unix.Sendto(fd, []byte("x"), 0, ap)
		unix.Close(fd)
	}
	fmt.Printf("udp_host=%s\n", errName(err))

	fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err == nil {
		err = unix.Bind(fd, &unix.SockaddrInet4{Port: 4000, Addr: [4]byte{127, 0, 0, 1}})
		unix.Close(fd)
	}
	fmt.Printf("bind=%s\n", errName(err))

	fmt.Printf("proxy_connect_denied=%s\n", proxyConnect(denied))
	fmt.Printf("proxy_connect_name_denied=%s\n", proxyConnect("evil.example:443"))
	fmt.Printf("proxy_get_denied=%s\n", proxyGet(denied))
	fmt.Printf("proxy_connect_allowed=%s\n", proxyConnect(allowed))
	fmt.Printf("proxy_get_allowed=%s\n", proxyGet(allowed))
	fmt.Printf("env_https_proxy=%s\n", os.Getenv("HTTPS_PROXY"))
}

func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// netipAddr converts "a.b.c.d:port" to a unix socket address.
func netipAddr(hostport string) (*unix.SockaddrInet4, error) {
	ap, err := net.ResolveTCPAddr("tcp4", hostport)
	if err != nil {
		return nil, err
	}
	sa := &unix.SockaddrInet4{Port: ap.Port}
	copy(sa.Addr[:], ap.IP.To4())
	return sa, nil
}

// proxyConnect opens a CONNECT tunnel to target through the bridge and, if
// that works, sends a GET through it; it returns the status code and body,
// or the error.
func proxyConnect(target string) string {
	c, err := net.DialTimeout("tcp", "127.0.0.1:3128", 2*time.Second)
	if err != nil {
		return errName(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return "error"
	}
	if resp.StatusCode != http.StatusOK {
		return strconv.Itoa(resp.StatusCode)
	}
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", target)
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		return "200,error"
	}
	body, _ := io.ReadAll(resp.Body)
	return "200," + strings.TrimSpace(string(body))
}

// proxyGet sends a plain absolute-form GET through the bridge.
func proxyGet(target string) string {
	c, err := net.DialTimeout("tcp", "127.0.0.1:3128", 2*time.Second)
	if err != nil {
		return errName(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET http://%s/ HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "error"
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return strconv.Itoa(resp.StatusCode)
	}
	return "200," + strings.TrimSpace(string(body))
}

// syscallProbes calls each refused system call in a way that would succeed,
// or fail differently, without the filter.
func syscallProbes() {
	raw := func(name string, trap uintptr, a ...uintptr) {
		var args [6]uintptr
		copy(args[:], a)
		_, _, e := unix.RawSyscall6(trap, args[0], args[1], args[2], args[3], args[4], args[5])
		fmt.Printf("%s=%s\n", name, errName(errnoErr(e)))
	}
	raw("ptrace", unix.SYS_PTRACE, unix.PTRACE_GETREGS, 0) // ESRCH without the filter
	raw("unshare_newuser", unix.SYS_UNSHARE, unix.CLONE_NEWUSER)
	raw("setns", unix.SYS_SETNS, ^uintptr(0), 0)                                            // EBADF without the filter
	raw("keyctl", unix.SYS_KEYCTL, unix.KEYCTL_GET_KEYRING_ID, ^uintptr(2), 0)              // KEY_SPEC_SESSION_KEYRING
	raw("io_uring_setup", unix.SYS_IO_URING_SETUP, 1, 0)                                    // EFAULT without the filter
	raw("bpf", unix.SYS_BPF, ^uintptr(0), 0, 0)                                             // EINVAL without the filter
	raw("mount", unix.SYS_MOUNT, 0, 0, 0, 0, 0)                                             // EFAULT without the filter
	raw("clone3", unix.SYS_CLONE3, 0, 0)                                                    // EINVAL/EFAULT without the filter
	raw("process_vm_readv", unix.SYS_PROCESS_VM_READV, uintptr(os.Getpid()), 0, 0, 0, 0, 0) // ok without the filter
}

// sysPaths returns what a dynamically linked program from /usr needs:
// reading /usr and /etc, executing the dynamic loader.
func sysPaths(t *testing.T) (read, execs []string) {
	t.Helper()
	ld, err := filepath.EvalSymlinks("/lib64/ld-linux-x86-64.so.2")
	if err != nil {
		t.Skipf("no x86-64 dynamic loader: %v", err)
	}
	return []string{"/usr", "/etc"}, []string{ld}
}

// resolved returns path with symlinks resolved.
func resolved(t *testing.T, path string) string {
	t.Helper()
	r, err := filepath.EvalSymlinks(path)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// result is how a sandboxed command ended.
type result struct {
	stdout, stderr string
	code           int
	took           time.Duration
}

// run runs path in a sandbox of s and waits for it.
func run(t *testing.T, ctx context.Context, s Spec, path string, argv, env []string) result {
	t.Helper()
	if err := Check(s, host); err != nil {
		t.Skipf("host cannot enforce the spec: %v", err)
	}
	cmd, err := Command(ctx, s, path, argv, env)
	if err != nil {
		t.Fatalf("Command: %v", err)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err = cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String(), code: cmd.ProcessState.ExitCode(), took: time.Since(start)}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("run: %v", err)
	}
	if r.code == -1 { // killed from outside: report like a shell
		if ws, ok := cmd.ProcessState.Sys().(unix.WaitStatus); ok && ws.Signaled() {
			r.code = 128 + int(ws.Signal())
		}
	}
	return r
}

// sh runs a shell script in a sandbox of s.
func sh(t *testing.T, s Spec, script string, env ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return run(t, ctx, s, "/bin/sh", []string{"sh", "-c", script}, append([]string{"PATH=/usr/bin:/bin"}, env...))
}

// lines parses "key=value" lines.
func lines(out string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return m
}

func TestCheck(t *testing.T) {
	full := Features{UserNS: true, PIDNS: true, NetNS: true, MountNS: true, LandlockABI: 7, Seccomp: true, ProcessLimit: true}
	without := func(f func(*Features)) Features { g := full; f(&g); return g }
	tests := []struct {
		name    string
		spec    Spec
		f       Features
		wantErr string // substring; empty: no error
	}{
		{"all features, all limits", Spec{Read: []string{"/usr"}, Network: &Network{Allow: []string{"example.com:443"}}}, full, ""},
		{"no user namespaces", Spec{}, without(func(f *Features) { f.UserNS = false }), "user namespaces"},
		{"no pid namespaces", Spec{}, without(func(f *Features) { f.PIDNS = false }), "PID namespaces"},
		{"no mount namespaces", Spec{}, without(func(f *Features) { f.MountNS = false }), "mount namespaces"},
		{"no seccomp", Spec{}, without(func(f *Features) { f.Seccomp = false }), "seccomp"},
		{"process limit as root", Spec{MaxProcesses: 5}, without(func(f *Features) { f.ProcessLimit = false }), "uid 0"},
		{"no process limit as root", Spec{}, without(func(f *Features) { f.ProcessLimit = false }), ""},
		{"fs lists without landlock", Spec{Exec: []string{}}, without(func(f *Features) { f.LandlockABI = 0 }), "Landlock"},
		{"fs unrestricted without landlock", Spec{}, without(func(f *Features) { f.LandlockABI = 0 }), ""},
		{"allow-list on ABI 3", Spec{Network: &Network{Allow: []string{"a.b:1"}}}, without(func(f *Features) { f.LandlockABI = 3 }), "ABI >= 4"},
		{"no network on ABI 3", Spec{Network: &Network{}}, without(func(f *Features) { f.LandlockABI = 3 }), ""},
		{"no net namespaces", Spec{Network: &Network{}}, without(func(f *Features) { f.NetNS = false }), "network namespaces"},
		{"relative path", Spec{Read: []string{"usr"}}, full, "not absolute"},
		{"relative dir", Spec{Dir: "tmp"}, full, "not absolute"},
		{"bad env name", Spec{EnvAllow: []string{"A=B"}}, full, "environment name"},
		{"allow without port", Spec{Network: &Network{Allow: []string{"example.com"}}}, full, "want host:port"},
		{"allow port zero", Spec{Network: &Network{Allow: []string{"example.com:0"}}}, full, "invalid port"},
		{"allow bad host", Spec{Network: &Network{Allow: []string{"a/b:80"}}}, full, "invalid host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Check(tt.spec, tt.f)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Check: %v, want nil", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("Check: %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestNormalizeHostPort(t *testing.T) {
	tests := []struct{ in, def, want, wantErr string }{
		{"Example.COM.:443", "", "example.com:443", ""},
		{"127.0.0.1:080", "", "127.0.0.1:80", ""},
		{"[::1]:8080", "", "[::1]:8080", ""},
		{"example.com", "80", "example.com:80", ""},
		{"example.com", "", "", "want host:port"},
		{"example.com:65536", "", "", "invalid port"},
		{":80", "", "", "empty host"},
		{"a b:80", "", "", "invalid host"},
		{"user@host:80", "", "", "invalid host"},
		{"example.com..:443", "", "", "invalid host"},
		{".example.com:443", "", "", "invalid host"},
	}
	for _, tt := range tests {
		got, err := normalizeHostPort(tt.in, tt.def)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("normalizeHostPort(%q) = %q, %v; want error %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("normalizeHostPort(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestProbe(t *testing.T) {
	if !host.UserNS || !host.PIDNS || !host.NetNS || !host.MountNS || !host.Seccomp || host.LandlockABI < 1 {
		t.Logf("host lacks sandbox features: %+v", host)
	}
	// Probe must agree with the kernel's own answer for Landlock.
	if got := landlockABI(); got != host.LandlockABI {
		t.Errorf("Probe LandlockABI = %d, landlock_create_ruleset says %d", host.LandlockABI, got)
	}
}

// seccompData encodes a seccomp_data record for the BPF VM, which loads
// 32-bit words big-endian: each word is stored so that the load yields the
// value the kernel's native (little-endian) layout would.
func seccompData(auditArch, nr uint32, args ...uint64) []byte {
	b := make([]byte, 64)
	binary.BigEndian.PutUint32(b[0:], nr)
	binary.BigEndian.PutUint32(b[4:], auditArch)
	for i, a := range args {
		binary.BigEndian.PutUint32(b[16+8*i:], uint32(a))       // low word first in memory
		binary.BigEndian.PutUint32(b[16+8*i+4:], uint32(a>>32)) // high word
	}
	return b
}

func TestSeccompFilterProgram(t *testing.T) {
	const auditArchX8664 = 0xc000003e
	newVM := func(denyUnix bool) *bpf.VM {
		raw, err := seccompProgram(denyUnix)
		if err != nil {
			t.Fatal(err)
		}
		insts, ok := bpf.Disassemble(raw)
		if !ok {
			t.Fatal("filter does not disassemble")
		}
		vm, err := bpf.NewVM(insts)
		if err != nil {
			t.Fatal(err)
		}
		return vm
	}
	vm, vmUnix := newVM(false), newVM(true)
	eperm := uint32(seccomp.ActionErrno) | uint32(unix.EPERM)
	enosys := uint32(seccomp.ActionErrno) | uint32(unix.ENOSYS)
	allow := uint32(seccomp.ActionAllow)
	tests := []struct {
		name string
		arch uint32
		nr   uint32
		args []uint64
		want uint32
	}{
		{"tcp socket", auditArchX8664, unix.SYS_SOCKET, []uint64{unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_TCP}, allow},
		{"udp socket", auditArchX8664, unix.SYS_SOCKET, []uint64{unix.AF_INET, unix.SOCK_DGRAM, 0}, allow},
		{"raw socket proto 255", auditArchX8664, unix.SYS_SOCKET, []uint64{unix.AF_INET, unix.SOCK_RAW, 255}, allow},
		{"mptcp socket", auditArchX8664, unix.SYS_SOCKET, []uint64{unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_MPTCP}, eperm},
		{"mptcp socket v6", auditArchX8664, unix.SYS_SOCKET, []uint64{unix.AF_INET6, unix.SOCK_STREAM, unix.IPPROTO_MPTCP}, eperm},
		{"mptcp with high bits", auditArchX8664, unix.SYS_SOCKET, []uint64{unix.AF_INET, unix.SOCK_STREAM, 1<<32 | unix.IPPROTO_MPTCP}, eperm},
		{"tcp with high bits", auditArchX8664, unix.SYS_SOCKET, []uint64{unix.AF_INET, unix.SOCK_STREAM, 1<<32 | unix.IPPROTO_TCP}, eperm},
		{"plain fork clone", auditArchX8664, unix.SYS_CLONE, []uint64{uint64(unix.SIGCHLD)}, allow},
		{"thread clone", auditArchX8664, unix.SYS_CLONE, []uint64{unix.CLONE_VM | unix.CLONE_THREAD | unix.CLONE_SIGHAND | unix.CLONE_FS | unix.CLONE_FILES}, allow},
		{"clone newuser", auditArchX8664, unix.SYS_CLONE, []uint64{unix.CLONE_NEWUSER | uint64(unix.SIGCHLD)}, eperm},
		{"unshare newuser", auditArchX8664, unix.SYS_UNSHARE, []uint64{unix.CLONE_NEWUSER}, eperm},
		{"unshare newuser|newns", auditArchX8664, unix.SYS_UNSHARE, []uint64{unix.CLONE_NEWUSER | unix.CLONE_NEWNS}, eperm},
		{"unshare files", auditArchX8664, unix.SYS_UNSHARE, []uint64{unix.CLONE_FILES}, allow},
		{"clone3", auditArchX8664, unix.SYS_CLONE3, nil, enosys},
		{"ptrace attach", auditArchX8664, unix.SYS_PTRACE, []uint64{unix.PTRACE_ATTACH}, eperm},
		{"ptrace seize", auditArchX8664, unix.SYS_PTRACE, []uint64{unix.PTRACE_SEIZE}, eperm},
		{"ptrace pokedata", auditArchX8664, unix.SYS_PTRACE, []uint64{unix.PTRACE_POKEDATA}, eperm},
		{"ptrace traceme with high bits", auditArchX8664, unix.SYS_PTRACE, []uint64{1 << 32}, eperm},
		{"ptrace traceme", auditArchX8664, unix.SYS_PTRACE, []uint64{unix.PTRACE_TRACEME}, allow},
		{"ptrace detach", auditArchX8664, unix.SYS_PTRACE, []uint64{unix.PTRACE_DETACH}, allow},
		{"mount", auditArchX8664, unix.SYS_MOUNT, nil, eperm},
		{"umount2", auditArchX8664, unix.SYS_UMOUNT2, nil, eperm},
		{"fsopen", auditArchX8664, unix.SYS_FSOPEN, nil, eperm},
		{"open_tree", auditArchX8664, unix.SYS_OPEN_TREE, nil, eperm},
		{"bpf", auditArchX8664, unix.SYS_BPF, nil, eperm},
		{"keyctl", auditArchX8664, unix.SYS_KEYCTL, nil, eperm},
		{"add_key", auditArchX8664, unix.SYS_ADD_KEY, nil, eperm},
		{"request_key", auditArchX8664, unix.SYS_REQUEST_KEY, nil, eperm},
		{"init_module", auditArchX8664, unix.SYS_INIT_MODULE, nil, eperm},
		{"finit_module", auditArchX8664, unix.SYS_FINIT_MODULE, nil, eperm},
		{"delete_module", auditArchX8664, unix.SYS_DELETE_MODULE, nil, eperm},
		{"reboot", auditArchX8664, unix.SYS_REBOOT, nil, eperm},
		{"kexec_load", auditArchX8664, unix.SYS_KEXEC_LOAD, nil, eperm},
		{"setns", auditArchX8664, unix.SYS_SETNS, nil, eperm},
		{"io_uring_setup", auditArchX8664, unix.SYS_IO_URING_SETUP, nil, eperm},
		{"process_vm_writev", auditArchX8664, unix.SYS_PROCESS_VM_WRITEV, nil, eperm},
		{"read", auditArchX8664, unix.SYS_READ, nil, allow},
		{"ioctl TIOCSTI", auditArchX8664, unix.SYS_IOCTL, []uint64{0, unix.TIOCSTI}, eperm},
		{"ioctl TIOCSTI, high bits", auditArchX8664, unix.SYS_IOCTL, []uint64{0, 1<<32 | unix.TIOCSTI}, eperm},
		{"ioctl TIOCLINUX", auditArchX8664, unix.SYS_IOCTL, []uint64{0, unix.TIOCLINUX}, eperm},
		{"ioctl TCGETS", auditArchX8664, unix.SYS_IOCTL, []uint64{0, unix.TCGETS}, allow},
		{"ioctl TIOCGWINSZ", auditArchX8664, unix.SYS_IOCTL, []uint64{1, unix.TIOCGWINSZ}, allow},
		{"execve", auditArchX8664, unix.SYS_EXECVE, nil, allow},
		{"x32 abi", auditArchX8664, unix.SYS_SOCKET | 0x40000000, nil, enosys},
		{"i386 arch", 0x40000003, 102, nil, uint32(seccomp.ActionKillProcess)},
	}
	if got := runtimeArchOK(); !got {
		t.Skip("filter tests are written for x86-64")
	}
	for _, tt := range tests {
		for _, v := range []*bpf.VM{vm, vmUnix} {
			got, err := v.Run(seccompData(tt.arch, tt.nr, tt.args...))
			if err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			if uint32(got) != tt.want {
				t.Errorf("%s: filter returned %#x, want %#x", tt.name, uint32(got), tt.want)
			}
		}
	}
	unixTests := []struct {
		name           string
		args           []uint64
		without, with_ uint32
	}{
		{"unix socket", []uint64{unix.AF_UNIX, unix.SOCK_STREAM, 0}, allow, eperm},
		{"unix socket, high bits", []uint64{1<<32 | unix.AF_UNIX, unix.SOCK_STREAM, 0}, allow, eperm},
		{"inet socket", []uint64{unix.AF_INET, unix.SOCK_STREAM, 0}, allow, allow},
		{"netlink socket", []uint64{unix.AF_NETLINK, unix.SOCK_RAW, 0}, allow, allow},
	}
	for _, tt := range unixTests {
		for _, c := range []struct {
			vm   *bpf.VM
			want uint32
		}{{vm, tt.without}, {vmUnix, tt.with_}} {
			got, _ := c.vm.Run(seccompData(auditArchX8664, unix.SYS_SOCKET, tt.args...))
			if uint32(got) != c.want {
				t.Errorf("%s: filter returned %#x, want %#x", tt.name, uint32(got), c.want)
			}
		}
	}
}

func TestSeccompInSandbox(t *testing.T) {
	r := run(t, context.Background(), Spec{}, resolved(t, os.Args[0]), []string{"probe"},
		[]string{testModeEnv + "=syscalls"})
	if r.code != 0 {
		t.Fatalf("probe exited %d: %s", r.code, r.stderr)
	}
	got := lines(r.stdout)
	want := map[string]string{
		"ptrace": "EPERM", "unshare_newuser": "EPERM", "setns": "EPERM", "keyctl": "EPERM",
		"io_uring_setup": "EPERM", "bpf": "EPERM", "mount": "EPERM", "clone3": "ENOSYS",
		"process_vm_readv": "EPERM",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %q, want %q", k, got[k], v)
		}
	}
}

func TestExitStatus(t *testing.T) {
	tests := []struct {
		name   string
		script string
		want   int
	}{
		{"success", "exit 0", 0},
		{"failure", "exit 7", 7},
		{"killed by SIGKILL", "kill -KILL $$", 128 + 9},
		{"killed by SIGTERM", "kill -TERM $$", 128 + 15},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if r := sh(t, Spec{}, tt.script); r.code != tt.want {
				t.Errorf("exit status %d, want %d (stderr %q)", r.code, tt.want, r.stderr)
			}
		})
	}
	t.Run("missing target", func(t *testing.T) {
		r := run(t, context.Background(), Spec{}, "/nonexistent/etb-target", nil, nil)
		if r.code != 127 {
			t.Errorf("exit status %d, want 127 (stderr %q)", r.code, r.stderr)
		}
	})
}

func TestFilesystem(t *testing.T) {
	base := resolved(t, t.TempDir())
	work, ro, secret := filepath.Join(base, "work"), filepath.Join(base, "ro"), filepath.Join(base, "secret")
	for _, d := range []string{work, ro, secret} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite(t, filepath.Join(ro, "ok.txt"), "readable\n")
	mustWrite(t, filepath.Join(secret, "secret.txt"), "SECRET\n")
	mustWrite(t, filepath.Join(secret, "public.txt"), "public\n")
	if err := os.Symlink(filepath.Join(secret, "secret.txt"), filepath.Join(ro, "link")); err != nil {
		t.Fatal(err)
	}
	read, execs := sysPaths(t)
	s := Spec{
		Read:  append(read, ro, filepath.Join(secret, "public.txt")),
		Write: []string{work},
		Exec:  append(execs, resolved(t, "/bin/sh"), resolved(t, "/usr/bin/cat"), resolved(t, "/usr/bin/cp"), resolved(t, "/usr/bin/ln")),
	}
	script := `
cat "$RO/ok.txt" && echo READ_OK
cat "$SECRET/public.txt" && echo READ_FILE_OK
ls "$SECRET" && echo LEAK_LIST_DIR
cat "$SECRET/secret.txt" && echo LEAK_DIRECT
cat "$RO/../secret/secret.txt" && echo LEAK_DOTDOT
cat "$RO/link" && echo LEAK_SYMLINK
ln -s "$SECRET/secret.txt" "$WORK/l2"; cat "$WORK/l2" && echo LEAK_NEW_SYMLINK
cd "$RO/.." && cat secret/secret.txt && echo LEAK_RELATIVE
echo x > "$WORK/new.txt" && echo WRITE_OK
echo x > "$RO/new.txt" && echo LEAK_WRITE_RO
echo x > "$SECRET/new.txt" && echo LEAK_WRITE_SECRET
echo x > "$RO/../escape.txt" && echo LEAK_WRITE_DOTDOT
cp /usr/bin/true "$WORK/true" && "$WORK/true" && echo LEAK_EXEC_WRITABLE
/usr/bin/id && echo LEAK_EXEC_UNLISTED
exit 0
`
	r := sh(t, s, script, "RO="+ro, "WORK="+work, "SECRET="+secret)
	if r.code != 0 {
		t.Fatalf("script exited %d: %s", r.code, r.stderr)
	}
	for _, want := range []string{"READ_OK", "READ_FILE_OK", "WRITE_OK"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %s (allowed access failed): stdout %q stderr %q", want, r.stdout, r.stderr)
		}
	}
	if strings.Contains(r.stdout, "LEAK") || strings.Contains(r.stdout, "SECRET") {
		t.Errorf("sandbox escape: stdout %q", r.stdout)
	}
	for _, p := range []string{filepath.Join(ro, "new.txt"), filepath.Join(secret, "new.txt"), filepath.Join(base, "escape.txt")} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s was created outside the write list", p)
		}
	}
	if !strings.Contains(r.stderr, "Permission denied") {
		t.Errorf("denials should be EACCES, stderr %q", r.stderr)
	}
}

func TestExecOutsideList(t *testing.T) {
	read, execs := sysPaths(t)
	s := Spec{Read: read, Exec: append(execs, resolved(t, "/bin/sh"))}
	r := run(t, context.Background(), s, resolved(t, "/usr/bin/id"), []string{"id"}, nil)
	if r.code != 126 || strings.Contains(r.stdout, "uid=") {
		t.Errorf("unlisted target: exit %d stdout %q stderr %q; want 126 and no output", r.code, r.stdout, r.stderr)
	}
	// The listed shell runs, and cannot run an unlisted program.
	r = sh(t, s, `/usr/bin/id && echo RAN_ID; echo SHELL_OK`)
	if !strings.Contains(r.stdout, "SHELL_OK") || strings.Contains(r.stdout, "RAN_ID") {
		t.Errorf("stdout %q stderr %q: want SHELL_OK and no RAN_ID", r.stdout, r.stderr)
	}
}

func mustWrite(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// hostIPv4 returns a non-loopback IPv4 address of this host.
func hostIPv4(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && !ipn.IP.IsLoopback() {
			return ipn.IP.String()
		}
	}
	t.Skip("no non-loopback IPv4 address")
	return ""
}

func TestNetwork(t *testing.T) {
	var deniedHits, hostHits atomic.Int32
	allowedSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "allowed-body\n")
	}))
	defer allowedSrv.Close()
	deniedSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		deniedHits.Add(1)
		io.WriteString(w, "denied-body\n")
	}))
	defer deniedSrv.Close()
	hostLn, err := net.Listen("tcp4", hostIPv4(t)+":0")
	if err != nil {
		t.Fatal(err)
	}
	hostSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hostHits.Add(1) })}
	go hostSrv.Serve(hostLn)
	defer hostSrv.Close()
	// Control: the host server is reachable from outside the sandbox.
	if c, err := net.DialTimeout("tcp", hostLn.Addr().String(), time.Second); err != nil {
		t.Fatalf("host server unreachable outside the sandbox: %v", err)
	} else {
		c.Close()
	}

	allowed := strings.TrimPrefix(allowedSrv.URL, "http://")
	denied := strings.TrimPrefix(deniedSrv.URL, "http://")
	var mu sync.Mutex
	var events []ConnEvent
	s := Spec{Network: &Network{
		Allow: []string{allowed},
		OnConn: func(ev ConnEvent) {
			mu.Lock()
			events = append(events, ev)
			mu.Unlock()
		},
	}}
	self := resolved(t, os.Args[0])
	read, execs := sysPaths(t)
	s.Read, s.Exec = read, append(execs, self)
	// A service on a unix socket outside (a session bus, an agent, a
	// daemon) could relay traffic: it must be out of reach.
	sock := filepath.Join(t.TempDir(), "s.sock")
	unixLn, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer unixLn.Close()
	os.Chmod(filepath.Dir(sock), 0o755)
	os.Chmod(sock, 0o777)
	r := run(t, context.Background(), s, self, []string{"probe", allowed, denied, hostLn.Addr().String(), sock},
		[]string{testModeEnv + "=net"})
	if r.code != 0 {
		t.Fatalf("probe exited %d: %s", r.code, r.stderr)
	}
	got := lines(r.stdout)
	checks := []struct {
		key  string
		want func(string) bool
		desc string
	}{
		{"direct_allowed", isErr, "direct connect to the allowed server must fail (only the proxy may reach it)"},
		{"direct_host", isErr, "direct connect to a host address must fail"},
		{"proxy_direct_other_port", isErr, "connect to another loopback port must fail"},
		{"mptcp", is("EPERM"), "MPTCP socket must be refused by seccomp"},
		{"mptcp_high_bits", is("EPERM"), "MPTCP socket with high protocol bits must be refused"},
		{"udp_host", isErr, "UDP to a host address must fail"},
		{"bind", is("EACCES"), "TCP bind must be refused by Landlock"},
		{"proxy_connect_denied", is("403"), "CONNECT to a non-allowed server must be refused"},
		{"proxy_connect_name_denied", is("403"), "CONNECT to a non-allowed name must be refused"},
		{"proxy_get_denied", is("403"), "GET of a non-allowed server must be refused"},
		{"proxy_connect_allowed", is("200,allowed-body"), "CONNECT to the allowed server must work"},
		{"proxy_get_allowed", is("200,allowed-body"), "GET of the allowed server must work"},
		{"env_https_proxy", is("http://127.0.0.1:3128"), "HTTPS_PROXY must point at the bridge"},
		{"unix_outside", is("EPERM"), "a unix socket outside must be out of reach"},
	}
	for _, c := range checks {
		if v, ok := got[c.key]; !ok || !c.want(v) {
			t.Errorf("%s = %q: %s", c.key, v, c.desc)
		}
	}
	if n := deniedHits.Load(); n != 0 {
		t.Errorf("denied server was reached %d times", n)
	}
	if n := hostHits.Load(); n != 0 {
		t.Errorf("host server was reached %d times", n)
	}
	mu.Lock()
	defer mu.Unlock()
	var nAllowed, nDenied int
	for _, ev := range events {
		switch {
		case ev.Allowed && ev.Target == allowed && ev.Err == "":
			nAllowed++
		case !ev.Allowed && (ev.Target == denied || ev.Target == "evil.example:443") && ev.Err != "":
			nDenied++
		default:
			t.Errorf("unexpected event %+v", ev)
		}
	}
	if nAllowed != 2 || nDenied != 3 {
		t.Errorf("events: %d allowed, %d denied; want 2 and 3: %+v", nAllowed, nDenied, events)
	}
}

func TestNoNetwork(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	self := resolved(t, os.Args[0])
	sock := filepath.Join(t.TempDir(), "s.sock")
	unixLn, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer unixLn.Close()
	os.Chmod(filepath.Dir(sock), 0o755)
	os.Chmod(sock, 0o777)
	r := run(t, context.Background(), Spec{Network: &Network{}}, self,
		[]string{"probe", addr, addr, addr, sock}, []string{testModeEnv + "=net"})
	if r.code != 0 {
		t.Fatalf("probe exited %d: %s", r.code, r.stderr)
	}
	got := lines(r.stdout)
	for _, k := range []string{"direct_allowed", "proxy_connect_allowed", "proxy_get_allowed", "mptcp", "bind", "unix_outside"} {
		if !isErr(got[k]) {
			t.Errorf("%s = %q: with no network every attempt must fail", k, got[k])
		}
	}
	if got["env_https_proxy"] != "" {
		t.Errorf("HTTPS_PROXY = %q without a proxy", got["env_https_proxy"])
	}
	// Control: with nothing restricted the same probes reach the server
	// and the unix socket, so the failures above are the sandbox's doing.
	r = run(t, context.Background(), Spec{}, self, []string{"probe", addr, addr, addr, sock}, []string{testModeEnv + "=net"})
	got = lines(r.stdout)
	if got["direct_allowed"] != "ok" || got["unix_outside"] != "ok" {
		t.Errorf("unrestricted control: direct_allowed=%q unix_outside=%q, want ok", got["direct_allowed"], got["unix_outside"])
	}
}

// isErr reports whether a probe result is an errno (the attempt failed).
func isErr(v string) bool { return strings.HasPrefix(v, "E") }

func is(want string) func(string) bool { return func(v string) bool { return v == want } }

func runtimeArchOK() bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	return unix.ByteSliceToString(u.Machine[:]) == "x86_64"
}

func TestForkBomb(t *testing.T) {
	w := t.TempDir()
	const maxProcs = 8
	if !host.ProcessLimit {
		// uid 0 is exempt from RLIMIT_NPROC: the limit must be refused,
		// by Check and by Command, never silently dropped.
		s := Spec{MaxProcesses: maxProcs}
		if err := Check(s, host); !errors.Is(err, ErrUnsupported) {
			t.Errorf("Check = %v, want ErrUnsupported as uid 0", err)
		}
		if _, err := Command(context.Background(), s, "/bin/true", nil, nil); !errors.Is(err, ErrUnsupported) {
			t.Errorf("Command = %v, want ErrUnsupported as uid 0", err)
		}
		return
	}
	// Each iteration starts a long sleep; without the limit all 60 start.
	r := sh(t, Spec{MaxProcesses: maxProcs}, `i=0; while [ $i -lt 60 ]; do sleep 30 & echo started >> "$W/count"; i=$((i+1)); done; exit 0`, "W="+w)
	data, _ := os.ReadFile(filepath.Join(w, "count"))
	n := strings.Count(string(data), "started")
	t.Logf("%d of 60 background processes started with MaxProcesses=%d", n, maxProcs)
	if n == 0 || n >= maxProcs {
		t.Errorf("%d processes started with MaxProcesses=%d (exit %d, stderr %q)", n, maxProcs, r.code, r.stderr)
	}
	if r.took > 15*time.Second {
		t.Errorf("took %v: the sleeps outlived the shell", r.took)
	}
}

func TestCPULimit(t *testing.T) {
	if r := sh(t, Spec{CPUSeconds: 1}, `ulimit -t 100 && echo RAISED; ulimit -t`); strings.Contains(r.stdout, "RAISED") || strings.TrimSpace(r.stdout) != "1" {
		t.Errorf("target raised its CPU limit: %q", r.stdout)
	}
	r := sh(t, Spec{CPUSeconds: 1}, `while :; do :; done`)
	if r.code != 128+int(unix.SIGXCPU) && r.code != 128+int(unix.SIGKILL) {
		t.Errorf("busy loop ended with %d, want death by SIGXCPU or SIGKILL", r.code)
	}
	if r.took > 10*time.Second {
		t.Errorf("busy loop ran %v with a 1 s CPU limit", r.took)
	}
}

func TestMemoryLimit(t *testing.T) {
	// dd allocates its 64 MiB block buffer before reading anything.
	const script = `echo STARTED; dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null && echo ALLOCATED`
	if r := sh(t, Spec{}, script); !strings.Contains(r.stdout, "ALLOCATED") {
		t.Fatalf("control run without a limit failed (%d %q)", r.code, r.stderr)
	}
	r := sh(t, Spec{MemoryBytes: 32 << 20}, script)
	if !strings.Contains(r.stdout, "STARTED") {
		t.Fatalf("target did not start under a 32 MiB limit: exit %d stderr %q", r.code, r.stderr)
	}
	if r.code == 0 || strings.Contains(r.stdout, "ALLOCATED") {
		t.Errorf("64 MiB allocation under a 32 MiB limit: exit %d stdout %q", r.code, r.stdout)
	}
}

func TestMaxFileBytes(t *testing.T) {
	w := t.TempDir()
	f := filepath.Join(w, "big")
	r := sh(t, Spec{MaxFileBytes: 1000}, `head -c 5000 /dev/zero > "$F"`, "F="+f)
	fi, err := os.Stat(f)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > 1000 || r.code == 0 {
		t.Errorf("file grew to %d bytes (exit %d) with MaxFileBytes=1000", fi.Size(), r.code)
	}
}

func TestEnvAllow(t *testing.T) {
	env := []string{"KEEP=kept", "SECRET=hunter2", "PATH=/usr/bin"}
	r := run(t, context.Background(), Spec{EnvAllow: []string{"KEEP", "PATH"}}, resolved(t, "/usr/bin/env"), []string{"env"}, env)
	if r.code != 0 {
		t.Fatalf("env exited %d: %s", r.code, r.stderr)
	}
	got := lines(r.stdout)
	if got["KEEP"] != "kept" || got["PATH"] != "/usr/bin" {
		t.Errorf("allowed variables missing: %q", r.stdout)
	}
	if strings.Contains(r.stdout, "SECRET") || strings.Contains(r.stdout, "hunter2") || strings.Contains(r.stdout, "ETB_SANDBOX") {
		t.Errorf("variable outside the allow-list or helper variable present: %q", r.stdout)
	}
	// nil EnvAllow keeps everything given.
	r = run(t, context.Background(), Spec{}, resolved(t, "/usr/bin/env"), []string{"env"}, env)
	if lines(r.stdout)["SECRET"] != "hunter2" {
		t.Errorf("nil EnvAllow dropped a variable: %q", r.stdout)
	}
}

// findProcess returns the host PIDs whose command line is exactly argv.
func findProcess(argv ...string) []int {
	want := strings.Join(argv, "\x00") + "\x00"
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && string(b) == want {
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitFor polls cond until it is true or d has passed.
func waitFor(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

func TestSetsidGrandchildDies(t *testing.T) {
	for _, how := range []string{"timeout", "revocation"} {
		t.Run(how, func(t *testing.T) {
			marker := fmt.Sprintf("600.%d", time.Now().UnixNano()%1e9)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if how == "timeout" {
				ctx, cancel = context.WithTimeout(ctx, 1500*time.Millisecond)
				defer cancel()
			}
			cmd, err := Command(ctx, Spec{}, "/bin/sh",
				[]string{"sh", "-c", `setsid sleep ` + marker + ` </dev/null >/dev/null 2>&1 & exec sleep 600`},
				[]string{"PATH=/usr/bin:/bin"})
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			if !waitFor(5*time.Second, func() bool { return len(findProcess("sleep", marker)) == 1 }) {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatal("grandchild never appeared")
			}
			if how == "revocation" {
				cmd.Process.Kill()
			}
			cmd.Wait()
			if !waitFor(3*time.Second, func() bool { return len(findProcess("sleep", marker)) == 0 }) {
				pids := findProcess("sleep", marker)
				for _, p := range pids {
					unix.Kill(p, unix.SIGKILL)
				}
				t.Fatalf("setsid grandchild %v survived the helper", pids)
			}
		})
	}
}

func TestSetupFailureRunsNothing(t *testing.T) {
	w := t.TempDir()
	gone := filepath.Join(w, "gone")
	if err := os.Mkdir(gone, 0o755); err != nil {
		t.Fatal(err)
	}
	read, execs := sysPaths(t)
	s := Spec{Read: append(read, gone), Write: []string{w}, Exec: append(execs, resolved(t, "/bin/sh"))}
	cmd, err := Command(context.Background(), s, "/bin/sh", []string{"sh", "-c", `echo ran > "$W/ran"`}, []string{"W=" + w})
	if err != nil {
		t.Fatal(err)
	}
	// The allow-listed directory disappears between Command and Start:
	// the helper cannot build the ruleset and must not run the target.
	if err := os.Remove(gone); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	if code := cmd.ProcessState.ExitCode(); code != exitSetup {
		t.Errorf("exit %d (%v), want %d; stderr %q", code, err, exitSetup, stderr.String())
	}
	if _, err := os.Stat(filepath.Join(w, "ran")); err == nil {
		t.Error("target ran although the sandbox could not be set up")
	}
}

func TestCommandRefusesBadSpec(t *testing.T) {
	tests := []struct {
		name string
		spec Spec
		path string
	}{
		{"missing read path", Spec{Read: []string{"/nonexistent/etb"}}, "/bin/true"},
		{"relative target", Spec{}, "true"},
		{"bad allow entry", Spec{Network: &Network{Allow: []string{"nohostport"}}}, "/bin/true"},
	}
	for _, tt := range tests {
		if cmd, err := Command(context.Background(), tt.spec, tt.path, nil, nil); err == nil {
			t.Errorf("%s: Command returned %v, want an error", tt.name, cmd)
		}
	}
}

func TestTracedOrphanIsReleased(t *testing.T) {
	w := t.TempDir()
	marker := filepath.Join(w, "traced-ran")
	self := resolved(t, os.Args[0])
	// The shell outlives the orphan; the orphan stops at its exec with the
	// helper as tracer and must be released to create the marker.
	r := sh(t, Spec{}, `"$SELF" "$MARKER"; i=0; while [ $i -lt 60 ]; do [ -e "$MARKER" ] && echo seen && break; sleep 0.05; i=$((i+1)); done`,
		"SELF="+self, "MARKER="+marker, testModeEnv+"=spawn-orphan")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if !strings.Contains(r.stdout, "seen") {
		t.Errorf("traced orphan did not run while the sandbox was alive: stdout %q stderr %q", r.stdout, r.stderr)
	}
}

func TestSignalForwarding(t *testing.T) {
	w := t.TempDir()
	ready := filepath.Join(w, "ready")
	cmd, err := Command(context.Background(), Spec{}, "/bin/sh",
		[]string{"sh", "-c", `trap 'exit 42' TERM; touch "$READY"; while :; do sleep 0.05; done`},
		[]string{"PATH=/usr/bin:/bin", "READY=" + ready})
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	if !waitFor(5*time.Second, func() bool { _, err := os.Stat(ready); return err == nil }) {
		t.Fatal("target never became ready")
	}
	cmd.Process.Signal(unix.SIGTERM)
	cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 42 {
		t.Errorf("exit %d, want 42 from the target's TERM trap", code)
	}
}

func TestIsolation(t *testing.T) {
	outer := strconv.Itoa(os.Getpid())
	r := sh(t, Spec{}, `echo "pid=$$"; echo "caps=$(grep CapEff /proc/self/status | cut -f2)"
cat /proc/$OUTER/environ >/dev/null 2>&1 && echo outer=visible || echo outer=hidden
echo "procs=$(ls /proc | grep -c '^[0-9]')"`, "OUTER="+outer)
	got := lines(r.stdout)
	if got["pid"] == "" || got["pid"] == outer {
		t.Errorf("target pid %q: want a pid of the new namespace", got["pid"])
	}
	if got["caps"] != "0000000000000000" {
		t.Errorf("target's effective capabilities = %q, want none", got["caps"])
	}
	if got["outer"] != "hidden" {
		t.Errorf("the test process (pid %s) is visible from inside: %q", outer, r.stdout)
	}
	if n, _ := strconv.Atoi(got["procs"]); n == 0 || n > 5 {
		t.Errorf("%q processes visible in /proc, want only the sandbox's", got["procs"])
	}
}

// FuzzNormalizeHostPort checks that normalisation is idempotent and yields
// a lower-case host with a port in range, so that an allow-list entry and a
// request for the same destination always meet in the same key.
func FuzzNormalizeHostPort(f *testing.F) {
	for _, s := range []string{"Example.COM.:443", "[::1]:80", "127.0.0.1:0080", "a:65535", "a:65536", ":1", "x", "A.b.:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := normalizeHostPort(in, "")
		if err != nil {
			return
		}
		again, err := normalizeHostPort(out, "")
		if err != nil || again != out {
			t.Fatalf("normalizeHostPort(%q) = %q, which normalises to %q, %v", in, out, again, err)
		}
		host, port, err := net.SplitHostPort(out)
		if err != nil || host != strings.ToLower(host) || strings.HasSuffix(host, ".") {
			t.Fatalf("normalizeHostPort(%q) = %q: host not normalised", in, out)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			t.Fatalf("normalizeHostPort(%q) = %q: bad port", in, out)
		}
	})
}
