package gateway

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.yaml.in/yaml/v3"

	"github.com/etbproject/etb/identity"
)

// The server side of the transports: the gateway's own SVID, the TLS
// configuration, and the registration entries of unix-socket callers.

// CADir is the directory of the embedded CA inside a home.
func (h Home) CADir() string { return filepath.Join(h.Dir, "ca") }

// RegistrationsPath is the default registrations file of a home.
func (h Home) RegistrationsPath() string { return filepath.Join(h.Dir, "registrations.yaml") }

// ServerSVIDTTL is the lifetime of the gateway's own X.509-SVID; `etb
// serve` re-issues it at half that.
const ServerSVIDTTL = 24 * time.Hour

// IssueServerSVID loads (or creates) the home's embedded CA and issues the
// gateway's X.509-SVID spiffe://TD/gateway/local into DIR/tls/. It returns
// the CA and the file names; the files may be re-issued at any time, and a
// TLS configuration from TLSConfig picks the new pair up.
func (g *Gateway) IssueServerSVID() (ca *identity.CA, certFile, keyFile string, err error) {
	td, err := spiffeid.TrustDomainFromString(g.cfg.TrustDomain)
	if err != nil {
		return nil, "", "", fmt.Errorf("gateway: trust domain %q: %w", g.cfg.TrustDomain, err)
	}
	ca, err = identity.LoadOrCreateCA(g.home.CADir(), td)
	if err != nil {
		return nil, "", "", err
	}
	id, err := spiffeid.FromString(g.cfg.Issuer)
	if err != nil {
		return nil, "", "", fmt.Errorf("gateway: issuer %q is not a SPIFFE ID: %w", g.cfg.Issuer, err)
	}
	dir := filepath.Join(g.home.Dir, "tls")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", "", fmt.Errorf("gateway: %w", err)
	}
	certFile, keyFile = filepath.Join(dir, "gateway.crt"), filepath.Join(dir, "gateway.key")
	if err := ca.IssueFiles(id, certFile, keyFile, ServerSVIDTTL); err != nil {
		return nil, "", "", err
	}
	return ca, certFile, keyFile, nil
}

// TLSConfig returns the server TLS configuration of the Service: its SVID
// from certFile and keyFile (reloaded when they change), and client
// certificates required and verified against the Service's bundle, from
// callers of any known class. Which routes a class may use is decided per
// request.
func (s *Service) TLSConfig(certFile, keyFile string) (*tls.Config, error) {
	if s.opt.Bundle == nil {
		return nil, fmt.Errorf("gateway: TLS: the service has no trust bundle")
	}
	return identity.ServerTLSConfig(certFile, keyFile, s.opt.Bundle,
		s.classes.Authorize(identity.ClassAgent, identity.ClassEnforcer, identity.ClassApprover, identity.ClassAdmin))
}

// Registrations is the registrations.yaml file: the entries that give
// unix-socket callers their SPIFFE IDs.
type Registrations struct {
	Entries []identity.Registration `yaml:"entries"`
}

// LoadRegistrations reads a registrations file strictly (unknown fields are
// an error) and validates every entry. A file with no entries is an error:
// it would refuse every caller, which is better said at start.
func LoadRegistrations(path string) ([]identity.Registration, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("gateway: registrations: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var r Registrations
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("gateway: registrations %s: %w", path, err)
	}
	if len(r.Entries) == 0 {
		return nil, fmt.Errorf("gateway: registrations %s has no entries", path)
	}
	a := identity.Attestor{Entries: r.Entries}
	if err := a.Validate(); err != nil {
		return nil, fmt.Errorf("gateway: registrations %s: %w", path, err)
	}
	return r.Entries, nil
}
