package grant

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/etbproject/etb/action"
	"github.com/go-jose/go-jose/v4"
	_ "modernc.org/sqlite"
)

// t0 is near the real clock: the replay store prunes by the real clock, as
// in production, where the verifier and the store share it.
var t0 = time.Now().UTC().Truncate(time.Second)

const aud = "spiffe://etb.local/enforcer"

func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }

func newKey(t testing.TB) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

func openDB(t testing.TB, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func newStore(t testing.TB) *SQLiteReplayStore {
	t.Helper()
	s, err := NewSQLiteReplayStore(context.Background(), openDB(t, filepath.Join(t.TempDir(), "jti.db")))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// specs returns two actions differing in one argument, and their digests.
func specs(t testing.TB) (a, b string) {
	t.Helper()
	s1 := action.Spec{Kind: action.KindShellExec, Name: "rm", Args: []string{"-r", "/tmp/build"},
		Target: action.Target{Program: "/usr/bin/rm", Argv: []string{"rm", "-r", "/tmp/build"}}}
	s2 := s1
	s2.Args = []string{"-r", "/home"}
	d1, err := s1.Digest()
	if err != nil {
		t.Fatal(err)
	}
	d2, err := s2.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if d1 == d2 {
		t.Fatalf("digests of different actions are equal: %s", d1)
	}
	return d1, d2
}

func baseClaims(adg string) Claims {
	return Claims{
		Subject:   "spiffe://etb.local/user/1000",
		Audience:  aud,
		Txn:       "task-1",
		ADG:       adg,
		Pol:       "sha256:" + strings.Repeat("ab", 32),
		Obl:       action.Obligations{Timeout: action.Duration(30 * time.Second)},
		Execution: "exec-1",
	}
}

// b64 is the base64url encoding of JSON-encoded v (or of v itself if it is
// a string or []byte).
func b64(t testing.TB, v any) string {
	t.Helper()
	var b []byte
	switch v := v.(type) {
	case string:
		b = []byte(v)
	case []byte:
		b = v
	default:
		var err error
		if b, err = json.Marshal(v); err != nil {
			t.Fatal(err)
		}
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func segments(t testing.TB, token string) (h, p, s string) {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d segments", len(parts))
	}
	return parts[0], parts[1], parts[2]
}

// signRaw signs header.payload with priv, by hand, bypassing go-jose.
func signRaw(t testing.TB, priv ed25519.PrivateKey, header any, payload []byte) string {
	t.Helper()
	in := b64(t, header) + "." + b64(t, payload)
	return in + "." + b64(t, ed25519.Sign(priv, []byte(in)))
}

func TestIssueVerifyHappyPath(t *testing.T) {
	pub, priv := newKey(t)
	adg, _ := specs(t)
	iss := NewIssuer(priv, "spiffe://etb.local/etb", 0, fixedClock(t0))
	token, claims, err := iss.Issue(baseClaims(adg))
	if err != nil {
		t.Fatal(err)
	}
	if claims.Issuer != "spiffe://etb.local/etb" || claims.IssuedAt != t0.Unix() || claims.NotBefore != t0.Unix() ||
		claims.Expiry != t0.Add(DefaultTTL).Unix() || len(claims.ID) != 32 {
		t.Fatalf("Issue filled claims wrongly: %+v", claims)
	}
	kid := KeyID(pub)
	if !strings.HasPrefix(kid, "sha256:") || len(kid) != len("sha256:")+16 || iss.KeyID() != kid {
		t.Fatalf("KeyID = %q, issuer kid %q", kid, iss.KeyID())
	}
	h, _, _ := segments(t, token)
	hb, _ := base64.RawURLEncoding.DecodeString(h)
	var hdr map[string]string
	if err := json.Unmarshal(hb, &hdr); err != nil {
		t.Fatal(err)
	}
	if hdr["alg"] != "EdDSA" || hdr["typ"] != "grant+jwt" || hdr["kid"] != kid || len(hdr) != 3 {
		t.Fatalf("header = %v", hdr)
	}

	v := NewVerifier(map[string]ed25519.PublicKey{kid: pub}, newStore(t), 0, fixedClock(t0.Add(10*time.Second)))
	got, err := v.Verify(context.Background(), token, Expect{Audience: aud, ADG: adg})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if got.ID != claims.ID || got.Obl.Timeout.D() != 30*time.Second || got.Subject != claims.Subject || got.Txn != "task-1" {
		t.Fatalf("Verify returned %+v, issued %+v", got, claims)
	}
	if h := TokenHash(token); h != action.SHA256([]byte(token)) || !strings.HasPrefix(h, "sha256:") {
		t.Fatalf("TokenHash = %q", h)
	}
	// The offline check agrees, with no clock and no store.
	if _, err := VerifySignature(token, map[string]ed25519.PublicKey{kid: pub}); err != nil {
		t.Fatalf("VerifySignature: %v", err)
	}
}

func TestIssueRefuses(t *testing.T) {
	_, priv := newKey(t)
	adg, _ := specs(t)
	tests := []struct {
		name string
		iss  *Issuer
		c    func(c *Claims)
		want error
	}{
		{"no subject", NewIssuer(priv, "etb", 0, fixedClock(t0)), func(c *Claims) { c.Subject = "" }, ErrClaims},
		{"subject not SPIFFE", NewIssuer(priv, "etb", 0, fixedClock(t0)), func(c *Claims) { c.Subject = "user:1000" }, ErrClaims},
		{"no audience", NewIssuer(priv, "etb", 0, fixedClock(t0)), func(c *Claims) { c.Audience = "" }, ErrClaims},
		{"bad adg", NewIssuer(priv, "etb", 0, fixedClock(t0)), func(c *Claims) { c.ADG = "sha256:XYZ" }, ErrClaims},
		{"no policy", NewIssuer(priv, "etb", 0, fixedClock(t0)), func(c *Claims) { c.Pol = "" }, ErrClaims},
		{"no execution", NewIssuer(priv, "etb", 0, fixedClock(t0)), func(c *Claims) { c.Execution = "" }, ErrClaims},
		{"negative depth", NewIssuer(priv, "etb", 0, fixedClock(t0)), func(c *Claims) { c.Depth = -1 }, ErrClaims},
		{"half parent", NewIssuer(priv, "etb", 0, fixedClock(t0)), func(c *Claims) { c.Par = &Parent{JTI: "x"} }, ErrClaims},
		{"empty cnf", NewIssuer(priv, "etb", 0, fixedClock(t0)), func(c *Claims) { c.Cnf = &Confirmation{} }, ErrClaims},
		{"exp too far", NewIssuer(priv, "etb", 0, fixedClock(t0)), func(c *Claims) { c.Expiry = t0.Add(MaxLifetime + time.Second).Unix() }, ErrLifetime},
		{"exp before iat", NewIssuer(priv, "etb", 0, fixedClock(t0)), func(c *Claims) { c.Expiry = t0.Unix() - 1 }, ErrClaims},
		{"ttl too long", NewIssuer(priv, "etb", MaxLifetime+time.Second, fixedClock(t0)), func(*Claims) {}, nil},
		{"no issuer name", NewIssuer(priv, "", 0, fixedClock(t0)), func(*Claims) {}, nil},
		{"short key", NewIssuer(priv[:31], "etb", 0, fixedClock(t0)), func(*Claims) {}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := baseClaims(adg)
			tt.c(&c)
			token, _, err := tt.iss.Issue(c)
			if err == nil || token != "" {
				t.Fatalf("Issue succeeded (token %d bytes), want an error", len(token))
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("Issue error %v, want %v", err, tt.want)
			}
		})
	}
}

// TestVerifyRefuses is the adversarial table: each case must be refused
// with the named sentinel, and must not burn the jti of the valid grant.
func TestVerifyRefuses(t *testing.T) {
	pub, priv := newKey(t)
	otherPub, otherPriv := newKey(t)
	kid := KeyID(pub)
	adg, otherADG := specs(t)
	iss := NewIssuer(priv, "etb", 0, fixedClock(t0))
	good, goodClaims, err := iss.Issue(baseClaims(adg))
	if err != nil {
		t.Fatal(err)
	}
	hdr := map[string]string{"alg": "EdDSA", "typ": "grant+jwt", "kid": kid}
	payload, err := action.Canonical(goodClaims)
	if err != nil {
		t.Fatal(err)
	}
	gh, gp, gs := segments(t, good)

	issueWith := func(now time.Time, mut func(*Claims)) string {
		c := baseClaims(adg)
		mut(&c)
		tok, _, err := NewIssuer(priv, "etb", 0, fixedClock(now)).Issue(c)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	// claimsWith hand-signs (with the trusted key) a payload that Issue
	// would refuse to produce.
	claimsWith := func(mut func(*Claims)) string {
		c := goodClaims
		mut(&c)
		p, err := action.Canonical(c)
		if err != nil {
			t.Fatal(err)
		}
		return signRaw(t, priv, hdr, p)
	}
	withHeader := func(h map[string]any) string { return signRaw(t, priv, h, payload) }

	// Classic key confusion: HS256 keyed with the raw public key bytes.
	hsIn := b64(t, map[string]string{"alg": "HS256", "typ": "grant+jwt", "kid": kid}) + "." + b64(t, payload)
	mac := hmac.New(sha256.New, pub)
	mac.Write([]byte(hsIn))
	hs256 := hsIn + "." + b64(t, mac.Sum(nil))
	// The same, signed properly by go-jose, to show go-jose would be fooled
	// only if we passed it the []byte key; we refuse at the header.
	joseHS, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: []byte(pub)}, (&jose.SignerOptions{}).WithType(Type).WithHeader("kid", kid))
	if err != nil {
		t.Fatal(err)
	}
	hsObj, err := joseHS.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	hs256Jose, err := hsObj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}

	// JSON serializations of the valid grant.
	edSigner, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: jose.JSONWebKey{Key: priv, KeyID: kid}}, (&jose.SignerOptions{}).WithType(Type))
	if err != nil {
		t.Fatal(err)
	}
	edObj, err := edSigner.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	multi, err := jose.NewMultiSigner([]jose.SigningKey{
		{Algorithm: jose.EdDSA, Key: jose.JSONWebKey{Key: priv, KeyID: kid}},
		{Algorithm: jose.EdDSA, Key: jose.JSONWebKey{Key: otherPriv, KeyID: KeyID(otherPub)}},
	}, (&jose.SignerOptions{}).WithType(Type))
	if err != nil {
		t.Fatal(err)
	}
	multiObj, err := multi.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}

	// Tampered payload: same signature, one claim changed.
	tamper := func(mut func(*Claims)) string {
		c := goodClaims
		mut(&c)
		p, err := action.Canonical(c)
		if err != nil {
			t.Fatal(err)
		}
		return gh + "." + b64(t, p) + "." + gs
	}
	sigBytes, _ := base64.RawURLEncoding.DecodeString(gs)
	sigBytes[5] ^= 1
	flippedSig := gh + "." + gp + "." + b64(t, sigBytes)
	// Non-canonical base64 of the signature (unused trailing bits set):
	// a second spelling of the same token is refused.
	last := gs[len(gs)-1]
	alt := strings.IndexByte("AEIMQUYcgkosw048", last)
	var malleable string
	if alt >= 0 {
		malleable = gh + "." + gp + "." + gs[:len(gs)-1] + string("BFJNRVZdhlptx159"[alt])
	}

	tests := []struct {
		name   string
		token  string
		now    time.Time
		expect Expect
		want   error
	}{
		{"other key, same kid", signRaw(t, otherPriv, hdr, payload), t0, Expect{}, ErrSignature},
		{"other key, unknown kid", signRaw(t, otherPriv, map[string]string{"alg": "EdDSA", "typ": "grant+jwt", "kid": KeyID(otherPub)}, payload), t0, Expect{}, ErrUnknownKey},
		{"no kid", withHeader(map[string]any{"alg": "EdDSA", "typ": "grant+jwt"}), t0, Expect{}, ErrUnknownKey},
		{"alg none", b64(t, map[string]string{"alg": "none", "typ": "grant+jwt", "kid": kid}) + "." + b64(t, payload) + ".", t0, Expect{}, ErrAlgorithm},
		{"alg none with signature", withHeader(map[string]any{"alg": "none", "typ": "grant+jwt", "kid": kid}), t0, Expect{}, ErrAlgorithm},
		{"alg missing", withHeader(map[string]any{"typ": "grant+jwt", "kid": kid}), t0, Expect{}, ErrAlgorithm},
		{"alg Ed25519", withHeader(map[string]any{"alg": "Ed25519", "typ": "grant+jwt", "kid": kid}), t0, Expect{}, ErrAlgorithm},
		{"HS256 keyed with public key (hand-made)", hs256, t0, Expect{}, ErrAlgorithm},
		{"HS256 keyed with public key (go-jose)", hs256Jose, t0, Expect{}, ErrAlgorithm},
		{"typ JWT", withHeader(map[string]any{"alg": "EdDSA", "typ": "JWT", "kid": kid}), t0, Expect{}, ErrType},
		{"typ upper case", withHeader(map[string]any{"alg": "EdDSA", "typ": "GRANT+JWT", "kid": kid}), t0, Expect{}, ErrType},
		{"typ missing", withHeader(map[string]any{"alg": "EdDSA", "kid": kid}), t0, Expect{}, ErrType},
		{"typ not a string", withHeader(map[string]any{"alg": "EdDSA", "typ": 1, "kid": kid}), t0, Expect{}, ErrType},
		{"extra header jwk", withHeader(map[string]any{"alg": "EdDSA", "typ": "grant+jwt", "kid": kid, "jwk": map[string]string{"kty": "OKP", "crv": "Ed25519", "x": b64(t, []byte(otherPub))}}), t0, Expect{}, ErrMalformed},
		{"extra header crit", withHeader(map[string]any{"alg": "EdDSA", "typ": "grant+jwt", "kid": kid, "crit": []string{"b64"}, "b64": false}), t0, Expect{}, ErrMalformed},
		{"duplicate header alg", b64(t, `{"alg":"none","alg":"EdDSA","typ":"grant+jwt","kid":"`+kid+`"}`) + "." + gp + "." + gs, t0, Expect{}, ErrMalformed},
		{"expired", good, t0.Add(DefaultTTL + DefaultSkew), Expect{}, ErrExpired},
		{"expired long ago", good, t0.Add(24 * time.Hour), Expect{}, ErrExpired},
		{"not yet valid", issueWith(t0, func(c *Claims) { c.NotBefore = t0.Add(30 * time.Second).Unix() }), t0, Expect{}, ErrNotYetValid},
		{"iat in future", issueWith(t0.Add(time.Minute), func(*Claims) {}), t0, Expect{}, ErrNotYetValid},
		{"lifetime too long", claimsWith(func(c *Claims) { c.Expiry = c.IssuedAt + int64(MaxLifetime/time.Second) + 1 }), t0, Expect{}, ErrLifetime},
		{"lifetime a year", claimsWith(func(c *Claims) { c.Expiry = c.IssuedAt + 365*86400 }), t0, Expect{}, ErrLifetime},
		{"wrong audience", good, t0, Expect{Audience: "spiffe://etb.local/other-enforcer"}, ErrAudience},
		{"adg mismatch: args changed after issue", good, t0, Expect{ADG: otherADG}, ErrDigest},
		{"holder expected, grant unbound", good, t0, Expect{Holder: "thumb"}, ErrHolder},
		{"holder mismatch", issueWith(t0, func(c *Claims) { c.Cnf = &Confirmation{X5tS256: "thumb-a"} }), t0, Expect{Holder: "thumb-b"}, ErrHolder},
		{"bound grant, no holder presented", issueWith(t0, func(c *Claims) { c.Cnf = &Confirmation{X5tS256: "thumb-a"} }), t0, Expect{}, ErrHolder},
		{"tampered audience", tamper(func(c *Claims) { c.Audience = "spiffe://etb.local/x" }), t0, Expect{}, ErrSignature},
		{"tampered adg", tamper(func(c *Claims) { c.ADG = otherADG }), t0, Expect{ADG: otherADG}, ErrSignature},
		{"tampered depth", tamper(func(c *Claims) { c.Depth = 7 }), t0, Expect{}, ErrSignature},
		{"tampered expiry", tamper(func(c *Claims) { c.Expiry += 60 }), t0, Expect{}, ErrSignature},
		{"signature bit flipped", flippedSig, t0, Expect{}, ErrSignature},
		// 86 base64url characters carry 64 bytes; 84 always decode to exactly 63,
		// so this case is deterministic whatever the signature bytes are.
		{"truncated signature", good[:len(good)-2], t0, Expect{}, ErrSignature},
		{"signature truncated to 32 bytes", gh + "." + gp + "." + b64(t, sigBytes[:32]), t0, Expect{}, ErrSignature},
		{"truncated to two segments", gh + "." + gp, t0, Expect{}, ErrMalformed},
		{"truncated payload", gh + "." + gp[:len(gp)/2] + "." + gs, t0, Expect{}, nil},
		{"empty", "", t0, Expect{}, ErrMalformed},
		{"four segments", good + ".x", t0, Expect{}, ErrMalformed},
		{"whitespace inside", gh + ".\n" + gp + "." + gs, t0, Expect{}, ErrMalformed},
		{"padded base64", gh + "=." + gp + "." + gs, t0, Expect{}, ErrMalformed},
		{"JSON flattened serialization", edObj.FullSerialize(), t0, Expect{}, ErrMalformed},
		{"JSON general serialization, two signatures", multiObj.FullSerialize(), t0, Expect{}, ErrMalformed},
		{"oversized", strings.Repeat("A", MaxTokenBytes+1), t0, Expect{}, ErrMalformed},
		{"unknown claim", signRaw(t, priv, hdr, []byte(strings.Replace(string(payload), `{"adg"`, `{"admin":true,"adg"`, 1))), t0, Expect{}, ErrClaims},
		{"duplicate claim", signRaw(t, priv, hdr, []byte(strings.Replace(string(payload), `{"adg"`, `{"aud":"x","adg"`, 1))), t0, Expect{}, ErrClaims},
		{"non-canonical payload", signRaw(t, priv, hdr, append([]byte(" "), payload...)), t0, Expect{}, ErrClaims},
		{"non-canonical payload: escaped letter", signRaw(t, priv, hdr, []byte(strings.Replace(string(payload), `"adg":"sha256:`, `"adg":"\u0073ha256:`, 1))), t0, Expect{}, ErrClaims},
		{"non-canonical payload: number as 1e0 form", signRaw(t, priv, hdr, []byte(strings.Replace(string(payload), `"depth":0`, `"depth":0e0`, 1))), t0, Expect{}, ErrClaims},
		{"non-canonical payload: keys out of order", signRaw(t, priv, hdr, []byte(strings.Replace(string(payload), `,"depth":0`, ``, 1)[:len(payload)-len(`,"depth":0`)-1]+`,"depth":0}`)), t0, Expect{}, ErrClaims},
		{"trailing data", signRaw(t, priv, hdr, append(append([]byte{}, payload...), []byte(`{}`)...)), t0, Expect{}, ErrClaims},
		{"payload not JSON", signRaw(t, priv, hdr, []byte("hello")), t0, Expect{}, ErrClaims},
		{"missing jti", claimsWith(func(c *Claims) { c.ID = "" }), t0, Expect{}, ErrClaims},
		{"missing subject", claimsWith(func(c *Claims) { c.Subject = "" }), t0, Expect{}, ErrClaims},
		{"nbf after exp", claimsWith(func(c *Claims) { c.NotBefore = c.Expiry }), t0, Expect{}, ErrClaims},
	}
	if malleable != "" {
		tests = append(tests, struct {
			name   string
			token  string
			now    time.Time
			expect Expect
			want   error
		}{"non-canonical base64 signature", malleable, t0, Expect{}, ErrMalformed})
	}
	store := newStore(t)
	keys := map[string]ed25519.PublicKey{kid: pub}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.expect
			if want.Audience == "" {
				want.Audience = aud
			}
			if want.ADG == "" {
				want.ADG = adg
			}
			v := NewVerifier(keys, store, 0, fixedClock(tt.now))
			c, err := v.Verify(context.Background(), tt.token, want)
			if err == nil {
				t.Fatalf("Verify accepted the token: %+v", c)
			}
			if c != nil {
				t.Errorf("Verify returned claims with error %v", err)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("Verify error = %v, want %v", err, tt.want)
			}
			if tt.token != "" && len(tt.token) > 40 && strings.Contains(err.Error(), tt.token) {
				t.Fatalf("error message contains the raw token")
			}
		})
	}
	// None of the refusals consumed the valid grant's jti.
	v := NewVerifier(keys, store, 0, fixedClock(t0))
	if _, err := v.Verify(context.Background(), good, Expect{Audience: aud, ADG: adg}); err != nil {
		t.Fatalf("valid grant refused after the adversarial cases: %v", err)
	}
}

func TestVerifyClockBoundaries(t *testing.T) {
	pub, priv := newKey(t)
	adg, _ := specs(t)
	keys := map[string]ed25519.PublicKey{KeyID(pub): pub}
	tests := []struct {
		name string
		skew time.Duration
		now  time.Time
		want error
	}{
		{"nbf - skew exactly", 0, t0.Add(-DefaultSkew), nil},
		{"before nbf - skew", 0, t0.Add(-DefaultSkew - time.Second), ErrNotYetValid},
		{"just before exp + skew", 0, t0.Add(DefaultTTL + DefaultSkew - time.Nanosecond), nil},
		{"at exp + skew", 0, t0.Add(DefaultTTL + DefaultSkew), ErrExpired},
		{"skew clamped to MaxSkew", time.Hour, t0.Add(DefaultTTL + MaxSkew), ErrExpired},
		{"skew within MaxSkew", time.Hour, t0.Add(DefaultTTL + MaxSkew - time.Second), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			token, _, err := NewIssuer(priv, "etb", 0, fixedClock(t0)).Issue(baseClaims(adg))
			if err != nil {
				t.Fatal(err)
			}
			_, err = NewVerifier(keys, newStore(t), tt.skew, fixedClock(tt.now)).Verify(context.Background(), token, Expect{Audience: aud, ADG: adg})
			if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("Verify at %v: error %v, want %v", tt.now, err, tt.want)
			}
		})
	}
}

func TestVerifyMisconfigurationRefuses(t *testing.T) {
	pub, priv := newKey(t)
	adg, _ := specs(t)
	token, _, err := NewIssuer(priv, "etb", 0, fixedClock(t0)).Issue(baseClaims(adg))
	if err != nil {
		t.Fatal(err)
	}
	kid := KeyID(pub)
	tests := []struct {
		name string
		v    *Verifier
		want Expect
	}{
		{"no replay store", NewVerifier(map[string]ed25519.PublicKey{kid: pub}, nil, 0, fixedClock(t0)), Expect{Audience: aud, ADG: adg}},
		{"no expected audience", NewVerifier(map[string]ed25519.PublicKey{kid: pub}, newStore(t), 0, fixedClock(t0)), Expect{ADG: adg}},
		{"no expected digest", NewVerifier(map[string]ed25519.PublicKey{kid: pub}, newStore(t), 0, fixedClock(t0)), Expect{Audience: aud}},
		{"no keys", NewVerifier(nil, newStore(t), 0, fixedClock(t0)), Expect{Audience: aud, ADG: adg}},
		{"key of wrong size", NewVerifier(map[string]ed25519.PublicKey{kid: pub[:16]}, newStore(t), 0, fixedClock(t0)), Expect{Audience: aud, ADG: adg}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if c, err := tt.v.Verify(context.Background(), token, tt.want); err == nil {
				t.Fatalf("Verify accepted: %+v", c)
			}
		})
	}
	// The verifier copied its key map: changing the caller's map later
	// does not add trust.
	keys := map[string]ed25519.PublicKey{}
	v := NewVerifier(keys, newStore(t), 0, fixedClock(t0))
	keys[kid] = pub
	if _, err := v.Verify(context.Background(), token, Expect{Audience: aud, ADG: adg}); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("Verify after mutating the caller's key map: %v, want ErrUnknownKey", err)
	}
}

type failingStore struct{ err error }

func (f failingStore) Use(context.Context, string, time.Time) error { return f.err }

func TestReplay(t *testing.T) {
	pub, priv := newKey(t)
	adg, _ := specs(t)
	keys := map[string]ed25519.PublicKey{KeyID(pub): pub}
	path := filepath.Join(t.TempDir(), "jti.db")
	ctx := context.Background()
	want := Expect{Audience: aud, ADG: adg}

	token, _, err := NewIssuer(priv, "etb", 0, fixedClock(t0)).Issue(baseClaims(adg))
	if err != nil {
		t.Fatal(err)
	}
	db := openDB(t, path)
	store, err := NewSQLiteReplayStore(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	v := NewVerifier(keys, store, 0, fixedClock(t0))
	if _, err := v.Verify(ctx, token, want); err != nil {
		t.Fatalf("first use: %v", err)
	}
	if _, err := v.Verify(ctx, token, want); !errors.Is(err, ErrReplayed) {
		t.Fatalf("second use: %v, want ErrReplayed", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	// Storage failure refuses (the database is closed).
	if _, err := v.Verify(ctx, token, want); err == nil || errors.Is(err, ErrReplayed) {
		t.Fatalf("use with closed database: %v, want a storage error", err)
	}
	// Persistence: a fresh process re-opening the same file still refuses.
	store2, err := NewSQLiteReplayStore(ctx, openDB(t, path))
	if err != nil {
		t.Fatal(err)
	}
	v2 := NewVerifier(keys, store2, 0, fixedClock(t0.Add(time.Second)))
	if _, err := v2.Verify(ctx, token, want); !errors.Is(err, ErrReplayed) {
		t.Fatalf("use after re-opening the store: %v, want ErrReplayed", err)
	}
	// A failing store refuses, and a store's ErrReplayed is passed through.
	for _, serr := range []error{errors.New("disk full"), ErrReplayed} {
		tok, _, err := NewIssuer(priv, "etb", 0, fixedClock(t0)).Issue(baseClaims(adg))
		if err != nil {
			t.Fatal(err)
		}
		_, err = NewVerifier(keys, failingStore{serr}, 0, fixedClock(t0)).Verify(ctx, tok, want)
		if !errors.Is(err, serr) {
			t.Fatalf("failing store (%v): Verify error %v", serr, err)
		}
	}
}

func TestReplayConcurrent(t *testing.T) {
	pub, priv := newKey(t)
	adg, _ := specs(t)
	keys := map[string]ed25519.PublicKey{KeyID(pub): pub}
	token, _, err := NewIssuer(priv, "etb", 0, fixedClock(t0)).Issue(baseClaims(adg))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "jti.db")
	// Two stores on two connections pools to the same file, as two
	// enforcer processes would have.
	var stores []*SQLiteReplayStore
	for range 2 {
		s, err := NewSQLiteReplayStore(context.Background(), openDB(t, path))
		if err != nil {
			t.Fatal(err)
		}
		stores = append(stores, s)
	}
	const n = 16
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := NewVerifier(keys, stores[i%2], 0, fixedClock(t0))
			_, errs[i] = v.Verify(context.Background(), token, Expect{Audience: aud, ADG: adg})
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ErrReplayed):
			t.Errorf("concurrent use: unexpected error %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d of %d concurrent uses succeeded, want exactly 1", ok, n)
	}
}

func TestReplayPrune(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	now := t0
	s.now = func() time.Time { return now }
	if err := s.Use(ctx, "old", t0.Add(-ReplayRetention-time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := s.Use(ctx, "recent", t0.Add(-MaxSkew)); err != nil {
		t.Fatal(err)
	}
	if err := s.Use(ctx, "", t0); err == nil {
		t.Fatal("empty jti accepted")
	}
	// The next Use, a prune interval later, deletes only "old".
	now = t0.Add(pruneEvery)
	if err := s.Use(ctx, "new", t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM grant_jti`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("%d rows after pruning, want 2 (recent, new)", n)
	}
	if err := s.Use(ctx, "recent", t0); !errors.Is(err, ErrReplayed) {
		t.Fatalf("recent jti after pruning: %v, want ErrReplayed", err)
	}
	if err := s.Use(ctx, "old", t0); err != nil {
		t.Fatalf("pruned jti: %v", err)
	}
	got, err := s.Prune(ctx, t0.Add(time.Hour))
	if err != nil || got != 3 {
		t.Fatalf("Prune all = %d, %v; want 3 (recent, new, old again)", got, err)
	}
	if ReplayRetention <= MaxSkew {
		t.Fatalf("ReplayRetention %v must exceed MaxSkew %v", ReplayRetention, MaxSkew)
	}
	if _, err := NewSQLiteReplayStore(ctx, nil); err == nil {
		t.Fatal("nil database accepted")
	}
}
