package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var testTD = spiffeid.RequireTrustDomainFromString("etb.test")

// newTestCA creates a CA for td in a new temporary directory.
func newTestCA(t *testing.T, td spiffeid.TrustDomain) *CA {
	t.Helper()
	ca, err := LoadOrCreateCA(filepath.Join(t.TempDir(), "ca"), td)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func newP256(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestLoadOrCreateCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := LoadOrCreateCA(dir, testTD)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{".": 0o700, CAKeyFile: 0o600, CACertFile: 0o644} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s mode %04o, want %04o", name, got, want)
		}
	}
	c := ca.Certificate()
	if !c.IsCA || !c.BasicConstraintsValid || c.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA certificate IsCA %v BasicConstraintsValid %v KeyUsage %v", c.IsCA, c.BasicConstraintsValid, c.KeyUsage)
	}
	if len(c.URIs) != 1 || c.URIs[0].String() != "spiffe://etb.test" {
		t.Errorf("CA URI SANs %v, want [spiffe://etb.test]", c.URIs)
	}
	if ca.TrustDomain() != testTD {
		t.Errorf("TrustDomain %v", ca.TrustDomain())
	}
	b := ca.Bundle()
	if b.TrustDomain() != testTD || len(b.X509Authorities()) != 1 || !b.X509Authorities()[0].Equal(c) {
		t.Errorf("Bundle %v holds %d authorities, want the CA certificate", b.TrustDomain(), len(b.X509Authorities()))
	}

	keyBefore, _ := os.ReadFile(filepath.Join(dir, CAKeyFile))
	again, err := LoadOrCreateCA(dir, testTD)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Certificate().Equal(c) {
		t.Error("reloading the CA gave a different certificate")
	}
	keyAfter, _ := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if !bytes.Equal(keyBefore, keyAfter) {
		t.Error("reloading the CA rewrote ca.key")
	}
	// An SVID from the reloaded CA verifies against the first one's bundle.
	cert, _, err := again.Issue(spiffeid.RequireFromPath(testTD, "/agent/a"), newP256(t).Public(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify([]*x509.Certificate{cert}, ca.Bundle()); err != nil {
		t.Errorf("SVID of the reloaded CA does not verify: %v", err)
	}

	// ca.crt lost after the key was written: recreated from the same key.
	if err := os.Remove(filepath.Join(dir, CACertFile)); err != nil {
		t.Fatal(err)
	}
	healed, err := LoadOrCreateCA(dir, testTD)
	if err != nil {
		t.Fatal(err)
	}
	if !publicKeysEqual(healed.Certificate().PublicKey, c.PublicKey) {
		t.Error("recreated CA certificate has another key")
	}
}

func TestLoadOrCreateCAEd25519Key(t *testing.T) {
	dir := t.TempDir()
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteKey(filepath.Join(dir, CAKeyFile), key); err != nil {
		t.Fatal(err)
	}
	ca, err := LoadOrCreateCA(dir, testTD)
	if err != nil {
		t.Fatal(err)
	}
	if !publicKeysEqual(ca.Certificate().PublicKey, key.Public()) {
		t.Fatal("CA certificate is not for the Ed25519 key in ca.key")
	}
	cert, _, err := ca.Issue(spiffeid.RequireFromPath(testTD, "/agent/a"), newP256(t).Public(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify([]*x509.Certificate{cert}, ca.Bundle()); err != nil {
		t.Errorf("SVID of an Ed25519 CA does not verify: %v", err)
	}
}

func TestLoadOrCreateCARefuses(t *testing.T) {
	other := spiffeid.RequireTrustDomainFromString("other.test")
	tests := []struct {
		name    string
		prepare func(t *testing.T, dir string)
		td      spiffeid.TrustDomain
		want    string
	}{
		{"certificate without key", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, CAKeyFile))
		}, testTD, "refusing to create a new key"},
		{"other trust domain", func(t *testing.T, dir string) {}, other, "want exactly [spiffe://other.test]"},
		{"key readable by others", func(t *testing.T, dir string) {
			os.Chmod(filepath.Join(dir, CAKeyFile), 0o644)
		}, testTD, "lets group or others access"},
		{"key of another CA", func(t *testing.T, dir string) {
			odir := t.TempDir()
			if _, err := LoadOrCreateCA(odir, testTD); err != nil {
				t.Fatal(err)
			}
			os.Remove(filepath.Join(dir, CAKeyFile))
			data, _ := os.ReadFile(filepath.Join(odir, CAKeyFile))
			os.WriteFile(filepath.Join(dir, CAKeyFile), data, 0o600)
		}, testTD, "does not match the CA private key"},
		{"corrupt certificate", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, CACertFile), []byte("not a certificate"), 0o600)
		}, testTD, "no PEM block"},
		{"leaf certificate as CA", func(t *testing.T, dir string) {
			ca, err := LoadOrCreateCA(dir, testTD)
			if err != nil {
				t.Fatal(err)
			}
			k, err := readPrivateKeyFile(filepath.Join(dir, CAKeyFile))
			if err != nil {
				t.Fatal(err)
			}
			// A self-signed leaf for the CA key: not a CA certificate.
			tmpl := &x509.Certificate{SerialNumber: ca.cert.SerialNumber, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), URIs: ca.cert.URIs, BasicConstraintsValid: true}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
			if err != nil {
				t.Fatal(err)
			}
			os.Remove(filepath.Join(dir, CACertFile))
			os.WriteFile(filepath.Join(dir, CACertFile), pemCert(der), 0o600)
		}, testTD, "not a CA certificate"},
		{"empty trust domain", func(t *testing.T, dir string) {}, spiffeid.TrustDomain{}, "trust domain is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if _, err := LoadOrCreateCA(dir, testTD); err != nil {
				t.Fatal(err)
			}
			tt.prepare(t, dir)
			_, err := LoadOrCreateCA(dir, tt.td)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("LoadOrCreateCA = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestIssue(t *testing.T) {
	ca := newTestCA(t, testTD)
	id := spiffeid.RequireFromPath(testTD, "/agent/a")
	key := newP256(t)
	before := time.Now()
	cert, der, err := ca.Issue(id, key.Public(), 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(cert.Raw, der) {
		t.Error("returned certificate and DER differ")
	}
	got, chains, err := x509svid.Verify([]*x509.Certificate{cert}, ca.Bundle())
	if err != nil {
		t.Fatalf("issued SVID does not verify: %v", err)
	}
	if got != id || len(chains) != 1 {
		t.Errorf("verified ID %v with %d chains, want %v with 1", got, len(chains), id)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != id.String() {
		t.Errorf("URI SANs %v, want exactly [%s]", cert.URIs, id)
	}
	if len(cert.DNSNames)+len(cert.IPAddresses)+len(cert.EmailAddresses) != 0 {
		t.Errorf("other SANs: DNS %v IP %v email %v", cert.DNSNames, cert.IPAddresses, cert.EmailAddresses)
	}
	if cert.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("KeyUsage %v, want digitalSignature only", cert.KeyUsage)
	}
	if cert.IsCA || !cert.BasicConstraintsValid {
		t.Errorf("IsCA %v BasicConstraintsValid %v, want false true", cert.IsCA, cert.BasicConstraintsValid)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		t.Error("certificate is not for the given public key")
	}
	if !cert.NotBefore.Before(before) {
		t.Errorf("NotBefore %v is not before the issue time %v", cert.NotBefore, before)
	}
	if cert.NotAfter.After(time.Now().Add(10 * time.Minute)) {
		t.Errorf("NotAfter %v is later than ttl from now", cert.NotAfter)
	}
	if cert.NotAfter.Before(before.Add(10*time.Minute - time.Second)) {
		t.Errorf("NotAfter %v is well before issue time + ttl", cert.NotAfter)
	}
	if err := cert.CheckSignatureFrom(ca.Certificate()); err != nil {
		t.Error(err)
	}

	// Default ttl; random serials.
	cert2, _, err := ca.Issue(id, key.Public(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(cert2.NotAfter); d > DefaultSVIDTTL || d < DefaultSVIDTTL-time.Minute {
		t.Errorf("ttl 0 gives NotAfter in %v, want about %v", d, DefaultSVIDTTL)
	}
	if cert2.SerialNumber.Cmp(cert.SerialNumber) == 0 {
		t.Error("two certificates have the same serial number")
	}

	// Other key types.
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	for _, pub := range []crypto.PublicKey{edPub, p384.Public()} {
		c, _, err := ca.Issue(id, pub, 0)
		if err != nil {
			t.Fatalf("Issue(%T): %v", pub, err)
		}
		if _, _, err := x509svid.Verify([]*x509.Certificate{c}, ca.Bundle()); err != nil {
			t.Errorf("SVID with a %T key does not verify: %v", pub, err)
		}
	}
}

func TestIssueRefuses(t *testing.T) {
	ca := newTestCA(t, testTD)
	pub := newP256(t).Public()
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	agent := spiffeid.RequireFromPath(testTD, "/agent/a")
	tests := []struct {
		name string
		id   spiffeid.ID
		pub  crypto.PublicKey
		ttl  time.Duration
		want string
	}{
		{"empty ID", spiffeid.ID{}, pub, 0, "SPIFFE ID is empty"},
		{"other trust domain", spiffeid.RequireFromString("spiffe://evil.test/agent/a"), pub, 0, "this CA issues for"},
		{"trust domain ID", testTD.ID(), pub, 0, "want a path"},
		{"negative ttl", agent, pub, -time.Second, "negative ttl"},
		{"ttl over maximum", agent, pub, MaxSVIDTTL + time.Second, "over the maximum"},
		{"P-224 key", agent, p224.Public(), 0, "want P-256 or P-384"},
		{"RSA 1024 key", agent, rsa1024.Public(), 0, "at least 2048"},
		{"nil key", agent, nil, 0, "public key type <nil>"},
		{"nil ECDSA key", agent, (*ecdsa.PublicKey)(nil), 0, "nil *ecdsa.PublicKey"},
		{"short Ed25519 key", agent, ed25519.PublicKey{1, 2, 3}, 0, "3 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cert, der, err := ca.Issue(tt.id, tt.pub, tt.ttl)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Issue = %v, want an error containing %q", err, tt.want)
			}
			if cert != nil || der != nil {
				t.Error("a certificate was returned with the error")
			}
		})
	}
}

func TestIssueExpiredDoesNotVerify(t *testing.T) {
	ca := newTestCA(t, testTD)
	cert, _, err := ca.issue(spiffeid.RequireFromPath(testTD, "/agent/a"), newP256(t).Public(), time.Hour, time.Now().Add(-2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify([]*x509.Certificate{cert}, ca.Bundle()); err == nil {
		t.Fatal("an expired SVID verified")
	}
}

func TestIssueFiles(t *testing.T) {
	ca := newTestCA(t, testTD)
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid.key")
	for _, name := range []string{"/agent/a", "/agent/b"} { // the second rotates
		id := spiffeid.RequireFromPath(testTD, name)
		if err := ca.IssueFiles(id, certPath, keyPath, 5*time.Minute); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{certPath, keyPath} {
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("%s mode %04o, want 0600", p, fi.Mode().Perm())
			}
		}
		svid, err := x509svid.Load(certPath, keyPath)
		if err != nil {
			t.Fatalf("written SVID does not load: %v", err)
		}
		if svid.ID != id || len(svid.Certificates) != 1 {
			t.Errorf("loaded SVID %v with %d certificates, want %v with 1", svid.ID, len(svid.Certificates), id)
		}
		if _, _, err := x509svid.Verify(svid.Certificates, ca.Bundle()); err != nil {
			t.Errorf("written SVID does not verify: %v", err)
		}
	}
	if err := ca.IssueFiles(spiffeid.RequireFromPath(testTD, "/agent/a"), certPath, certPath, 0); err == nil {
		t.Error("IssueFiles with the same path for certificate and key succeeded")
	}
	if err := ca.IssueFiles(spiffeid.RequireFromString("spiffe://evil.test/agent/a"), certPath, keyPath, 0); err == nil {
		t.Error("IssueFiles for another trust domain succeeded")
	}
}

func TestWriteFileAtomicNeverOverwrites(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := writeFileAtomic(p, []byte("one"), 0o600, false); err != nil {
		t.Fatal(err)
	}
	if err := writeFileAtomic(p, []byte("two"), 0o600, false); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("second write = %v, want a refusal", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "one" {
		t.Errorf("file holds %q, want %q", b, "one")
	}
	if err := writeFileAtomic(p, []byte("two"), 0o600, true); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "two" {
		t.Errorf("file holds %q after replace, want %q", b, "two")
	}
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(p), ".etb-*"))
	if len(left) != 0 {
		t.Errorf("temporary files left behind: %v", left)
	}
}
