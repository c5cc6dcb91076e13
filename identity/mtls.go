package identity

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/etbproject/etb/action"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// AttestationX509SVID is the Principal.Attestation of a caller
// authenticated by an X.509-SVID over mutual TLS.
const AttestationX509SVID = "x509-svid"

// ServerTLSConfig returns a TLS configuration for a server that presents
// the X.509-SVID in certFile/keyFile and requires every client to present
// an X.509-SVID that verifies against bundle and that authorize accepts.
//
// The peer is verified in VerifyConnection, which runs on every handshake,
// resumed ones included, at the time of the handshake: a chain that does
// not lead to the bundle of the ID's trust domain, an expired certificate,
// a leaf that is not an SVID (no URI SAN, two URI SANs, a CA certificate),
// the bare trust domain ID (spiffe://TD, which names no workload) or an ID
// authorize refuses fails the handshake. A client without a
// certificate fails it too.
//
// The files are read now (an error if they are not a valid SVID) and again
// at a handshake whenever either file's modification time, size or inode
// changed, so a rotated SVID is served without a restart. If the changed
// files cannot be loaded (a rotation in progress, a bad file) the last good
// SVID keeps being served while it is valid; an expired SVID is never
// served.
//
// ALPN offers h2 before http/1.1: an http.Server serving a listener made
// with it speaks HTTP/2 to clients that offer it, so one client's
// long-lived watch streams share one connection and one handshake (every
// stream on it is the peer the handshake verified). The client package
// sends its calls over HTTP/1.1 keep-alive connections, which cost both
// sides less CPU per request.
func ServerTLSConfig(certFile, keyFile string, bundle x509bundle.Source, authorize func(spiffeid.ID) error) (*tls.Config, error) {
	if bundle == nil {
		return nil, errors.New("identity: server TLS: bundle source is nil")
	}
	if authorize == nil {
		return nil, errors.New("identity: server TLS: authorize is nil; pass a function that accepts only the callers allowed")
	}
	svid, err := newSVIDFiles(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("identity: server TLS: %w", err)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"},
		ClientAuth: tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return svid.certificate(time.Now())
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyPeer(cs, bundle, authorize, "client")
		},
	}, nil
}

// ClientTLSConfig returns a TLS configuration for a client that presents
// the X.509-SVID in certFile/keyFile (reloaded on change, as in
// ServerTLSConfig) and accepts only a server whose X.509-SVID verifies
// against bundle and whose ID authorizeServer accepts (for example
// spiffeid.MatchID(gatewayID)). Host names are not checked: the server is
// authenticated by its SPIFFE ID alone.
func ClientTLSConfig(certFile, keyFile string, bundle x509bundle.Source, authorizeServer func(spiffeid.ID) error) (*tls.Config, error) {
	if bundle == nil {
		return nil, errors.New("identity: client TLS: bundle source is nil")
	}
	if authorizeServer == nil {
		return nil, errors.New("identity: client TLS: authorizeServer is nil; pass a function that accepts only the expected server ID")
	}
	svid, err := newSVIDFiles(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("identity: client TLS: %w", err)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The standard verification checks a DNS name against the web PKI;
		// SPIFFE verification replaces it in VerifyConnection, which runs
		// even when InsecureSkipVerify is set.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return svid.certificate(time.Now())
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyPeer(cs, bundle, authorizeServer, "server")
		},
	}, nil
}

// verifyPeer verifies the peer's certificate chain in cs as an X.509-SVID
// against bundle at the current time and asks authorize about its ID.
func verifyPeer(cs tls.ConnectionState, bundle x509bundle.Source, authorize func(spiffeid.ID) error, role string) error {
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("identity: the %s presented no certificate", role)
	}
	id, _, err := x509svid.Verify(cs.PeerCertificates, bundle)
	if err != nil {
		return fmt.Errorf("identity: %s certificate (serial %s) is not a valid X.509-SVID: %w", role, cs.PeerCertificates[0].SerialNumber, err)
	}
	if id.Path() == "" {
		return fmt.Errorf("identity: %s presented an SVID for the trust domain ID %s, which names no workload", role, id)
	}
	if err := authorize(id); err != nil {
		return fmt.Errorf("identity: %s %s is not authorized: %w", role, id, err)
	}
	return nil
}

// PeerID returns the SPIFFE ID of the peer of a completed TLS connection:
// the single URI SAN of its leaf certificate. It does not verify the
// certificate; it is meaningful only for connections configured by
// ServerTLSConfig or ClientTLSConfig, whose handshakes verified it.
func PeerID(state tls.ConnectionState) (spiffeid.ID, error) {
	if !state.HandshakeComplete {
		return spiffeid.ID{}, errors.New("identity: peer ID: the TLS handshake is not complete")
	}
	if len(state.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("identity: peer ID: the peer presented no certificate")
	}
	id, err := x509svid.IDFromCert(state.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("identity: peer ID: %w", err)
	}
	return id, nil
}

// PrincipalFromTLS returns the principal of the peer of a completed TLS
// connection verified as by PeerID: its SPIFFE ID, attested "x509-svid".
func PrincipalFromTLS(state tls.ConnectionState) (action.Principal, error) {
	id, err := PeerID(state)
	if err != nil {
		return action.Principal{}, err
	}
	return action.Principal{ID: id.String(), Attestation: AttestationX509SVID}, nil
}

// Caller classes returned by Classes.ClassOf.
const (
	ClassAgent    = "agent"
	ClassEnforcer = "enforcer"
	ClassApprover = "approver"
	ClassAdmin    = "admin"
)

// Classes maps SPIFFE ID path prefixes to caller classes, for authorizing
// routes. Each prefix is a whole-segment path prefix such as "/agent/": it
// matches IDs whose path continues below it ("/agent/a", "/agent/a/b"),
// never the prefix itself ("/agent") nor a longer segment ("/agents/a").
// An empty prefix, or "/", disables its class: no class covers every ID.
type Classes struct {
	Agents, Enforcers, Approvers, Admins string
}

// DefaultClasses returns the prefixes /agent/, /enforcer/, /approver/ and
// /admin/.
func DefaultClasses() Classes {
	return Classes{Agents: "/agent/", Enforcers: "/enforcer/", Approvers: "/approver/", Admins: "/admin/"}
}

// ClassOf returns the class of id (ClassAgent, ClassEnforcer, ClassApprover
// or ClassAdmin), or "" if no class or more than one matches: an ambiguous
// ID belongs to no class. It does not look at the trust domain, which TLS
// verification against the bundle has established.
func (c Classes) ClassOf(id spiffeid.ID) string {
	class := ""
	for _, e := range [...]struct{ prefix, class string }{
		{c.Agents, ClassAgent},
		{c.Enforcers, ClassEnforcer},
		{c.Approvers, ClassApprover},
		{c.Admins, ClassAdmin},
	} {
		if !pathUnder(id.Path(), e.prefix) {
			continue
		}
		if class != "" {
			return ""
		}
		class = e.class
	}
	return class
}

// Authorize returns an authorize function for ServerTLSConfig (or a
// route) that accepts exactly the IDs whose class is one of classes.
func (c Classes) Authorize(classes ...string) func(spiffeid.ID) error {
	allowed := append([]string(nil), classes...)
	return func(id spiffeid.ID) error {
		got := c.ClassOf(id)
		for _, a := range allowed {
			if got != "" && got == a {
				return nil
			}
		}
		if got == "" {
			return fmt.Errorf("identity: %s belongs to no caller class; want one of %v", id, allowed)
		}
		return fmt.Errorf("identity: %s is of class %q; want one of %v", id, got, allowed)
	}
}

// pathUnder reports whether the SPIFFE ID path p lies strictly below the
// segment prefix prefix; an empty prefix matches nothing.
func pathUnder(p, prefix string) bool {
	prefix = strings.TrimSuffix(prefix, "/")
	if prefix == "" {
		return false
	}
	return strings.HasPrefix(p, prefix+"/") && len(p) > len(prefix)+1
}

// svidFiles serves the X.509-SVID kept in a certificate and a key file,
// reloading it when either file changes.
type svidFiles struct {
	certFile, keyFile string

	mu    sync.Mutex
	stamp [2]fileStamp     // of certFile and keyFile when cert was loaded
	cert  *tls.Certificate // last good SVID
}

// fileStamp identifies one version of a file: rotation by rename changes
// the inode, an in-place rewrite the modification time or size.
type fileStamp struct {
	dev, ino uint64
	mtime    time.Time
	size     int64
}

func statStamp(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	s := fileStamp{mtime: fi.ModTime(), size: fi.Size()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.dev, s.ino = uint64(st.Dev), uint64(st.Ino)
	}
	return s, nil
}

// newSVIDFiles loads the SVID in certFile and keyFile; it must be valid now.
func newSVIDFiles(certFile, keyFile string) (*svidFiles, error) {
	s := &svidFiles{certFile: certFile, keyFile: keyFile}
	if _, err := s.certificate(time.Now()); err != nil {
		return nil, err
	}
	return s, nil
}

// certificate returns the SVID to present at time now: reloaded if the
// files changed and load, else the last good one, if still valid.
func (s *svidFiles) certificate(now time.Time) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	loadErr := s.reloadLocked(now)
	if s.cert == nil {
		return nil, loadErr
	}
	if leaf := s.cert.Leaf; now.After(leaf.NotAfter) {
		if loadErr != nil {
			return nil, fmt.Errorf("identity: SVID %s expired at %s and the files do not load: %w", s.certFile, leaf.NotAfter.UTC().Format(time.RFC3339), loadErr)
		}
		return nil, fmt.Errorf("identity: SVID %s expired at %s; issue a new one", s.certFile, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return s.cert, nil
}

// reloadLocked loads the files if their stamps changed since the last good
// load. On failure it keeps the previous SVID and stamps, so the next call
// tries again.
func (s *svidFiles) reloadLocked(now time.Time) error {
	cs, err := statStamp(s.certFile)
	if err != nil {
		return fmt.Errorf("identity: SVID certificate: %w", err)
	}
	ks, err := statStamp(s.keyFile)
	if err != nil {
		return fmt.Errorf("identity: SVID key: %w", err)
	}
	if s.cert != nil && s.stamp == [2]fileStamp{cs, ks} {
		return nil
	}
	keyPEM, err := readSmallFile(s.keyFile, maxKeyFileBytes, true)
	if err != nil {
		return fmt.Errorf("identity: SVID key: %w", err)
	}
	certPEM, err := readSmallFile(s.certFile, maxPEMFileBytes, false)
	if err != nil {
		return fmt.Errorf("identity: SVID certificate: %w", err)
	}
	svid, err := x509svid.Parse(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("identity: SVID %s with key %s: %w", s.certFile, s.keyFile, err)
	}
	leaf := svid.Certificates[0]
	if now.After(leaf.NotAfter) {
		return fmt.Errorf("identity: SVID %s (%s) expired at %s", s.certFile, svid.ID, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	cert := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: leaf}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	s.cert, s.stamp = cert, [2]fileStamp{cs, ks}
	return nil
}
