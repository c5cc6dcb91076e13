package witness

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/mod/sumdb/note"
)

// algCosignatureV1 is the signed-note signature type of Ed25519
// cosignature/v1 keys (C2SP tlog-cosignature).
const algCosignatureV1 = 0x04

// cosigSize is the size of a cosignature/v1 signature: a big-endian uint64
// POSIX timestamp followed by an Ed25519 signature.
const cosigSize = 8 + ed25519.SignatureSize

// cosignedMessage returns the message an Ed25519 cosignature/v1 signs: the
// header line, the timestamp line and the note text (the checkpoint body
// through its final newline).
func cosignedMessage(t uint64, text []byte) []byte {
	m := make([]byte, 0, 32+len(text))
	m = append(m, "cosignature/v1\ntime "...)
	m = strconv.AppendUint(m, t, 10)
	m = append(m, '\n')
	return append(m, text...)
}

// cosigKeyHash returns the key ID of an Ed25519 cosignature/v1 key:
// SHA-256(name || "\n" || 0x04 || public key)[:4], big-endian.
func cosigKeyHash(name string, pub ed25519.PublicKey) uint32 {
	h := sha256.New()
	h.Write([]byte(name))
	h.Write([]byte{'\n', algCosignatureV1})
	h.Write(pub)
	return binary.BigEndian.Uint32(h.Sum(nil))
}

// checkName reports whether name can be a signed-note key name: non-empty
// valid UTF-8 with no white space and no '+'.
func checkName(name string) error {
	if name == "" || !utf8.ValidString(name) || strings.IndexFunc(name, unicode.IsSpace) >= 0 || strings.Contains(name, "+") {
		return fmt.Errorf("witness: %q is not a valid note key name", name)
	}
	return nil
}

// cosigner is a note.Signer producing cosignature/v1 signatures.
type cosigner struct {
	name string
	hash uint32
	key  ed25519.PrivateKey
	now  func() time.Time
}

func newCosigner(name string, key ed25519.PrivateKey, now func() time.Time) (*cosigner, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	if len(key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("witness: cosigner key for %q has %d bytes, want %d", name, len(key), ed25519.PrivateKeySize)
	}
	if now == nil {
		now = time.Now
	}
	pub := key.Public().(ed25519.PublicKey)
	return &cosigner{name: name, hash: cosigKeyHash(name, pub), key: key, now: now}, nil
}

func (s *cosigner) Name() string    { return s.name }
func (s *cosigner) KeyHash() uint32 { return s.hash }

// Sign signs the note text msg at the current time.
func (s *cosigner) Sign(msg []byte) ([]byte, error) {
	t := s.now().Unix()
	if t < 0 {
		return nil, fmt.Errorf("witness: clock reads %d, before the epoch", t)
	}
	sig := binary.BigEndian.AppendUint64(make([]byte, 0, cosigSize), uint64(t))
	return append(sig, ed25519.Sign(s.key, cosignedMessage(uint64(t), msg))...), nil
}

// line returns the signature line of sig: "— <name> <base64(keyhash||sig)>\n".
func (s *cosigner) line(sig []byte) []byte {
	raw := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(sig)), s.hash)
	raw = append(raw, sig...)
	return []byte("— " + s.name + " " + base64.StdEncoding.EncodeToString(raw) + "\n")
}

// CosignatureVerifierKey returns the vkey text of an Ed25519 cosignature/v1
// key: "<name>+<hex key ID>+<base64(0x04 || public key)>".
func CosignatureVerifierKey(name string, pub ed25519.PublicKey) (string, error) {
	if err := checkName(name); err != nil {
		return "", err
	}
	if len(pub) != ed25519.PublicKeySize {
		return "", fmt.Errorf("witness: public key for %q has %d bytes, want %d", name, len(pub), ed25519.PublicKeySize)
	}
	return fmt.Sprintf("%s+%08x+%s", name, cosigKeyHash(name, pub),
		base64.StdEncoding.EncodeToString(append([]byte{algCosignatureV1}, pub...))), nil
}

// cosigVerifier verifies cosignature/v1 signatures.
type cosigVerifier struct {
	name string
	hash uint32
	pub  ed25519.PublicKey
}

// NewCosignatureVerifier parses the vkey of an Ed25519 cosignature/v1 key
// (signature type 0x04; see CosignatureVerifierKey). The key ID in the text
// must be the key's, in lower-case hex. The verifier accepts a signature only if it is
// timestamp || Ed25519 signature over the cosignature/v1 message of that
// timestamp; it does not read the clock.
func NewCosignatureVerifier(vkey string) (note.Verifier, error) {
	name, rest, ok1 := strings.Cut(vkey, "+")
	hash16, key64, ok2 := strings.Cut(rest, "+")
	if !ok1 || !ok2 || len(hash16) != 8 {
		return nil, fmt.Errorf("witness: malformed cosignature verifier key %q", vkey)
	}
	if err := checkName(name); err != nil {
		return nil, err
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(key64)
	if err != nil {
		return nil, fmt.Errorf("witness: cosignature verifier key %q: %w", vkey, err)
	}
	if len(raw) != 1+ed25519.PublicKeySize || raw[0] != algCosignatureV1 {
		return nil, fmt.Errorf("witness: verifier key %q is not an Ed25519 cosignature/v1 key (type 0x04, 32 bytes)", vkey)
	}
	pub := ed25519.PublicKey(raw[1:])
	hash := cosigKeyHash(name, pub)
	if hash16 != fmt.Sprintf("%08x", hash) {
		return nil, fmt.Errorf("witness: cosignature verifier key %q has key ID %q, want %08x", vkey, hash16, hash)
	}
	return &cosigVerifier{name: name, hash: hash, pub: pub}, nil
}

func (v *cosigVerifier) Name() string    { return v.name }
func (v *cosigVerifier) KeyHash() uint32 { return v.hash }

func (v *cosigVerifier) Verify(msg, sig []byte) bool {
	if len(sig) != cosigSize {
		return false
	}
	t := binary.BigEndian.Uint64(sig)
	if t > math.MaxInt64 {
		return false
	}
	return ed25519.Verify(v.pub, cosignedMessage(t, msg), sig[8:])
}

// CosignatureTime returns the timestamp of a cosignature/v1 note signature.
// It does not verify the signature.
func CosignatureTime(s note.Signature) (time.Time, error) {
	raw, err := base64.StdEncoding.DecodeString(s.Base64)
	if err != nil || len(raw) != 4+cosigSize {
		return time.Time{}, errors.New("witness: signature is not a cosignature/v1")
	}
	t := binary.BigEndian.Uint64(raw[4:])
	if t > math.MaxInt64 {
		return time.Time{}, fmt.Errorf("witness: cosignature timestamp %d exceeds 2^63-1", t)
	}
	return time.Unix(int64(t), 0).UTC(), nil
}
