//go:build !linux

package sandbox

import (
	"context"
	"fmt"
	"os"
	"os/exec"
)

// Probe reports that nothing can be enforced: the sandbox is Linux-only.
func Probe() Features {
	return Features{Notes: []string{"the sandbox is implemented for Linux only"}}
}

// Command refuses: the sandbox is Linux-only.
func Command(ctx context.Context, s Spec, path string, argv []string, env []string) (*exec.Cmd, error) {
	return nil, fmt.Errorf("%w: the sandbox is implemented for Linux only", ErrUnsupported)
}

// CommandFile refuses: the sandbox is Linux-only.
func CommandFile(ctx context.Context, s Spec, exe *os.File, argv []string, env []string) (*exec.Cmd, error) {
	return nil, fmt.Errorf("%w: the sandbox is implemented for Linux only", ErrUnsupported)
}

// MaybeRunHelper does nothing outside Linux.
func MaybeRunHelper() {}
