package grant

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"strings"
	"time"

	"github.com/etbproject/etb/action"
)

// Expect is what the enforcer expects of a grant: that it is addressed to
// it, bound to the action it is about to run, and, if Holder is set, held
// by that holder. Audience and ADG are required.
type Expect struct {
	// Audience is the enforcer's own ID; the grant's aud must equal it.
	Audience string
	// ADG is the action digest the caller recomputed from what it is about
	// to run; the grant's adg must equal it.
	ADG string
	// Holder is the x5t#S256 thumbprint of the presenter's SVID. If set, the
	// grant's cnf must name it. If empty, a grant that carries a cnf is
	// refused: a holder-bound grant needs a holder check.
	Holder string
}

// ReplayStore records the jti of every grant used, so that each grant is
// used at most once.
type ReplayStore interface {
	// Use records jti, which is valid until exp. It returns an error
	// wrapping ErrReplayed if jti was recorded before, and any other error
	// if it could not record it (which refuses the grant as well).
	Use(ctx context.Context, jti string, exp time.Time) error
}

// Verifier verifies grants presented to an enforcer. It is safe for
// concurrent use if its ReplayStore is.
type Verifier struct {
	keys   map[string]ed25519.PublicKey
	replay ReplayStore
	skew   time.Duration
	now    func() time.Time
}

// NewVerifier returns a Verifier trusting keys (kid → Ed25519 public key;
// the map is copied), recording jtis in replay, tolerating skew of clock
// difference (DefaultSkew if skew <= 0, clamped to MaxSkew), reading time
// from now (time.Now if nil). A nil replay store makes every Verify fail.
func NewVerifier(keys map[string]ed25519.PublicKey, replay ReplayStore, skew time.Duration, now func() time.Time) *Verifier {
	if skew <= 0 {
		skew = DefaultSkew
	}
	skew = min(skew, MaxSkew)
	if now == nil {
		now = time.Now
	}
	return &Verifier{keys: maps.Clone(keys), replay: replay, skew: skew, now: now}
}

// Verify checks token for use now and returns its claims. In order: the
// offline checks of VerifySignature (shape, header typ and alg, kid, the
// signature, strict claims); then nbf - skew <= now, iat <= now + skew,
// now < exp + skew; aud == want.Audience; adg == want.ADG; the holder
// binding; and last, only if all of that passed, the replay store records
// the jti. Any failure is an error wrapping the matching sentinel; nothing
// is returned but the error.
func (v *Verifier) Verify(ctx context.Context, token string, want Expect) (*Claims, error) {
	if want.Audience == "" || want.ADG == "" {
		return nil, fmt.Errorf("%w: the verifier was given no expected audience (%q) or action digest (%q)", ErrClaims, want.Audience, want.ADG)
	}
	c, err := VerifySignature(token, v.keys)
	if err != nil {
		return nil, err
	}
	now := v.now()
	nbf, iat, exp := time.Unix(c.NotBefore, 0), time.Unix(c.IssuedAt, 0), time.Unix(c.Expiry, 0)
	switch {
	case now.Before(nbf.Add(-v.skew)):
		return nil, fmt.Errorf("%w: jti %s nbf %s is after now %s (skew %v)", ErrNotYetValid, c.ID, fmtTime(nbf), fmtTime(now), v.skew)
	case iat.After(now.Add(v.skew)):
		return nil, fmt.Errorf("%w: jti %s iat %s is in the future, now %s (skew %v)", ErrNotYetValid, c.ID, fmtTime(iat), fmtTime(now), v.skew)
	case !now.Before(exp.Add(v.skew)):
		return nil, fmt.Errorf("%w: jti %s exp %s is not after now %s (skew %v)", ErrExpired, c.ID, fmtTime(exp), fmtTime(now), v.skew)
	}
	if c.Audience != want.Audience {
		return nil, fmt.Errorf("%w: jti %s aud %q, want %q", ErrAudience, c.ID, c.Audience, want.Audience)
	}
	if c.ADG != want.ADG {
		return nil, fmt.Errorf("%w: jti %s adg %s, the action to run has %s", ErrDigest, c.ID, c.ADG, want.ADG)
	}
	switch {
	case want.Holder != "" && c.Cnf == nil:
		return nil, fmt.Errorf("%w: jti %s has no cnf, want holder %q", ErrHolder, c.ID, want.Holder)
	case want.Holder != "" && subtle.ConstantTimeCompare([]byte(c.Cnf.X5tS256), []byte(want.Holder)) != 1:
		return nil, fmt.Errorf("%w: jti %s cnf x5t#S256 %q, want %q", ErrHolder, c.ID, c.Cnf.X5tS256, want.Holder)
	case want.Holder == "" && c.Cnf != nil:
		return nil, fmt.Errorf("%w: jti %s is bound to holder %q but no holder was presented", ErrHolder, c.ID, c.Cnf.X5tS256)
	}
	if v.replay == nil {
		return nil, fmt.Errorf("grant: jti %s: the verifier has no replay store", c.ID)
	}
	if err := v.replay.Use(ctx, c.ID, exp); err != nil {
		return nil, fmt.Errorf("grant: jti %s: %w", c.ID, err)
	}
	return c, nil
}

// VerifySignature is the offline (evidence) check of a grant: no clock, no
// replay store. It checks, in order: size and compact shape (three strict
// base64url segments; the JSON serializations are refused); the protected
// header — alg must be EdDSA and typ exactly grant+jwt before the signature
// is touched, and no header parameter other than alg, typ and kid may
// appear; kid names a key in keys; the Ed25519 signature under that key;
// the claims decode strictly and are exactly the canonical encoding of
// themselves (so unknown or duplicate claims are refused); and
// Claims.Validate, including the lifetime bound.
func VerifySignature(token string, keys map[string]ed25519.PublicKey) (*Claims, error) {
	parts, err := splitCompact(token)
	if err != nil {
		return nil, err
	}
	hdrB, err := decodeSegment(parts[0], 1)
	if err != nil {
		return nil, err
	}
	kid, err := checkHeader(hdrB)
	if err != nil {
		return nil, err
	}
	payload, err := decodeSegment(parts[1], 2)
	if err != nil {
		return nil, err
	}
	sig, err := decodeSegment(parts[2], 3)
	if err != nil {
		return nil, err
	}
	if len(sig) != ed25519.SignatureSize {
		return nil, fmt.Errorf("%w: signature is %d bytes, want %d", ErrSignature, len(sig), ed25519.SignatureSize)
	}
	pub, ok := keys[kid]
	if !ok {
		return nil, fmt.Errorf("%w: kid %q", ErrUnknownKey, kid)
	}
	if len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: key for kid %q is %d bytes, not an Ed25519 public key", ErrUnknownKey, kid, len(pub))
	}
	// RFC 7515 §5.2 with RFC 8037: the signing input is the two encoded
	// segments as they appear in the token; the header was checked above
	// (alg EdDSA, typ, kid, nothing else) before the key is even chosen.
	if !ed25519.Verify(pub, []byte(token[:len(parts[0])+1+len(parts[1])]), sig) {
		return nil, fmt.Errorf("%w: kid %q: the Ed25519 signature does not verify", ErrSignature, kid)
	}
	verified := payload
	return decodeClaims(verified)
}

// splitCompact checks that token is a JWS compact serialization of sane
// size, with three segments, and returns them, still encoded.
func splitCompact(token string) ([]string, error) {
	if len(token) > MaxTokenBytes {
		return nil, fmt.Errorf("%w: token is %d bytes, over %d", ErrMalformed, len(token), MaxTokenBytes)
	}
	if strings.HasPrefix(strings.TrimSpace(token), "{") {
		return nil, fmt.Errorf("%w: JWS JSON serialization is refused; a grant is compact", ErrMalformed)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("%w: %d segments, want 3", ErrMalformed, len(parts))
	}
	return parts, nil
}

// decodeSegment decodes segment number n of a compact JWS: non-empty,
// strict unpadded base64url (so each token has one spelling only).
func decodeSegment(seg string, n int) ([]byte, error) {
	if seg == "" {
		return nil, fmt.Errorf("%w: segment %d is empty", ErrMalformed, n)
	}
	for j := 0; j < len(seg); j++ {
		if c := seg[j]; !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return nil, fmt.Errorf("%w: segment %d has byte %#02x at offset %d, not base64url", ErrMalformed, n, c, j)
		}
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(seg)
	if err != nil {
		return nil, fmt.Errorf("%w: segment %d: %w", ErrMalformed, n, err)
	}
	return b, nil
}

// checkHeader checks the protected header: a JSON object without duplicate
// names, alg == EdDSA, typ == grant+jwt, a string kid, and nothing else. It
// returns the kid.
func checkHeader(b []byte) (string, error) {
	if err := noDuplicateNames(b); err != nil {
		return "", fmt.Errorf("%w: header: %w", ErrMalformed, err)
	}
	var h map[string]json.RawMessage
	if err := json.Unmarshal(b, &h); err != nil {
		return "", fmt.Errorf("%w: header: %w", ErrMalformed, err)
	}
	str := func(name string) (string, bool) {
		raw, ok := h[name]
		var s string
		if !ok || json.Unmarshal(raw, &s) != nil {
			return "", false
		}
		return s, true
	}
	if alg, ok := str("alg"); !ok || alg != Algorithm {
		return "", fmt.Errorf("%w: alg %s, only %s is allowed", ErrAlgorithm, h["alg"], Algorithm)
	}
	if typ, ok := str("typ"); !ok || typ != Type {
		return "", fmt.Errorf("%w: typ %s, want %q", ErrType, h["typ"], Type)
	}
	kid, ok := str("kid")
	if !ok || kid == "" {
		return "", fmt.Errorf("%w: kid %s is missing or not a non-empty string", ErrUnknownKey, h["kid"])
	}
	for name := range h {
		if name != "alg" && name != "typ" && name != "kid" {
			return "", fmt.Errorf("%w: header parameter %q is not allowed in a grant", ErrMalformed, name)
		}
	}
	return kid, nil
}

// decodeClaims decodes a payload strictly: unknown claims, trailing data and
// any encoding other than the canonical one are refused, then the claims
// are validated.
func decodeClaims(payload []byte) (*Claims, error) {
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	var c Claims
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrClaims, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: trailing data after the claims", ErrClaims)
	}
	// The direct encoder when it applies (TestAppendClaimsMatchesJCS holds
	// it to the generic one), else the generic RFC 8785 path.
	canon, ok := appendClaims(make([]byte, 0, len(payload)), &c)
	if !ok {
		var err error
		if canon, err = action.Canonical(c); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrClaims, err)
		}
	}
	if !bytes.Equal(canon, payload) {
		return nil, fmt.Errorf("%w: payload is not the canonical (RFC 8785) encoding of its claims (payload %s, canonical %s)", ErrClaims, action.SHA256(payload), action.SHA256(canon))
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// noDuplicateNames reports an error if the top-level JSON object in b names
// a member twice (encoding/json would silently keep the last).
func noDuplicateNames(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	t, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := t.(json.Delim); !ok || d != '{' {
		return fmt.Errorf("not a JSON object")
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		name, _ := t.(string)
		if seen[name] {
			return fmt.Errorf("member %q appears twice", name)
		}
		seen[name] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return err
		}
	}
	return nil
}

func fmtTime(t time.Time) string { return t.UTC().Format(time.RFC3339) }
