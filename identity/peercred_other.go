//go:build !linux

package identity

import (
	"errors"
	"net"
)

func peerProcess(*net.UnixConn) (ucred, pidfdHandle, error) {
	return ucred{}, pidfdHandle{}, errors.New("identity: peer credentials (SO_PEERCRED) are only available on Linux")
}

type pidfdHandle struct{}

func (pidfdHandle) check() error { return nil }
func (pidfdHandle) close()       {}
