package sandbox

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/etbproject/etb/enforce/sandbox/internal/stage"
)

// copyExec copies src to dst with mode 0755.
func copyExec(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// runCmd runs a command from Command or CommandFile and returns how it
// ended.
func runCmd(t *testing.T, cmd *exec.Cmd) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("run: %v", err)
	}
	return result{stdout: stdout.String(), stderr: stderr.String(), code: cmd.ProcessState.ExitCode(), took: time.Since(start)}
}

// TestCommandFileRunsTheOpenFile opens a program, then renames a different
// program over its path before the command starts (the window between the
// enforcer's hash and the exec): the opened program runs, never the
// substitute, with and without Landlock, for an ELF binary and for a #!
// script (whose interpreter reads it through descriptor 3). Command by
// path, in the same situation, runs the substitute: the test can tell.
func TestCommandFileRunsTheOpenFile(t *testing.T) {
	read, execs := sysPaths(t)
	sh := resolved(t, "/bin/sh")
	tests := []struct {
		name          string
		orig, swapped func(t *testing.T, path string)
		want          func(r result) bool // the original ran
	}{
		{
			name:    "elf",
			orig:    func(t *testing.T, p string) { copyExec(t, resolved(t, "/usr/bin/true"), p) },
			swapped: func(t *testing.T, p string) { copyExec(t, resolved(t, "/usr/bin/false"), p) },
			want:    func(r result) bool { return r.code == 0 },
		},
		{
			name: "script",
			orig: func(t *testing.T, p string) {
				writeExec(t, p, "#!/bin/sh\necho \"original $0\"\n")
			},
			swapped: func(t *testing.T, p string) {
				writeExec(t, p, "#!/bin/sh\necho swapped\n")
			},
			want: func(r result) bool {
				return r.code == 0 && strings.TrimSpace(r.stdout) == "original /proc/self/fd/3"
			},
		},
	}
	for _, tt := range tests {
		for _, landlock := range []bool{false, true} {
			name := tt.name
			if landlock {
				name += "/landlock"
			}
			t.Run(name, func(t *testing.T) {
				dir := resolved(t, t.TempDir())
				var s Spec
				if landlock {
					s = Spec{Read: read, Exec: append(append([]string{}, execs...), sh, dir)}
				}
				if err := Check(s, host); err != nil {
					t.Skipf("host cannot enforce the spec: %v", err)
				}
				path := filepath.Join(dir, "prog")
				tt.orig(t, path)
				f, err := os.Open(path)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				cmd, err := CommandFile(context.Background(), s, f, []string{"prog"}, []string{"PATH=/usr/bin:/bin"})
				if err != nil {
					t.Fatal(err)
				}
				byPath, err := Command(context.Background(), s, path, []string{"prog"}, []string{"PATH=/usr/bin:/bin"})
				if err != nil {
					t.Fatal(err)
				}
				// The swap: a new file renamed over the path.
				tt.swapped(t, path+".new")
				if err := os.Rename(path+".new", path); err != nil {
					t.Fatal(err)
				}
				if r := runCmd(t, cmd); !tt.want(r) {
					t.Errorf("CommandFile ran something else than the opened file: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
				}
				if r := runCmd(t, byPath); tt.want(r) {
					t.Errorf("Command by path ran the original after the swap (exit %d, stdout %q): the swap did not take", r.code, r.stdout)
				}
			})
		}
	}
}

// writeExec writes an executable file.
func writeExec(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestCommandFileObeysExecList passes an open program that Landlock's exec
// list does not allow: holding a descriptor is no way around the list.
func TestCommandFileObeysExecList(t *testing.T) {
	read, execs := sysPaths(t)
	dir := resolved(t, t.TempDir())
	path := filepath.Join(dir, "prog")
	copyExec(t, resolved(t, "/usr/bin/true"), path)
	marker := filepath.Join(dir, "ran")
	script := filepath.Join(dir, "script")
	writeExec(t, script, "#!/bin/sh\ntouch "+marker+"\n")
	s := Spec{Read: append(read, dir), Write: []string{dir}, Exec: append(execs, resolved(t, "/bin/sh"))}
	if err := Check(s, host); err != nil {
		t.Skipf("host cannot enforce the spec: %v", err)
	}
	for _, p := range []string{path, script} {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		cmd, err := CommandFile(context.Background(), s, f, []string{"prog"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		r := runCmd(t, cmd)
		f.Close()
		if r.code != 126 {
			t.Errorf("%s outside the exec list: exit %d, want 126; stderr %q", p, r.code, r.stderr)
		}
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("a script outside the exec list ran")
	}
}

func TestCommandFileRefuses(t *testing.T) {
	dir := t.TempDir()
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	f, err := os.Open("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tests := []struct {
		name string
		exe  *os.File
		argv []string
		spec Spec
	}{
		{"no file", nil, []string{"x"}, Spec{}},
		{"directory", d, []string{"x"}, Spec{}},
		{"empty argv", f, nil, Spec{}},
		{"bad spec", f, []string{"x"}, Spec{Read: []string{"relative"}}},
	}
	for _, tt := range tests {
		if cmd, err := CommandFile(context.Background(), tt.spec, tt.exe, tt.argv, nil); err == nil {
			t.Errorf("%s: CommandFile = %v, want an error", tt.name, cmd.Args)
		}
	}
}

// TestConfigEncoding checks that the helper's configuration survives its
// encoding, and that damaged encodings are refused (the helper then runs
// nothing).
func TestConfigEncoding(t *testing.T) {
	c := stage.Config{
		Path: "/bin/x", ExeFD: 4, Argv: []string{"x", "", "a\x00b"}, Env: []string{"A=1"},
		CPUSeconds: 1, MemoryBytes: 2, MaxProcesses: 3, MaxFileBytes: 4,
		Network: true, ControlFD: 3, ProxyPort: 3128, Seccomp: make([]byte, 16),
		Landlock: true, HandledFS: 5, HandledNet: 6, ScopedMask: 7,
		PathRules: []stage.PathRule{{Path: "/usr", Access: 8}},
		PortRules: []stage.PortRule{{Port: 3128, Access: 2}},
	}
	enc, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := stage.Decode(enc)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, c) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, c)
	}
	bad := []string{"", "!!", enc[:len(enc)-3], enc + "AAAA"}
	noTarget := c
	noTarget.Argv = nil
	noSeccomp := c
	noSeccomp.Seccomp = make([]byte, 7)
	for _, x := range []stage.Config{noTarget, noSeccomp} {
		e, err := x.Encode()
		if err != nil {
			t.Fatal(err)
		}
		bad = append(bad, e)
	}
	for i, b := range bad {
		if _, err := stage.Decode(b); err == nil {
			t.Errorf("bad encoding %d decoded", i)
		}
	}
	huge := c
	huge.Env = []string{strings.Repeat("x", stage.MaxEncoded)}
	if _, err := huge.Encode(); err == nil {
		t.Error("an oversized configuration was encoded")
	}
}

// TestExtraFilesStayWithHelper passes a pipe to the helper (ExtraFiles, as
// a caller may) and lets the target try to write to every descriptor it
// could have inherited: nothing may come through.
func TestExtraFilesStayWithHelper(t *testing.T) {
	for _, byFile := range []bool{false, true} {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		script := `for fd in 3 4 5 6; do (echo leaked >&$fd) 2>/dev/null; done; exit 0`
		var cmd *exec.Cmd
		if byFile {
			f, err := os.Open("/bin/sh")
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			cmd, err = CommandFile(context.Background(), Spec{}, f, []string{"sh", "-c", script}, nil)
		} else {
			cmd, err = Command(context.Background(), Spec{}, "/bin/sh", []string{"sh", "-c", script}, nil)
		}
		if err != nil {
			t.Fatal(err)
		}
		cmd.ExtraFiles = append(cmd.ExtraFiles, w)
		res := runCmd(t, cmd)
		w.Close()
		got, _ := io.ReadAll(r)
		r.Close()
		if res.code != 0 {
			t.Errorf("byFile=%v: exit %d, stderr %q", byFile, res.code, res.stderr)
		}
		if len(got) != 0 {
			t.Errorf("byFile=%v: the target wrote %q into a descriptor meant for the helper", byFile, got)
		}
	}
}
