package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/etbproject/etb/identity"
	"github.com/etbproject/etb/internal/etbtest"
)

// startServe starts `etb serve` on addr and waits until it listens.
func startServe(t *testing.T, home, addr string, extra ...string) *etbtest.Proc {
	t.Helper()
	return etbtest.Start(t, etbBin, "etb serve: https://", append([]string{"--home", home, "serve", "--listen", addr}, extra...)...)
}

// children returns the pids of pid's children (of any of its threads).
func children(pid int) []int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, task := range tasks {
		b, _ := os.ReadFile(task)
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// startRemoteSleep starts `etb run --gateway ... -- sleep 600` and waits
// until sleep runs. It returns the etb process and the sleep pid.
func startRemoteSleep(t *testing.T, home, addr string, id string) (*exec.Cmd, *bytes.Buffer, int) {
	t.Helper()
	cmd := exec.Command(etbBin, "--home", home, "run", "--gateway", "https://"+addr,
		"--cert", filepath.Join(home, id+".crt"), "--key", filepath.Join(home, id+".key"), "--", "sleep", "600")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, c := range children(cmd.Process.Pid) {
			if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", c)); bytes.Contains(b, []byte("600")) {
				return cmd, &stderr, c
			}
		}
	}
	t.Fatalf("sleep did not start: %s", stderr.String())
	return nil, nil, 0
}

func issue(t *testing.T, home, id, name string) {
	t.Helper()
	r := etb(t, home, "identity", "issue", id, "--cert", filepath.Join(home, name+".crt"), "--key", filepath.Join(home, name+".key"))
	if r.code != 0 {
		t.Fatalf("identity issue: %s", r.stderr)
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// The gateway process is killed mid-execution: the enforcer kills the
// child at lease expiry and the interruption reaches the ledger after the
// gateway restarts.
func TestServeGatewayKilledChildDiesAtLeaseExpiry(t *testing.T) {
	home := t.TempDir()
	issue(t, home, "spiffe://etb.local/agent/a", "a")
	addr := etbtest.FreeAddr(t)
	const lease = time.Second
	gw := startServe(t, home, addr, "--lease", lease.String())
	run, stderr, sleepPid := startRemoteSleep(t, home, addr, "a")
	// Let the start report reach the gateway (the enforcer kills the tree
	// if it cannot report the start: a different test).
	time.Sleep(300 * time.Millisecond)
	killed := time.Now()
	gw.Kill() // SIGKILL
	err := run.Wait()
	took := time.Since(killed)
	if took > lease+3*time.Second {
		t.Fatalf("etb run ended %v after the gateway died (lease %v)", took, lease)
	}
	if syscall.Kill(sleepPid, 0) == nil {
		t.Fatalf("sleep %d still alive", sleepPid)
	}
	if exitCode(err) != 70 || !strings.Contains(stderr.String(), "lease_lost") || !strings.Contains(stderr.String(), "spooled") {
		t.Fatalf("etb run: %v\n%s", err, stderr.String())
	}
	t.Logf("gateway killed → tree dead in %v", took)

	gw = startServe(t, home, addr, "--lease", lease.String())
	r := etb(t, home, "run", "--gateway", "https://"+addr, "--cert", filepath.Join(home, "a.crt"), "--key", filepath.Join(home, "a.key"), "--", "true")
	if r.code != 0 {
		t.Fatalf("etb run true: %d %s", r.code, r.stderr)
	}
	if left, _ := os.ReadDir(filepath.Join(home, "enforcer", "spool")); len(left) != 0 {
		t.Fatalf("spool not delivered: %v", left)
	}
	gw.Stop(t)
	r = etb(t, home, "log")
	if !strings.Contains(r.stdout, "interrupted: lease_lost") || !strings.Contains(r.stdout, "exit 0") {
		t.Fatalf("etb log:\n%s", r.stdout)
	}
}

func TestServeRevokeKillsRemoteRun(t *testing.T) {
	home := t.TempDir()
	issue(t, home, "spiffe://etb.local/agent/a", "a")
	issue(t, home, "spiffe://etb.local/admin/ops", "ops")
	addr := etbtest.FreeAddr(t)
	startServe(t, home, addr)
	run, stderr, sleepPid := startRemoteSleep(t, home, addr, "a")
	// An agent may not revoke.
	r := etb(t, home, "revoke", "--gateway", "https://"+addr, "--cert", filepath.Join(home, "a.crt"), "--key", filepath.Join(home, "a.key"), "--all")
	if r.code == 0 || !strings.Contains(r.stderr, "403") {
		t.Fatalf("agent revoke: %d %s", r.code, r.stderr)
	}
	r = etb(t, home, "revoke", "--gateway", "https://"+addr, "--cert", filepath.Join(home, "ops.crt"), "--key", filepath.Join(home, "ops.key"),
		"--agent", "spiffe://etb.local/agent/a")
	returned := time.Now()
	if r.code != 0 || !strings.Contains(r.stdout, "1 execution(s) revoked") {
		t.Fatalf("etb revoke: %d %s %s", r.code, r.stdout, r.stderr)
	}
	for syscall.Kill(sleepPid, 0) == nil {
		if time.Since(returned) > 2*time.Second {
			t.Fatalf("sleep %d alive 2s after etb revoke returned", sleepPid)
		}
		time.Sleep(time.Millisecond)
	}
	t.Logf("etb revoke returned → sleep dead in %v", time.Since(returned))
	err := run.Wait()
	if exitCode(err) != 70 || !strings.Contains(stderr.String(), "revoked") {
		t.Fatalf("etb run: %v\n%s", err, stderr.String())
	}
	// Without a client certificate nothing is served.
	r = etb(t, home, "run", "--gateway", "https://"+addr, "--", "true")
	if r.code != 2 {
		t.Fatalf("run without --cert: %d %s", r.code, r.stderr)
	}
	// The ledger's tlog-tiles read API is mounted under /log/.
	bundle, _, err := loadBundle(filepath.Join(home, "ca", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := identity.ClientTLSConfig(filepath.Join(home, "ops.crt"), filepath.Join(home, "ops.key"), bundle, func(spiffeid.ID) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
	resp, err := hc.Get("https://" + addr + "/log/checkpoint")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(string(body), "etb.local/log/") {
		t.Fatalf("/log/checkpoint: %d %q", resp.StatusCode, body)
	}
}

// `etb serve --socket`: a registered local caller is attested by the
// kernel and governed; an unregistered one is refused.
func TestServeUnixSocket(t *testing.T) {
	home := t.TempDir()
	sock := filepath.Join(t.TempDir(), "etb.sock")
	regs := filepath.Join(home, "registrations.yaml")
	write := func(uid int) {
		t.Helper()
		y := fmt.Sprintf("entries:\n  - id: spiffe://etb.local/agent/local\n    uid: %d\n", uid)
		if err := os.WriteFile(regs, []byte(y), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		uid  int
		code int
	}{
		{"registered", os.Getuid(), 0},
		{"unregistered", os.Getuid() + 4242, 70},
	} {
		t.Run(tc.name, func(t *testing.T) {
			write(tc.uid)
			gw := startServeSocket(t, home, sock)
			r := etb(t, home, "run", "--gateway", "unix://"+sock, "--", "echo", "via-socket")
			if r.code != tc.code || (tc.code == 0 && r.stdout != "via-socket\n") {
				t.Fatalf("etb run: %d %q %s", r.code, r.stdout, r.stderr)
			}
			gw.Stop(t)
		})
	}
	r := etb(t, home, "log")
	if !strings.Contains(r.stdout, "spiffe://etb.local/agent/local") || strings.Count(r.stdout, "echo") != 1 {
		t.Fatalf("etb log:\n%s", r.stdout)
	}
}

func startServeSocket(t *testing.T, home, sock string) *etbtest.Proc {
	t.Helper()
	return etbtest.Start(t, etbBin, "etb serve: unix socket", "--home", home, "serve", "--socket", sock)
}

// Delegation from the command line: agent a delegates `echo` to agent b;
// b runs echo under it, cannot run ls, and agent c cannot use b's grant.
func TestServeDelegateAndRunUnderIt(t *testing.T) {
	home, dir := t.TempDir(), t.TempDir()
	for _, n := range []string{"a", "b", "c"} {
		issue(t, home, "spiffe://etb.local/agent/"+n, n)
	}
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(`version: etb.policy/v1
name: delegation
defaults: {obligations: {timeout: 30s}}
rules:
  - id: run
    effect: permit
    match: {kind: shell.exec, name: [echo, ls]}
  - id: delegate
    effect: permit
    match: {kind: agent.delegate}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := etbtest.FreeAddr(t)
	startServe(t, home, addr, "--policy", pol)
	as := func(n string) []string {
		return []string{"--gateway", "https://" + addr, "--cert", filepath.Join(home, n+".crt"), "--key", filepath.Join(home, n+".key")}
	}
	out := filepath.Join(dir, "b.json")
	r := etb(t, home, append(append([]string{"delegate"}, as("a")...), "--agent", "spiffe://etb.local/agent/b",
		"--scope", `{"actions":[{"kind":"shell.exec","name":"echo"}]}`, "--ttl", "2m", "-o", out)...)
	if r.code != 0 {
		t.Fatalf("delegate: %d %s", r.code, r.stderr)
	}
	r = etb(t, home, append(append([]string{"run"}, as("b")...), "--delegation", "@"+out, "--", "echo", "delegated")...)
	if r.code != 0 || r.stdout != "delegated\n" {
		t.Fatalf("run under the delegation: %d %q %s", r.code, r.stdout, r.stderr)
	}
	r = etb(t, home, append(append([]string{"run"}, as("b")...), "--delegation", "@"+out, "--", "ls")...)
	if r.code != 77 || !strings.Contains(r.stderr, "scope") {
		t.Fatalf("ls outside the scope: %d %s", r.code, r.stderr)
	}
	r = etb(t, home, append(append([]string{"run"}, as("c")...), "--delegation", "@"+out, "--", "echo", "x")...)
	if r.code != 77 || !strings.Contains(r.stderr, "held by") {
		t.Fatalf("c using b's delegation: %d %s", r.code, r.stderr)
	}
	if r := etb(t, home, append(append([]string{"delegate"}, as("a")...), "--agent", "spiffe://etb.local/agent/b", "--scope", "{bad")...); r.code != 2 {
		t.Fatalf("a malformed scope: exit %d", r.code)
	}
}

// serve --cpuprofile writes a gzipped pprof profile when the server stops;
// a path it cannot create is refused before anything is served.
func TestServeCPUProfile(t *testing.T) {
	home, dir := t.TempDir(), t.TempDir()
	prof := filepath.Join(dir, "serve.prof")
	gw := startServe(t, home, etbtest.FreeAddr(t), "--cpuprofile", prof)
	gw.Stop(t)
	b, err := os.ReadFile(prof)
	if err != nil || len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
		t.Fatalf("profile %s: %d bytes, %v; want a gzipped pprof profile", prof, len(b), err)
	}
	r := etb(t, home, "serve", "--listen", etbtest.FreeAddr(t), "--cpuprofile", filepath.Join(dir, "no-such-dir", "p"))
	if r.code == 0 || !strings.Contains(r.stderr, "--cpuprofile") {
		t.Fatalf("serve with an uncreatable profile path: exit %d, %s", r.code, r.stderr)
	}
}
