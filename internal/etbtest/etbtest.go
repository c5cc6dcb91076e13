// Package etbtest runs the etb binary in end-to-end tests of other
// packages: it builds the binary once per test binary, finds free
// addresses, and starts `etb serve`, waiting until it says it listens.
//
// It is test support, like net/http/httptest: nothing in etb's binaries
// imports it, and it never decides, signs or records anything itself.
package etbtest

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Build compiles the etb command in pkgDir (a path relative to the calling
// test's package directory, such as "../cmd/etb" or ".") into a new
// temporary directory. It returns the binary's path and a func removing
// the directory. Call it from TestMain.
func Build(pkgDir string) (bin string, cleanup func(), err error) {
	dir, err := os.MkdirTemp("", "etb-e2e-")
	if err != nil {
		return "", nil, err
	}
	bin = filepath.Join(dir, "etb")
	if out, err := exec.Command("go", "build", "-o", bin, pkgDir).CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("build etb from %s: %w\n%s", pkgDir, err, out)
	}
	return bin, func() { os.RemoveAll(dir) }, nil
}

// FreeAddr returns a 127.0.0.1 address with a port that was free a moment
// ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// ReadyTimeout bounds how long Start waits for its ready line.
const ReadyTimeout = 20 * time.Second

// Proc is a running etb process started by Start.
type Proc struct {
	Cmd *exec.Cmd
}

// Start runs bin with args (a command that serves, such as `--home H serve
// --listen A`) and waits until a line of its standard output begins with
// ready (for `etb serve`: "etb serve: https://" or "etb serve: unix
// socket"). It fails t if the process exits first or does not say it
// within ReadyTimeout, and kills the process when t ends.
func Start(t testing.TB, bin, ready string, args ...string) *Proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &Proc{Cmd: cmd}
	t.Cleanup(p.Kill)
	said := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), ready) {
				said <- true
				io.Copy(io.Discard, out)
				return
			}
		}
		said <- false
	}()
	select {
	case ok := <-said:
		if !ok {
			t.Fatalf("%s %s exited before saying %q: %s", filepath.Base(bin), strings.Join(args, " "), ready, stderr.String())
		}
	case <-time.After(ReadyTimeout):
		t.Fatalf("%s %s did not say %q within %s: %s", filepath.Base(bin), strings.Join(args, " "), ready, ReadyTimeout, stderr.String())
	}
	return p
}

// Kill kills the process if it still runs, and waits for it.
func (p *Proc) Kill() {
	if p.Cmd.ProcessState == nil {
		p.Cmd.Process.Kill()
		p.Cmd.Wait()
	}
}

// Stop sends SIGTERM and fails t unless the process then exits cleanly.
func (p *Proc) Stop(t testing.TB) {
	t.Helper()
	p.Cmd.Process.Signal(syscall.SIGTERM)
	if err := p.Cmd.Wait(); err != nil {
		t.Fatalf("%s on SIGTERM: %v", filepath.Base(p.Cmd.Path), err)
	}
}

// Buffer is a bytes.Buffer safe for one writer (a process's output
// copier, say) and concurrent readers.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
