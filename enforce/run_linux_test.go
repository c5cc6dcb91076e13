package enforce

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/etbproject/etb/action"
	"golang.org/x/sys/unix"
)

// allow is an Authorize that accepts the digest of spec and nothing else,
// as a grant bound to spec would.
func allow(t *testing.T, spec action.Spec) Authorize {
	t.Helper()
	want, err := spec.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return func(_ context.Context, got string) error {
		if got != want {
			return errors.New("digest " + got + " is not the granted " + want)
		}
		return nil
	}
}

func describeT(t *testing.T, cwd string, argv ...string) action.Spec {
	t.Helper()
	spec, err := DescribeExec(argv, cwd)
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// shell describes `sh -c script` in dir.
func shell(t *testing.T, dir, script string) action.Spec {
	return describeT(t, dir, "sh", "-c", script)
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// readPids reads the whitespace-separated pids a test script wrote to path.
func readPids(t *testing.T, path string, want int) []int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("pid file: %v", err)
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("pid file %q: %v", b, err)
		}
		pids = append(pids, pid)
	}
	if len(pids) != want {
		t.Fatalf("pid file holds %v, want %d pids", pids, want)
	}
	return pids
}

// assertGone checks that none of pids exists any more, not even as a
// zombie: Run must have killed and reaped them before returning.
func assertGone(t *testing.T, pids ...int) {
	t.Helper()
	for _, pid := range pids {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err == nil {
			p, perr := parseStat(b)
			if perr == nil && p.ppid != os.Getpid() && p.state != 'Z' {
				// pid recycled by an unrelated process: not ours.
				continue
			}
			t.Errorf("pid %d still exists after Run: %s", pid, b)
		}
	}
}

func TestRunOutput(t *testing.T) {
	dir := t.TempDir()
	zeros := make([]byte, 10<<20)
	tests := []struct {
		name               string
		spec               action.Spec
		stdin              io.Reader
		env                []string
		wantOut, wantErr   []byte
		wantCode           int
		wantSignal         string
		sameWriterForBoth  bool
		wantCombinedLength int
	}{
		{name: "echo", spec: describeT(t, dir, "echo", "hello", "wörld", "  spaced  "), wantOut: []byte("hello wörld   spaced  \n")},
		{name: "exit code", spec: shell(t, dir, "exit 3"), wantCode: 3, wantOut: []byte{}, wantErr: []byte{}},
		{name: "stderr apart", spec: shell(t, dir, "printf 'out\\000x'; printf err >&2; exit 1"), wantOut: []byte("out\x00x"), wantErr: []byte("err"), wantCode: 1},
		{name: "large", spec: describeT(t, dir, "head", "-c", strconv.Itoa(len(zeros)), "/dev/zero"), wantOut: zeros},
		{name: "stdin", spec: describeT(t, dir, "cat"), stdin: strings.NewReader("from stdin\n"), wantOut: []byte("from stdin\n")},
		{name: "signal", spec: shell(t, dir, "kill -TERM $$"), wantCode: -1, wantSignal: "terminated", wantOut: []byte{}},
		{name: "empty env", spec: describeT(t, dir, "env"), wantOut: []byte{}},
		{name: "given env", spec: describeT(t, dir, "env"), env: []string{"A=1"}, wantOut: []byte("A=1\n")},
		{name: "same writer", spec: shell(t, dir, "head -c 100000 /dev/zero; head -c 50000 /dev/zero >&2"), sameWriterForBoth: true, wantCombinedLength: 150000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			cmd := Command{Spec: tt.spec, Stdin: tt.stdin, Env: tt.env, Stdout: &out, Stderr: &errb}
			if tt.sameWriterForBoth {
				cmd.Stderr = &out
			}
			res, err := Run(context.Background(), cmd, allow(t, tt.spec), nil)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if res.ExitCode != tt.wantCode || res.Signal != tt.wantSignal || res.TimedOut || res.Interrupted {
				t.Errorf("result %+v, want exit %d signal %q", res, tt.wantCode, tt.wantSignal)
			}
			if res.PID <= 0 || res.EndedAt.Before(res.StartedAt) {
				t.Errorf("pid %d, started %v, ended %v", res.PID, res.StartedAt, res.EndedAt)
			}
			if tt.sameWriterForBoth {
				if out.Len() != tt.wantCombinedLength || res.StdoutBytes+res.StderrBytes != int64(tt.wantCombinedLength) {
					t.Errorf("combined output %d bytes, counted %d+%d, want %d", out.Len(), res.StdoutBytes, res.StderrBytes, tt.wantCombinedLength)
				}
				return
			}
			if tt.wantOut != nil && !bytes.Equal(out.Bytes(), tt.wantOut) {
				t.Errorf("stdout %d bytes %q..., want %d bytes", out.Len(), head(out.Bytes()), len(tt.wantOut))
			}
			if tt.wantErr != nil && !bytes.Equal(errb.Bytes(), tt.wantErr) {
				t.Errorf("stderr %q, want %q", errb.Bytes(), tt.wantErr)
			}
			if res.StdoutSHA256 != sum(out.Bytes()) || res.StdoutBytes != int64(out.Len()) {
				t.Errorf("stdout digest %s/%d, want %s/%d", res.StdoutSHA256, res.StdoutBytes, sum(out.Bytes()), out.Len())
			}
			if res.StderrSHA256 != sum(errb.Bytes()) || res.StderrBytes != int64(errb.Len()) {
				t.Errorf("stderr digest %s/%d, want %s/%d", res.StderrSHA256, res.StderrBytes, sum(errb.Bytes()), errb.Len())
			}
		})
	}
}

func head(b []byte) []byte { return b[:min(len(b), 40)] }

// TestRunNilWriters checks output with no destination is still hashed.
func TestRunNilWriters(t *testing.T) {
	spec := describeT(t, t.TempDir(), "head", "-c", "1000000", "/dev/zero")
	res, err := Run(context.Background(), Command{Spec: spec}, allow(t, spec), nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := sum(make([]byte, 1000000)); res.StdoutSHA256 != want || res.StdoutBytes != 1000000 {
		t.Fatalf("stdout digest %s/%d, want %s/1000000", res.StdoutSHA256, res.StdoutBytes, want)
	}
	if res.StderrSHA256 != sum(nil) || res.StderrBytes != 0 {
		t.Fatalf("stderr digest %s/%d, want the empty digest", res.StderrSHA256, res.StderrBytes)
	}
}

// TestRunStdinNeverEnds checks Run does not wait for a stdin that never
// delivers end of file once the command has exited.
func TestRunStdinNeverEnds(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	spec := shell(t, t.TempDir(), "exit 0")
	done := make(chan error, 1)
	go func() {
		_, err := Run(context.Background(), Command{Spec: spec, Stdin: pr}, allow(t, spec), nil)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run still waiting on stdin after the command exited")
	}
}

// TestRunWriterError checks that a failing destination is reported while
// the digest still covers everything the command wrote.
func TestRunWriterError(t *testing.T) {
	spec := shell(t, t.TempDir(), "head -c 300000 /dev/zero")
	res, err := Run(context.Background(), Command{Spec: spec, Stdout: failWriter{}}, allow(t, spec), nil)
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Run error = %v, want the writer's error", err)
	}
	if res.StdoutBytes != 300000 || res.StdoutSHA256 != sum(make([]byte, 300000)) || res.ExitCode != 0 {
		t.Fatalf("result %+v: want all 300000 bytes hashed and exit 0", res)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestRunTimeoutKillsTree(t *testing.T) {
	dir := t.TempDir()
	pidfile := filepath.Join(dir, "pids")
	tests := []struct {
		name   string
		script string
		pids   int
	}{
		{"background jobs", "sleep 600 & echo $! >> " + pidfile + "; sleep 600 & echo $! >> " + pidfile + "; wait", 2},
		{"setsid grandchild", "setsid sleep 600 & echo $! > " + pidfile + "; sleep 600", 1},
		{"detached grandchild", "setsid sh -c 'exec sleep 600' >/dev/null 2>&1 </dev/null 3<&- & echo $! > " + pidfile + "; sleep 600", 1},
		{"ignores TERM", "trap '' TERM; sleep 600 & echo $! > " + pidfile + "; wait", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			os.Remove(pidfile)
			spec := shell(t, dir, tt.script)
			begin := time.Now()
			res, err := Run(context.Background(), Command{Spec: spec, Timeout: 500 * time.Millisecond}, allow(t, spec), nil)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if el := time.Since(begin); el > 3*time.Second {
				t.Errorf("Run took %v with a 500ms timeout", el)
			}
			if !res.TimedOut || res.Interrupted || res.Signal != "killed" || res.ExitCode != -1 {
				t.Errorf("result %+v, want TimedOut, signal killed, exit -1", res)
			}
			assertGone(t, append(readPids(t, pidfile, tt.pids), res.PID)...)
		})
	}
}

// TestRunKillsLeftovers checks that processes a command leaves behind when
// it exits normally are killed, and that one holding stdout open does not
// make Run hang.
func TestRunKillsLeftovers(t *testing.T) {
	dir := t.TempDir()
	pidfile := filepath.Join(dir, "pids")
	tests := []struct {
		name    string
		script  string
		wantOut string
	}{
		{"daemon holding stdout", "sleep 600 & echo $! > " + pidfile + "; echo done", "done\n"},
		// Waits until the daemon is in its own session: found because it
		// holds the write end of stdout.
		{"setsid daemon holding stdout", "setsid sleep 600 & echo $! > " + pidfile + `; until [ "$(cut -d' ' -f6 /proc/$!/stat)" = "$!" ]; do :; done; echo done`, "done\n"},
		// Detached from group, session and pipes: found only because the
		// running tree is sampled.
		{"fully detached daemon", "setsid sleep 600 >/dev/null 2>&1 </dev/null 3<&- & echo $! > " + pidfile + "; sleep 0.5; echo done", "done\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			os.Remove(pidfile)
			spec := shell(t, dir, tt.script)
			var out bytes.Buffer
			begin := time.Now()
			res, err := Run(context.Background(), Command{Spec: spec, Stdout: &out}, allow(t, spec), nil)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if el := time.Since(begin); el > 3*time.Second {
				t.Errorf("Run took %v", el)
			}
			if res.ExitCode != 0 || res.Signal != "" || res.TimedOut || out.String() != tt.wantOut {
				t.Errorf("result %+v, stdout %q; want exit 0 and %q", res, out.String(), tt.wantOut)
			}
			assertGone(t, readPids(t, pidfile, 1)...)
		})
	}
}

func TestRunCancel(t *testing.T) {
	dir := t.TempDir()
	pidfile := filepath.Join(dir, "pids")
	spec := shell(t, dir, "sleep 600 & echo $! > "+pidfile+"; setsid sleep 600 & echo $! >> "+pidfile+"; wait")
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	begin := time.Now()
	res, err := Run(ctx, Command{Spec: spec, Timeout: time.Minute}, allow(t, spec), nil)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if el := time.Since(begin); el > 3*time.Second {
		t.Errorf("Run took %v after cancel", el)
	}
	if !res.Interrupted || res.TimedOut || res.Signal != "killed" {
		t.Errorf("result %+v, want Interrupted and killed", res)
	}
	assertGone(t, append(readPids(t, pidfile, 2), res.PID)...)
}

// TestRunForkStorm checks teardown converges while the tree keeps forking.
func TestRunForkStorm(t *testing.T) {
	spec := shell(t, t.TempDir(), "while :; do sleep 600 & done")
	res, err := Run(context.Background(), Command{Spec: spec, Timeout: 300 * time.Millisecond}, allow(t, spec), nil)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if !res.TimedOut {
		t.Fatalf("result %+v, want TimedOut", res)
	}
	procs, err := readProcs()
	if err != nil {
		t.Fatal(err)
	}
	for pid, p := range procs {
		if p.ppid == os.Getpid() || p.pgid == res.PID {
			t.Errorf("process %d (ppid %d, pgid %d, state %c) survived", pid, p.ppid, p.pgid, p.state)
		}
	}
}

// TestRunConcurrentTreesIsolated checks that tearing down one command never
// touches another command run concurrently by the same process.
func TestRunConcurrentTreesIsolated(t *testing.T) {
	dir := t.TempDir()
	survivor := shell(t, dir, "sleep 1.5 & wait; echo survived")
	victim := shell(t, dir, "sleep 600 & setsid sleep 600 & wait")
	var wg sync.WaitGroup
	var out bytes.Buffer
	var sres Result
	var serr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		sres, serr = Run(context.Background(), Command{Spec: survivor, Stdout: &out}, allow(t, survivor), nil)
	}()
	for range 3 {
		res, err := Run(context.Background(), Command{Spec: victim, Timeout: 200 * time.Millisecond}, allow(t, victim), nil)
		if err != nil || !res.TimedOut {
			t.Fatalf("victim: %+v, %v", res, err)
		}
	}
	wg.Wait()
	if serr != nil || sres.ExitCode != 0 || sres.Signal != "" || out.String() != "survived\n" {
		t.Fatalf("concurrent command was disturbed: %+v, %v, stdout %q", sres, serr, out.String())
	}
}

func TestRunOnStartError(t *testing.T) {
	dir := t.TempDir()
	pidfile := filepath.Join(dir, "pids")
	spec := shell(t, dir, "sleep 600 & echo $! > "+pidfile+"; setsid sleep 600 & echo $! >> "+pidfile+"; wait")
	ledgerDown := errors.New("ledger unavailable")
	var gotPID int
	onStart := func(pid int) error {
		gotPID = pid
		// Wait until the tree has grown, then fail like a ledger write.
		for range 500 {
			if b, _ := os.ReadFile(pidfile); len(strings.Fields(string(b))) == 2 {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		return ledgerDown
	}
	res, err := Run(context.Background(), Command{Spec: spec, Timeout: time.Minute}, allow(t, spec), onStart)
	if !errors.Is(err, ledgerDown) {
		t.Fatalf("Run error = %v, want it to wrap %v", err, ledgerDown)
	}
	if gotPID != res.PID || res.Signal != "killed" {
		t.Errorf("onStart pid %d, result %+v; want the child's pid, killed", gotPID, res)
	}
	assertGone(t, append(readPids(t, pidfile, 2), res.PID)...)
}

// TestRunRefusesChanged checks that any difference between the authorized
// spec and what would run now is refused before Authorize is asked and
// before anything starts.
func TestRunRefusesChanged(t *testing.T) {
	trueBin, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	falseBin, err := os.ReadFile("/bin/false")
	if err != nil {
		t.Fatal(err)
	}
	const script = "#!/bin/sh\ntouch \"$1\"\n"
	tests := []struct {
		name string
		// setup writes the program(s) in dir and returns the argv to describe.
		setup func(t *testing.T, dir, marker string) []string
		// change runs between describing and running; it may alter spec.
		change func(t *testing.T, dir string, spec *action.Spec)
	}{
		{
			name: "script rewritten in place",
			setup: func(t *testing.T, dir, marker string) []string {
				writeFile(t, dir+"/p", script, 0o755)
				return []string{"./p", marker}
			},
			change: func(t *testing.T, dir string, _ *action.Spec) {
				f, err := os.OpenFile(dir+"/p", os.O_WRONLY|os.O_APPEND, 0)
				if err != nil {
					t.Fatal(err)
				}
				f.WriteString("echo pwned\n")
				f.Close()
			},
		},
		{
			name: "binary replaced by another",
			setup: func(t *testing.T, dir, marker string) []string {
				writeFile(t, dir+"/p", string(trueBin), 0o755)
				return []string{"./p", marker}
			},
			change: func(t *testing.T, dir string, _ *action.Spec) {
				writeFile(t, dir+"/q", string(falseBin), 0o755)
				if err := os.Rename(dir+"/q", dir+"/p"); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "symlink retargeted",
			setup: func(t *testing.T, dir, marker string) []string {
				writeFile(t, dir+"/a", script, 0o755)
				writeFile(t, dir+"/b", script+"echo other\n", 0o755)
				if err := os.Symlink("a", dir+"/p"); err != nil {
					t.Fatal(err)
				}
				return []string{"./p", marker}
			},
			change: func(t *testing.T, dir string, _ *action.Spec) {
				os.Remove(dir + "/p")
				if err := os.Symlink("b", dir+"/p"); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "program removed",
			setup: func(t *testing.T, dir, marker string) []string {
				writeFile(t, dir+"/p", script, 0o755)
				return []string{"./p", marker}
			},
			change: func(t *testing.T, dir string, _ *action.Spec) { os.Remove(dir + "/p") },
		},
		{
			name: "program made non-executable",
			setup: func(t *testing.T, dir, marker string) []string {
				writeFile(t, dir+"/p", script, 0o755)
				return []string{"./p", marker}
			},
			change: func(t *testing.T, dir string, _ *action.Spec) { os.Chmod(dir+"/p", 0o644) },
		},
		{
			name: "argv altered after authorization",
			setup: func(t *testing.T, dir, marker string) []string {
				writeFile(t, dir+"/p", script, 0o755)
				return []string{"./p", "/nonexistent/x"}
			},
			change: func(t *testing.T, dir string, spec *action.Spec) {
				spec.Target.Argv = []string{"./p", filepath.Join(dir, "marker")}
			},
		},
		{
			name: "program path altered after authorization",
			setup: func(t *testing.T, dir, marker string) []string {
				writeFile(t, dir+"/p", script, 0o755)
				return []string{"./p", marker}
			},
			change: func(t *testing.T, dir string, spec *action.Spec) {
				spec.Target.Program = "/bin/true"
			},
		},
		{
			name: "args hash altered",
			setup: func(t *testing.T, dir, marker string) []string {
				writeFile(t, dir+"/p", script, 0o755)
				return []string{"./p", marker}
			},
			change: func(t *testing.T, dir string, spec *action.Spec) {
				spec.ArgsHash = action.SHA256([]byte("x"))
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := realDir(t, t.TempDir())
			marker := filepath.Join(dir, "marker")
			spec := describeT(t, dir, tt.setup(t, dir, marker)...)
			tt.change(t, dir, &spec)
			asked := false
			authorize := func(context.Context, string) error { asked = true; return nil }
			_, err := Run(context.Background(), Command{Spec: spec}, authorize, func(int) error {
				t.Error("onStart called: a process was started")
				return nil
			})
			if !errors.Is(err, ErrChanged) {
				t.Fatalf("Run error = %v, want ErrChanged", err)
			}
			if asked {
				t.Error("Authorize was asked about a changed command")
			}
			if _, err := os.Stat(marker); err == nil {
				t.Error("marker file exists: the changed program ran")
			}
		})
	}
}

// TestRunUnchangedScriptRuns is the control for TestRunRefusesChanged: the
// same script, unchanged, runs and creates the marker, and sees its argv.
func TestRunUnchangedScriptRuns(t *testing.T) {
	dir := realDir(t, t.TempDir())
	writeFile(t, dir+"/p", "#!/bin/sh\ntouch \"$1\"\necho \"$#:$1\"\n", 0o755)
	marker := filepath.Join(dir, "marker")
	spec := describeT(t, dir, "./p", marker)
	var out bytes.Buffer
	res, err := Run(context.Background(), Command{Spec: spec, Stdout: &out}, allow(t, spec), nil)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("Run: %+v, %v", res, err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("marker not created: %v", err)
	}
	if want := "1:" + marker + "\n"; out.String() != want {
		t.Errorf("stdout %q, want %q", out.String(), want)
	}
}

func TestRunNotAuthorized(t *testing.T) {
	dir := realDir(t, t.TempDir())
	writeFile(t, dir+"/p", "#!/bin/sh\ntouch \"$1\"\n", 0o755)
	marker := filepath.Join(dir, "marker")
	spec := describeT(t, dir, "./p", marker)
	want, _ := spec.Digest()
	grantExpired := errors.New("grant expired")
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name      string
		ctx       context.Context
		authorize Authorize
		wantIs    []error
	}{
		{"authorize refuses", context.Background(), func(_ context.Context, got string) error {
			if got != want {
				t.Errorf("Authorize got digest %s, want %s", got, want)
			}
			return grantExpired
		}, []error{ErrNotAuthorized, grantExpired}},
		{"no authorize", context.Background(), nil, []error{ErrNotAuthorized}},
		{"context already done", cancelled, func(context.Context, string) error { return nil }, []error{context.Canceled}},
		{"context done during authorize", context.Background(), nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, authorize := tt.ctx, tt.authorize
			if tt.wantIs == nil { // cancelled while Authorize runs, which then says yes
				c, cancel := context.WithCancel(context.Background())
				ctx = c
				authorize = func(context.Context, string) error { cancel(); return nil }
				tt.wantIs = []error{context.Canceled}
			}
			_, err := Run(ctx, Command{Spec: spec}, authorize, func(int) error {
				t.Error("onStart called: a process was started")
				return nil
			})
			for _, w := range tt.wantIs {
				if !errors.Is(err, w) {
					t.Errorf("Run error = %v, want it to wrap %v", err, w)
				}
			}
			if _, err := os.Stat(marker); err == nil {
				t.Error("marker file exists: the command ran")
			}
		})
	}
}

func TestRunRejectsBadCommand(t *testing.T) {
	spec := describeT(t, t.TempDir(), "true")
	tests := []struct {
		name string
		cmd  Command
	}{
		{"wrong kind", Command{Spec: func() action.Spec { s := spec; s.Kind = action.KindHTTP; return s }()}},
		{"empty argv", Command{Spec: func() action.Spec { s := spec; s.Target.Argv = nil; return s }()}},
		{"negative timeout", Command{Spec: spec, Timeout: -time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			asked := false
			_, err := Run(context.Background(), tt.cmd, func(context.Context, string) error { asked = true; return nil }, nil)
			if err == nil || asked {
				t.Fatalf("Run error = %v, authorize asked = %v; want a refusal before Authorize", err, asked)
			}
		})
	}
}

// TestRunExecutesWhatWasHashed swaps the program's path for another file
// while Authorize runs, after the program was re-hashed and before it is
// started: the authorized bytes run, not the substitute.
func TestRunExecutesWhatWasHashed(t *testing.T) {
	dir := realDir(t, t.TempDir())
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
	res, err := Run(context.Background(), Command{Spec: spec}, swap, nil)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("Run: %+v, %v", res, err)
	}
	if _, err := os.Stat(dir + "/bad"); err == nil {
		t.Error("the substituted program ran")
	}
	if _, err := os.Stat(dir + "/good"); err != nil {
		t.Errorf("the authorized program did not run: %v", err)
	}
}

// TestRunStartFailure checks that a program the kernel refuses to execute
// is an error, with no onStart.
func TestRunStartFailure(t *testing.T) {
	dir := realDir(t, t.TempDir())
	writeFile(t, dir+"/p", "\x00\x01 not a program", 0o755)
	spec := describeT(t, dir, "./p")
	_, err := Run(context.Background(), Command{Spec: spec}, allow(t, spec), func(int) error {
		t.Error("onStart called for a process that cannot start")
		return nil
	})
	if err == nil || errors.Is(err, ErrChanged) || errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("Run error = %v, want a start failure", err)
	}
}

// TestRunParentDeath kills a process that is running a command under Run
// and checks that the command dies with it (Pdeathsig).
func TestRunParentDeath(t *testing.T) {
	if os.Getenv("ETB_ENFORCE_HELPER") != "" {
		t.Skip("helper")
	}
	dir := t.TempDir()
	pidfile := filepath.Join(dir, "pid")
	helper := exec.Command(os.Args[0], "-test.run=^TestHelperRun$", "-test.count=1")
	helper.Env = append(os.Environ(), "ETB_ENFORCE_HELPER="+pidfile)
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	var pid int
	for range 500 {
		if b, err := os.ReadFile(pidfile); err == nil && strings.HasSuffix(string(b), "\n") {
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if pid == 0 {
		helper.Process.Kill()
		helper.Wait()
		t.Fatal("helper did not report the command's pid")
	}
	helper.Process.Kill()
	helper.Wait()
	for range 300 {
		p, ok, err := readProc(pid)
		if err != nil {
			t.Fatal(err)
		}
		if !ok || p.state == 'Z' {
			if ok && p.ppid == os.Getpid() {
				var ws unix.WaitStatus
				unix.Wait4(pid, &ws, 0, nil)
			}
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	unix.Kill(pid, unix.SIGKILL)
	t.Fatalf("command pid %d outlived the process that ran it", pid)
}

// TestHelperRun is the helper process of TestRunParentDeath: it runs a
// long command and reports its pid, and is then killed.
func TestHelperRun(t *testing.T) {
	pidfile := os.Getenv("ETB_ENFORCE_HELPER")
	if pidfile == "" {
		t.Skip("only run as a helper process")
	}
	spec := describeT(t, "/", "sleep", "600")
	Run(context.Background(), Command{Spec: spec, Timeout: time.Minute}, allow(t, spec), func(pid int) error {
		return os.WriteFile(pidfile, []byte(strconv.Itoa(pid)+"\n"), 0o644)
	})
	t.Fatal("helper command ended before it was killed")
}

// TestRunForeignPipeHolder checks that a process outside the command's
// tree holding its stdout open (here this test process, which takes a copy
// of the command's fd 1 with pidfd_getfd) cannot make Run hang, and that
// Run says so.
func TestRunForeignPipeHolder(t *testing.T) {
	spec := shell(t, t.TempDir(), "echo before; sleep 0.2; echo after")
	held := -1
	onStart := func(pid int) error {
		pidfd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			return err
		}
		defer unix.Close(pidfd)
		held, err = unix.PidfdGetfd(pidfd, 1, 0)
		return err
	}
	var out bytes.Buffer
	begin := time.Now()
	res, err := Run(context.Background(), Command{Spec: spec, Stdout: &out}, allow(t, spec), onStart)
	if held >= 0 {
		unix.Close(held)
	} else {
		t.Skipf("pidfd_getfd unavailable: %v", err)
	}
	if el := time.Since(begin); el > 8*time.Second {
		t.Errorf("Run took %v", el)
	}
	if err == nil || !strings.Contains(err.Error(), "outside the command's tree") {
		t.Errorf("Run error = %v, want a report of the foreign holder", err)
	}
	if out.String() != "before\nafter\n" || res.ExitCode != 0 {
		t.Errorf("stdout %q, result %+v; want all output and exit 0", out.String(), res)
	}
}
