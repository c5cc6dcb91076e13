//go:build !linux

package enforce

import (
	"context"
	"errors"
	"runtime"
)

// Run refuses on this platform: tearing down a process tree relies on
// Linux (/proc, child subreaper, pidfd). Nothing is started.
func Run(ctx context.Context, cmd Command, authorize Authorize, onStart func(pid int) error) (Result, error) {
	return Result{}, errors.New("enforce: run: not supported on " + runtime.GOOS)
}
