package ledger

import (
	"bytes"
	"context"
	"encoding/base64"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"
)

// provenLog returns a log of 11 entries, the tlog-proof text of entry 5
// against the latest checkpoint, and the entry.
func provenLog(t testing.TB) (*fixture, []byte, []byte) {
	ctx := context.Background()
	f := newLog(t)
	var es [][]byte
	for i := 0; i < 11; i++ {
		es = append(es, entryData(i))
	}
	if _, err := f.log.Append(ctx, es...); err != nil {
		t.Fatal(err)
	}
	cp, err := f.log.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	text, err := f.log.ProveEntry(ctx, 5, cp)
	if err != nil {
		t.Fatal(err)
	}
	return f, text, es[5]
}

// signBody signs an arbitrary checkpoint body with the named key.
func signBody(t testing.TB, name, label, body string) []byte {
	t.Helper()
	s, err := NewSigner(name, testKey(label))
	if err != nil {
		t.Fatal(err)
	}
	n, err := note.Sign(&note.Note{Text: body}, s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestProofFormat(t *testing.T) {
	f, text, entry := provenLog(t)
	p, err := ParseProof(text)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(text), "\n")
	if lines[0] != "c2sp.org/tlog-proof@v1" || lines[1] != "index 5" {
		t.Fatalf("proof starts %q", lines[:2])
	}
	if p.Index != 5 || len(p.Hashes) != 4 || p.Extra != nil {
		t.Fatalf("parsed index %d, %d hashes, extra %q", p.Index, len(p.Hashes), p.Extra)
	}
	if !bytes.Equal(p.Marshal(), text) {
		t.Fatal("Marshal(ParseProof(text)) != text")
	}
	// Extra data round-trips and does not affect verification.
	p.Extra = []byte("opaque")
	withExtra := p.Marshal()
	if !strings.HasPrefix(string(withExtra), "c2sp.org/tlog-proof@v1\nextra "+base64.StdEncoding.EncodeToString([]byte("opaque"))+"\nindex 5\n") {
		t.Fatalf("extra proof starts %q", withExtra[:60])
	}
	if _, err := VerifyProof(withExtra, entry, f.v); err != nil {
		t.Fatal(err)
	}
}

// TestVerifyProofAdversarial: every altered part of a proof is refused.
func TestVerifyProofAdversarial(t *testing.T) {
	f, text, entry := provenLog(t)
	if _, err := VerifyProof(text, entry, f.v); err != nil {
		t.Fatalf("valid proof: %v", err)
	}
	p, _ := ParseProof(text)
	body, _ := noteText(p.Checkpoint)
	cp, _ := parseBody(body)

	flipHash := p
	flipHash.Hashes = append([][]byte(nil), p.Hashes...)
	flipHash.Hashes[2] = bytes.Clone(p.Hashes[2])
	flipHash.Hashes[2][7] ^= 0x10
	otherIndex := p
	otherIndex.Index = 4
	indexPastSize := p
	indexPastSize.Index = 11
	dropHash := p
	dropHash.Hashes = p.Hashes[:3]
	extraHash := p
	extraHash.Hashes = append(append([][]byte(nil), p.Hashes...), p.Hashes[0])

	withCheckpoint := func(n []byte) []byte { q := p; q.Checkpoint = n; return q.Marshal() }
	otherKey := withCheckpoint(signBody(t, testOrigin, "attacker", string(body)))
	alteredSize := withCheckpoint(bytes.Replace(p.Checkpoint, []byte("\n11\n"), []byte("\n12\n"), 1))
	rootB64 := base64.StdEncoding.EncodeToString(cp.Root)
	badRoot := bytes.Clone(cp.Root)
	badRoot[0] ^= 1
	alteredRoot := withCheckpoint(bytes.Replace(p.Checkpoint, []byte(rootB64), []byte(base64.StdEncoding.EncodeToString(badRoot)), 1))
	otherOrigin := withCheckpoint(signBody(t, "other.example/log", "log", strings.Replace(string(body), testOrigin, "other.example/log", 1)))
	unsigned := withCheckpoint(body)
	leadingZero := withCheckpoint(signBody(t, testOrigin, "log", strings.Replace(string(body), "\n11\n", "\n011\n", 1)))
	extension := withCheckpoint(signBody(t, testOrigin, "log", string(body)+"ext line\n"))
	shortRoot := withCheckpoint(signBody(t, testOrigin, "log", testOrigin+"\n11\nAAAA\n"))

	tests := []struct {
		name  string
		text  []byte
		entry []byte
		want  string // substring of the error
	}{
		{"hash flipped", flipHash.Marshal(), entry, "not included"},
		{"other index", otherIndex.Marshal(), entry, "not included"},
		{"index past size", indexPastSize.Marshal(), entry, "not below checkpoint size"},
		{"hash dropped", dropHash.Marshal(), entry, "not included"},
		{"hash added", extraHash.Marshal(), entry, "not included"},
		{"entry altered", text, append(bytes.Clone(entry), ' '), "not included"},
		{"entry empty", text, nil, "entry is 0 bytes"},
		{"checkpoint by other key", otherKey, entry, "signature"},
		{"checkpoint size altered", alteredSize, entry, "signature"},
		{"checkpoint root altered", alteredRoot, entry, "signature"},
		{"checkpoint of other origin", otherOrigin, entry, "signature"},
		{"checkpoint unsigned", unsigned, entry, "signature"},
		{"checkpoint size leading zero", leadingZero, entry, "not canonical"},
		{"checkpoint extension line", extension, entry, "extension"},
		{"checkpoint short root", shortRoot, entry, "root"},
		{"junk after checkpoint", append(bytes.Clone(text), "junk\n"...), entry, "malformed"},
		{"junk before header", append([]byte("junk\n"), text...), entry, "does not start"},
		{"truncated in hashes", text[:60], entry, "truncated"},
		{"truncated checkpoint", text[:len(text)-10], entry, ""},
		{"missing final newline", text[:len(text)-1], entry, "unterminated"},
		{"CRLF line endings", bytes.ReplaceAll(text, []byte("\n"), []byte("\r\n")), entry, ""},
		{"index with plus", bytes.Replace(text, []byte("index 5"), []byte("index +5"), 1), entry, "canonical decimal"},
		{"index leading zero", bytes.Replace(text, []byte("index 5"), []byte("index 05"), 1), entry, "canonical decimal"},
		{"index overflow", bytes.Replace(text, []byte("index 5"), []byte("index 18446744073709551616"), 1), entry, "out of range"},
		{"no index", bytes.Replace(text, []byte("index 5\n"), nil, 1), entry, "index"},
		{"non-canonical hash base64", bytes.Replace(text, []byte("=\n"), []byte("\n"), 1), entry, "base64"},
		{"empty text", nil, entry, "does not start"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := VerifyProof(tt.text, tt.entry, f.v)
			if err == nil {
				t.Fatal("VerifyProof accepted it")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not mention %q", err, tt.want)
			}
		})
	}
}

func TestParseProofLimits(t *testing.T) {
	h := base64.StdEncoding.EncodeToString(make([]byte, 32))
	build := func(n int) []byte {
		return []byte("c2sp.org/tlog-proof@v1\nindex 0\n" + strings.Repeat(h+"\n", n) + "\nx\n\n— x AAAAAAAA\n")
	}
	if _, err := ParseProof(build(MaxProofHashes)); err != nil {
		t.Fatalf("%d hashes: %v", MaxProofHashes, err)
	}
	if _, err := ParseProof(build(MaxProofHashes + 1)); err == nil {
		t.Fatalf("%d hashes accepted", MaxProofHashes+1)
	}
	big := append(build(1), bytes.Repeat([]byte("a\n"), MaxProofSize)...)
	if _, err := ParseProof(big); err == nil {
		t.Fatal("oversize proof accepted")
	}
	short := []byte("c2sp.org/tlog-proof@v1\nindex 0\n" + base64.StdEncoding.EncodeToString(make([]byte, 31)) + "\n\nx\n")
	if _, err := ParseProof(short); err == nil {
		t.Fatal("31-byte hash accepted")
	}
}

func TestParseCheckpointCosigned(t *testing.T) {
	f, text, entry := provenLog(t)
	p, _ := ParseProof(text)
	// Add a witness signature line: unknown signers are ignored.
	w := signBody(t, "witness.example/w1", "witness", string(mustText(t, p.Checkpoint)))
	sigLine := w[bytes.LastIndex(w, []byte("\n\n"))+2:]
	p.Checkpoint = append(bytes.Clone(p.Checkpoint), sigLine...)
	cp, err := ParseCheckpoint(p.Checkpoint, f.v)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(cp.Note, p.Checkpoint) {
		t.Fatal("Note is not the verbatim cosigned text")
	}
	if _, err := VerifyProof(p.Marshal(), entry, f.v); err != nil {
		t.Fatal(err)
	}
	// The log still serves proofs against the cosigned checkpoint.
	text2, err := f.log.ProveEntry(context.Background(), 3, cp)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyProof(text2, entryData(3), f.v); err != nil {
		t.Fatal(err)
	}
	// Only the witness signature is not enough.
	if _, err := ParseCheckpoint(w, f.v); err == nil {
		t.Fatal("checkpoint signed only by a witness accepted")
	}
	if _, err := ParseCheckpoint(p.Checkpoint, nil); err == nil {
		t.Fatal("nil verifier accepted")
	}
	if _, err := ParseCheckpoint(bytes.Repeat([]byte("a"), MaxNoteSize+1), f.v); err == nil {
		t.Fatal("oversize note accepted")
	}
}

func mustText(t testing.TB, n []byte) []byte {
	t.Helper()
	text, err := noteText(n)
	if err != nil {
		t.Fatal(err)
	}
	return text
}

func TestVerifyConsistencyRejects(t *testing.T) {
	ctx := context.Background()
	f := newLog(t)
	f.log.Append(ctx, entryData(0), entryData(1), entryData(2))
	c3, _ := f.log.Checkpoint(ctx)
	f.log.Append(ctx, entryData(3), entryData(4))
	c5, _ := f.log.Checkpoint(ctx)
	p, err := f.log.ConsistencyProof(ctx, 3, 5)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyConsistency(c3, c5, p); err != nil {
		t.Fatal(err)
	}
	other := c5
	other.Origin = "other.example/log"
	flipped := [][]byte{bytes.Clone(p[0])}
	flipped = append(flipped, p[1:]...)
	flipped[0][0] ^= 1
	badRoot := c5
	badRoot.Root = bytes.Repeat([]byte{7}, 32)
	shortRoot := c5
	shortRoot.Root = c5.Root[:31]
	tests := []struct {
		name         string
		older, newer Checkpoint
		proof        [][]byte
	}{
		{"reversed", c5, c3, p},
		{"origins differ", c3, other, p},
		{"hash flipped", c3, c5, flipped},
		{"hash dropped", c3, c5, p[1:]},
		{"newer root wrong", c3, badRoot, p},
		{"short root", c3, shortRoot, p},
		{"same size different roots", c5, badRoot, nil},
	}
	for _, tt := range tests {
		if err := VerifyConsistency(tt.older, tt.newer, tt.proof); err == nil {
			t.Errorf("%s: accepted", tt.name)
		}
	}
}

func FuzzParseProof(f *testing.F) {
	_, text, _ := provenLog(f)
	f.Add(text)
	p, _ := ParseProof(text)
	p.Extra = []byte("x")
	f.Add(p.Marshal())
	f.Add([]byte("c2sp.org/tlog-proof@v1\nindex 0\n\nx\n"))
	f.Add([]byte("c2sp.org/tlog-proof@v1\nextra \nindex 18446744073709551615\n\n\n"))
	f.Add([]byte("c2sp.org/tlog-proof@v1\n"))
	f.Fuzz(func(t *testing.T, text []byte) {
		p, err := ParseProof(text)
		if err != nil {
			return
		}
		if got := p.Marshal(); !bytes.Equal(got, text) {
			t.Fatalf("Marshal(ParseProof(%q)) = %q", text, got)
		}
		if len(p.Hashes) > MaxProofHashes {
			t.Fatalf("%d hashes", len(p.Hashes))
		}
	})
}

func FuzzParseCheckpoint(f *testing.F) {
	fx, text, _ := provenLog(f)
	p, _ := ParseProof(text)
	f.Add(p.Checkpoint)
	body := string(mustText(f, p.Checkpoint))
	f.Add(signBody(f, testOrigin, "log", body+"ext\n"))
	f.Add(signBody(f, testOrigin, "log", testOrigin+"\n0\n"+base64.StdEncoding.EncodeToString(make([]byte, 32))+"\n"))
	f.Add(signBody(f, testOrigin, "log", testOrigin+"\n01\n"+base64.StdEncoding.EncodeToString(make([]byte, 32))+"\n"))
	f.Add([]byte("x\n\n— x AAAA\n"))
	f.Add([]byte(body))
	v := fx.v
	f.Fuzz(func(t *testing.T, n []byte) {
		// The body parser alone (most inputs never get past the signature).
		if c, err := parseBody(n); err == nil && !bytes.Equal(marshalBody(c.Origin, c.Size, c.Root), n) {
			t.Fatalf("parseBody accepted non-canonical %q", n)
		}
		cp, err := ParseCheckpoint(n, v)
		if err != nil {
			return
		}
		if cp.Origin != testOrigin || len(cp.Root) != 32 || !bytes.Equal(cp.Note, n) {
			t.Fatalf("accepted %q as %+v", n, cp)
		}
		if !bytes.Equal(marshalBody(cp.Origin, cp.Size, cp.Root), mustText(t, n)) {
			t.Fatalf("accepted non-canonical body %q", n)
		}
	})
}
