package grant

import (
	"crypto/ed25519"
	"strings"
	"testing"
)

// FuzzVerifySignature checks that VerifySignature never panics and never
// accepts a token that is not exactly one the trusted key signed.
func FuzzVerifySignature(f *testing.F) {
	pub, priv := newKey(f)
	adg, _ := specs(f)
	good, _, err := NewIssuer(priv, "etb", 0, fixedClock(t0)).Issue(baseClaims(adg))
	if err != nil {
		f.Fatal(err)
	}
	h, p, s := segments(f, good)
	for _, seed := range []string{
		good,
		h + "." + p + ".",
		h + "." + p,
		"." + p + "." + s,
		good[:len(good)-1],
		good + "A",
		strings.ToUpper(good),
		`{"payload":"` + p + `","protected":"` + h + `","signature":"` + s + `"}`,
		"eyJhbGciOiJub25lIn0.e30.",
		"",
		"...",
		"a.b.c",
	} {
		f.Add(seed)
	}
	keys := map[string]ed25519.PublicKey{KeyID(pub): pub}
	f.Fuzz(func(t *testing.T, token string) {
		c, err := VerifySignature(token, keys)
		if err == nil && (token != good || c == nil) {
			t.Fatalf("accepted a token other than the one issued: %q", token)
		}
		if err != nil && c != nil {
			t.Fatalf("returned claims with error %v", err)
		}
	})
}
