package identity

import (
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func mustParse(t *testing.T, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: certPEMType, Bytes: der})
}

// svidPaths issues an SVID for path in ca's trust domain into a new
// temporary directory and returns the certificate and key paths.
func svidPaths(t *testing.T, ca *CA, path string) (certFile, keyFile string) {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid.key")
	if err := ca.IssueFiles(spiffeid.RequireFromPath(ca.TrustDomain(), path), certFile, keyFile, 0); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// testServer is an HTTPS server on 127.0.0.1 whose handler answers with
// the client's SPIFFE ID.
type testServer struct {
	url   string
	calls atomic.Int64
}

func startTLSServer(t *testing.T, cfg *tls.Config) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{url: "https://" + ln.Addr().String() + "/"}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.calls.Add(1)
			id, err := PeerID(*r.TLS)
			if err != nil {
				http.Error(w, err.Error(), http.StatusForbidden)
				return
			}
			io.WriteString(w, id.String())
		}),
		ErrorLog: log.New(io.Discard, "", 0), // refused handshakes are expected
	}
	go srv.Serve(tls.NewListener(ln, cfg))
	t.Cleanup(func() { srv.Close() })
	return s
}

// get makes one request on a new connection and returns the body and the
// server's SPIFFE ID.
func get(cfg *tls.Config, url string) (body string, server spiffeid.ID, err error) {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return "", spiffeid.ID{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", spiffeid.ID{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return "", spiffeid.ID{}, errors.New(resp.Status + ": " + string(b))
	}
	server, err = PeerID(*resp.TLS)
	return string(b), server, err
}

// gateway starts a server with the SVID /gateway that admits agents.
func gateway(t *testing.T, ca *CA) (*testServer, spiffeid.ID) {
	t.Helper()
	cert, key := svidPaths(t, ca, "/gateway")
	cfg, err := ServerTLSConfig(cert, key, ca.Bundle(), DefaultClasses().Authorize(ClassAgent))
	if err != nil {
		t.Fatal(err)
	}
	return startTLSServer(t, cfg), spiffeid.RequireFromPath(ca.TrustDomain(), "/gateway")
}

func TestMTLSAcceptsAgent(t *testing.T) {
	ca := newTestCA(t, testTD)
	srv, gwID := gateway(t, ca)
	cert, key := svidPaths(t, ca, "/agent/a")
	cfg, err := ClientTLSConfig(cert, key, ca.Bundle(), spiffeid.MatchID(gwID))
	if err != nil {
		t.Fatal(err)
	}
	body, server, err := get(cfg, srv.url)
	if err != nil {
		t.Fatal(err)
	}
	if body != "spiffe://etb.test/agent/a" {
		t.Errorf("server saw client %q, want spiffe://etb.test/agent/a", body)
	}
	if server != gwID {
		t.Errorf("client saw server %v, want %v", server, gwID)
	}
}

// rawClient is a TLS client presenting chain with key, or no certificate
// if chain is nil; it does not check the server.
func rawClient(chain [][]byte, key crypto.Signer) *tls.Config {
	return &tls.Config{
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if chain == nil {
				return &tls.Certificate{}, nil
			}
			return &tls.Certificate{Certificate: chain, PrivateKey: key}, nil
		},
	}
}

// signLeaf signs a certificate from tmpl with ca's key, bypassing Issue's
// checks, to build certificates Issue refuses to make.
func signLeaf(t *testing.T, ca *CA, tmpl *x509.Certificate, pub crypto.PublicKey) []byte {
	t.Helper()
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber, _ = randomSerial()
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Minute), time.Now().Add(time.Hour)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestMTLSRefusesClient(t *testing.T) {
	ca := newTestCA(t, testTD)
	srv, _ := gateway(t, ca)
	key := newP256(t)
	agentURL, _ := url.Parse("spiffe://etb.test/agent/a")
	otherURL, _ := url.Parse("spiffe://etb.test/agent/b")
	issue := func(c *CA, path string, now time.Time) [][]byte {
		_, der, err := c.issue(spiffeid.RequireFromPath(c.TrustDomain(), path), key.Public(), time.Hour, now)
		if err != nil {
			t.Fatal(err)
		}
		return [][]byte{der}
	}
	otherCA := newTestCA(t, testTD) // same trust domain, another key
	otherTD := newTestCA(t, spiffeid.RequireTrustDomainFromString("other.test"))
	tests := []struct {
		name  string
		chain [][]byte
		want  string // in the server's verification error
	}{
		{"no client certificate", nil, "presented no certificate"},
		{"SVID from another CA of the same trust domain", issue(otherCA, "/agent/a", time.Now()), "certificate signed by unknown authority"},
		{"SVID of a trust domain not in the bundle", issue(otherTD, "/agent/a", time.Now()), "no X.509 bundle"},
		{"expired SVID", issue(ca, "/agent/a", time.Now().Add(-2*time.Hour)), "expired"},
		{"not yet valid SVID", [][]byte{signLeaf(t, ca, &x509.Certificate{NotBefore: time.Now().Add(time.Hour), NotAfter: time.Now().Add(2 * time.Hour), URIs: []*url.URL{agentURL}, KeyUsage: x509.KeyUsageDigitalSignature, BasicConstraintsValid: true}, key.Public())}, "not yet valid"},
		{"no URI SAN", [][]byte{signLeaf(t, ca, &x509.Certificate{DNSNames: []string{"agent.example"}, KeyUsage: x509.KeyUsageDigitalSignature, BasicConstraintsValid: true}, key.Public())}, "no URI SAN"},
		{"two URI SANs", [][]byte{signLeaf(t, ca, &x509.Certificate{URIs: []*url.URL{agentURL, otherURL}, KeyUsage: x509.KeyUsageDigitalSignature, BasicConstraintsValid: true}, key.Public())}, "more than one URI SAN"},
		{"leaf with the CA flag", [][]byte{signLeaf(t, ca, &x509.Certificate{URIs: []*url.URL{agentURL}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}, key.Public())}, "CA flag"},
		{"SVID of the wrong class (approver)", issue(ca, "/approver/x", time.Now()), `of class "approver"`},
		{"SVID of no class", issue(ca, "/agents/a", time.Now()), "belongs to no caller class"},
		{"the CA certificate itself", [][]byte{ca.cert.Raw}, "CA flag"},
		{"SVID for the trust domain ID", [][]byte{signLeaf(t, ca, &x509.Certificate{URIs: []*url.URL{testTD.ID().URL()}, KeyUsage: x509.KeyUsageDigitalSignature, BasicConstraintsValid: true}, key.Public())}, "trust domain ID"},
	}
	authorize := DefaultClasses().Authorize(ClassAgent)
	if err := verifyPeer(tls.ConnectionState{PeerCertificates: []*x509.Certificate{mustParse(t, signLeaf(t, ca, &x509.Certificate{URIs: []*url.URL{testTD.ID().URL()}, KeyUsage: x509.KeyUsageDigitalSignature, BasicConstraintsValid: true}, key.Public()))}}, ca.Bundle(), spiffeid.MatchAny(), "client"); err == nil {
		t.Error("verifyPeer admitted the trust domain ID even with an authorize function that accepts anything")
	}

	// The same client setup with a good SVID gets in, so the refusals
	// below are the server's verdicts on the certificates.
	if body, _, err := get(rawClient(issue(ca, "/agent/a", time.Now()), key), srv.url); err != nil || body != agentURL.String() {
		t.Fatalf("control request = %q, %v; want admitted as %s", body, err, agentURL)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var certs []*x509.Certificate
			for _, der := range tt.chain {
				c, err := x509.ParseCertificate(der)
				if err != nil {
					t.Fatal(err)
				}
				certs = append(certs, c)
			}
			err := verifyPeer(tls.ConnectionState{PeerCertificates: certs}, ca.Bundle(), authorize, "client")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("verifyPeer = %v, want an error containing %q", err, tt.want)
			}
			before := srv.calls.Load()
			body, _, err := get(rawClient(tt.chain, key), srv.url)
			if err == nil {
				t.Fatalf("request succeeded as %q, want the handshake refused", body)
			}
			if n := srv.calls.Load() - before; n != 0 {
				t.Errorf("handler ran %d times for a refused client", n)
			}
		})
	}
}

func TestClientRefusesServer(t *testing.T) {
	ca := newTestCA(t, testTD)
	clientCert, clientKey := svidPaths(t, ca, "/agent/a")
	gwID := spiffeid.RequireFromPath(testTD, "/gateway")

	// A server with an SVID from another CA of the same trust domain.
	impostor := newTestCA(t, testTD)
	cert, key := svidPaths(t, impostor, "/gateway")
	bundles := x509bundle.NewSet(ca.Bundle()) // trusts the clients of ca
	scfg, err := ServerTLSConfig(cert, key, bundles, spiffeid.MatchAny())
	if err != nil {
		t.Fatal(err)
	}
	evil := startTLSServer(t, scfg)
	ccfg, err := ClientTLSConfig(clientCert, clientKey, ca.Bundle(), spiffeid.MatchID(gwID))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := get(ccfg, evil.url); err == nil || !strings.Contains(err.Error(), "not a valid X.509-SVID") {
		t.Errorf("request to a server of another CA = %v, want refused", err)
	}
	if evil.calls.Load() != 0 {
		t.Error("the client's request reached the impostor")
	}

	// A genuine SVID, but not the ID the client expects.
	srv, _ := gateway(t, ca)
	ccfg, err = ClientTLSConfig(clientCert, clientKey, ca.Bundle(), spiffeid.MatchID(spiffeid.RequireFromPath(testTD, "/other-gateway")))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := get(ccfg, srv.url); err == nil || !strings.Contains(err.Error(), "not authorized") {
		t.Errorf("request to an unexpected server ID = %v, want refused", err)
	}
}

func TestTLSConfigRefusesBadInput(t *testing.T) {
	ca := newTestCA(t, testTD)
	cert, key := svidPaths(t, ca, "/gateway")
	_, otherKey := svidPaths(t, ca, "/gateway")
	dir := t.TempDir()
	caAsLeaf, caKey := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca.key")
	os.WriteFile(caAsLeaf, pemCert(ca.cert.Raw), 0o600)
	der, _ := x509.MarshalPKCS8PrivateKey(ca.key)
	os.WriteFile(caKey, pem.EncodeToMemory(&pem.Block{Type: pemType, Bytes: der}), 0o600)
	openKey := filepath.Join(dir, "open.key")
	b, _ := os.ReadFile(key)
	os.WriteFile(openKey, b, 0o644)
	ok := spiffeid.MatchAny()
	tests := []struct {
		name      string
		cert, key string
		bundle    x509bundle.Source
		authorize func(spiffeid.ID) error
	}{
		{"nil bundle", cert, key, nil, ok},
		{"nil authorize", cert, key, ca.Bundle(), nil},
		{"missing certificate", filepath.Join(dir, "none"), key, ca.Bundle(), ok},
		{"missing key", cert, filepath.Join(dir, "none"), ca.Bundle(), ok},
		{"key of another SVID", cert, otherKey, ca.Bundle(), ok},
		{"CA certificate as the SVID", caAsLeaf, caKey, ca.Bundle(), ok},
		{"key readable by others", cert, openKey, ca.Bundle(), ok},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if cfg, err := ServerTLSConfig(tt.cert, tt.key, tt.bundle, tt.authorize); err == nil || cfg != nil {
				t.Errorf("ServerTLSConfig = %v, want an error", err)
			}
			if cfg, err := ClientTLSConfig(tt.cert, tt.key, tt.bundle, tt.authorize); err == nil || cfg != nil {
				t.Errorf("ClientTLSConfig = %v, want an error", err)
			}
		})
	}
}

func TestCertificatesRotateWithoutRestart(t *testing.T) {
	ca := newTestCA(t, testTD)
	serverCert, serverKey := svidPaths(t, ca, "/gateway/one")
	clientCert, clientKey := svidPaths(t, ca, "/agent/one")
	scfg, err := ServerTLSConfig(serverCert, serverKey, ca.Bundle(), DefaultClasses().Authorize(ClassAgent))
	if err != nil {
		t.Fatal(err)
	}
	srv := startTLSServer(t, scfg)
	ccfg, err := ClientTLSConfig(clientCert, clientKey, ca.Bundle(), spiffeid.MatchMemberOf(testTD))
	if err != nil {
		t.Fatal(err)
	}
	check := func(wantClient, wantServer string) {
		t.Helper()
		body, server, err := get(ccfg, srv.url)
		if err != nil {
			t.Fatal(err)
		}
		if body != "spiffe://etb.test"+wantClient || server.Path() != wantServer {
			t.Errorf("client %q server %q, want client %s server %s", body, server, wantClient, wantServer)
		}
	}
	check("/agent/one", "/gateway/one")

	if err := ca.IssueFiles(spiffeid.RequireFromPath(testTD, "/gateway/two"), serverCert, serverKey, 0); err != nil {
		t.Fatal(err)
	}
	if err := ca.IssueFiles(spiffeid.RequireFromPath(testTD, "/agent/two"), clientCert, clientKey, 0); err != nil {
		t.Fatal(err)
	}
	check("/agent/two", "/gateway/two")

	// A half-done rotation (new key, old certificate) and a corrupt
	// certificate file: the last good SVID is still served.
	other := t.TempDir()
	if err := ca.IssueFiles(spiffeid.RequireFromPath(testTD, "/gateway/three"), filepath.Join(other, "c"), filepath.Join(other, "k"), 0); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(other, "k"))
	if err := writeFileAtomic(serverKey, b, 0o600, true); err != nil {
		t.Fatal(err)
	}
	check("/agent/two", "/gateway/two")
	if err := writeFileAtomic(clientCert, []byte("garbage"), 0o600, true); err != nil {
		t.Fatal(err)
	}
	check("/agent/two", "/gateway/two")
	// Completing the rotation is picked up.
	b, _ = os.ReadFile(filepath.Join(other, "c"))
	if err := writeFileAtomic(serverCert, b, 0o600, true); err != nil {
		t.Fatal(err)
	}
	check("/agent/two", "/gateway/three")
}

func TestExpiredSVIDIsNotServed(t *testing.T) {
	ca := newTestCA(t, testTD)
	cert, key := svidPaths(t, ca, "/gateway")
	s, err := newSVIDFiles(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.certificate(time.Now()); err != nil {
		t.Fatal(err)
	}
	if c, err := s.certificate(time.Now().Add(DefaultSVIDTTL + time.Minute)); err == nil || c != nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("certificate after expiry = %v, want an error saying it expired", err)
	}
	// Files holding an already expired SVID do not load.
	dir := t.TempDir()
	k := newP256(t)
	_, der, err := ca.issue(spiffeid.RequireFromPath(testTD, "/gateway"), k.Public(), time.Hour, time.Now().Add(-2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(k)
	os.WriteFile(filepath.Join(dir, "c"), pemCert(der), 0o600)
	os.WriteFile(filepath.Join(dir, "k"), pem.EncodeToMemory(&pem.Block{Type: pemType, Bytes: kder}), 0o600)
	if _, err := newSVIDFiles(filepath.Join(dir, "c"), filepath.Join(dir, "k")); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("loading an expired SVID = %v, want an error saying it expired", err)
	}
}

// TestResumedSessionIsReauthorized shows that a TLS session resumed from a
// ticket is verified and authorized again: a client the server no longer
// admits cannot get in by resuming.
func TestResumedSessionIsReauthorized(t *testing.T) {
	ca := newTestCA(t, testTD)
	serverCert, serverKey := svidPaths(t, ca, "/gateway")
	var refuse atomic.Bool
	scfg, err := ServerTLSConfig(serverCert, serverKey, ca.Bundle(), func(id spiffeid.ID) error {
		if refuse.Load() {
			return errors.New("refused by the test")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := startTLSServer(t, scfg)
	clientCert, clientKey := svidPaths(t, ca, "/agent/a")
	ccfg, err := ClientTLSConfig(clientCert, clientKey, ca.Bundle(), spiffeid.MatchAny())
	if err != nil {
		t.Fatal(err)
	}
	ccfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	addr := strings.TrimSuffix(strings.TrimPrefix(srv.url, "https://"), "/")
	dial := func() (resumed bool, err error) {
		c, err := tls.Dial("tcp", addr, ccfg)
		if err != nil {
			return false, err
		}
		defer c.Close()
		// The server's verdict on the client arrives with the first read
		// in TLS 1.3; a request makes the server answer.
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		b, err := io.ReadAll(c)
		if err != nil {
			return false, err
		}
		if !strings.Contains(string(b), "spiffe://etb.test/agent/a") {
			return false, errors.New("unexpected response " + string(b))
		}
		return c.ConnectionState().DidResume, nil
	}
	if _, err := dial(); err != nil {
		t.Fatal(err)
	}
	resumed, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	if !resumed {
		t.Fatal("the second connection did not resume; the test proves nothing")
	}
	refuse.Store(true)
	if _, err := dial(); err == nil {
		t.Fatal("a resumed session was admitted after authorization was withdrawn")
	}
}

func TestPeerID(t *testing.T) {
	if _, err := PeerID(tls.ConnectionState{}); err == nil {
		t.Error("PeerID of an incomplete handshake succeeded")
	}
	if _, err := PeerID(tls.ConnectionState{HandshakeComplete: true}); err == nil {
		t.Error("PeerID without peer certificates succeeded")
	}
	ca := newTestCA(t, testTD)
	cert, _, err := ca.Issue(spiffeid.RequireFromPath(testTD, "/agent/a"), newP256(t).Public(), 0)
	if err != nil {
		t.Fatal(err)
	}
	p, err := PrincipalFromTLS(tls.ConnectionState{HandshakeComplete: true, PeerCertificates: []*x509.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	if p.ID != "spiffe://etb.test/agent/a" || p.Attestation != AttestationX509SVID {
		t.Errorf("principal %+v", p)
	}
}

func TestClassOf(t *testing.T) {
	d := DefaultClasses()
	tests := []struct {
		classes Classes
		id      string
		want    string
	}{
		{d, "spiffe://etb.test/agent/a", ClassAgent},
		{d, "spiffe://etb.test/agent/a/b", ClassAgent},
		{d, "spiffe://etb.test/enforcer/host1", ClassEnforcer},
		{d, "spiffe://etb.test/approver/alice", ClassApprover},
		{d, "spiffe://etb.test/admin/root", ClassAdmin},
		{d, "spiffe://etb.test/agent", ""},
		{d, "spiffe://etb.test/agents/a", ""},
		{d, "spiffe://etb.test/user/1000", ""},
		{d, "spiffe://etb.test", ""},
		{Classes{Agents: "/agent"}, "spiffe://etb.test/agent/a", ClassAgent},
		{Classes{Agents: "/agent"}, "spiffe://etb.test/agentx/a", ""},
		{Classes{Agents: "/x/", Admins: "/x/"}, "spiffe://etb.test/x/a", ""},
		{Classes{Agents: "/x/", Admins: "/x/y/"}, "spiffe://etb.test/x/y/z", ""},
		{Classes{Agents: "", Admins: "/"}, "spiffe://etb.test/agent/a", ""},
		{Classes{}, "spiffe://etb.test/agent/a", ""},
	}
	for _, tt := range tests {
		if got := tt.classes.ClassOf(spiffeid.RequireFromString(tt.id)); got != tt.want {
			t.Errorf("%+v.ClassOf(%s) = %q, want %q", tt.classes, tt.id, got, tt.want)
		}
	}
	auth := d.Authorize(ClassApprover, ClassAdmin)
	for id, ok := range map[string]bool{
		"spiffe://etb.test/approver/alice": true,
		"spiffe://etb.test/admin/root":     true,
		"spiffe://etb.test/agent/a":        false,
		"spiffe://etb.test/nobody":         false,
	} {
		if err := auth(spiffeid.RequireFromString(id)); (err == nil) != ok {
			t.Errorf("Authorize(approver, admin)(%s) = %v, want allowed %v", id, err, ok)
		}
	}
	if err := d.Authorize()(spiffeid.RequireFromString("spiffe://etb.test/agent/a")); err == nil {
		t.Error("Authorize() with no classes allowed an agent")
	}
}
