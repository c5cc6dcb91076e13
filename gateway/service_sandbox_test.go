package gateway_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/etbproject/etb/client"
	"github.com/etbproject/etb/enforce/sandbox"
	"github.com/etbproject/etb/policy"
	"github.com/etbproject/etb/proof"
)

// Through the gateway the enforcer applies the grant's sandbox obligations
// as embedded mode does: environment and filesystem scopes hold for the
// real command; on a host that cannot enforce them it refuses to run.
func TestServiceRunCommandAppliesSandbox(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, t.TempDir(), 0)
	work, outside := t.TempDir(), filepath.Join(t.TempDir(), "outside.txt")
	b, err := policy.Load([]byte(fmt.Sprintf(`version: etb.policy/v1
name: sandboxed
rules:
  - id: sandboxed-sh
    effect: permit
    match: {kind: shell.exec, name: [sh]}
    obligations:
      timeout: 20s
      fs: {read: ["/"], write: [%q], exec: ["/usr", "/bin"]}
      env: {allow: [PATH]}
`, work)))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.g.SetPolicy(ctx, b); err != nil {
		t.Fatal(err)
	}
	c := e.client("/agent/a")
	var out, errOut bytes.Buffer
	script := fmt.Sprintf(`echo "secret=[$ETB_TEST_SECRET]"; echo in > %s/in.txt && echo wrote-inside; echo out > %s 2>/dev/null || echo outside-refused`, work, outside)
	res, err := c.RunCommand(ctx, client.RunRequest{Argv: []string{"sh", "-c", script}, Cwd: work,
		Env: append(os.Environ(), "ETB_TEST_SECRET=hunter2"), Stdout: &out, Stderr: &errOut})
	if err != nil {
		t.Fatal(err)
	}
	f := sandbox.Probe()
	if !f.UserNS || !f.PIDNS || !f.MountNS || !f.Seccomp || f.LandlockABI == 0 {
		if res.ExitCode != client.ExitDenied || res.Reason != client.ReasonUnenforceable {
			t.Fatalf("host cannot sandbox (%+v), yet: %+v", f, res)
		}
		t.Skipf("refused as it must: this host cannot sandbox (%v)", f.Notes)
	}
	if res.ExitCode != 0 {
		t.Fatalf("run: %+v\n%s%s", res, out.String(), errOut.String())
	}
	want := "secret=[]\nwrote-inside\noutside-refused\n"
	if out.String() != want {
		t.Fatalf("output %q, want %q", out.String(), want)
	}
	if _, err := os.Stat(outside); err == nil {
		t.Fatal("wrote outside the fs scope")
	}
	ev, err := c.Evidence(ctx, res.Execution)
	if err != nil {
		t.Fatal(err)
	}
	if rep, err := proof.Verify(ctx, ev, e.trust()); err != nil || !strings.HasPrefix(rep.Outcome, "exit 0") {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}
