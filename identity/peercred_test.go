//go:build linux

package identity

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/etbproject/etb/action"
)

// selfExe returns this test binary's path and digest, as Attest should
// measure this process.
func selfExe(t *testing.T) (exe, sha string) {
	t.Helper()
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	sha, err = FileSHA256("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	return exe, sha
}

func uidPtr(u uint32) *uint32 { return &u }

// socketPair returns both ends of a unix socket connection made through a
// listener in a temporary directory: this process is the peer of server.
func socketPair(t *testing.T) (server, client *net.UnixConn) {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "s"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.DialUnix("unix", nil, ln.Addr().(*net.UnixAddr))
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

func TestPeerCred(t *testing.T) {
	server, _ := socketPair(t)
	pid, uid, gid, err := PeerCred(server)
	if err != nil {
		t.Fatal(err)
	}
	if int(pid) != os.Getpid() || int(uid) != os.Getuid() || int(gid) != os.Getgid() {
		t.Errorf("PeerCred = pid %d uid %d gid %d, want %d %d %d", pid, uid, gid, os.Getpid(), os.Getuid(), os.Getgid())
	}
	if _, _, _, err := PeerCred(nil); err == nil {
		t.Error("PeerCred(nil) succeeded")
	}
}

func TestAttest(t *testing.T) {
	exe, sha := selfExe(t)
	uid := uint32(os.Getuid())
	otherSHA := "sha256:" + strings.Repeat("0", 64)
	const self = "spiffe://etb.test/agent/self"
	tests := []struct {
		name    string
		entries []Registration
		want    string // ID, or "" for a refusal
		errText string
	}{
		{"uid and digest", []Registration{{ID: self, UID: &uid, ExeSHA256: sha}}, self, ""},
		{"uid, path and digest", []Registration{{ID: self, UID: &uid, Exe: exe, ExeSHA256: sha}}, self, ""},
		{"uid only", []Registration{{ID: self, UID: &uid}}, self, ""},
		{"digest only", []Registration{{ID: self, ExeSHA256: sha}}, self, ""},
		{"first match wins", []Registration{
			{ID: "spiffe://etb.test/agent/other", ExeSHA256: otherSHA},
			{ID: "spiffe://etb.test/agent/by-uid", UID: &uid},
			{ID: self, UID: &uid, ExeSHA256: sha},
		}, "spiffe://etb.test/agent/by-uid", ""},
		{"other digest", []Registration{{ID: self, UID: &uid, ExeSHA256: otherSHA}}, "", "no registration matches"},
		{"other uid", []Registration{{ID: self, UID: uidPtr(uid + 1), ExeSHA256: sha}}, "", "no registration matches"},
		{"other path", []Registration{{ID: self, UID: &uid, Exe: "/usr/bin/true"}}, "", "no registration matches"},
		{"no entries", nil, "", "no registration matches"},
		{"entry without selectors", []Registration{{ID: self, UID: &uid}, {ID: self}}, "", "no selector"},
		{"malformed ID", []Registration{{ID: "spiffe://Etb.test/agent/self", UID: &uid}}, "", "registrations are invalid"},
		{"trust domain ID", []Registration{{ID: "spiffe://etb.test", UID: &uid}}, "", "trust domain ID"},
		{"digest without prefix", []Registration{{ID: self, ExeSHA256: strings.TrimPrefix(sha, "sha256:")}}, "", "want \"sha256:\""},
		{"upper-case digest", []Registration{{ID: self, ExeSHA256: strings.ToUpper(sha)}}, "", "want \"sha256:\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			server, _ := socketPair(t)
			a := &Attestor{Entries: tt.entries}
			p, err := a.Attest(server)
			if tt.want == "" {
				if err == nil || !strings.Contains(err.Error(), tt.errText) {
					t.Fatalf("Attest = %+v, %v; want an error containing %q", p, err, tt.errText)
				}
				if p != (action.Principal{}) {
					t.Errorf("a refusal returned principal %+v", p)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := action.Principal{ID: tt.want, Attestation: "unix-peercred", UID: int64(uid), User: p.User, Exe: exe, ExeSHA256: sha}
			if p != want {
				t.Errorf("Attest = %+v, want %+v", p, want)
			}
		})
	}
}

// TestHelperConnect is not a test: run as a child process by
// TestAttestRefusesExitedPeer, it connects to the socket named in the
// environment and exits.
func TestHelperConnect(t *testing.T) {
	path := os.Getenv("ETB_IDENTITY_TEST_CONNECT")
	if path == "" {
		t.Skip("helper process only")
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		os.Exit(2)
	}
	c.Close()
	os.Exit(0)
}

// TestAttestRefusesExitedPeer shows that a peer that is gone by the time
// it is attested is refused even by a uid-only registration: its pid may
// already belong to another process.
func TestAttestRefusesExitedPeer(t *testing.T) {
	server, _ := socketPair(t)
	_, h, err := peerProcess(server)
	if err != nil {
		t.Fatal(err)
	}
	h.close()
	if h.fd < 0 {
		t.Skip("kernel without SO_PEERPIDFD (Linux < 6.5): an exited peer cannot be told from a live one")
	}
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperConnect$")
	cmd.Env = append(os.Environ(), "ETB_IDENTITY_TEST_CONNECT="+path)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	// The helper has exited and been reaped; its connection is still
	// queued on the listener.
	conn, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	a := &Attestor{Entries: []Registration{{ID: "spiffe://etb.test/agent/any", UID: uidPtr(uint32(os.Getuid()))}}}
	p, err := a.Attest(conn)
	if err == nil {
		t.Fatalf("a peer that exited was attested as %+v", p)
	}
	if !strings.Contains(err.Error(), "exited") && !strings.Contains(err.Error(), "SO_PEERPIDFD") {
		t.Errorf("Attest = %v, want a refusal because the peer exited", err)
	}
}

// unixServer serves HTTP on a unix socket with ConnContext(a); the handler
// answers with the attested principal as JSON.
type unixServer struct {
	path  string
	mu    sync.Mutex
	calls int
	errs  []error
}

func startUnixServer(t *testing.T, entries []Registration) *unixServer {
	t.Helper()
	s := &unixServer{path: filepath.Join(t.TempDir(), "etb.sock")}
	ln, err := net.Listen("unix", s.path)
	if err != nil {
		t.Fatal(err)
	}
	a := &Attestor{Entries: entries, Refused: func(err error) {
		s.mu.Lock()
		s.errs = append(s.errs, err)
		s.mu.Unlock()
	}}
	srv := &http.Server{
		ConnContext: ConnContext(a),
		ErrorLog:    log.New(io.Discard, "", 0),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.mu.Lock()
			s.calls++
			s.mu.Unlock()
			p, ok := PrincipalFrom(r.Context())
			if !ok {
				http.Error(w, "unattested", http.StatusForbidden)
				return
			}
			json.NewEncoder(w).Encode(p)
		}),
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return s
}

func (s *unixServer) get() (action.Principal, error) {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", s.path)
		},
	}}
	resp, err := c.Get("http://etb/")
	if err != nil {
		return action.Principal{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return action.Principal{}, errors.New(resp.Status + ": " + string(b))
	}
	var p action.Principal
	err = json.NewDecoder(resp.Body).Decode(&p)
	return p, err
}

func TestConnContext(t *testing.T) {
	exe, sha := selfExe(t)
	uid := uint32(os.Getuid())
	const self = "spiffe://etb.test/agent/self"

	s := startUnixServer(t, []Registration{{ID: self, UID: &uid, ExeSHA256: sha}})
	p, err := s.get()
	if err != nil {
		t.Fatal(err)
	}
	if p.ID != self || p.Attestation != AttestationUnixPeerCred || p.UID != int64(uid) || p.Exe != exe || p.ExeSHA256 != sha {
		t.Errorf("attested principal %+v, want %s uid %d exe %s %s", p, self, uid, exe, sha)
	}

	// Registered with another executable: the connection is closed before
	// any request is served.
	s = startUnixServer(t, []Registration{{ID: self, UID: &uid, ExeSHA256: "sha256:" + strings.Repeat("ab", 32)}})
	if p, err := s.get(); err == nil {
		t.Fatalf("an unregistered caller was served as %+v", p)
	}
	s.mu.Lock()
	calls, errs := s.calls, s.errs
	s.mu.Unlock()
	if calls != 0 {
		t.Errorf("handler ran %d times for an unregistered caller", calls)
	}
	if len(errs) == 0 || !strings.Contains(errs[0].Error(), "no registration matches") {
		t.Errorf("Refused got %v, want the attestation error", errs)
	}
}

func TestConnContextRefusesNonUnixConn(t *testing.T) {
	a := &Attestor{Entries: []Registration{{ID: "spiffe://etb.test/agent/a", UID: uidPtr(uint32(os.Getuid()))}}}
	server, client := net.Pipe()
	defer client.Close()
	ctx := ConnContext(a)(context.Background(), server)
	if p, ok := PrincipalFrom(ctx); ok {
		t.Errorf("a non-unix connection got principal %+v", p)
	}
	if _, err := server.Write([]byte("x")); err == nil {
		t.Error("the non-unix connection was left open")
	}
	if _, ok := PrincipalFrom(context.Background()); ok {
		t.Error("PrincipalFrom of a bare context reported a principal")
	}
}
