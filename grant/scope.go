package grant

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/etbproject/etb/action"
)

// KindDelegate is the kind of the action whose grant is a delegation grant:
// its name is the sub-agent's SPIFFE ID and its one argument the canonical
// JSON of a DelegationRequest. A scope never lists it: how far a holder may
// delegate is its depth, not its scope.
const KindDelegate = "agent.delegate"

// ErrAttenuation is wrapped by every error of CheckAttenuation and
// CheckActionInScope: a child grant (or action) is wider than its parent
// allows.
var ErrAttenuation = errors.New("grant: not within the parent grant")

// Scope is what a delegation grant lets its holder (a sub-agent) request:
// an action is in scope if one of Actions covers it.
//
// A valid Scope lists at least one action; its lists are never present and
// empty (an empty list would encode like an absent one, which means
// "unrestricted").
type Scope struct {
	Actions []ScopeAction `json:"actions"`
}

// ScopeAction is one kind of action a scope allows, optionally narrowed to
// names, paths and hosts.
type ScopeAction struct {
	// Kind is an exact action kind.
	Kind string `json:"kind"`
	// Name is exact, or a prefix ending in "*"; "*" alone is any name.
	Name string `json:"name"`
	// Paths, if set, are clean absolute paths: every action.target.paths
	// entry must be one of them or lie beneath one (on a path-component
	// boundary: /data covers /data/x, not /database).
	Paths []string `json:"paths,omitempty"`
	// Hosts, if set, list lower-case hosts ("example.com": any port) or
	// "host:port"; the action's target host must be listed.
	Hosts []string `json:"hosts,omitempty"`
}

// Validate checks the shape of s: at least one action, each valid.
func (s Scope) Validate() error {
	if len(s.Actions) == 0 {
		return errors.New("scope lists no actions")
	}
	for i, a := range s.Actions {
		if err := a.Validate(); err != nil {
			return fmt.Errorf("scope action %d: %w", i, err)
		}
	}
	return nil
}

// Validate checks one scope action: an exact kind other than KindDelegate;
// a name that is exact or ends in its only "*"; paths clean and absolute;
// hosts lower case, without scheme, path or blank, with a decimal port if
// any; lists, if present, non-empty.
func (a ScopeAction) Validate() error {
	switch {
	case a.Kind == "" || strings.ContainsAny(a.Kind, "* \t\n"):
		return fmt.Errorf("kind %q is not an exact action kind", a.Kind)
	case a.Kind == KindDelegate:
		return fmt.Errorf("kind %q cannot be in a scope; delegation is bounded by depth", a.Kind)
	case a.Name == "":
		return fmt.Errorf("kind %s: name is empty (use \"*\" for any name)", a.Kind)
	case strings.Contains(strings.TrimSuffix(a.Name, "*"), "*"):
		return fmt.Errorf("kind %s: name %q has a \"*\" other than a final one", a.Kind, a.Name)
	case a.Paths != nil && len(a.Paths) == 0:
		return fmt.Errorf("kind %s: paths is present but empty", a.Kind)
	case a.Hosts != nil && len(a.Hosts) == 0:
		return fmt.Errorf("kind %s: hosts is present but empty", a.Kind)
	}
	for _, p := range a.Paths {
		if !path.IsAbs(p) || path.Clean(p) != p {
			return fmt.Errorf("kind %s: path %q is not a clean absolute path", a.Kind, p)
		}
	}
	for _, h := range a.Hosts {
		if err := validHost(h); err != nil {
			return fmt.Errorf("kind %s: %w", a.Kind, err)
		}
	}
	return nil
}

// validHost accepts "host" or "host:port", lower case, nothing else.
func validHost(h string) error {
	host, port, hasPort := strings.Cut(h, ":")
	if hasPort && strings.HasPrefix(h, "[") {
		// [v6]:port or [v6]
		end := strings.Index(h, "]")
		if end < 0 {
			return fmt.Errorf("host %q has an unterminated [", h)
		}
		host, port, hasPort = h[:end+1], "", false
		if rest := h[end+1:]; rest != "" {
			if rest[0] != ':' {
				return fmt.Errorf("host %q has %q after ]", h, rest)
			}
			port, hasPort = rest[1:], true
		}
	}
	switch {
	case host == "" || h != strings.ToLower(h) || strings.ContainsAny(h, "/ \t\n*@?#"):
		return fmt.Errorf("host %q is not a lower-case host or host:port", h)
	case hasPort:
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 || strconv.FormatUint(n, 10) != port {
			return fmt.Errorf("host %q has port %q, not 1-65535", h, port)
		}
	}
	return nil
}

// Covers reports, with the reason, why spec is not in s (nil if it is):
// some action of s has spec's kind, a name covering spec's name, and admits
// its target's paths and host.
func (s Scope) Covers(spec action.Spec) error {
	if err := s.Validate(); err != nil {
		return err
	}
	var reasons []string
	for _, a := range s.Actions {
		err := a.covers(spec)
		if err == nil {
			return nil
		}
		if a.Kind == spec.Kind {
			reasons = append(reasons, err.Error())
		}
	}
	if len(reasons) == 0 {
		return fmt.Errorf("no scope action has kind %q", spec.Kind)
	}
	return fmt.Errorf("%s %q is outside the scope: %s", spec.Kind, spec.Name, strings.Join(reasons, "; "))
}

func (a ScopeAction) covers(spec action.Spec) error {
	if a.Kind != spec.Kind {
		return fmt.Errorf("kind %q, not %q", spec.Kind, a.Kind)
	}
	if !nameCovers(a.Name, spec.Name) {
		return fmt.Errorf("name %q does not match %q", spec.Name, a.Name)
	}
	if a.Paths != nil {
		for _, p := range spec.Target.Paths {
			if !path.IsAbs(p) {
				return fmt.Errorf("path %q is not absolute", p)
			}
			if !pathsCover(a.Paths, path.Clean(p)) {
				return fmt.Errorf("path %q is not under %q", p, a.Paths)
			}
		}
	}
	if a.Hosts != nil {
		host := strings.ToLower(spec.Target.Host)
		if strings.Contains(host, ":") && !strings.HasPrefix(host, "[") {
			host = "[" + host + "]" // an IPv6 literal, as scopes spell it
		}
		if host == "" {
			return fmt.Errorf("the action has no target host, the scope allows only %q", a.Hosts)
		}
		hp := ""
		if spec.Target.Port != 0 {
			hp = joinHostPort(host, spec.Target.Port)
		}
		if !contains(a.Hosts, host) && (hp == "" || !contains(a.Hosts, hp)) {
			return fmt.Errorf("host %q (port %d) is not in %q", host, spec.Target.Port, a.Hosts)
		}
	}
	return nil
}

func joinHostPort(host string, port int64) string {
	return host + ":" + strconv.FormatInt(port, 10)
}

// Within reports, with the reason, why s is not within parent (nil if it
// is): every action of s is within one action of parent, so that whatever s
// covers, parent covers.
func (s Scope) Within(parent Scope) error {
	if err := s.Validate(); err != nil {
		return err
	}
	if err := parent.Validate(); err != nil {
		return fmt.Errorf("parent: %w", err)
	}
	for i, c := range s.Actions {
		var reasons []string
		ok := false
		for _, p := range parent.Actions {
			err := c.within(p)
			if err == nil {
				ok = true
				break
			}
			if p.Kind == c.Kind {
				reasons = append(reasons, err.Error())
			}
		}
		if !ok {
			if len(reasons) == 0 {
				return fmt.Errorf("scope action %d (%s %q): the parent scope has no action of kind %q", i, c.Kind, c.Name, c.Kind)
			}
			return fmt.Errorf("scope action %d (%s %q) is wider than the parent's: %s", i, c.Kind, c.Name, strings.Join(reasons, "; "))
		}
	}
	return nil
}

// within reports why c allows something p does not (nil if it does not).
func (c ScopeAction) within(p ScopeAction) error {
	if c.Kind != p.Kind {
		return fmt.Errorf("kind %q, not %q", c.Kind, p.Kind)
	}
	if !nameWithin(c.Name, p.Name) {
		return fmt.Errorf("name %q is not within %q", c.Name, p.Name)
	}
	if p.Paths != nil {
		if c.Paths == nil {
			return fmt.Errorf("any path, the parent allows only %q", p.Paths)
		}
		for _, x := range c.Paths {
			if !pathsCover(p.Paths, x) {
				return fmt.Errorf("path %q is not under %q", x, p.Paths)
			}
		}
	}
	if p.Hosts != nil {
		if c.Hosts == nil {
			return fmt.Errorf("any host, the parent allows only %q", p.Hosts)
		}
		for _, h := range c.Hosts {
			if !hostWithin(h, p.Hosts) {
				return fmt.Errorf("host %q is not in %q", h, p.Hosts)
			}
		}
	}
	return nil
}

// nameCovers reports whether pattern (exact, or a prefix ending in "*")
// matches name.
func nameCovers(pattern, name string) bool {
	if prefix, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(name, prefix)
	}
	return pattern == name
}

// nameWithin reports whether every name pattern c matches, p matches too.
func nameWithin(c, p string) bool {
	pp, pglob := strings.CutSuffix(p, "*")
	cp, cglob := strings.CutSuffix(c, "*")
	switch {
	case !pglob:
		return !cglob && c == p
	default:
		return strings.HasPrefix(cp, pp)
	}
}

// pathsCover reports whether clean absolute path p is one of dirs or lies
// beneath one, on a path-component boundary.
func pathsCover(dirs []string, p string) bool {
	for _, d := range dirs {
		if p == d || d == "/" || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}

// hostWithin reports whether every destination h admits, one of hosts
// admits: h itself, or (for "host:port") its bare host.
func hostWithin(h string, hosts []string) bool {
	if contains(hosts, h) {
		return true
	}
	if i := strings.LastIndexByte(h, ':'); i > 0 && !strings.HasSuffix(h, "]") {
		return contains(hosts, h[:i])
	}
	return false
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// Equal reports whether s and t encode identically.
func (s Scope) Equal(t Scope) bool {
	a, err1 := action.Canonical(s)
	b, err2 := action.Canonical(t)
	return err1 == nil && err2 == nil && bytes.Equal(a, b)
}

// DelegationRequest is what an agent asks for a sub-agent: the scope, the
// remaining delegation depth, and the lifetime of the delegation grant
// (TTLSeconds 0: the issuer's maximum). It travels as the one argument of
// a KindDelegate action, in canonical JSON (Arg).
type DelegationRequest struct {
	Scope      Scope `json:"scope"`
	Depth      int   `json:"depth"`
	TTLSeconds int64 `json:"ttl_seconds"`
}

// Validate checks r: a valid scope, depth >= 0, 0 <= ttl_seconds <=
// MaxLifetime.
func (r DelegationRequest) Validate() error {
	if err := r.Scope.Validate(); err != nil {
		return fmt.Errorf("delegation request: %w", err)
	}
	if r.Depth < 0 {
		return fmt.Errorf("delegation request: depth %d is negative", r.Depth)
	}
	if r.TTLSeconds < 0 || r.TTLSeconds > int64(MaxLifetime/time.Second) {
		return fmt.Errorf("delegation request: ttl_seconds %d is not in [0, %d]", r.TTLSeconds, int64(MaxLifetime/time.Second))
	}
	return nil
}

// Arg returns the canonical JSON of a valid r: the argument of its
// KindDelegate action.
func (r DelegationRequest) Arg() (string, error) {
	if err := r.Validate(); err != nil {
		return "", err
	}
	b, err := action.Canonical(r)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// ParseDelegationRequest decodes the argument of a KindDelegate action
// strictly and validates it. The argument must be exactly the canonical
// encoding of the request (Arg): unknown fields, duplicate names, trailing
// data and any other spelling are errors, so that the policy, which sees
// the argument as a string, and the issuer cannot read two different
// requests from it.
func ParseDelegationRequest(arg string) (*DelegationRequest, error) {
	dec := json.NewDecoder(strings.NewReader(arg))
	dec.DisallowUnknownFields()
	var r DelegationRequest
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("delegation request: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("delegation request: trailing data")
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	canon, err := action.Canonical(r)
	if err != nil {
		return nil, fmt.Errorf("delegation request: %w", err)
	}
	if string(canon) != arg {
		return nil, fmt.Errorf("delegation request: not in canonical form (want %s)", canon)
	}
	return &r, nil
}

// CheckAttenuation reports why child is not a valid attenuation of parent
// (nil if it is). It checks claims only; the caller has verified both
// signatures and that child.Par.Hash is the hash of parent's token. The
// child must name parent's jti in par; parent must be a delegation grant
// (scp); txn is inherited; the child expires no later; its obligations are
// no looser (parent's tightened by the child's are the child's). A child
// delegation needs parent depth >= 1, has depth <= parent depth - 1 and a
// scope within the parent's; a child action grant has depth 0 and is held
// by the parent's holder. Errors wrap ErrAttenuation.
func CheckAttenuation(parent, child *Claims) error {
	if parent == nil || child == nil {
		return fmt.Errorf("%w: missing parent or child claims", ErrAttenuation)
	}
	switch {
	case child.Par == nil:
		return fmt.Errorf("%w: child %s names no parent (par)", ErrAttenuation, child.ID)
	case child.Par.JTI != parent.ID:
		return fmt.Errorf("%w: child %s names parent jti %s, not %s", ErrAttenuation, child.ID, child.Par.JTI, parent.ID)
	case parent.Scp == nil:
		return fmt.Errorf("%w: parent %s is not a delegation grant (no scp)", ErrAttenuation, parent.ID)
	case child.Txn != parent.Txn:
		return fmt.Errorf("%w: child %s has txn %q, parent %s has %q", ErrAttenuation, child.ID, child.Txn, parent.ID, parent.Txn)
	case child.Expiry > parent.Expiry:
		return fmt.Errorf("%w: child %s expires at %d, after parent %s at %d", ErrAttenuation, child.ID, child.Expiry, parent.ID, parent.Expiry)
	case child.Issuer != parent.Issuer || child.Audience != parent.Audience:
		return fmt.Errorf("%w: child %s is from %s for %s, parent %s from %s for %s", ErrAttenuation, child.ID, child.Issuer, child.Audience, parent.ID, parent.Issuer, parent.Audience)
	}
	if err := NoLooser(parent.Obl, child.Obl); err != nil {
		return fmt.Errorf("%w: child %s: %w", ErrAttenuation, child.ID, err)
	}
	if child.Scp == nil {
		switch {
		case child.Depth != 0:
			return fmt.Errorf("%w: action grant %s has depth %d, want 0", ErrAttenuation, child.ID, child.Depth)
		case child.Subject != parent.Subject:
			return fmt.Errorf("%w: action grant %s is for %s, its delegation %s is held by %s", ErrAttenuation, child.ID, child.Subject, parent.ID, parent.Subject)
		}
		return nil
	}
	switch {
	case parent.Depth < 1:
		return fmt.Errorf("%w: parent %s has depth %d and cannot delegate further (child %s)", ErrAttenuation, parent.ID, parent.Depth, child.ID)
	case child.Depth > parent.Depth-1:
		return fmt.Errorf("%w: child %s has depth %d, parent %s depth %d allows at most %d", ErrAttenuation, child.ID, child.Depth, parent.ID, parent.Depth, parent.Depth-1)
	}
	if err := child.Scp.Within(*parent.Scp); err != nil {
		return fmt.Errorf("%w: child %s scope: %w", ErrAttenuation, child.ID, err)
	}
	return nil
}

// NoLooser reports why child allows something parent does not (nil if it
// does not): parent tightened by child must be child, both in the normal
// form Tighten gives (sorted lists, paths pruned to the minimal set, a list
// left out of a present fs scope spelled empty), so that two spellings of
// the same obligations compare equal.
func NoLooser(parent, child action.Obligations) error {
	t, err := parent.Tighten(child)
	if err != nil {
		return fmt.Errorf("obligations cannot be combined: %w", err)
	}
	c, err := normalObligations(child)
	if err != nil {
		return err
	}
	if !t.Equal(c) {
		want, _ := action.Canonical(t)
		got, _ := action.Canonical(c)
		return fmt.Errorf("obligations %s are looser than the parent's allow (at most %s)", got, want)
	}
	return nil
}

// SameObligations reports whether a and b impose the same conditions, up
// to spelling (see NoLooser).
func SameObligations(a, b action.Obligations) bool {
	x, err1 := normalObligations(a)
	y, err2 := normalObligations(b)
	return err1 == nil && err2 == nil && x.Equal(y)
}

func normalObligations(o action.Obligations) (action.Obligations, error) {
	n, err := o.Tighten(o)
	if err != nil {
		return n, fmt.Errorf("obligations do not combine with themselves: %w", err)
	}
	return n, nil
}

// CheckActionInScope reports why spec is outside parent's scope (nil if it
// is inside). Errors wrap ErrAttenuation.
func CheckActionInScope(parent *Claims, spec action.Spec) error {
	if parent == nil || parent.Scp == nil {
		return fmt.Errorf("%w: the parent is not a delegation grant (no scp)", ErrAttenuation)
	}
	if spec.Kind == KindDelegate {
		return fmt.Errorf("%w: %s is bounded by depth, not by scope", ErrAttenuation, KindDelegate)
	}
	if err := parent.Scp.Covers(spec); err != nil {
		return fmt.Errorf("%w: parent %s: %w", ErrAttenuation, parent.ID, err)
	}
	return nil
}
