package ledger

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

// Limits of the C2SP tlog-proof text accepted by ParseProof.
const (
	MaxProofSize   = 64 << 10 // whole proof text
	MaxProofHashes = 63       // inclusion path length (a tree of < 2^63 entries)
)

const proofHeader = "c2sp.org/tlog-proof@v1"

// Proof is a C2SP tlog-proof: an entry index, its RFC 6962 inclusion path
// (leaf sibling first, each 32 bytes) and the signed checkpoint the path leads
// to. Extra is opaque, unauthenticated data (nil when absent).
type Proof struct {
	Extra      []byte
	Index      uint64
	Hashes     [][]byte
	Checkpoint []byte
}

// Marshal returns the proof text:
//
//	c2sp.org/tlog-proof@v1
//	extra <base64>          (only if Extra != nil)
//	index <decimal>
//	<base64 hash>           (one line per hash)
//	<empty line>
//	<checkpoint signed note, verbatim>
func (p Proof) Marshal() []byte {
	var b bytes.Buffer
	b.WriteString(proofHeader + "\n")
	if p.Extra != nil {
		b.WriteString("extra " + base64.StdEncoding.EncodeToString(p.Extra) + "\n")
	}
	b.WriteString("index " + strconv.FormatUint(p.Index, 10) + "\n")
	for _, h := range p.Hashes {
		b.WriteString(base64.StdEncoding.EncodeToString(h) + "\n")
	}
	b.WriteByte('\n')
	b.Write(p.Checkpoint)
	return b.Bytes()
}

// ParseProof strictly parses a C2SP tlog-proof text. Everything must be
// canonical: the header, an optional "extra" line, "index N" with no leading
// zeros, at most MaxProofHashes canonical base64 32-byte hashes, an empty
// line and a non-empty checkpoint ending in a newline, MaxProofSize bytes in
// all. For valid text, ParseProof(text).Marshal() equals text. The checkpoint
// is not verified here; VerifyProof does that.
func ParseProof(text []byte) (Proof, error) {
	if len(text) > MaxProofSize {
		return Proof{}, fmt.Errorf("ledger: proof is %d bytes, limit %d", len(text), MaxProofSize)
	}
	rest := text
	line := func() (string, bool) {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			return "", false
		}
		l := string(rest[:i])
		rest = rest[i+1:]
		return l, true
	}
	l, ok := line()
	if !ok || l != proofHeader {
		return Proof{}, fmt.Errorf("ledger: proof does not start with the line %q", proofHeader)
	}
	var p Proof
	l, ok = line()
	if after, found := strings.CutPrefix(l, "extra "); ok && found {
		e, err := decodeCanonical(after)
		if err != nil {
			return Proof{}, fmt.Errorf("ledger: proof extra line: %w", err)
		}
		p.Extra = e
		l, ok = line()
	}
	idx, found := strings.CutPrefix(l, "index ")
	if !ok || !found {
		return Proof{}, errors.New(`ledger: proof has no "index N" line`)
	}
	n, err := parseDecimal(idx)
	if err != nil {
		return Proof{}, fmt.Errorf("ledger: proof index: %w", err)
	}
	p.Index = n
	for {
		l, ok = line()
		if !ok {
			return Proof{}, fmt.Errorf("ledger: proof for index %d is truncated: no empty line before the checkpoint", p.Index)
		}
		if l == "" {
			break
		}
		if len(p.Hashes) == MaxProofHashes {
			return Proof{}, fmt.Errorf("ledger: proof for index %d has more than %d hashes", p.Index, MaxProofHashes)
		}
		h, err := decodeCanonical(l)
		if err != nil {
			return Proof{}, fmt.Errorf("ledger: proof for index %d, hash %d: %w", p.Index, len(p.Hashes), err)
		}
		if len(h) != sha256.Size {
			return Proof{}, fmt.Errorf("ledger: proof for index %d, hash %d is %d bytes, want %d", p.Index, len(p.Hashes), len(h), sha256.Size)
		}
		p.Hashes = append(p.Hashes, h)
	}
	if len(rest) == 0 || rest[len(rest)-1] != '\n' {
		return Proof{}, fmt.Errorf("ledger: proof for index %d has an empty or unterminated checkpoint", p.Index)
	}
	p.Checkpoint = bytes.Clone(rest)
	return p, nil
}

// VerifyProof verifies, offline, that entry is the entry at the proof's index
// in the log whose checkpoint is embedded in the tlog-proof text: it parses
// the proof, verifies the checkpoint signature with v (see ParseCheckpoint)
// and verifies the RFC 6962 inclusion of the leaf hash of entry against the
// checkpoint root. It returns the verified checkpoint.
func VerifyProof(text, entry []byte, v note.Verifier) (Checkpoint, error) {
	p, err := ParseProof(text)
	if err != nil {
		return Checkpoint{}, err
	}
	cp, err := ParseCheckpoint(p.Checkpoint, v)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("ledger: proof for index %d: %w", p.Index, err)
	}
	if len(entry) == 0 || len(entry) > MaxEntrySize {
		return Checkpoint{}, fmt.Errorf("ledger: proof for index %d: entry is %d bytes, want 1..%d", p.Index, len(entry), MaxEntrySize)
	}
	if p.Index >= cp.Size {
		return Checkpoint{}, fmt.Errorf("ledger: proof index %d is not below checkpoint size %d of %q", p.Index, cp.Size, cp.Origin)
	}
	leaf := rfc6962.DefaultHasher.HashLeaf(entry)
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, p.Index, cp.Size, leaf, p.Hashes, cp.Root); err != nil {
		return Checkpoint{}, fmt.Errorf("ledger: entry not included at index %d in checkpoint of %q at size %d: %w", p.Index, cp.Origin, cp.Size, err)
	}
	return cp, nil
}

// decodeCanonical decodes standard padded base64 and rejects any text that
// does not re-encode to itself (embedded newlines, non-zero padding bits).
func decodeCanonical(s string) ([]byte, error) {
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("bad base64 %q: %w", truncate(s), err)
	}
	if base64.StdEncoding.EncodeToString(b) != s {
		return nil, fmt.Errorf("non-canonical base64 %q", truncate(s))
	}
	return b, nil
}

// ParseDecimal parses an ASCII decimal uint64 with no sign and no leading
// zeros (except "0" itself), the form of sizes and indices in C2SP texts.
func ParseDecimal(s string) (uint64, error) { return parseDecimal(s) }

func parseDecimal(s string) (uint64, error) {
	if s == "" || len(s) > 1 && s[0] == '0' {
		return 0, fmt.Errorf("%q is not a canonical decimal", truncate(s))
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("%q is not a canonical decimal", truncate(s))
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q: %w", truncate(s), err)
	}
	return n, nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
