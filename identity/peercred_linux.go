//go:build linux

package identity

import (
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// peerProcess returns the kernel's credentials of conn's peer and a handle
// on the peer process (a pidfd from SO_PEERPIDFD, where the kernel has it)
// that can tell whether that very process is still alive.
func peerProcess(conn *net.UnixConn) (ucred, pidfdHandle, error) {
	none := pidfdHandle{fd: -1}
	if conn == nil {
		return ucred{}, none, errors.New("identity: peer credentials: connection is nil")
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		return ucred{}, none, fmt.Errorf("identity: peer credentials: %w", err)
	}
	var (
		cred    *unix.Ucred
		credErr error
		pidfd   = -1
		fdErr   error
	)
	err = raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if credErr == nil {
			pidfd, fdErr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD)
		}
	})
	if err == nil {
		err = credErr
	}
	if err != nil {
		return ucred{}, none, fmt.Errorf("identity: peer credentials (SO_PEERCRED): %w", err)
	}
	c := ucred{pid: cred.Pid, uid: cred.Uid, gid: cred.Gid}
	switch {
	case fdErr == nil:
		return c, pidfdHandle{fd: pidfd}, nil
	case errors.Is(fdErr, unix.ENOPROTOOPT), errors.Is(fdErr, unix.EINVAL):
		return c, none, nil // kernel before 6.5: no pidfd to check with
	default:
		// The kernel has SO_PEERPIDFD but cannot give one: the peer
		// process is gone (ESRCH) or worse; its pid may be reused.
		return ucred{}, none, fmt.Errorf("identity: peer pidfd (SO_PEERPIDFD) for pid %d: %w", c.pid, fdErr)
	}
}

// pidfdHandle holds a pidfd of the peer process, or fd -1 if the kernel
// offers none.
type pidfdHandle struct{ fd int }

// check reports an error unless the process of the pidfd is still alive
// (signal 0 checks without signalling; EPERM, another user's process,
// means it exists); with no pidfd it reports nil.
func (h pidfdHandle) check() error {
	if h.fd < 0 {
		return nil
	}
	switch err := unix.PidfdSendSignal(h.fd, 0, nil, 0); {
	case err == nil, errors.Is(err, unix.EPERM):
		return nil
	case errors.Is(err, unix.ESRCH):
		return fmt.Errorf("the peer process exited during attestation, its pid may have been reused: %w", err)
	default:
		return fmt.Errorf("cannot tell whether the peer process is still alive: %w", err)
	}
}

func (h pidfdHandle) close() {
	if h.fd >= 0 {
		unix.Close(h.fd)
	}
}
