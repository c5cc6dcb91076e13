package enforce

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/etbproject/etb/enforce/sandbox"
)

// TestMain lets the test binary act as the sandbox's probe stage
// (sandbox.Probe re-executes it).
func TestMain(m *testing.M) {
	sandbox.MaybeRunHelper()
	os.Exit(m.Run())
}

// TestRunSandboxedExecutesWhatWasHashed is TestRunExecutesWhatWasHashed
// with the command in a sandbox: the path is swapped for another program
// while Authorize runs, after the re-hash; the authorized bytes run inside
// the sandbox, not the substitute, with and without Landlock lists.
func TestRunSandboxedExecutesWhatWasHashed(t *testing.T) {
	features := sandbox.Probe()
	ld, err := filepath.EvalSymlinks("/lib64/ld-linux-x86-64.so.2")
	if err != nil {
		t.Skipf("no x86-64 dynamic loader: %v", err)
	}
	for _, landlock := range []bool{false, true} {
		name := "namespaces"
		if landlock {
			name = "landlock"
		}
		t.Run(name, func(t *testing.T) {
			dir := realDir(t, t.TempDir())
			s := &sandbox.Spec{Network: &sandbox.Network{}}
			if landlock {
				s.Read = []string{"/usr", "/etc"}
				s.Write = []string{dir}
				s.Exec = []string{ld, realDir(t, "/bin/sh"), realDir(t, "/usr/bin/touch"), dir}
			}
			if err := sandbox.Check(*s, features); err != nil {
				t.Skipf("host cannot enforce the sandbox: %v", err)
			}
			writeFile(t, dir+"/p", "#!/bin/sh\ntouch \"$1\"/good\n", 0o755)
			spec := describeT(t, dir, "./p", dir)
			grant := allow(t, spec)
			swap := func(ctx context.Context, digest string) error {
				writeFile(t, dir+"/evil", "#!/bin/sh\ntouch \"$1\"/bad\n", 0o755)
				if err := os.Rename(dir+"/evil", dir+"/p"); err != nil {
					t.Fatal(err)
				}
				return grant(ctx, digest)
			}
			res, err := Run(context.Background(), Command{Spec: spec, Sandbox: s}, swap, nil)
			if err != nil || res.ExitCode != 0 {
				t.Fatalf("Run: %+v, %v", res, err)
			}
			if _, err := os.Stat(dir + "/bad"); err == nil {
				t.Error("the substituted program ran")
			}
			if _, err := os.Stat(dir + "/good"); err != nil {
				t.Errorf("the authorized program did not run: %v", err)
			}
		})
	}
}
