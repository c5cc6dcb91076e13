package ledger

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

// MaxNoteSize bounds the size of a checkpoint signed note accepted by
// ParseCheckpoint (body plus signatures and cosignatures).
const MaxNoteSize = MaxProofSize

// Checkpoint is a signed tree head of the log: a C2SP tlog-checkpoint.
type Checkpoint struct {
	Origin string // log identity; also the signing key name
	Size   uint64 // number of entries committed to
	Root   []byte // RFC 6962 root hash of the first Size entries (32 bytes)
	Note   []byte // the signed note text, verbatim
}

// NewSigner returns a note signer for the log origin backed by key. The key
// name is origin, so checkpoints signed with it verify against
// VerifierKey(origin, key.Public()).
func NewSigner(origin string, key ed25519.PrivateKey) (note.Signer, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("ledger: signer key for origin %q has %d bytes, want %d", origin, len(key), ed25519.PrivateKeySize)
	}
	vkey, err := VerifierKey(origin, key.Public().(ed25519.PublicKey))
	if err != nil {
		return nil, err
	}
	// vkey is "<name>+<hash>+<base64(0x01 || pub)>"; the signer key text
	// repeats name and hash with the seed in place of the public key.
	rest, ok := strings.CutPrefix(vkey, origin+"+")
	if !ok || len(rest) < 9 || rest[8] != '+' {
		return nil, fmt.Errorf("ledger: verifier key for origin %q is malformed", origin)
	}
	skey := "PRIVATE+KEY+" + origin + "+" + rest[:8] + "+" +
		base64.StdEncoding.EncodeToString(append([]byte{0x01}, key.Seed()...))
	s, err := note.NewSigner(skey)
	if err != nil {
		return nil, fmt.Errorf("ledger: signer for origin %q: %w", origin, err)
	}
	return s, nil
}

// VerifierKey returns the note verifier key text "<name>+<hash>+<base64>" for
// the log origin and its Ed25519 public key. note.NewVerifier parses it.
func VerifierKey(origin string, pub ed25519.PublicKey) (string, error) {
	if err := checkOrigin(origin); err != nil {
		return "", err
	}
	vkey, err := note.NewEd25519VerifierKey(origin, pub)
	if err != nil {
		return "", fmt.Errorf("ledger: verifier key for origin %q: %w", origin, err)
	}
	return vkey, nil
}

// checkOrigin reports whether origin can be both a checkpoint origin line and
// a note key name: non-empty valid UTF-8 with no spaces, no control
// characters and no '+'.
func checkOrigin(origin string) error {
	if origin == "" {
		return errors.New("ledger: empty origin")
	}
	if !utf8.ValidString(origin) {
		return fmt.Errorf("ledger: origin %q is not valid UTF-8", origin)
	}
	for _, r := range origin {
		if unicode.IsSpace(r) || unicode.IsControl(r) || r == '+' {
			return fmt.Errorf("ledger: origin %q contains invalid character %q", origin, r)
		}
	}
	return nil
}

// ParseCheckpoint verifies the signed note noteText with v and parses its
// body. It succeeds only if v (whose name must equal the origin line) signed
// the note and the body is exactly "<origin>\n<size>\n<base64 root>\n" with a
// canonical decimal size and a canonical base64 32-byte root. Extension lines
// are rejected: this log never writes them. Signatures by other keys
// (witness cosignatures) are ignored, as the note format requires.
func ParseCheckpoint(noteText []byte, v note.Verifier) (Checkpoint, error) {
	if v == nil {
		return Checkpoint{}, errors.New("ledger: checkpoint: nil verifier")
	}
	if len(noteText) > MaxNoteSize {
		return Checkpoint{}, fmt.Errorf("ledger: checkpoint note is %d bytes, limit %d", len(noteText), MaxNoteSize)
	}
	n, err := note.Open(noteText, note.VerifierList(v))
	if err != nil {
		return Checkpoint{}, fmt.Errorf("ledger: checkpoint signature by %q (key hash %08x): %w", v.Name(), v.KeyHash(), err)
	}
	cp, err := parseBody([]byte(n.Text))
	if err != nil {
		return Checkpoint{}, err
	}
	if cp.Origin != v.Name() {
		return Checkpoint{}, fmt.Errorf("ledger: checkpoint origin %q does not match verifier name %q", cp.Origin, v.Name())
	}
	cp.Note = bytes.Clone(noteText)
	return cp, nil
}

// noteText returns the signed text of a note (the body, through its final
// newline) without verifying anything.
func noteText(msg []byte) ([]byte, error) {
	i := bytes.LastIndex(msg, []byte("\n\n"))
	if i < 0 {
		return nil, errors.New("ledger: malformed checkpoint note: no signature block")
	}
	return msg[:i+1], nil
}

// parseBody strictly parses a checkpoint body. Note is left empty.
func parseBody(text []byte) (Checkpoint, error) {
	var c log.Checkpoint
	rest, err := c.Unmarshal(text)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("ledger: checkpoint body: %w", err)
	}
	if len(rest) != 0 {
		return Checkpoint{}, fmt.Errorf("ledger: checkpoint of %q at size %d has %d bytes of extension lines, want none", c.Origin, c.Size, len(rest))
	}
	if len(c.Hash) != sha256.Size {
		return Checkpoint{}, fmt.Errorf("ledger: checkpoint of %q at size %d has a %d-byte root, want %d", c.Origin, c.Size, len(c.Hash), sha256.Size)
	}
	if !bytes.Equal(c.Marshal(), text) {
		return Checkpoint{}, fmt.Errorf("ledger: checkpoint body of %q at size %d is not canonical", c.Origin, c.Size)
	}
	if err := checkOrigin(c.Origin); err != nil {
		return Checkpoint{}, err
	}
	return Checkpoint{Origin: c.Origin, Size: c.Size, Root: c.Hash}, nil
}

// marshalBody returns the canonical checkpoint body.
func marshalBody(origin string, size uint64, root []byte) []byte {
	return log.Checkpoint{Origin: origin, Size: size, Hash: root}.Marshal()
}

// VerifyConsistency verifies an RFC 6962 consistency proof that newer extends
// older. Both checkpoints must already be verified (ParseCheckpoint) and come
// from the same origin; older.Size must not exceed newer.Size.
func VerifyConsistency(older, newer Checkpoint, proofHashes [][]byte) error {
	if older.Origin != newer.Origin {
		return fmt.Errorf("ledger: consistency between different origins %q and %q", older.Origin, newer.Origin)
	}
	if older.Size > newer.Size {
		return fmt.Errorf("ledger: consistency of %q: older size %d exceeds newer size %d", older.Origin, older.Size, newer.Size)
	}
	if len(older.Root) != sha256.Size || len(newer.Root) != sha256.Size {
		return fmt.Errorf("ledger: consistency of %q: roots of %d and %d bytes, want %d", older.Origin, len(older.Root), len(newer.Root), sha256.Size)
	}
	if len(proofHashes) > MaxProofHashes*2 {
		return fmt.Errorf("ledger: consistency of %q from %d to %d: %d proof hashes, limit %d", older.Origin, older.Size, newer.Size, len(proofHashes), 2*MaxProofHashes)
	}
	if older.Size == 0 && !bytes.Equal(older.Root, rfc6962.DefaultHasher.EmptyRoot()) {
		return fmt.Errorf("ledger: consistency of %q: size-0 checkpoint has a root that is not the empty root", older.Origin)
	}
	if err := proof.VerifyConsistency(rfc6962.DefaultHasher, older.Size, newer.Size, proofHashes, older.Root, newer.Root); err != nil {
		return fmt.Errorf("ledger: consistency of %q from size %d to %d: %w", older.Origin, older.Size, newer.Size, err)
	}
	return nil
}
