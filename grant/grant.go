// Package grant issues and verifies grants: compact JWS tokens (alg EdDSA,
// typ grant+jwt) that authorize exactly one action, identified by its action
// digest, for a short time, once.
//
// The package owns the grant format, its claims and their validation, the
// key identifiers of grant-signing keys, the single-use (jti) replay
// store, and delegation: the scope a delegation grant carries (scope.go)
// and the attenuation rules a child grant must satisfy against its parent
// (CheckAttenuation, CheckActionInScope), which the gateway applies before
// issuing and the verifier again on evidence. It must never accept a token whose header it has not checked
// itself (typ, alg allow-list, kid) before touching the signature, never
// consult the replay store before every other check has passed, and never
// log or return a raw token: callers log TokenHash instead.
//
// Every verification failure is an error wrapping one of the sentinel errors
// below (ErrSignature, ErrExpired, ...), so callers can tell why a grant was
// refused; every failure refuses.
package grant

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/etbproject/etb/action"
)

// Type is the value of the JWS "typ" header of every grant. It is compared
// exactly (case-sensitively).
const Type = "grant+jwt"

// Algorithm is the only accepted JWS "alg".
const Algorithm = "EdDSA"

// Limits.
const (
	// DefaultTTL is the lifetime of a grant when the Issuer is given none.
	DefaultTTL = 60 * time.Second
	// MaxLifetime bounds exp - iat. A grant claiming a longer lifetime is
	// refused, whoever signed it.
	MaxLifetime = 10 * time.Minute
	// DefaultSkew is the clock skew a Verifier tolerates when given none.
	DefaultSkew = 5 * time.Second
	// MaxSkew is the largest clock skew a Verifier tolerates; a larger one
	// is clamped to it.
	MaxSkew = 2 * time.Minute
	// MaxTokenBytes bounds the size of a token; a longer one is refused
	// before it is parsed.
	MaxTokenBytes = 16 << 10
	// maxJTIBytes bounds the jti claim.
	maxJTIBytes = 128
)

// Sentinel errors. Every error returned by Verify and VerifySignature wraps
// exactly one of them, except that a failure of the replay store itself is
// wrapped as is.
var (
	ErrMalformed   = errors.New("grant: malformed token")
	ErrType        = errors.New("grant: wrong token type")
	ErrAlgorithm   = errors.New("grant: algorithm not allowed")
	ErrUnknownKey  = errors.New("grant: unknown signing key")
	ErrSignature   = errors.New("grant: bad signature")
	ErrClaims      = errors.New("grant: invalid claims")
	ErrLifetime    = errors.New("grant: lifetime too long")
	ErrExpired     = errors.New("grant: expired")
	ErrNotYetValid = errors.New("grant: not yet valid")
	ErrAudience    = errors.New("grant: wrong audience")
	ErrDigest      = errors.New("grant: action digest mismatch")
	ErrHolder      = errors.New("grant: holder binding mismatch")
	ErrReplayed    = errors.New("grant: replayed")
)

// Claims are the claims of a grant. Times are Unix seconds (JWT NumericDate).
//
// The payload of a grant is exactly the RFC 8785 canonical JSON of its
// Claims; a verifier refuses any other encoding of the same claims (so
// unknown claims, duplicate names and non-canonical numbers are refused).
type Claims struct {
	Issuer    string             `json:"iss"`
	Subject   string             `json:"sub"` // agent SPIFFE ID
	Audience  string             `json:"aud"` // the enforcer's ID
	IssuedAt  int64              `json:"iat"`
	NotBefore int64              `json:"nbf"`
	Expiry    int64              `json:"exp"`
	ID        string             `json:"jti"`           // unique; etb issues action.NewID (time-ordered, 80 random bits)
	Txn       string             `json:"txn,omitempty"` // root task id
	Par       *Parent            `json:"par,omitempty"` // parent grant, for sub-agents
	ADG       string             `json:"adg"`           // action digest, action.Spec.Digest()
	Pol       string             `json:"pol"`           // policy bundle hash
	Obl       action.Obligations `json:"obl"`
	Scp       *Scope             `json:"scp,omitempty"` // delegation grants: what the holder may request
	Depth     int                `json:"depth"`         // remaining delegation depth; 0 for action grants
	Execution string             `json:"exe"`           // etb execution id
	Cnf       *Confirmation      `json:"cnf,omitempty"` // holder binding
}

// Parent names the grant a sub-agent's grant was attenuated from.
type Parent struct {
	JTI  string `json:"jti"`
	Hash string `json:"hash"` // TokenHash of the parent grant
}

// Confirmation binds a grant to its holder (RFC 7800 cnf).
type Confirmation struct {
	// X5tS256 is the base64url SHA-256 thumbprint of the holder's X.509-SVID.
	X5tS256 string `json:"x5t#S256"`
}

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// Validate checks the shape of c, independently of any clock: required
// claims present, sub a SPIFFE ID, adg a "sha256:" digest, iat <= nbf < exp
// and exp - iat <= MaxLifetime. A lifetime error wraps ErrLifetime, any
// other ErrClaims.
//
// Required: iss, sub, aud, iat, exp, jti, adg, pol, exe. Optional: txn, par
// (if present, both its fields, hash a "sha256:" digest, and txn too), cnf
// (if present, its thumbprint), scp (if present, a valid Scope). depth is
// never negative, and positive only on a delegation grant (with scp).
func (c *Claims) Validate() error {
	required := []struct{ name, value string }{
		{"iss", c.Issuer}, {"sub", c.Subject}, {"aud", c.Audience},
		{"jti", c.ID}, {"pol", c.Pol}, {"exe", c.Execution},
	}
	for _, r := range required {
		if r.value == "" {
			return fmt.Errorf("%w: claim %q is missing or empty", ErrClaims, r.name)
		}
	}
	if len(c.ID) > maxJTIBytes {
		return fmt.Errorf("%w: jti is %d bytes, over %d", ErrClaims, len(c.ID), maxJTIBytes)
	}
	if _, err := spiffeid.FromString(c.Subject); err != nil {
		return fmt.Errorf("%w: sub %q is not a SPIFFE ID: %w", ErrClaims, c.Subject, err)
	}
	if !digestRE.MatchString(c.ADG) {
		return fmt.Errorf("%w: adg %q is not sha256:<64 lower-case hex>", ErrClaims, c.ADG)
	}
	if c.IssuedAt <= 0 {
		return fmt.Errorf("%w: iat %d is not a positive time", ErrClaims, c.IssuedAt)
	}
	if c.Expiry <= c.IssuedAt {
		return fmt.Errorf("%w: exp %d is not after iat %d", ErrClaims, c.Expiry, c.IssuedAt)
	}
	if c.NotBefore < c.IssuedAt || c.NotBefore >= c.Expiry {
		return fmt.Errorf("%w: nbf %d is not in [iat %d, exp %d)", ErrClaims, c.NotBefore, c.IssuedAt, c.Expiry)
	}
	if life := c.Expiry - c.IssuedAt; life > int64(MaxLifetime/time.Second) {
		return fmt.Errorf("%w: exp - iat is %ds, over %v", ErrLifetime, life, MaxLifetime)
	}
	if c.Depth < 0 {
		return fmt.Errorf("%w: depth %d is negative", ErrClaims, c.Depth)
	}
	if c.Depth > 0 && c.Scp == nil {
		return fmt.Errorf("%w: depth %d without scp: only a delegation grant can delegate", ErrClaims, c.Depth)
	}
	if c.Scp != nil {
		if err := c.Scp.Validate(); err != nil {
			return fmt.Errorf("%w: scp: %w", ErrClaims, err)
		}
	}
	if c.Par != nil {
		switch {
		case c.Par.JTI == "" || len(c.Par.JTI) > maxJTIBytes:
			return fmt.Errorf("%w: par.jti %q is empty or over %d bytes", ErrClaims, c.Par.JTI, maxJTIBytes)
		case !digestRE.MatchString(c.Par.Hash):
			return fmt.Errorf("%w: par.hash %q is not sha256:<64 lower-case hex>", ErrClaims, c.Par.Hash)
		case c.Txn == "":
			return fmt.Errorf("%w: par without txn: a child grant names its root task", ErrClaims)
		}
	}
	if c.Cnf != nil && c.Cnf.X5tS256 == "" {
		return fmt.Errorf("%w: cnf is present without x5t#S256", ErrClaims)
	}
	return nil
}

// KeyID returns the key id of an Ed25519 grant-signing key: "sha256:"
// followed by the first 16 lower-case hex characters (64 bits) of the
// SHA-256 of the raw 32-byte public key. The kid only selects a configured
// key; a colliding kid gains nothing, since the signature is always checked
// against the configured key.
func KeyID(pub ed25519.PublicKey) string {
	return action.SHA256(pub)[:len("sha256:")+16]
}

// TokenHash returns the hash by which a token may be logged and referenced:
// action.SHA256 of its bytes. Never log raw tokens.
func TokenHash(token string) string { return action.SHA256([]byte(token)) }

// Issuer signs grants with one Ed25519 key. It is safe for concurrent use.
type Issuer struct {
	key    ed25519.PrivateKey
	kid    string
	issuer string
	ttl    time.Duration
	now    func() time.Time
	// header is the base64url protected header every grant carries:
	// {"alg":"EdDSA","kid":KID,"typ":"grant+jwt"} in RFC 8785 form.
	header string
}

// NewIssuer returns an Issuer signing with key as issuer. ttl is the default
// lifetime of a grant (DefaultTTL if ttl <= 0); now is the clock (time.Now
// if nil). A ttl over MaxLifetime makes Issue fail rather than be clamped.
func NewIssuer(key ed25519.PrivateKey, issuer string, ttl time.Duration, now func() time.Time) *Issuer {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	if now == nil {
		now = time.Now
	}
	i := &Issuer{key: key, issuer: issuer, ttl: ttl, now: now}
	if len(key) == ed25519.PrivateKeySize {
		i.kid = KeyID(key.Public().(ed25519.PublicKey))
		h, err := action.Canonical(map[string]string{"alg": Algorithm, "kid": i.kid, "typ": Type})
		if err == nil {
			i.header = base64.RawURLEncoding.EncodeToString(h)
		}
	}
	return i
}

// KeyID returns the kid the Issuer puts in its grants' headers.
func (i *Issuer) KeyID() string { return i.kid }

// Issue signs a grant for c. It sets iss to the Issuer's name and iat to
// now, and fills nbf (= iat) if zero, exp (= iat + ttl, at least one second)
// if zero, and jti (action.NewID: 48 bits of time, 80 random, hex) if empty. The claims are then
// validated as a verifier would (Claims.Validate); an invalid claim set is
// not signed. par, scp and depth are signed as given: attenuation against
// the parent is the caller's to check (CheckAttenuation). It returns the compact token and the claims it carries.
func (i *Issuer) Issue(c Claims) (token string, claims Claims, err error) {
	if len(i.key) != ed25519.PrivateKeySize {
		return "", Claims{}, fmt.Errorf("grant: issue: signing key is %d bytes, want an Ed25519 private key of %d", len(i.key), ed25519.PrivateKeySize)
	}
	if i.issuer == "" {
		return "", Claims{}, errors.New("grant: issue: issuer name is empty")
	}
	if i.ttl > MaxLifetime {
		return "", Claims{}, fmt.Errorf("grant: issue: ttl %v is over the maximum lifetime %v", i.ttl, MaxLifetime)
	}
	c.Issuer = i.issuer
	now := i.now()
	c.IssuedAt = now.Unix()
	if c.NotBefore == 0 {
		c.NotBefore = c.IssuedAt
	}
	if c.Expiry == 0 {
		c.Expiry = c.IssuedAt + max(int64(i.ttl/time.Second), 1)
	}
	if c.ID == "" {
		c.ID = action.NewID(now)
	}
	if err := c.Validate(); err != nil {
		return "", Claims{}, fmt.Errorf("grant: issue: %w", err)
	}
	if i.header == "" {
		return "", Claims{}, errors.New("grant: issue: no protected header (bad key)")
	}
	payload, ok := appendClaims(make([]byte, 0, 512), &c)
	if !ok {
		var err error
		if payload, err = action.Canonical(c); err != nil {
			return "", Claims{}, fmt.Errorf("grant: issue: %w", err)
		}
	}
	token = i.sign(payload)
	return token, c, nil
}
