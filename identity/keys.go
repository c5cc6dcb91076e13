package identity

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// pemType is the PEM block type of a PKCS #8 private key.
const pemType = "PRIVATE KEY"

// maxKeyFileBytes bounds how much of a key file ReadKey reads.
const maxKeyFileBytes = 64 << 10

// GenerateKey returns a new Ed25519 private key from crypto/rand.
func GenerateKey() (ed25519.PrivateKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("identity: generate Ed25519 key: %w", err)
	}
	return priv, nil
}

// WriteKey writes key to path as a PKCS #8 PEM block with mode 0600. The
// write is atomic: the key is written and synced to a temporary file in the
// same directory, which is then hard-linked to path, so path either does not
// exist or holds the whole key. WriteKey refuses to overwrite an existing
// path (link fails with EEXIST).
func WriteKey(path string, key ed25519.PrivateKey) (err error) {
	if len(key) != ed25519.PrivateKeySize {
		return fmt.Errorf("identity: write key %s: key is %d bytes, want an Ed25519 private key of %d", path, len(key), ed25519.PrivateKeySize)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("identity: write key %s: %w", path, err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: pemType, Bytes: der})
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".etb-key-*.tmp") // created with mode 0600
	if err != nil {
		return fmt.Errorf("identity: write key %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	defer func() {
		if cerr := tmp.Close(); cerr != nil && err == nil && !errors.Is(cerr, os.ErrClosed) {
			err = fmt.Errorf("identity: write key %s: %w", path, cerr)
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return fmt.Errorf("identity: write key %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("identity: write key %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("identity: write key %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("identity: write key %s: %w", path, err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("identity: write key %s: refusing to overwrite an existing file: %w", path, err)
		}
		return fmt.Errorf("identity: write key %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		syncErr := d.Sync()
		d.Close()
		if syncErr != nil {
			return fmt.Errorf("identity: write key %s: sync directory %s: %w", path, dir, syncErr)
		}
	}
	return nil
}

// ReadKey reads an Ed25519 private key written by WriteKey: a regular file
// holding exactly one PKCS #8 PEM block ("PRIVATE KEY") and nothing else but
// whitespace. It refuses a file whose mode lets group or others read,
// write or execute it (mode & 077 != 0), and any other key type.
func ReadKey(path string) (ed25519.PrivateKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("identity: read key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("identity: read key %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("identity: read key %s: not a regular file (mode %v)", path, fi.Mode())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("identity: read key %s: mode %04o lets group or others access the private key; run chmod 600 %s", path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("identity: read key %s: %w", path, err)
	}
	if len(data) > maxKeyFileBytes {
		return nil, fmt.Errorf("identity: read key %s: file is over %d bytes", path, maxKeyFileBytes)
	}
	return ParseKey(data)
}

// ParseKey decodes a PEM-encoded PKCS #8 Ed25519 private key: exactly one
// "PRIVATE KEY" block and nothing else but whitespace.
func ParseKey(data []byte) (ed25519.PrivateKey, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, errors.New("identity: parse key: no PEM block found")
	}
	if block.Type != pemType {
		return nil, fmt.Errorf("identity: parse key: PEM block type %q, want %q", block.Type, pemType)
	}
	if len(block.Headers) != 0 {
		return nil, errors.New("identity: parse key: PEM block has headers (an encrypted key?); want a plain PKCS #8 key")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("identity: parse key: %d bytes of trailing data after the PEM block", len(bytes.TrimSpace(rest)))
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("identity: parse key: %w", err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("identity: parse key: key type %T, want ed25519.PrivateKey", k)
	}
	return priv, nil
}
