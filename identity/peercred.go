package identity

import (
	"context"
	"fmt"
	"net"
	"os/user"
	"strconv"
	"strings"

	"github.com/etbproject/etb/action"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// AttestationUnixPeerCred is the Principal.Attestation of a local caller
// attested by the kernel over a unix socket.
const AttestationUnixPeerCred = "unix-peercred"

// Registration maps a local process to a SPIFFE ID, like a SPIRE
// registration entry with unix workload attestor selectors. Each set
// selector must match the caller; unset selectors (nil UID, empty strings)
// are not checked, and a registration with no selector at all is invalid
// rather than matching everyone.
type Registration struct {
	// ID is the SPIFFE ID a matching caller gets.
	ID string `json:"id" yaml:"id"`
	// UID, if set, is the uid the caller's socket was opened with.
	UID *uint32 `json:"uid,omitempty" yaml:"uid,omitempty"`
	// ExeSHA256, if set, is the digest of the caller's executable in the
	// form FileSHA256 returns: "sha256:" and 64 lower-case hex digits.
	ExeSHA256 string `json:"exe_sha256,omitempty" yaml:"exe_sha256,omitempty"`
	// Exe, if set, is the caller's executable path as /proc/PID/exe
	// shows it.
	Exe string `json:"exe,omitempty" yaml:"exe,omitempty"`
}

// Validate reports whether r is usable: a valid SPIFFE ID with a path, at
// least one selector, and a well-formed ExeSHA256 if set.
func (r Registration) Validate() error {
	id, err := spiffeid.FromString(r.ID)
	if err != nil {
		return fmt.Errorf("identity: registration %q: %w", r.ID, err)
	}
	if id.Path() == "" {
		return fmt.Errorf("identity: registration %q: the trust domain ID cannot be a workload's ID; want a path", r.ID)
	}
	if r.UID == nil && r.ExeSHA256 == "" && r.Exe == "" {
		return fmt.Errorf("identity: registration %q has no selector (uid, exe, exe_sha256); it would match every caller", r.ID)
	}
	if r.ExeSHA256 != "" && !isSHA256Digest(r.ExeSHA256) {
		return fmt.Errorf("identity: registration %q: exe_sha256 %q, want \"sha256:\" and 64 lower-case hex digits", r.ID, r.ExeSHA256)
	}
	return nil
}

// matches reports whether every selector r sets matches the caller.
func (r Registration) matches(uid uint32, exe, sha string) bool {
	if r.UID != nil && *r.UID != uid {
		return false
	}
	if r.Exe != "" && r.Exe != exe {
		return false
	}
	if r.ExeSHA256 != "" && r.ExeSHA256 != sha {
		return false
	}
	return true
}

// isSHA256Digest reports whether s is "sha256:" and 64 lower-case hex digits.
func isSHA256Digest(s string) bool {
	h, ok := strings.CutPrefix(s, "sha256:")
	if !ok || len(h) != 64 {
		return false
	}
	for _, c := range h {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Attestor gives local callers on a unix socket their SPIFFE ID from what
// the kernel reports about them, matched against registration entries.
type Attestor struct {
	// Entries are tried in order; the first whose selectors all match wins.
	Entries []Registration
	// Refused, if set, is called with the reason each time ConnContext
	// refuses a connection, for logging, just before the connection is
	// closed.
	Refused func(error)
}

// Validate reports the first invalid entry, if any.
func (a *Attestor) Validate() error {
	for i, e := range a.Entries {
		if err := e.Validate(); err != nil {
			return fmt.Errorf("entry %d: %w", i, err)
		}
	}
	return nil
}

// Attest identifies the process at the other end of conn:
//
//  1. SO_PEERCRED gives the pid, uid and gid the kernel recorded when the
//     peer connected; the uid cannot be forged by the peer.
//  2. Measure(pid) reads /proc/PID/exe and hashes it. Where the kernel
//     supports SO_PEERPIDFD (Linux 6.5+) Attest then checks through a
//     pidfd that the connecting process is still alive, so the pid was not
//     reused by another process while it was measured.
//  3. The first entry whose selectors all match gives the ID.
//
// It returns Principal{ID, Attestation: "unix-peercred", UID, User, Exe,
// ExeSHA256}. If the executable cannot be measured (another user's
// process, without CAP_SYS_PTRACE) Exe and ExeSHA256 stay empty and only
// entries that select on the uid alone can match. Anything else refuses
// the caller with an error: no matching entry, an invalid entry (the whole
// configuration is refused), or a socket the kernel gives no credentials
// for (pid 0: a peer in another pid namespace).
//
// Limitation: the kernel records the peer at connect time, while the
// executable is measured now. A process that connects and then execs
// another program is measured as that program, as with SPIRE's unix
// attestor.
func (a *Attestor) Attest(conn *net.UnixConn) (action.Principal, error) {
	if err := a.Validate(); err != nil {
		return action.Principal{}, fmt.Errorf("identity: attest: refusing every caller, the registrations are invalid: %w", err)
	}
	cred, alive, err := peerProcess(conn)
	if err != nil {
		return action.Principal{}, err
	}
	defer alive.close()
	if cred.pid <= 0 {
		return action.Principal{}, fmt.Errorf("identity: attest: the kernel reports pid %d for the peer (another pid namespace?)", cred.pid)
	}
	exe, sha, err := Measure(int(cred.pid))
	if err != nil {
		exe, sha = "", "" // unmeasured, never guessed
	}
	if err := alive.check(); err != nil {
		return action.Principal{}, fmt.Errorf("identity: attest pid %d: %w", cred.pid, err)
	}
	for _, e := range a.Entries {
		if !e.matches(cred.uid, exe, sha) {
			continue
		}
		p := action.Principal{
			ID:          e.ID,
			Attestation: AttestationUnixPeerCred,
			UID:         int64(cred.uid),
			Exe:         exe,
			ExeSHA256:   sha,
		}
		if u, err := user.LookupId(strconv.FormatUint(uint64(cred.uid), 10)); err == nil {
			p.User = u.Username
		}
		return p, nil
	}
	if err != nil {
		return action.Principal{}, fmt.Errorf("identity: attest: no registration matches pid %d uid %d (executable not measured: %w)", cred.pid, cred.uid, err)
	}
	return action.Principal{}, fmt.Errorf("identity: attest: no registration matches pid %d uid %d exe %s %s", cred.pid, cred.uid, exe, sha)
}

// PeerCred returns the credentials the kernel recorded for the peer of
// conn when it connected (SO_PEERCRED).
func PeerCred(conn *net.UnixConn) (pid int32, uid uint32, gid uint32, err error) {
	c, alive, err := peerProcess(conn)
	if err != nil {
		return 0, 0, 0, err
	}
	alive.close()
	return c.pid, c.uid, c.gid, nil
}

// ucred is what SO_PEERCRED reports.
type ucred struct {
	pid      int32
	uid, gid uint32
}

// principalKey is the context key of an attested principal.
type principalKey struct{}

// ConnContext returns a function for http.Server.ConnContext that attests
// every accepted unix socket connection once, with a, and stores the
// principal in the connection's context (see PrincipalFrom). A connection
// that cannot be attested, or that is not a unix socket, is closed at once
// and its context holds no principal, so no request on it is served.
//
// Attestation runs in the server's accept loop, so it also serialises
// accepting (a measurement hashes the caller's executable).
func ConnContext(a *Attestor) func(ctx context.Context, c net.Conn) context.Context {
	return func(ctx context.Context, c net.Conn) context.Context {
		uc, ok := c.(*net.UnixConn)
		if !ok {
			if a.Refused != nil {
				a.Refused(fmt.Errorf("identity: attest: connection from %s is %T, not a unix socket", c.RemoteAddr(), c))
			}
			c.Close()
			return ctx
		}
		p, err := a.Attest(uc)
		if err != nil {
			if a.Refused != nil {
				a.Refused(err)
			}
			c.Close()
			return ctx
		}
		return context.WithValue(ctx, principalKey{}, p)
	}
}

// PrincipalFrom returns the principal ConnContext attested for the
// connection a request's context belongs to; false if there is none, which
// the caller must treat as a refusal.
func PrincipalFrom(ctx context.Context) (action.Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(action.Principal)
	return p, ok
}
