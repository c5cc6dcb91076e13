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
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// File names of the embedded CA inside its directory.
const (
	CAKeyFile  = "ca.key"
	CACertFile = "ca.crt"
)

// Validity bounds of what the CA issues.
const (
	// DefaultSVIDTTL is the lifetime of an X.509-SVID issued with ttl 0.
	DefaultSVIDTTL = time.Hour
	// MaxSVIDTTL is the longest lifetime Issue accepts.
	MaxSVIDTTL = 24 * time.Hour
	// caValidity is the lifetime of a newly created CA certificate.
	caValidity = 10 * 365 * 24 * time.Hour
	// backdate is how far NotBefore lies in the past, so that a peer whose
	// clock is slightly behind still accepts a fresh certificate.
	backdate = time.Minute
	// maxPEMFileBytes bounds how much of a certificate file is read.
	maxPEMFileBytes = 1 << 20
)

// certPEMType is the PEM block type of an X.509 certificate.
const certPEMType = "CERTIFICATE"

// CA is the embedded certificate authority of one SPIFFE trust domain: a
// self-signed root whose certificate carries the trust domain's SPIFFE ID
// (spiffe://TD) as its only URI SAN, and which signs X.509-SVIDs directly
// (no intermediates).
//
// A CA is immutable after LoadOrCreateCA and safe for concurrent use.
type CA struct {
	td   spiffeid.TrustDomain
	cert *x509.Certificate
	key  crypto.Signer
}

// LoadOrCreateCA returns the CA of trust domain td kept in dir: the private
// key in dir/ca.key (PKCS #8 PEM, mode 0600) and the self-signed
// certificate in dir/ca.crt (PEM, mode 0644: it is the public bundle).
//
//   - If neither file exists, it creates dir (mode 0700) if needed, a new
//     ECDSA P-256 key and a certificate valid for ten years.
//   - If only ca.key exists (a creation interrupted after the key was
//     written), it creates ca.crt from that key.
//   - If only ca.crt exists, it fails: a certificate without its key
//     cannot sign.
//
// It never overwrites either file: both are written by an atomic link that
// fails if the name already exists, so concurrent creators cannot end with
// mismatched files (the loser fails). A loaded CA is checked: the key file
// is private (mode & 077 == 0) and holds an ECDSA P-256 or Ed25519 PKCS #8
// key, the certificate is a self-signed CA certificate for exactly td, has
// the key's public key, may sign certificates and has not expired.
func LoadOrCreateCA(dir string, td spiffeid.TrustDomain) (*CA, error) {
	if td.IsZero() {
		return nil, errors.New("identity: CA: trust domain is empty")
	}
	keyPath := filepath.Join(dir, CAKeyFile)
	certPath := filepath.Join(dir, CACertFile)
	keyExists, err := exists(keyPath)
	if err != nil {
		return nil, fmt.Errorf("identity: CA: %w", err)
	}
	certExists, err := exists(certPath)
	if err != nil {
		return nil, fmt.Errorf("identity: CA: %w", err)
	}
	var key crypto.Signer
	switch {
	case certExists && !keyExists:
		return nil, fmt.Errorf("identity: CA: %s exists but %s does not; refusing to create a new key beside an existing certificate", certPath, keyPath)
	case keyExists:
		if key, err = readPrivateKeyFile(keyPath); err != nil {
			return nil, fmt.Errorf("identity: CA: %w", err)
		}
	default:
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("identity: CA: %w", err)
		}
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("identity: CA: generate ECDSA P-256 key: %w", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return nil, fmt.Errorf("identity: CA: %w", err)
		}
		if err := writeFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: pemType, Bytes: der}), 0o600, false); err != nil {
			return nil, fmt.Errorf("identity: CA: %w", err)
		}
		key = k
	}
	if !certExists {
		cert, err := newCACert(td, key, time.Now())
		if err != nil {
			return nil, err
		}
		if err := writeFileAtomic(certPath, pem.EncodeToMemory(&pem.Block{Type: certPEMType, Bytes: cert.Raw}), 0o644, false); err != nil {
			return nil, fmt.Errorf("identity: CA: %w", err)
		}
	}
	cert, err := readCertFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("identity: CA: %w", err)
	}
	if err := checkCACert(cert, td, key.Public(), time.Now()); err != nil {
		return nil, fmt.Errorf("identity: CA: %s: %w", certPath, err)
	}
	return &CA{td: td, cert: cert, key: key}, nil
}

// newCACert creates the self-signed root certificate of td for key.
func newCACert(td spiffeid.TrustDomain, key crypto.Signer, now time.Time) (*x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("identity: CA: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"etb"}, CommonName: "etb CA " + td.Name()},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		URIs:                  []*url.URL{td.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("identity: CA: create certificate for %s: %w", td.ID(), err)
	}
	return x509.ParseCertificate(der)
}

// checkCACert reports whether cert is a usable root of td for public key
// pub at time now.
func checkCACert(cert *x509.Certificate, td spiffeid.TrustDomain, pub crypto.PublicKey, now time.Time) error {
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return errors.New("certificate is not a CA certificate (basic constraints cA is not true)")
	}
	if cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return errors.New("certificate lacks the keyCertSign key usage")
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != td.ID().String() {
		return fmt.Errorf("certificate URI SANs %v, want exactly [%s]", cert.URIs, td.ID())
	}
	if !publicKeysEqual(cert.PublicKey, pub) {
		return errors.New("certificate public key does not match the CA private key")
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		return fmt.Errorf("certificate is not self-signed: %w", err)
	}
	if now.After(cert.NotAfter) {
		return fmt.Errorf("certificate expired at %s", cert.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(cert.NotBefore) {
		return fmt.Errorf("certificate is not valid before %s", cert.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// TrustDomain returns the trust domain the CA issues for.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Certificate returns the CA's root certificate. The caller must not
// modify it.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// Bundle returns a new X.509 bundle of the CA's trust domain holding its
// root certificate: what peers verify X.509-SVIDs against.
func (ca *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.td, []*x509.Certificate{ca.cert})
}

// Issue signs an X.509-SVID for id and public key pub, valid for ttl
// (DefaultSVIDTTL if ttl is 0), and returns it parsed and as DER.
//
// The certificate follows the SPIFFE X509-SVID specification: its only
// SAN is the URI id; basic constraints are critical with cA false; key
// usage is digitalSignature only (critical); extended key usage is
// serverAuth and clientAuth; the serial number is 128 random bits. It is
// valid from one minute ago (for peers with slightly slow clocks) until
// now+ttl, or until the CA expires if sooner.
//
// Issue refuses an id outside the CA's trust domain, the trust domain ID
// itself (a leaf SVID needs a path), a negative ttl or one over
// MaxSVIDTTL, and public keys other than ECDSA P-256/P-384, Ed25519 and RSA
// of at least 2048 bits.
func (ca *CA) Issue(id spiffeid.ID, pub crypto.PublicKey, ttl time.Duration) (*x509.Certificate, []byte, error) {
	return ca.issue(id, pub, ttl, time.Now())
}

// issue is Issue at time now.
func (ca *CA) issue(id spiffeid.ID, pub crypto.PublicKey, ttl time.Duration, now time.Time) (*x509.Certificate, []byte, error) {
	if id.IsZero() {
		return nil, nil, errors.New("identity: issue: SPIFFE ID is empty")
	}
	if id.TrustDomain() != ca.td {
		return nil, nil, fmt.Errorf("identity: issue %s: trust domain %q, this CA issues for %q", id, id.TrustDomain().Name(), ca.td.Name())
	}
	if id.Path() == "" {
		return nil, nil, fmt.Errorf("identity: issue %s: the trust domain ID cannot be a workload's SVID; want a path such as %s/agent/NAME", id, id)
	}
	switch {
	case ttl == 0:
		ttl = DefaultSVIDTTL
	case ttl < 0:
		return nil, nil, fmt.Errorf("identity: issue %s: negative ttl %s", id, ttl)
	case ttl > MaxSVIDTTL:
		return nil, nil, fmt.Errorf("identity: issue %s: ttl %s is over the maximum %s", id, ttl, MaxSVIDTTL)
	}
	if err := checkLeafKey(pub); err != nil {
		return nil, nil, fmt.Errorf("identity: issue %s: %w", id, err)
	}
	if now.After(ca.cert.NotAfter) {
		return nil, nil, fmt.Errorf("identity: issue %s: the CA certificate expired at %s", id, ca.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	notAfter := now.Add(ttl)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, fmt.Errorf("identity: issue %s: %w", id, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"etb"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		URIs:                  []*url.URL{id.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: issue %s: %w", id, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: issue %s: parse the new certificate: %w", id, err)
	}
	return cert, der, nil
}

// IssueFiles generates a new ECDSA P-256 key, issues an X.509-SVID for id
// with it (see Issue) and writes the certificate chain as PEM to certPath
// and the key as PKCS #8 PEM to keyPath, both mode 0600. The chain is the
// leaf alone: the CA signs directly and its root belongs in the peer's
// bundle, not in the chain.
//
// Existing files are replaced, each atomically (rename of a synced
// temporary file), key first: this is how an SVID is rotated. A reader
// that sees the new key with the old certificate finds them mismatched;
// the loaders in this package then keep the pair they had.
func (ca *CA) IssueFiles(id spiffeid.ID, certPath, keyPath string, ttl time.Duration) error {
	if certPath == keyPath {
		return fmt.Errorf("identity: issue %s: certificate and key paths are both %s", id, certPath)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("identity: issue %s: generate key: %w", id, err)
	}
	_, der, err := ca.Issue(id, key.Public(), ttl)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("identity: issue %s: %w", id, err)
	}
	if err := writeFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: pemType, Bytes: keyDER}), 0o600, true); err != nil {
		return fmt.Errorf("identity: issue %s: %w", id, err)
	}
	if err := writeFileAtomic(certPath, pem.EncodeToMemory(&pem.Block{Type: certPEMType, Bytes: der}), 0o600, true); err != nil {
		return fmt.Errorf("identity: issue %s: %w", id, err)
	}
	return nil
}

// checkLeafKey accepts the public key types an SVID may carry.
func checkLeafKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k == nil {
			return errors.New("public key is a nil *ecdsa.PublicKey")
		}
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("ECDSA curve %s, want P-256 or P-384", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return fmt.Errorf("Ed25519 public key is %d bytes, want %d", len(k), ed25519.PublicKeySize)
		}
	case *rsa.PublicKey:
		if k == nil {
			return errors.New("public key is a nil *rsa.PublicKey")
		}
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("RSA key of %d bits, want at least 2048", k.N.BitLen())
		}
	default:
		return fmt.Errorf("public key type %T, want *ecdsa.PublicKey, ed25519.PublicKey or *rsa.PublicKey", pub)
	}
	return nil
}

// publicKeysEqual reports whether a and b are the same public key.
func publicKeysEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// randomSerial returns a positive 128-bit random certificate serial number.
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("random serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// exists reports whether path names an existing file (of any type).
func exists(path string) (bool, error) {
	_, err := os.Lstat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, err
	}
}

// readPrivateKeyFile reads a CA private key: a private (mode & 077 == 0)
// regular file holding exactly one PKCS #8 "PRIVATE KEY" PEM block with an
// ECDSA P-256 or Ed25519 key.
func readPrivateKeyFile(path string) (crypto.Signer, error) {
	data, err := readSmallFile(path, maxKeyFileBytes, true)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	block, rest := pem.Decode(data)
	switch {
	case block == nil:
		return nil, fmt.Errorf("read key %s: no PEM block found", path)
	case block.Type != pemType:
		return nil, fmt.Errorf("read key %s: PEM block type %q, want %q", path, block.Type, pemType)
	case len(block.Headers) != 0:
		return nil, fmt.Errorf("read key %s: PEM block has headers (an encrypted key?); want a plain PKCS #8 key", path)
	case len(bytes.TrimSpace(rest)) != 0:
		return nil, fmt.Errorf("read key %s: %d bytes of trailing data after the PEM block", path, len(bytes.TrimSpace(rest)))
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("read key %s: %w", path, err)
	}
	switch k := k.(type) {
	case ed25519.PrivateKey:
		return k, nil
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("read key %s: ECDSA curve %s, want P-256", path, k.Curve.Params().Name)
		}
		return k, nil
	default:
		return nil, fmt.Errorf("read key %s: key type %T, want ECDSA P-256 or Ed25519", path, k)
	}
}

// readCertFile reads a file holding exactly one PEM certificate.
func readCertFile(path string) (*x509.Certificate, error) {
	data, err := readSmallFile(path, maxPEMFileBytes, false)
	if err != nil {
		return nil, fmt.Errorf("read certificate: %w", err)
	}
	block, rest := pem.Decode(data)
	switch {
	case block == nil:
		return nil, fmt.Errorf("read certificate %s: no PEM block found", path)
	case block.Type != certPEMType:
		return nil, fmt.Errorf("read certificate %s: PEM block type %q, want %q", path, block.Type, certPEMType)
	case len(bytes.TrimSpace(rest)) != 0:
		return nil, fmt.Errorf("read certificate %s: %d bytes of trailing data after the certificate", path, len(bytes.TrimSpace(rest)))
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("read certificate %s: %w", path, err)
	}
	return cert, nil
}

// readSmallFile reads the regular file at path, at most limit bytes; if
// private, a mode that lets group or others access it is an error.
func readSmallFile(path string, limit int64, private bool) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file (mode %v)", path, fi.Mode())
	}
	if perm := fi.Mode().Perm(); private && perm&0o077 != 0 {
		return nil, fmt.Errorf("%s: mode %04o lets group or others access the private key; run chmod 600 %s", path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s: file is over %d bytes", path, limit)
	}
	return data, nil
}

// writeFileAtomic writes data to path with mode perm through a synced
// temporary file in the same directory. With replace it renames the
// temporary file over path; without, it hard-links it to path, which fails
// if path exists, so nothing is ever overwritten. Either way path holds
// the old contents or all of data, never a mix.
func writeFileAtomic(path string, data []byte, perm os.FileMode, replace bool) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".etb-*.tmp") // created with mode 0600
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	defer func() {
		if cerr := tmp.Close(); cerr != nil && err == nil && !errors.Is(cerr, os.ErrClosed) {
			err = fmt.Errorf("write %s: %w", path, cerr)
		}
	}()
	if err := tmp.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if replace {
		err = os.Rename(tmp.Name(), path)
	} else {
		err = os.Link(tmp.Name(), path)
	}
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("write %s: refusing to overwrite an existing file: %w", path, err)
		}
		return fmt.Errorf("write %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		syncErr := d.Sync()
		d.Close()
		if syncErr != nil {
			return fmt.Errorf("write %s: sync directory %s: %w", path, dir, syncErr)
		}
	}
	return nil
}
