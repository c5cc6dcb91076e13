package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"
)

// serverProc is a server child process this benchmark started.
type serverProc struct {
	name   string
	cmd    *exec.Cmd
	exited chan error
	stderr bytes.Buffer
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// startServer starts cmd (name is what errors call it; its output also
// goes to verbose) and waits until a GET of health with hc answers 200 OK,
// polling every 20 ms for up to 30 s. If the process exits first, or the
// time runs out, the error has its standard error, and it is not left
// running.
func startServer(ctx context.Context, name string, cmd *exec.Cmd, verbose io.Writer, hc *http.Client, health string) (*serverProc, error) {
	p := &serverProc{name: name, cmd: cmd, exited: make(chan error, 1)}
	cmd.Stdout = verbose
	cmd.Stderr = &p.stderr
	if verbose != io.Discard {
		cmd.Stderr = io.MultiWriter(&p.stderr, verbose)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: start %s: %w", name, cmd.Path, err)
	}
	go func() { p.exited <- cmd.Wait() }()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		select {
		case err := <-p.exited:
			p.exited <- err
			return nil, fmt.Errorf("%s: server exited before it was ready: %v: %s", name, err, strings.TrimSpace(p.stderr.String()))
		default:
		}
		if time.Now().After(deadline) {
			p.stop(0)
			return nil, fmt.Errorf("%s: server at %s not healthy after 30s: %s", name, health, strings.TrimSpace(p.stderr.String()))
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, health, nil)
		if err != nil {
			p.stop(0)
			return nil, err
		}
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, nil
			}
		}
	}
}

// stop ends the process and reaps it. With grace > 0 it first sends an
// interrupt and reports an error if the process then fails or is still
// running after grace (it is killed then); with grace 0 it kills at once.
func (p *serverProc) stop(grace time.Duration) error {
	if grace > 0 {
		p.cmd.Process.Signal(os.Interrupt)
		select {
		case err := <-p.exited:
			p.exited <- err
			if err != nil {
				return fmt.Errorf("%s: server: %w: %s", p.name, err, strings.TrimSpace(p.stderr.String()))
			}
			return nil
		case <-time.After(grace):
		}
	}
	p.cmd.Process.Kill()
	err := <-p.exited
	p.exited <- err
	if grace > 0 {
		return fmt.Errorf("%s: server did not stop within %s of an interrupt", p.name, grace)
	}
	return nil
}
