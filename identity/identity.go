// Package identity owns who is asking: SPIFFE IDs for callers, the
// attestation of local processes (uid, executable path and digest read from
// /proc), and the keys of the embedded local CA.
//
// Every identity it returns is established from what the kernel reports
// (the process's uid, /proc/PID/exe), never from anything the caller says
// about itself: the package must never trust an identity the caller merely
// claims. Measurements it cannot take are left empty, never guessed, so
// policy can refuse an unmeasured caller.
package identity

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"

	"github.com/etbproject/etb/action"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// AttestationLocalUID is the Principal.Attestation of Local.
const AttestationLocalUID = "local-uid"

// Local returns the principal of the process that invoked etb in embedded
// mode: the local user, as the kernel reports it.
//
//   - ID is spiffe://<trustDomain>/user/<uid>, uid = os.Getuid(). trustDomain
//     is a bare SPIFFE trust domain name (lower-case letters, digits, '.',
//     '-', '_'); a "spiffe://" URI or any other character is an error.
//   - User is the user name from the user database, empty if unknown.
//   - Exe and ExeSHA256 measure the parent process (the agent that called
//     etb): Exe is the target of /proc/<ppid>/exe, ExeSHA256 the digest of
//     the file that link opens. If the link cannot be read (another user's
//     process, a reparented etb whose parent is init), both are empty; if
//     only the contents cannot be hashed, ExeSHA256 is empty. Neither is an
//     error: policy decides whether an unmeasured caller may act.
//
// It fails if the parent changed while it was measured (the agent exited
// and etb was reparented), since the measurement might then be another
// process's.
func Local(ctx context.Context, trustDomain string) (action.Principal, error) {
	if err := ctx.Err(); err != nil {
		return action.Principal{}, err
	}
	td, err := parseTrustDomain(trustDomain)
	if err != nil {
		return action.Principal{}, err
	}
	uid := os.Getuid()
	id, err := spiffeid.FromSegments(td, "user", strconv.Itoa(uid))
	if err != nil {
		return action.Principal{}, fmt.Errorf("identity: SPIFFE ID for uid %d in %q: %w", uid, trustDomain, err)
	}
	p := action.Principal{
		ID:          id.String(),
		Attestation: AttestationLocalUID,
		UID:         int64(uid),
	}
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		p.User = u.Username
	}
	ppid := os.Getppid()
	exe, sha, err := Measure(ppid)
	if err == nil || exe != "" {
		p.Exe, p.ExeSHA256 = exe, sha
	}
	if now := os.Getppid(); now != ppid {
		return action.Principal{}, fmt.Errorf("identity: parent process changed from %d to %d while it was measured", ppid, now)
	}
	return p, nil
}

// parseTrustDomain validates a bare trust domain name by the SPIFFE rules.
func parseTrustDomain(name string) (spiffeid.TrustDomain, error) {
	if name == "" {
		return spiffeid.TrustDomain{}, errors.New("identity: trust domain is empty")
	}
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		return spiffeid.TrustDomain{}, fmt.Errorf("identity: trust domain %q: %w", name, err)
	}
	if td.Name() != name {
		return spiffeid.TrustDomain{}, fmt.Errorf("identity: trust domain %q must be a bare name such as %q, not a URI", name, td.Name())
	}
	return td, nil
}

// FileSHA256 returns "sha256:" and the lower-case hex SHA-256 of the
// contents of the regular file at path, read as a stream. Anything but a
// regular file (a directory, a FIFO, a device) is an error; the file is
// opened non-blocking so that a FIFO cannot stall the caller.
func FileSHA256(path string) (string, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return "", fmt.Errorf("identity: hash %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("identity: hash %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("identity: hash %s: not a regular file (mode %v)", path, fi.Mode())
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("identity: hash %s: %w", path, err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// Measure returns the executable of process pid: exe, the target of
// /proc/PID/exe, and sha, the digest of the file that link opens (the very
// file the process runs, even if the path was since replaced or deleted;
// a deleted file's exe ends in " (deleted)").
//
// If the link can be read but the file cannot be hashed, Measure returns
// exe, an empty sha and the error. It fails if the process's start time
// changed during the measurement (the pid was reused by another process).
func Measure(pid int) (exe string, sha string, err error) {
	if pid <= 0 {
		return "", "", fmt.Errorf("identity: measure: pid %d is not a process id", pid)
	}
	start, err := procStartTime(pid)
	if err != nil {
		return "", "", err
	}
	link := fmt.Sprintf("/proc/%d/exe", pid)
	exe, err = os.Readlink(link)
	if err != nil {
		return "", "", fmt.Errorf("identity: measure pid %d: %w", pid, err)
	}
	sha, hashErr := FileSHA256(link)
	again, err := procStartTime(pid)
	if err != nil {
		return "", "", err
	}
	if again != start {
		return "", "", fmt.Errorf("identity: measure pid %d: the process was replaced during measurement (start time %d, then %d)", pid, start, again)
	}
	if hashErr != nil {
		return exe, "", fmt.Errorf("identity: measure pid %d (%s): %w", pid, exe, hashErr)
	}
	return exe, sha, nil
}

// procStartTime returns field 22 of /proc/PID/stat, the process's start
// time in clock ticks after boot; with the pid it names one process.
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("identity: measure pid %d: %w", pid, err)
	}
	// The command name (field 2) is in parentheses and may hold anything,
	// including ") "; the fields after the last ')' are plain.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("identity: measure pid %d: /proc/%d/stat has no command field", pid, pid)
	}
	f := strings.Fields(string(b[i+1:]))
	const startField = 22 - 3 // f[0] is field 3 (state)
	if len(f) <= startField {
		return 0, fmt.Errorf("identity: measure pid %d: /proc/%d/stat has %d fields after the command, want more than %d", pid, pid, len(f), startField)
	}
	v, err := strconv.ParseUint(f[startField], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("identity: measure pid %d: start time %q: %w", pid, f[startField], err)
	}
	return v, nil
}
