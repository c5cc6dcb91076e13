package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A permit's obligations beyond the timeout are enforced by the kernel
// sandbox: the filesystem, network and environment scopes hold for a real
// command run through `etb run`, egress attempts are recorded as events, and
// the evidence verifies.
func TestRunEnforcesObligationsInSandbox(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("curl is missing; .ci/run installs it")
		}
		t.Skip("needs curl (apt-get install curl)")
	}
	allowed := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hello from outside") }))
	defer allowed.Close()
	denied := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("the denied server was reached: %s", r.URL)
	}))
	defer denied.Close()
	allowHost := strings.TrimPrefix(allowed.URL, "http://")
	home, work, dir := t.TempDir(), t.TempDir(), t.TempDir()
	outside := filepath.Join(dir, "outside.txt")
	pol := filepath.Join(dir, "policy.yaml")
	os.WriteFile(pol, []byte(fmt.Sprintf(`version: etb.policy/v1
name: sandbox-e2e
rules:
  - id: sandboxed-sh
    effect: permit
    match: {kind: shell.exec, name: [sh]}
    obligations:
      timeout: 20s
      fs: {read: ["/"], write: [%q], exec: ["/usr"]}
      net: {allow: [%q]}
      env: {allow: [PATH]}
`, work, allowHost)), 0o644)
	script := fmt.Sprintf(`echo inside > %s/in.txt
echo outside > %s 2>/dev/null || echo "write outside refused"
echo "secret=[$ETB_TEST_SECRET]"
curl -s --max-time 5 --proxy "$http_proxy" %s/ ; echo
curl -s --max-time 5 --proxy "$http_proxy" -o /dev/null -w "denied=%%{http_code}\n" %s/
curl -s --max-time 5 --noproxy '*' %s/ || echo "direct connect refused"
`, work, outside, allowed.URL, denied.URL, allowed.URL)
	ev := filepath.Join(dir, "ev.json")
	cmd := exec.Command(etbBin, "--home", home, "run", "--policy", pol, "--evidence", ev, "--", "sh", "-c", script)
	cmd.Env = append(os.Environ(), "ETB_TEST_SECRET=hunter2")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("sandboxed run: %v\n%s", err, out)
	}
	for _, want := range []string{"write outside refused", "secret=[]", "hello from outside", "denied=403", "direct connect refused"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if b, err := os.ReadFile(filepath.Join(work, "in.txt")); err != nil || string(b) != "inside\n" {
		t.Errorf("write inside the allowed directory: %q %v", b, err)
	}
	if _, err := os.Stat(outside); err == nil {
		t.Error("the command wrote outside its fs.write scope")
	}
	trust := filepath.Join(dir, "trust.json")
	exportTrust(t, home, trust)
	if v := etb(t, home, "verify", ev, "--trust", trust); v.code != 0 {
		t.Fatalf("verify: %s", v.stderr)
	}
	raw, _ := os.ReadFile(ev)
	for _, want := range []string{`\"type\":\"egress\"`, `\"allowed\":true`, `\"allowed\":false`} {
		if !strings.Contains(string(raw), want) {
			t.Errorf("evidence lacks %s", want)
		}
	}
}

// An obligation the host cannot enforce is a refusal before anything runs.
func TestRunRefusesUnenforceableObligation(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("max_processes is enforceable for this user; the refusal needs uid 0")
	}
	home, dir := t.TempDir(), t.TempDir()
	marker := filepath.Join(dir, "ran")
	pol := filepath.Join(dir, "policy.yaml")
	os.WriteFile(pol, []byte(`version: etb.policy/v1
name: nproc
rules:
  - id: limited-touch
    effect: permit
    match: {kind: shell.exec, name: [touch]}
    obligations: {max_processes: 8}
`), 0o644)
	r := etb(t, home, "run", "--policy", pol, "--", "touch", marker)
	if r.code != 77 || !strings.Contains(r.stderr, "cannot be enforced") {
		t.Fatalf("code %d stderr %q", r.code, r.stderr)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the command ran although its obligation could not be enforced")
	}
}
