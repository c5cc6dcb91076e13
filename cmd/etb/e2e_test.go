package main

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/etbproject/etb/internal/etbtest"
	"github.com/etbproject/etb/lineage"
)

// These tests build the etb binary and run real commands through it.

var etbBin string

func TestMain(m *testing.M) {
	bin, cleanup, err := etbtest.Build(".")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	etbBin = bin
	code := m.Run()
	cleanup()
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
}

func etb(t *testing.T, home string, args ...string) result {
	t.Helper()
	cmd := exec.Command(etbBin, append([]string{"--home", home}, args...)...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("etb %v: %v", args, err)
	}
	return result{so.String(), se.String(), code}
}

// testPolicy permits sh (which the default policy does not) with a short
// timeout, so tests can build process trees.
const testPolicy = `version: etb.policy/v1
name: e2e
defaults:
  obligations: {timeout: 30s}
rules:
  - id: allow-sh
    effect: permit
    match: {kind: shell.exec, name: [sh]}
    message: test shell
    obligations: {timeout: 1s}
  - id: allow-echo
    effect: permit
    match: {kind: shell.exec, name: [echo, "true", "false"]}
`

func writePolicy(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(p, []byte(testPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRunPermitKeepsOutputAndStatus(t *testing.T) {
	home := t.TempDir()
	r := etb(t, home, "run", "--", "echo", "hello")
	if r.code != 0 || r.stdout != "hello\n" {
		t.Fatalf("echo hello: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(home, "policy.yaml")); err != nil {
		t.Fatalf("first use did not initialise the home: %v", err)
	}
	// The command's own exit status and stderr pass through.
	r = etb(t, home, "run", "--", "ls", "/definitely/not/here")
	if r.code != 2 || !strings.Contains(r.stderr, "/definitely/not/here") {
		t.Fatalf("ls missing: code %d stderr %q", r.code, r.stderr)
	}
}

func TestRunDeniedByDefaultPolicy(t *testing.T) {
	home := t.TempDir()
	victim := filepath.Join(t.TempDir(), "x")
	if err := os.MkdirAll(victim, 0o755); err != nil {
		t.Fatal(err)
	}
	r := etb(t, home, "run", "--", "rm", "-rf", victim)
	if r.code != 77 {
		t.Fatalf("rm -rf: code %d, want 77; stderr %q", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "denied by forbid-recursive-delete") {
		t.Fatalf("stderr does not name the rule: %q", r.stderr)
	}
	if _, err := os.Stat(victim); err != nil {
		t.Fatalf("denied command ran: %v", err)
	}
	// Anything not in the default allow list is denied by default.
	r = etb(t, home, "run", "--", "sh", "-c", "true")
	if r.code != 77 || !strings.Contains(r.stderr, "etb.default-deny") {
		t.Fatalf("sh: code %d stderr %q", r.code, r.stderr)
	}
	r = etb(t, home, "run", "--", "no-such-program-etb")
	if r.code != 127 {
		t.Fatalf("missing program: code %d, want 127", r.code)
	}
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// A zombie has exited.
	f := strings.Fields(string(b))
	return len(f) > 2 && f[2] != "Z"
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("pid file: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func TestTimeoutKillsProcessTree(t *testing.T) {
	home, pol := t.TempDir(), writePolicy(t)
	dir := t.TempDir()
	child, grand := filepath.Join(dir, "child"), filepath.Join(dir, "grand")
	// A child that forks a grandchild which escapes the process group with
	// setsid; both would sleep for ten minutes.
	script := fmt.Sprintf(`sleep 600 & echo $! > %s; setsid sleep 600 & echo $! > %s; wait`, child, grand)
	start := time.Now()
	r := etb(t, home, "run", "--policy", pol, "--evidence", filepath.Join(dir, "ev.json"), "--", "sh", "-c", script)
	if r.code != 124 || !strings.Contains(r.stderr, "timed out") {
		t.Fatalf("code %d stderr %q", r.code, r.stderr)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("took %s for a 1s timeout", d)
	}
	for _, p := range []string{child, grand} {
		if pid := readPID(t, p); alive(pid) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("process %d (%s) survived the timeout", pid, filepath.Base(p))
		}
	}
	trust := filepath.Join(dir, "trust.json")
	exportTrust(t, home, trust)
	v := etb(t, home, "verify", filepath.Join(dir, "ev.json"), "--trust", trust)
	if v.code != 0 || !strings.Contains(v.stdout, "interrupted: timeout") {
		t.Fatalf("verify timeout evidence: code %d %s %s", v.code, v.stdout, v.stderr)
	}
}

func exportTrust(t *testing.T, home, path string) {
	t.Helper()
	r := etb(t, home, "trust", "export")
	if r.code != 0 {
		t.Fatalf("trust export: %d %s", r.code, r.stderr)
	}
	if err := os.WriteFile(path, []byte(r.stdout), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestEvidenceVerifyRoundTrip(t *testing.T) {
	home, dir := t.TempDir(), t.TempDir()
	ev, trust := filepath.Join(dir, "out.json"), filepath.Join(dir, "trust.json")
	r := etb(t, home, "run", "--evidence", ev, "--", "ls", dir)
	if r.code != 0 {
		t.Fatalf("run: %d %s", r.code, r.stderr)
	}
	exportTrust(t, home, trust)
	v := etb(t, home, "verify", ev, "--trust", trust)
	if v.code != 0 || !strings.HasPrefix(v.stdout, "VALID") || !strings.Contains(v.stdout, "decision.rederive") {
		t.Fatalf("verify: code %d stdout %q stderr %q", v.code, v.stdout, v.stderr)
	}

	// A denial has evidence too, and it verifies (the denial is re-derived).
	evd := filepath.Join(dir, "deny.json")
	if r := etb(t, home, "run", "--evidence", evd, "--", "rm", "-rf", dir); r.code != 77 {
		t.Fatalf("deny: %d", r.code)
	}
	if v := etb(t, home, "verify", evd, "--trust", trust); v.code != 0 || !strings.Contains(v.stdout, "decision deny") {
		t.Fatalf("verify denial: %d %s %s", v.code, v.stdout, v.stderr)
	}

	// Tampering: change the recorded exit status in the end event.
	raw, _ := os.ReadFile(ev)
	bad := strings.Replace(string(raw), `\"exit_code\":0`, `\"exit_code\":1`, 1)
	if bad == string(raw) {
		t.Fatal("tamper target not found in bundle")
	}
	badPath := filepath.Join(dir, "bad.json")
	os.WriteFile(badPath, []byte(bad), 0o644)
	if v := etb(t, home, "verify", badPath, "--trust", trust); v.code != 1 || !strings.Contains(v.stderr, "event.inclusion") {
		t.Fatalf("tampered bundle: code %d stderr %q", v.code, v.stderr)
	}
	// Another home's trust file does not verify this evidence.
	other := filepath.Join(dir, "other.json")
	exportTrust(t, t.TempDir(), other)
	if v := etb(t, home, "verify", ev, "--trust", other); v.code != 1 || !strings.Contains(v.stderr, "checkpoint.signature") {
		t.Fatalf("foreign trust: code %d stderr %q", v.code, v.stderr)
	}
	// Usage errors are exit 2.
	if v := etb(t, home, "verify", ev); v.code != 2 {
		t.Fatalf("verify without --trust: code %d", v.code)
	}
	if v := etb(t, home, "verify", filepath.Join(dir, "missing.json"), "--trust", trust); v.code != 2 {
		t.Fatalf("verify missing file: code %d", v.code)
	}
}

func TestLogAndShow(t *testing.T) {
	home := t.TempDir()
	etb(t, home, "run", "--", "echo", "one")
	etb(t, home, "run", "--", "rm", "-rf", "/nonexistent-etb")
	r := etb(t, home, "log")
	if r.code != 0 {
		t.Fatalf("log: %d %s", r.code, r.stderr)
	}
	for _, want := range []string{"EXECUTION", "echo", "permit", "exit 0", "rm", "deny", "forbid-recursive-delete"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("etb log lacks %q:\n%s", want, r.stdout)
		}
	}
	var list []struct{ ID, Name string }
	j := etb(t, home, "log", "--json")
	if err := json.Unmarshal([]byte(j.stdout), &list); err != nil || len(list) != 2 {
		t.Fatalf("log --json: %v %q", err, j.stdout)
	}
	var echoID string
	for _, s := range list {
		if s.Name == "echo" {
			echoID = s.ID
		}
	}
	// What `etb log` prints (the id's random end), a start of it, a
	// prefix long enough to pass the shared time digits, and the whole id
	// all name the execution.
	short := lineage.ShortID(echoID)
	if !strings.Contains(r.stdout, short) {
		t.Errorf("etb log does not print %s for %s:\n%s", short, echoID, r.stdout)
	}
	for _, part := range []string{short, short[:6], echoID[:24], echoID} {
		s := etb(t, home, "log", "show", part)
		for _, want := range []string{"intent", "decision", "grant", "start", "end"} {
			if !strings.Contains(s.stdout, want) {
				t.Errorf("log show %s lacks %s:\n%s%s", part, want, s.stdout, s.stderr)
			}
		}
	}
	// The first digits are the time, shared by both executions here.
	if a := etb(t, home, "log", "show", echoID[:6]); a.code == 0 || !strings.Contains(a.stderr, "ambiguous") {
		t.Errorf("log show %s (shared time digits): exit %d, %s", echoID[:6], a.code, a.stderr)
	}
	if s := etb(t, home, "log", "show", "ffffffffffff"); s.code == 0 {
		t.Errorf("log show of an unknown id succeeded")
	}
}

func TestPolicyCommands(t *testing.T) {
	home := t.TempDir()
	etb(t, home, "init")
	r := etb(t, home, "policy", "test", filepath.Join(home, "policy.yaml"))
	if r.code != 0 || !strings.Contains(r.stdout, " 0 failed") {
		t.Fatalf("policy test of the default policy: %d %s %s", r.code, r.stdout, r.stderr)
	}
	dir := t.TempDir()
	in := filepath.Join(dir, "action.json")
	os.WriteFile(in, []byte(`{"action":{"kind":"shell.exec","name":"rm","args":["-rf","/"],"target":{"program":"/usr/bin/rm"}}}`), 0o644)
	e := etb(t, home, "policy", "eval", filepath.Join(home, "policy.yaml"), "--input", in)
	if e.code != 0 || !strings.Contains(e.stdout, `"deny"`) || !strings.Contains(e.stdout, "forbid-recursive-delete") {
		t.Fatalf("policy eval: %d %s %s", e.code, e.stdout, e.stderr)
	}
	broken := filepath.Join(dir, "broken.yaml")
	os.WriteFile(broken, []byte("version: etb.policy/v1\nname: broken\nrules:\n  - id: x\n    effect: permit\n    when: 'action.nosuchfield == 1'\n"), 0o644)
	if b := etb(t, home, "policy", "test", broken); b.code != 1 || !strings.Contains(b.stderr, "nosuchfield") {
		t.Fatalf("broken policy: %d %s", b.code, b.stderr)
	}
	failing := filepath.Join(dir, "failing.yaml")
	os.WriteFile(failing, []byte(testPolicy+"tests:\n  - name: echo is denied (wrong on purpose)\n    input: {action: {kind: shell.exec, name: echo}}\n    expect: {decision: deny}\n"), 0o644)
	if f := etb(t, home, "policy", "test", failing); f.code != 1 || !strings.Contains(f.stdout, "FAIL") {
		t.Fatalf("failing test: %d %s", f.code, f.stdout)
	}
}

// Several etb processes governing commands on the same home at once share
// one ledger: every execution's evidence verifies afterwards.
func TestConcurrentRunsShareOneLedger(t *testing.T) {
	home, dir := t.TempDir(), t.TempDir()
	etb(t, home, "init")
	const n = 6
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ev := filepath.Join(dir, fmt.Sprintf("ev%d.json", i))
			r := etb(t, home, "run", "--evidence", ev, "--", "echo", strconv.Itoa(i))
			if r.code != 0 || r.stdout != strconv.Itoa(i)+"\n" {
				errs <- fmt.Sprintf("run %d: %d %q %q", i, r.code, r.stdout, r.stderr)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	trust := filepath.Join(dir, "trust.json")
	exportTrust(t, home, trust)
	for i := 0; i < n; i++ {
		if v := etb(t, home, "verify", filepath.Join(dir, fmt.Sprintf("ev%d.json", i)), "--trust", trust); v.code != 0 {
			t.Errorf("verify %d: %s", i, v.stderr)
		}
	}
}

func TestIdentityIssue(t *testing.T) {
	home, dir := t.TempDir(), t.TempDir()
	crt, key := filepath.Join(dir, "a.crt"), filepath.Join(dir, "a.key")
	r := etb(t, home, "identity", "issue", "spiffe://etb.local/agent/builder", "--cert", crt, "--key", key, "--ttl", "10m")
	if r.code != 0 {
		t.Fatalf("issue: %d %s", r.code, r.stderr)
	}
	raw, err := os.ReadFile(crt)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(raw)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != "spiffe://etb.local/agent/builder" || cert.NotAfter.After(time.Now().Add(11*time.Minute)) {
		t.Fatalf("svid: uris %v not after %s", cert.URIs, cert.NotAfter)
	}
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v %v", fi.Mode(), err)
	}
	for _, bad := range [][]string{
		{"identity", "issue", "spiffe://other.td/agent/x"},
		{"identity", "issue", "not-an-id"},
		{"identity", "issue", "spiffe://etb.local/agent/x", "--ttl", "48h"},
	} {
		if r := etb(t, home, bad...); r.code == 0 {
			t.Errorf("%v succeeded", bad)
		}
	}
}

// The ledger can be checked from first principles, and evidence proves
// consistency with a checkpoint a verifier saw earlier.
func TestFsckAndVerifySince(t *testing.T) {
	home, dir := t.TempDir(), t.TempDir()
	first := filepath.Join(dir, "first.json")
	if r := etb(t, home, "run", "--evidence", first, "--", "echo", "one"); r.code != 0 {
		t.Fatalf("run: %s", r.stderr)
	}
	var b struct{ Checkpoint string }
	raw, _ := os.ReadFile(first)
	if err := json.Unmarshal(raw, &b); err != nil {
		t.Fatal(err)
	}
	seen := filepath.Join(dir, "seen.cp")
	os.WriteFile(seen, []byte(b.Checkpoint), 0o644)

	etb(t, home, "run", "--", "echo", "two")
	list := etb(t, home, "log", "--json")
	var execs []struct{ ID, Args string }
	json.Unmarshal([]byte(list.stdout), &execs)
	second := filepath.Join(dir, "second.json")
	if r := etb(t, home, "evidence", execs[0].ID, "--since", seen, "-o", second); r.code != 0 {
		t.Fatalf("evidence --since: %s", r.stderr)
	}
	trust := filepath.Join(dir, "trust.json")
	exportTrust(t, home, trust)
	v := etb(t, home, "verify", second, "--trust", trust, "--since", seen)
	if v.code != 0 || !strings.Contains(v.stdout, "checkpoint.consistency") {
		t.Fatalf("verify --since: %d %s %s", v.code, v.stdout, v.stderr)
	}
	// A bundle without the proof cannot show consistency.
	if v := etb(t, home, "verify", first, "--trust", trust, "--since", seen); v.code != 0 {
		t.Fatalf("same-size since: %d %s", v.code, v.stderr)
	}
	plain := filepath.Join(dir, "plain.json")
	etb(t, home, "evidence", execs[0].ID, "-o", plain)
	if v := etb(t, home, "verify", plain, "--trust", trust, "--since", seen); v.code != 1 || !strings.Contains(v.stderr, "checkpoint.consistency") {
		t.Fatalf("since without proof: %d %s", v.code, v.stderr)
	}
	if r := etb(t, home, "ledger", "fsck"); r.code != 0 || !strings.Contains(r.stdout, "ok: 10 entries") {
		t.Fatalf("fsck: %d %s %s", r.code, r.stdout, r.stderr)
	}
}

// A task tree across runs: `etb log tree` shows it, `etb evidence --task`
// writes one bundle for all of it, and `etb verify` checks it.
func TestLogTreeAndTaskEvidence(t *testing.T) {
	home, dir := t.TempDir(), t.TempDir()
	for _, args := range [][]string{
		{"run", "--task", "job", "--", "echo", "one"},
		{"run", "--task", "job-sub", "--parent", "job", "--", "echo", "two"},
		{"run", "--task", "job", "--", "rm", "-rf", "/nonexistent-etb"},
	} {
		etb(t, home, args...)
	}
	if r := etb(t, home, "run", "--task", "job-sub", "--parent", "other", "--", "echo", "x"); r.code == 0 {
		t.Fatalf("a task was moved under another parent: %s", r.stderr)
	}
	r := etb(t, home, "log", "tree", "job")
	if r.code != 0 {
		t.Fatalf("log tree: %d %s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 5 || !strings.HasPrefix(lines[0], "task job") || !strings.HasPrefix(lines[3], "  task job-sub") {
		t.Fatalf("log tree:\n%s", r.stdout)
	}
	for _, want := range []string{"echo", "permit by allow-read-only", "exit 0", "deny by forbid-recursive-delete"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("log tree lacks %q:\n%s", want, r.stdout)
		}
	}
	if r := etb(t, home, "log", "tree", "nope"); r.code == 0 {
		t.Errorf("log tree of an unknown task succeeded")
	}
	// A run without --task has a task of its own, named by the run's
	// execution id: the short id `etb log` prints names it too.
	etb(t, home, "run", "--", "echo", "alone")
	var list []struct{ ID, Task string }
	if err := json.Unmarshal([]byte(etb(t, home, "log", "--json").stdout), &list); err != nil || len(list) == 0 {
		t.Fatalf("log --json: %v", err)
	}
	if r := etb(t, home, "log", "tree", lineage.ShortID(list[0].Task)); r.code != 0 || !strings.Contains(r.stdout, "alone") {
		t.Errorf("log tree %s (the short id of task %s): %d\n%s%s", lineage.ShortID(list[0].Task), list[0].Task, r.code, r.stdout, r.stderr)
	}
	bundle, trust := filepath.Join(dir, "tree.json"), filepath.Join(dir, "trust.json")
	if r := etb(t, home, "evidence", "--task", "job-sub", "-o", bundle); r.code != 0 {
		t.Fatalf("evidence --task: %d %s", r.code, r.stderr)
	}
	tr := etb(t, home, "trust", "export")
	if err := os.WriteFile(trust, []byte(tr.stdout), 0o644); err != nil {
		t.Fatal(err)
	}
	if v := etb(t, home, "verify", bundle, "--trust", trust); v.code != 0 || !strings.Contains(v.stdout, "VALID task tree job: 3 executions") {
		t.Fatalf("verify task bundle: %d %s%s", v.code, v.stdout, v.stderr)
	}
	raw, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatal(err)
	}
	var b struct {
		Task   string            `json:"task"`
		Events []json.RawMessage `json:"events"`
	}
	if err := json.Unmarshal(raw, &b); err != nil || b.Task != "job" || len(b.Events) < 11 {
		t.Fatalf("bundle of the tree from its root: task %q, %d events, %v", b.Task, len(b.Events), err)
	}
	if r := etb(t, home, "evidence", "--task", "job", "some-id"); r.code != 2 {
		t.Errorf("evidence with both an id and --task: exit %d", r.code)
	}
}
