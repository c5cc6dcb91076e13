package mcp_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/etbproject/etb/enforce/sandbox"
	"github.com/etbproject/etb/mcp"
)

// The upstream's start is governed before anything is spawned: a policy
// that does not permit it leaves nothing running and etb exits 77 with a
// clear message.
func TestServerStartDenied(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	pol := writeFile(t, filepath.Join(t.TempDir(), "policy.yaml"), "version: etb.policy/v1\nname: none\nrules: []\n")
	cmd := exec.Command(etbBin, "--home", t.TempDir(), "mcp", "--policy", pol, "--", self)
	cmd.Env = append(os.Environ(), "ETB_MCP_TEST_SERVER=1", "ETB_MCP_TEST_CHILD_PIDFILE="+pidFile)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 77 {
		t.Fatalf("etb mcp with the start denied: %v, want exit 77\n%s", err, out)
	}
	if !strings.Contains(string(out), "denied") || !strings.Contains(string(out), "was not started") {
		t.Errorf("message does not say the start was denied: %s", out)
	}
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Errorf("the upstream ran although its start was denied: %v", err)
	}
}

// A permit whose obligations this host cannot enforce is refused before
// the upstream starts.
func TestServerStartUnenforceable(t *testing.T) {
	spec := sandbox.Spec{MaxProcesses: 64}
	if err := sandbox.Check(spec, sandbox.Probe()); err == nil {
		t.Skip("this host enforces max_processes; the refusal needs a host that cannot (uid 0)")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	pol := writeFile(t, filepath.Join(t.TempDir(), "policy.yaml"), `version: etb.policy/v1
name: limits
rules:
  - id: start-with-limits
    effect: permit
    match: {kind: mcp.server_start}
    obligations: {max_processes: 64}
`)
	cmd := exec.Command(etbBin, "--home", t.TempDir(), "mcp", "--policy", pol, "--", self)
	cmd.Env = append(os.Environ(), "ETB_MCP_TEST_SERVER=1", "ETB_MCP_TEST_CHILD_PIDFILE="+pidFile)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 77 || !strings.Contains(string(out), "cannot be enforced") {
		t.Fatalf("etb mcp with unenforceable obligations: %v\n%s", err, out)
	}
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Errorf("the upstream ran although its obligations cannot be enforced: %v", err)
	}
}

// A permit whose obligations confine the upstream runs it in the kernel
// sandbox: the policy lets every write_file call through, but the
// filesystem server may only read (the data directory and the other one
// it serves), so a write fails inside the upstream (Landlock refuses the
// open for writing) and the file does not exist afterwards, while reads
// work.
func TestSandboxedUpstream(t *testing.T) {
	fs := peer(t, "server-filesystem")
	if err := sandbox.Check(sandbox.Spec{Read: []string{"/"}}, sandbox.Probe()); err != nil {
		t.Skipf("this host cannot run the kernel sandbox: %v", err)
	}
	data, outside, home := tempDir(t), tempDir(t), t.TempDir()
	writeFile(t, filepath.Join(data, "notes.txt"), "confined\n")
	node, err := filepath.EvalSymlinks(fs[0])
	if err != nil {
		t.Fatal(err)
	}
	peers, err := filepath.Abs(filepath.Join("testdata", "peers"))
	if err != nil {
		t.Fatal(err)
	}
	if peers, err = filepath.EvalSymlinks(filepath.Join(peers, "node_modules")); err != nil {
		t.Fatal(err)
	}
	// The server may read outside too, but write nowhere.
	readable := []string{"/usr", "/lib", "/etc", "/proc", "/dev", filepath.Dir(node), peers, data, outside}
	// execve needs the dynamic loader to be executable too.
	executable := []string{"/usr/lib"}
	if _, err := os.Stat("/lib64"); err == nil {
		readable = append(readable, "/lib64")
		executable = append(executable, "/lib64")
	}
	pol := policyFile(t, fmt.Sprintf(`version: etb.policy/v1
name: mcp-sandbox
rules:
  - id: confined-filesystem-server
    effect: permit
    match: {kind: mcp.server_start, name: node}
    obligations:
      fs: {read: %s, exec: %s}
      net: {allow: []}
  - id: any-file-tool
    effect: permit
    match: {kind: mcp.tool_call, name: [secure-filesystem-server/read_text_file, secure-filesystem-server/write_file]}
`, jsonList(t, readable), jsonList(t, executable)))
	// policyFile's blanket start rule comes first; the confined rule
	// tightens it (obligations of every matching permit rule combine).
	cs := session(t, home, pol, append(fs, data, outside)...)
	res := call(t, cs, "read_text_file", map[string]any{"path": filepath.Join(data, "notes.txt")})
	if res.IsError || !strings.Contains(text(res), "confined") {
		t.Fatalf("read inside the sandbox: isError=%v %q", res.IsError, text(res))
	}
	target := filepath.Join(outside, "escaped.txt")
	res = call(t, cs, "write_file", map[string]any{"path": target, "content": "out"})
	if !res.IsError {
		t.Fatalf("write outside the sandbox: %q; want the upstream to fail", text(res))
	}
	t.Logf("the upstream's answer to the write: %q", text(res))
	if !strings.Contains(text(res), "EACCES") {
		t.Errorf("the upstream's answer to the write is not the kernel's refusal: %q", text(res))
	}
	cs.Close()
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Fatalf("the sandboxed upstream wrote %s: %v", target, err)
	}
	list := verifyAll(t, home, pol, 3)
	start := list[2]
	if start.Kind != mcp.KindServerStart || start.Decision != "permit" {
		t.Fatalf("server start: %+v", start)
	}
	// The write was permitted and forwarded: the kernel refused it.
	if list[0].Decision != "permit" || list[0].Outcome != "exit 1" {
		t.Errorf("write: %s %s, want permit exit 1 (the upstream's error)", list[0].Decision, list[0].Outcome)
	}
}

func jsonList(t *testing.T, l []string) string {
	t.Helper()
	b, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
