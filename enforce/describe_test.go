package enforce

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/etbproject/etb/action"
)

// realDir returns dir with its symlinks resolved.
func realDir(t *testing.T, dir string) string {
	t.Helper()
	r, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// writeFile writes a file with the given mode and returns its path.
func writeFile(t *testing.T, path, content string, mode os.FileMode) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestDescribeExec(t *testing.T) {
	dir := realDir(t, t.TempDir())
	script := writeFile(t, filepath.Join(dir, "tool.sh"), "#!/bin/sh\necho tool\n", 0o755)
	if err := os.Symlink("tool.sh", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	cwdLink := filepath.Join(t.TempDir(), "cwdlink")
	if err := os.Symlink(dir, cwdLink); err != nil {
		t.Fatal(err)
	}
	echo, err := exec.LookPath("echo")
	if err != nil {
		t.Fatal(err)
	}
	echoReal := realDir(t, echo)
	scriptSum := action.SHA256([]byte("#!/bin/sh\necho tool\n"))

	tests := []struct {
		name      string
		argv      []string
		cwd       string
		wantProg  string
		wantName  string
		wantSum   string // "" = not checked
		wantCwd   string
		wantInErr string // non-empty: an error containing this is expected
	}{
		{name: "path lookup", argv: []string{"echo", "a", "b"}, cwd: dir, wantProg: echoReal, wantName: "echo", wantCwd: dir},
		{name: "relative to cwd", argv: []string{"./tool.sh", "x"}, cwd: dir, wantProg: script, wantName: "tool.sh", wantSum: scriptSum, wantCwd: dir},
		{name: "symlinked program", argv: []string{"./link"}, cwd: dir, wantProg: script, wantName: "link", wantSum: scriptSum, wantCwd: dir},
		{name: "symlinked cwd", argv: []string{"./tool.sh"}, cwd: cwdLink, wantProg: script, wantName: "tool.sh", wantSum: scriptSum, wantCwd: dir},
		{name: "absolute", argv: []string{script}, cwd: "/", wantProg: script, wantName: "tool.sh", wantSum: scriptSum, wantCwd: "/"},
		{name: "empty argv", argv: nil, cwd: dir, wantInErr: "empty argv"},
		{name: "empty argv0", argv: []string{""}, cwd: dir, wantInErr: "empty argv"},
		{name: "missing program", argv: []string{"etb-no-such-program-xyz"}, cwd: dir, wantInErr: "etb-no-such-program-xyz"},
		{name: "missing path", argv: []string{"./nope"}, cwd: dir, wantInErr: "./nope"},
		{name: "directory", argv: []string{"./"}, cwd: dir, wantInErr: "is a directory"},
		{name: "not executable", argv: []string{"./data"}, cwd: dir, wantInErr: "not executable"},
		{name: "device", argv: []string{"/dev/null"}, cwd: dir, wantInErr: "not a regular file"},
		{name: "missing cwd", argv: []string{"echo"}, cwd: filepath.Join(dir, "gone"), wantInErr: "gone"},
		{name: "cwd is a file", argv: []string{"echo"}, cwd: script, wantInErr: "not a directory"},
	}
	writeFile(t, filepath.Join(dir, "data"), "not a program", 0o644)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := DescribeExec(tt.argv, tt.cwd)
			if tt.wantInErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantInErr) {
					t.Fatalf("DescribeExec(%q) error = %v, want one containing %q", tt.argv, err, tt.wantInErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("DescribeExec(%q): %v", tt.argv, err)
			}
			if spec.Kind != action.KindShellExec || spec.Name != tt.wantName {
				t.Errorf("kind, name = %q, %q; want %q, %q", spec.Kind, spec.Name, action.KindShellExec, tt.wantName)
			}
			if spec.Target.Program != tt.wantProg || spec.Target.Cwd != tt.wantCwd {
				t.Errorf("program, cwd = %s, %s; want %s, %s", spec.Target.Program, spec.Target.Cwd, tt.wantProg, tt.wantCwd)
			}
			if !slices.Equal(spec.Target.Argv, tt.argv) || !slices.Equal(spec.Args, tt.argv[1:]) {
				t.Errorf("argv, args = %q, %q; want %q, %q", spec.Target.Argv, spec.Args, tt.argv, tt.argv[1:])
			}
			want := tt.wantSum
			if want == "" {
				b, err := os.ReadFile(tt.wantProg)
				if err != nil {
					t.Fatal(err)
				}
				want = action.SHA256(b)
			}
			if spec.Target.ProgramSHA256 != want {
				t.Errorf("program_sha256 = %s, want %s", spec.Target.ProgramSHA256, want)
			}
			if h, _ := action.HashArgs(tt.argv[1:]); spec.ArgsHash != h {
				t.Errorf("args_hash = %s, want %s", spec.ArgsHash, h)
			}
		})
	}
}

// TestDescribeExecCopiesArgv checks the spec does not alias the caller's
// slice: changing argv afterwards must not change what was authorized.
func TestDescribeExecCopiesArgv(t *testing.T) {
	argv := []string{"echo", "safe"}
	spec, err := DescribeExec(argv, "/")
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := spec.Digest()
	argv[1] = "changed"
	d2, _ := spec.Digest()
	if d1 != d2 || spec.Args[0] != "safe" || spec.Target.Argv[1] != "safe" {
		t.Fatalf("spec changed with the caller's argv: args %q argv %q", spec.Args, spec.Target.Argv)
	}
}

// TestDescribeExecEmptyCwd checks that an empty cwd means the working
// directory, resolved.
func TestDescribeExecEmptyCwd(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := DescribeExec([]string{"echo"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if want := realDir(t, wd); spec.Target.Cwd != want {
		t.Fatalf("cwd = %s, want %s", spec.Target.Cwd, want)
	}
}
