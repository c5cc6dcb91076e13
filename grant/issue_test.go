package grant

import (
	"crypto/ed25519"
	"crypto/rand"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/etbproject/etb/action"
)

func benchClaims() Claims {
	return Claims{Subject: "spiffe://etb.local/agent/a", Audience: "spiffe://etb.local/enforcer/local", Txn: "0123456789abcdef0123456789abcdef",
		ADG: "sha256:" + "ab" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd", Pol: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		Obl: action.Obligations{Timeout: action.Duration(5 * time.Minute)}, Execution: "0123456789abcdef0123456789abcdef",
		Cnf: &Confirmation{X5tS256: "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopq"}}
}

func BenchmarkIssue(b *testing.B) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	iss := NewIssuer(key, "spiffe://etb.local/gateway/local", time.Minute, nil)
	c := benchClaims()
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := iss.Issue(c); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCanonicalClaims(b *testing.B) {
	c := benchClaims()
	c.IssuedAt, c.NotBefore, c.Expiry, c.ID = 1, 1, 60, "0123456789abcdef0123456789abcdef"
	b.ReportAllocs()
	for b.Loop() {
		if _, err := action.Canonical(c); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEd25519Sign(b *testing.B) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	msg := make([]byte, 400)
	for b.Loop() {
		ed25519.Sign(key, msg)
	}
}

// The direct canonical encoding of claims is byte for byte RFC 8785 (the
// generic path), in every shape it accepts, and declines the others.
func TestAppendClaimsMatchesJCS(t *testing.T) {
	base := benchClaims()
	base.Issuer, base.IssuedAt, base.NotBefore, base.Expiry, base.ID = "spiffe://etb.local/gateway/local", 1700000000, 1700000000, 1700000060, "0123456789abcdef0123456789abcdef"
	cases := map[string]func(c *Claims){
		"base":           func(c *Claims) {},
		"no cnf, no txn": func(c *Claims) { c.Cnf, c.Txn = nil, "" },
		"par and depth":  func(c *Claims) { c.Par = &Parent{JTI: "p", Hash: "sha256:00"}; c.Depth = 3 },
		"every scalar obl": func(c *Claims) {
			c.Obl = action.Obligations{Timeout: action.Duration(90 * time.Second), CPUSeconds: 2, MemoryBytes: 1 << 30, MaxProcesses: 64, MaxFileBytes: 1 << 20, Cwd: "/tmp/x"}
		},
		"empty obl":          func(c *Claims) { c.Obl = action.Obligations{} },
		"escapes":            func(c *Claims) { c.Subject = `spiffe://etb.local/a"b\c` },
		"sub-millisecond":    func(c *Claims) { c.Obl.Timeout = action.Duration(1500 * time.Microsecond) },
		"negative timestamp": func(c *Claims) { c.NotBefore = -5 },
		"non-ASCII":          func(c *Claims) { c.Subject = "spiffe://etb.local/é\u2028" },
		"control byte":       func(c *Claims) { c.ID = "a\nb\x01" },
	}
	for name, mod := range cases {
		c := base
		mod(&c)
		got, ok := appendClaims(nil, &c)
		want, err := action.Canonical(c)
		if err != nil {
			t.Fatal(err)
		}
		if !ok || string(got) != string(want) {
			t.Errorf("%s: ok=%v\n got %s\nwant %s", name, ok, got, want)
		}
	}
	declined := map[string]func(c *Claims){
		"scope":         func(c *Claims) { c.Scp = &Scope{Actions: []ScopeAction{{Kind: "k", Name: "n"}}} },
		"fs scope":      func(c *Claims) { c.Obl.FS = &action.FSScope{Read: []string{"/"}} },
		"net scope":     func(c *Claims) { c.Obl.Net = &action.NetScope{Allow: []string{"h:1"}} },
		"env scope":     func(c *Claims) { c.Obl.Env = &action.EnvScope{Allow: []string{"PATH"}} },
		"invalid UTF-8": func(c *Claims) { c.Subject = "spiffe://etb.local/\xff" },
		"huge number":   func(c *Claims) { c.Obl.MemoryBytes = 1 << 60 },
	}
	for name, mod := range declined {
		c := base
		mod(&c)
		if _, ok := appendClaims(nil, &c); ok {
			t.Errorf("%s: the direct path accepted what it cannot encode", name)
		}
	}
	// Issued grants verify, through the direct path and the fallback.
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	iss := NewIssuer(key, base.Issuer, time.Minute, nil)
	keys := map[string]ed25519.PublicKey{iss.KeyID(): key.Public().(ed25519.PublicKey)}
	for _, scp := range []*Scope{nil, {Actions: []ScopeAction{{Kind: "shell.exec", Name: "ls"}}}} {
		c := benchClaims()
		c.Scp = scp
		if scp != nil {
			c.Depth = 1
		}
		tok, _, err := iss.Issue(c)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := VerifySignature(tok, keys); err != nil {
			t.Fatalf("scope %v: %v", scp, err)
		}
	}
}

// A stock JOSE library verifies an issued grant: it is a standard compact
// JWS (RFC 7515, EdDSA per RFC 8037).
func TestIssuedGrantVerifiesWithGoJOSE(t *testing.T) {
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	tok, claims, err := NewIssuer(key, "spiffe://etb.local/gateway/local", time.Minute, nil).Issue(benchClaims())
	if err != nil {
		t.Fatal(err)
	}
	jws, err := jose.ParseSignedCompact(tok, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		t.Fatal(err)
	}
	h := jws.Signatures[0].Header
	if h.Algorithm != "EdDSA" || h.ExtraHeaders["typ"] != Type || h.KeyID == "" {
		t.Fatalf("header %+v", h)
	}
	payload, err := jws.Verify(pub)
	if err != nil {
		t.Fatal(err)
	}
	want, err := action.Canonical(claims)
	if err != nil || string(payload) != string(want) {
		t.Fatalf("payload %s, want %s (%v)", payload, want, err)
	}
}
