package identity

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKeyRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ca.key")
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if len(key) != ed25519.PrivateKeySize {
		t.Fatalf("GenerateKey returned %d bytes", len(key))
	}
	if err := WriteKey(path, key); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %04o, want 0600", fi.Mode().Perm())
	}
	got, err := ReadKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(key) {
		t.Fatal("ReadKey returned a different key")
	}
	// The file is a standard PKCS #8 PEM block.
	b, _ := os.ReadFile(path)
	if !bytes.HasPrefix(b, []byte("-----BEGIN PRIVATE KEY-----\n")) {
		t.Errorf("key file does not start with a PKCS #8 PEM header: %q", b[:min(len(b), 40)])
	}
	// No temporary files are left behind.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries after WriteKey, want 1", len(entries))
	}

	// Two generated keys differ.
	other, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if other.Equal(key) {
		t.Fatal("GenerateKey returned the same key twice")
	}
	// WriteKey refuses to overwrite, and leaves the original intact.
	if err := WriteKey(path, other); err == nil {
		t.Fatal("WriteKey overwrote an existing key")
	}
	if got, err := ReadKey(path); err != nil || !got.Equal(key) {
		t.Fatalf("original key changed after a refused overwrite (err %v)", err)
	}
	entries, _ = os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries after a refused WriteKey, want 1", len(entries))
	}
}

func TestWriteKeyRefuses(t *testing.T) {
	dir := t.TempDir()
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		path string
		key  ed25519.PrivateKey
	}{
		{"short key", filepath.Join(dir, "a.key"), key[:32]},
		{"nil key", filepath.Join(dir, "b.key"), nil},
		{"missing directory", filepath.Join(dir, "no", "such", "c.key"), key},
		{"path is a directory", dir, key},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := WriteKey(tt.path, tt.key); err == nil {
				t.Fatal("WriteKey succeeded")
			}
		})
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("refused writes left %d files", len(entries))
	}
}

func TestReadKeyRefuses(t *testing.T) {
	dir := t.TempDir()
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	good := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, err := x509.MarshalPKCS8PrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		data    []byte
		mode    os.FileMode
		errWant string
	}{
		{"group readable", good, 0o640, "chmod 600"},
		{"world readable", good, 0o644, "chmod 600"},
		{"group writable", good, 0o620, "chmod 600"},
		{"other executable", good, 0o601, "chmod 600"},
		{"empty", nil, 0o600, "no PEM block"},
		{"not PEM", []byte("hello"), 0o600, "no PEM block"},
		{"truncated PEM", good[:len(good)/2], 0o600, "no PEM block"},
		{"wrong PEM type", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600, "PEM block type"},
		{"PEM headers", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: der}), 0o600, "headers"},
		{"trailing data", append(append([]byte{}, good...), "junk"...), 0o600, "trailing data"},
		{"two keys", append(append([]byte{}, good...), good...), 0o600, "trailing data"},
		{"garbage DER", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{0x30, 0x03, 1, 2, 3}}), 0o600, "parse key"},
		{"ECDSA key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecDER}), 0o600, "key type"},
		{"oversized", bytes.Repeat([]byte{'\n'}, maxKeyFileBytes+1), 0o600, "over"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_")+".key")
			if err := os.WriteFile(path, tt.data, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tt.mode); err != nil {
				t.Fatal(err)
			}
			k, err := ReadKey(path)
			if err == nil {
				t.Fatalf("case %d: ReadKey accepted the file (key %d bytes)", i, len(k))
			}
			if !strings.Contains(err.Error(), tt.errWant) {
				t.Fatalf("ReadKey error %q does not mention %q", err, tt.errWant)
			}
		})
	}
	if _, err := ReadKey(filepath.Join(dir, "missing.key")); err == nil {
		t.Error("ReadKey of a missing file succeeded")
	}
	if _, err := ReadKey(dir); err == nil {
		t.Error("ReadKey of a directory succeeded")
	}
	// Whitespace around the block is fine: the key is otherwise exact.
	path := filepath.Join(dir, "spaced.key")
	if err := os.WriteFile(path, append(append([]byte("\n"), good...), "\n\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	if k, err := ReadKey(path); err != nil || !k.Equal(key) {
		t.Errorf("ReadKey with surrounding whitespace: %v", err)
	}
}
