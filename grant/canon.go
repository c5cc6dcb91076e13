package grant

import (
	"crypto/ed25519"
	"encoding/base64"
	"strconv"

	"github.com/etbproject/etb/action"
)

// maxExactInt is 2^53: RFC 8785 prints integers of smaller magnitude as
// plain decimals.
const maxExactInt = 1 << 53

// appendClaims appends the RFC 8785 form of c to b, written directly: the
// generic path (encoding/json and a JCS transform) costs several times
// more and is most of the cost of issuing a grant besides the signature.
// It reports false, leaving the caller to use action.Canonical, outside the
// common case: a scope, obligations with path, network or environment
// scopes, a string outside printable ASCII or a number beyond 2^53.
// TestAppendClaimsMatchesJCS checks the two agree. Keys are in the sorted
// order RFC 8785 requires (all are ASCII, so byte order).
func appendClaims(b []byte, c *Claims) ([]byte, bool) {
	if c.Scp != nil {
		return b, false
	}
	ok := true
	str := func(s string) {
		var good bool
		b, good = action.AppendString(b, s)
		ok = ok && good
	}
	num := func(v int64) {
		if v <= -maxExactInt || v >= maxExactInt {
			ok = false
		}
		b = strconv.AppendInt(b, v, 10)
	}
	b = append(b, `{"adg":`...)
	str(c.ADG)
	b = append(b, `,"aud":`...)
	str(c.Audience)
	if c.Cnf != nil {
		b = append(b, `,"cnf":{"x5t#S256":`...)
		str(c.Cnf.X5tS256)
		b = append(b, '}')
	}
	b = append(b, `,"depth":`...)
	num(int64(c.Depth))
	b = append(b, `,"exe":`...)
	str(c.Execution)
	b = append(b, `,"exp":`...)
	num(c.Expiry)
	b = append(b, `,"iat":`...)
	num(c.IssuedAt)
	b = append(b, `,"iss":`...)
	str(c.Issuer)
	b = append(b, `,"jti":`...)
	str(c.ID)
	b = append(b, `,"nbf":`...)
	num(c.NotBefore)
	b = append(b, `,"obl":`...)
	var good bool
	b, good = c.Obl.AppendCanonical(b)
	ok = ok && good
	if c.Par != nil {
		b = append(b, `,"par":{"hash":`...)
		str(c.Par.Hash)
		b = append(b, `,"jti":`...)
		str(c.Par.JTI)
		b = append(b, '}')
	}
	b = append(b, `,"pol":`...)
	str(c.Pol)
	b = append(b, `,"sub":`...)
	str(c.Subject)
	if c.Txn != "" {
		b = append(b, `,"txn":`...)
		str(c.Txn)
	}
	return append(b, '}'), ok
}

// sign returns the compact JWS of payload under the issuer's key and its
// precomputed protected header: base64url(header) "." base64url(payload)
// "." base64url(Ed25519 signature of the first two).
func (i *Issuer) sign(payload []byte) string {
	enc := base64.RawURLEncoding
	n := len(i.header) + 1 + enc.EncodedLen(len(payload))
	buf := make([]byte, 0, n+1+enc.EncodedLen(ed25519.SignatureSize))
	buf = append(buf, i.header...)
	buf = append(buf, '.')
	buf = enc.AppendEncode(buf, payload)
	sig := ed25519.Sign(i.key, buf)
	buf = append(buf, '.')
	buf = enc.AppendEncode(buf, sig)
	return string(buf)
}
