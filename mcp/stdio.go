package mcp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"syscall"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/etbproject/etb/gateway"
)

// RunStdio runs the proxy in stdio mode: it starts argv as the upstream
// server (in its own process group), connects to it, and serves the
// governed mirror on in/out until the downstream client disconnects or ctx
// ends. When it returns, the upstream's whole process group has been
// killed.
func RunStdio(ctx context.Context, gw *gateway.Gateway, argv []string, in io.ReadCloser, out io.WriteCloser, opt Options) (err error) {
	// The upstream is started with Pdeathsig, which fires when the thread
	// that forked it exits: keep this goroutine on its thread meanwhile.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	cmd, up, err := Command(argv)
	if err != nil {
		return err
	}
	if opt.Env == nil {
		opt.Env = map[string]string{}
	}
	if _, ok := opt.Env["mode"]; !ok {
		opt.Env["mode"] = "mcp-stdio"
	}
	p := New(gw, opt)
	connectErr := p.Connect(ctx, &sdk.CommandTransport{Command: cmd, TerminateDuration: 2 * time.Second}, up)
	defer func() {
		if cmd.Process == nil {
			return
		}
		// Kill whatever the upstream left in its process group.
		if kerr := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); kerr != nil && !errors.Is(kerr, syscall.ESRCH) {
			err = errors.Join(err, fmt.Errorf("mcp: kill upstream process group %d: %w", cmd.Process.Pid, kerr))
		}
	}()
	if connectErr != nil {
		return connectErr
	}
	defer p.Close()
	if err := p.Server().Run(ctx, &sdk.IOTransport{Reader: in, Writer: out}); err != nil && ctx.Err() == nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("mcp: serve downstream: %w", err)
	}
	return nil
}
