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

// Subreaper refuses on this platform (see Run).
func Subreaper() error {
	return errors.New("enforce: child subreaper: not supported on " + runtime.GOOS)
}

// Tracker is not available on this platform (see Run).
type Tracker struct{}

// Track refuses on this platform (see Run).
func Track(pid int) (*Tracker, error) {
	return nil, errors.New("enforce: track a process tree: not supported on " + runtime.GOOS)
}

// Sample does nothing on this platform.
func (*Tracker) Sample() {}

// Kill does nothing on this platform.
func (*Tracker) Kill() error { return nil }
