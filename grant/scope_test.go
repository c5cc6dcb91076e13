package grant

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/etbproject/etb/action"
)

func sa(kind, name string, paths, hosts []string) ScopeAction {
	return ScopeAction{Kind: kind, Name: name, Paths: paths, Hosts: hosts}
}

func scope(a ...ScopeAction) Scope { return Scope{Actions: a} }

func TestScopeValidate(t *testing.T) {
	tests := []struct {
		name string
		s    Scope
		want string // "" valid
	}{
		{"exact", scope(sa("shell.exec", "ls", nil, nil)), ""},
		{"glob", scope(sa("mcp.tool_call", "fs_*", []string{"/data"}, []string{"example.com", "api.example.com:443", "[::1]:8080"})), ""},
		{"any name", scope(sa("http.request", "*", nil, []string{"example.com"})), ""},
		{"no actions", Scope{}, "no actions"},
		{"empty actions", Scope{Actions: []ScopeAction{}}, "no actions"},
		{"empty kind", scope(sa("", "ls", nil, nil)), "kind"},
		{"glob kind", scope(sa("shell.*", "ls", nil, nil)), "kind"},
		{"delegate kind", scope(sa(KindDelegate, "*", nil, nil)), "depth"},
		{"empty name", scope(sa("shell.exec", "", nil, nil)), "name is empty"},
		{"inner star", scope(sa("shell.exec", "l*s", nil, nil)), "other than a final"},
		{"double star", scope(sa("shell.exec", "l**", nil, nil)), "other than a final"},
		{"empty paths", scope(sa("shell.exec", "ls", []string{}, nil)), "paths is present but empty"},
		{"empty hosts", scope(sa("shell.exec", "ls", nil, []string{})), "hosts is present but empty"},
		{"relative path", scope(sa("shell.exec", "ls", []string{"data"}, nil)), "clean absolute"},
		{"dotdot path", scope(sa("shell.exec", "ls", []string{"/data/../etc"}, nil)), "clean absolute"},
		{"trailing slash", scope(sa("shell.exec", "ls", []string{"/data/"}, nil)), "clean absolute"},
		{"upper host", scope(sa("http.request", "*", nil, []string{"Example.com"})), "lower-case"},
		{"url host", scope(sa("http.request", "*", nil, []string{"https://example.com"})), ""},
		{"wild host", scope(sa("http.request", "*", nil, []string{"*.example.com"})), "lower-case"},
		{"bad port", scope(sa("http.request", "*", nil, []string{"example.com:http"})), "port"},
		{"zero port", scope(sa("http.request", "*", nil, []string{"example.com:0"})), "port"},
		{"leading zero port", scope(sa("http.request", "*", nil, []string{"example.com:0443"})), "port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.s.Validate()
			if tt.name == "url host" {
				// "https://example.com" must not pass as a host.
				if err == nil {
					t.Fatal("accepted a URL as a host")
				}
				return
			}
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("valid scope refused: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestScopeCovers(t *testing.T) {
	s := scope(
		sa("fs.read", "*", []string{"/data", "/srv/app"}, nil),
		sa("shell.exec", "git", nil, nil),
		sa("mcp.tool_call", "github_*", nil, nil),
		sa("http.request", "GET", nil, []string{"example.com", "api.example.net:443", "[::1]:8080"}),
	)
	spec := func(kind, name string, paths []string, host string, port int64) action.Spec {
		return action.Spec{Kind: kind, Name: name, Target: action.Target{Paths: paths, Host: host, Port: port}}
	}
	tests := []struct {
		name string
		spec action.Spec
		ok   bool
	}{
		{"path inside", spec("fs.read", "cat", []string{"/data/a/b"}, "", 0), true},
		{"path itself", spec("fs.read", "cat", []string{"/data"}, "", 0), true},
		{"two paths in two dirs", spec("fs.read", "cat", []string{"/data/x", "/srv/app/y"}, "", 0), true},
		{"no paths", spec("fs.read", "cat", nil, "", 0), true},
		{"prefix is not a parent: /database", spec("fs.read", "cat", []string{"/database"}, "", 0), false},
		{"prefix is not a parent: /data2", spec("fs.read", "cat", []string{"/data2/x"}, "", 0), false},
		{"dotdot escapes", spec("fs.read", "cat", []string{"/data/../etc/shadow"}, "", 0), false},
		{"relative path", spec("fs.read", "cat", []string{"data/x"}, "", 0), false},
		{"one path outside", spec("fs.read", "cat", []string{"/data/x", "/etc/passwd"}, "", 0), false},
		{"root", spec("fs.read", "cat", []string{"/"}, "", 0), false},
		{"exact name", spec("shell.exec", "git", nil, "", 0), true},
		{"other name", spec("shell.exec", "gitx", nil, "", 0), false},
		{"name glob", spec("mcp.tool_call", "github_create_issue", nil, "", 0), true},
		{"name glob prefix only", spec("mcp.tool_call", "gitlab_x", nil, "", 0), false},
		{"other kind", spec("fs.write", "x", []string{"/data/x"}, "", 0), false},
		{"host any port", spec("http.request", "GET", nil, "example.com", 8443), true},
		{"host upper case", spec("http.request", "GET", nil, "EXAMPLE.com", 80), true},
		{"host:port", spec("http.request", "GET", nil, "api.example.net", 443), true},
		{"host other port", spec("http.request", "GET", nil, "api.example.net", 80), false},
		{"host suffix trick", spec("http.request", "GET", nil, "evil-example.com", 443), false},
		{"subdomain", spec("http.request", "GET", nil, "a.example.com", 443), false},
		{"no host", spec("http.request", "GET", nil, "", 0), false},
		{"ipv6", spec("http.request", "GET", nil, "::1", 8080), true},
		{"ipv6 other port", spec("http.request", "GET", nil, "::1", 80), false},
		{"method not listed", spec("http.request", "POST", nil, "example.com", 443), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Covers(tt.spec)
			if (err == nil) != tt.ok {
				t.Fatalf("Covers = %v, want ok=%v", err, tt.ok)
			}
		})
	}
	if err := (Scope{}).Covers(spec("shell.exec", "git", nil, "", 0)); err == nil {
		t.Fatal("an invalid (empty) scope covers an action")
	}
}

func TestScopeWithin(t *testing.T) {
	parent := scope(
		sa("fs.read", "*", []string{"/data"}, nil),
		sa("shell.exec", "git", nil, nil),
		sa("mcp.tool_call", "github_*", nil, nil),
		sa("http.request", "GET", nil, []string{"example.com", "api.example.net:443"}),
	)
	tests := []struct {
		name  string
		child Scope
		want  string // "" within
	}{
		{"same", parent, ""},
		{"subset of actions", scope(sa("shell.exec", "git", nil, nil)), ""},
		{"narrower path", scope(sa("fs.read", "cat", []string{"/data/x"}, nil)), ""},
		{"narrower glob", scope(sa("mcp.tool_call", "github_issue_*", nil, nil)), ""},
		{"exact under glob", scope(sa("mcp.tool_call", "github_x", nil, nil)), ""},
		{"host with port under bare host", scope(sa("http.request", "GET", nil, []string{"example.com:443"})), ""},
		{"widen kind", scope(sa("shell.exec", "rm", nil, nil)), "wider"},
		{"new kind", scope(sa("fs.write", "*", []string{"/data"}, nil)), "no action of kind"},
		{"widen exact to glob", scope(sa("shell.exec", "git*", nil, nil)), "name"},
		{"widen name glob", scope(sa("mcp.tool_call", "git*", nil, nil)), "name"},
		{"any name", scope(sa("mcp.tool_call", "*", nil, nil)), "name"},
		{"widen paths to /", scope(sa("fs.read", "*", []string{"/"}, nil)), "path"},
		{"drop paths", scope(sa("fs.read", "*", nil, nil)), "any path"},
		{"sibling /data2", scope(sa("fs.read", "*", []string{"/data2"}, nil)), "path"},
		{"sibling /database", scope(sa("fs.read", "*", []string{"/database"}, nil)), "path"},
		{"host added", scope(sa("http.request", "GET", nil, []string{"example.com", "evil.com"})), "host"},
		{"drop hosts", scope(sa("http.request", "GET", nil, nil)), "any host"},
		{"bare host over host:port", scope(sa("http.request", "GET", nil, []string{"api.example.net"})), "host"},
		{"other port", scope(sa("http.request", "GET", nil, []string{"api.example.net:80"})), "host"},
		{"one wide among narrow", scope(sa("shell.exec", "git", nil, nil), sa("shell.exec", "sh", nil, nil)), "wider"},
		{"invalid child: dotdot", scope(sa("fs.read", "*", []string{"/data/../etc"}, nil)), "clean absolute"},
		{"invalid child: empty paths", scope(sa("fs.read", "*", []string{}, nil)), "present but empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.child.Within(parent)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("narrower scope refused: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestDelegationRequest(t *testing.T) {
	r := DelegationRequest{Scope: scope(sa("shell.exec", "git", nil, nil)), Depth: 1, TTLSeconds: 120}
	arg, err := r.Arg()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"depth":1,"scope":{"actions":[{"kind":"shell.exec","name":"git"}]},"ttl_seconds":120}`
	if arg != want {
		t.Fatalf("Arg = %s, want %s", arg, want)
	}
	got, err := ParseDelegationRequest(arg)
	if err != nil || !got.Scope.Equal(r.Scope) || got.Depth != 1 || got.TTLSeconds != 120 {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	for name, bad := range map[string]string{
		"unknown field":  `{"depth":0,"scope":{"actions":[{"kind":"shell.exec","name":"git"}]},"ttl_seconds":1,"admin":true}`,
		"unknown nested": `{"depth":0,"scope":{"actions":[{"kind":"shell.exec","name":"git","any":true}]},"ttl_seconds":1}`,
		"trailing":       want + `{}`,
		"negative depth": `{"depth":-1,"scope":{"actions":[{"kind":"shell.exec","name":"git"}]},"ttl_seconds":1}`,
		"ttl too long":   `{"depth":0,"scope":{"actions":[{"kind":"shell.exec","name":"git"}]},"ttl_seconds":601}`,
		"negative ttl":   `{"depth":0,"scope":{"actions":[{"kind":"shell.exec","name":"git"}]},"ttl_seconds":-1}`,
		"no scope":       `{"depth":0,"ttl_seconds":1}`,
		"empty paths":    `{"depth":0,"scope":{"actions":[{"kind":"fs.read","name":"*","paths":[]}]},"ttl_seconds":1}`,
		"null paths":     `{"depth":0,"scope":{"actions":[{"kind":"fs.read","name":"*","paths":null}]},"ttl_seconds":1}`,
		"duplicate name": `{"depth":0,"scope":{"actions":[{"kind":"fs.read","name":"*","paths":["/data"]}]},"scope":{"actions":[{"kind":"fs.read","name":"*"}]},"ttl_seconds":1}`,
		"member order":   `{"scope":{"actions":[{"kind":"shell.exec","name":"git"}]},"depth":1,"ttl_seconds":120}`,
		"whitespace":     `{"depth":1, "scope":{"actions":[{"kind":"shell.exec","name":"git"}]},"ttl_seconds":120}`,
		"number form":    `{"depth":1e0,"scope":{"actions":[{"kind":"shell.exec","name":"git"}]},"ttl_seconds":120}`,
	} {
		_, err := ParseDelegationRequest(bad)
		if err == nil {
			t.Errorf("%s: accepted %s", name, bad)
		}
	}
}

// delegationClaims returns a root delegation grant's claims (depth 2) and a
// valid child delegation (depth 1) and child action grant under it.
func delegationClaims(t *testing.T) (parent, childDeleg, childAction Claims) {
	t.Helper()
	adg, _ := specs(t)
	parent = baseClaims(adg)
	parent.Issuer, parent.IssuedAt, parent.NotBefore, parent.Expiry, parent.ID = "etb", t0.Unix(), t0.Unix(), t0.Unix()+300, "p1"
	parent.Subject = "spiffe://etb.local/agent/sub"
	parent.Depth = 2
	parent.Scp = &Scope{Actions: []ScopeAction{
		sa("fs.read", "*", []string{"/data"}, nil),
		sa("http.request", "GET", nil, []string{"example.com"}),
	}}
	parent.Obl = action.Obligations{Timeout: action.Duration(30 * time.Second), MemoryBytes: 1 << 30,
		FS:  &action.FSScope{Read: []string{"/data"}, Write: []string{"/data/out"}},
		Net: &action.NetScope{Allow: []string{"example.com:443"}}}
	childDeleg = parent
	childDeleg.ID, childDeleg.Subject, childDeleg.Depth = "c1", "spiffe://etb.local/agent/subsub", 1
	childDeleg.Par = &Parent{JTI: "p1", Hash: "sha256:" + strings.Repeat("0", 64)}
	childDeleg.Scp = &Scope{Actions: []ScopeAction{sa("fs.read", "cat", []string{"/data/x"}, nil)}}
	childDeleg.Expiry = parent.Expiry - 10
	childAction = parent
	childAction.ID, childAction.Depth, childAction.Scp = "a1", 0, nil
	childAction.Par = childDeleg.Par
	childAction.Obl.Timeout = action.Duration(10 * time.Second)
	return parent, childDeleg, childAction
}

func TestCheckAttenuation(t *testing.T) {
	parent, cd, ca := delegationClaims(t)
	if err := CheckAttenuation(&parent, &cd); err != nil {
		t.Fatalf("valid child delegation refused: %v", err)
	}
	if err := CheckAttenuation(&parent, &ca); err != nil {
		t.Fatalf("valid child action grant refused: %v", err)
	}
	tests := []struct {
		name   string
		parent func(*Claims)
		child  func(*Claims)
		action bool // mutate the action grant instead of the delegation
	}{
		{"widen kind", nil, func(c *Claims) { c.Scp = &Scope{Actions: []ScopeAction{sa("shell.exec", "cat", nil, nil)}} }, false},
		{"widen name glob", nil, func(c *Claims) {
			c.Scp = &Scope{Actions: []ScopeAction{sa("http.request", "*", nil, []string{"example.com"})}}
		}, false},
		{"widen paths to /", nil, func(c *Claims) { c.Scp = &Scope{Actions: []ScopeAction{sa("fs.read", "cat", []string{"/"}, nil)}} }, false},
		{"path boundary /data2", nil, func(c *Claims) { c.Scp = &Scope{Actions: []ScopeAction{sa("fs.read", "cat", []string{"/data2"}, nil)}} }, false},
		{"path dotdot", nil, func(c *Claims) {
			c.Scp = &Scope{Actions: []ScopeAction{sa("fs.read", "cat", []string{"/data/../etc"}, nil)}}
		}, false},
		{"host added", nil, func(c *Claims) {
			c.Scp = &Scope{Actions: []ScopeAction{sa("http.request", "GET", nil, []string{"example.com", "evil.com"})}}
		}, false},
		{"later expiry", nil, func(c *Claims) { c.Expiry = parent.Expiry + 1 }, false},
		{"later expiry (action)", nil, func(c *Claims) { c.Expiry = parent.Expiry + 1 }, true},
		{"depth not reduced", nil, func(c *Claims) { c.Depth = 2 }, false},
		{"depth increased", nil, func(c *Claims) { c.Depth = 3 }, false},
		{"delegating from depth 0", func(p *Claims) { p.Depth = 0 }, func(c *Claims) { c.Depth = 0 }, false},
		{"delegating from depth 1 keeps depth 1", func(p *Claims) { p.Depth = 1 }, func(c *Claims) { c.Depth = 1 }, false},
		{"action grant with depth", nil, func(c *Claims) { c.Depth = 1 }, true},
		{"longer timeout", nil, func(c *Claims) { c.Obl.Timeout = action.Duration(time.Minute) }, true},
		{"timeout removed", nil, func(c *Claims) { c.Obl.Timeout = 0 }, true},
		{"more memory", nil, func(c *Claims) { c.Obl.MemoryBytes = 2 << 30 }, false},
		{"memory limit removed", nil, func(c *Claims) { c.Obl.MemoryBytes = 0 }, true},
		{"extra fs write path", nil, func(c *Claims) {
			c.Obl.FS = &action.FSScope{Read: []string{"/data"}, Write: []string{"/data/out", "/etc"}}
		}, true},
		{"fs write widened to read dir", nil, func(c *Claims) {
			c.Obl.FS = &action.FSScope{Read: []string{"/data"}, Write: []string{"/data"}}
		}, false},
		{"fs scope removed", nil, func(c *Claims) { c.Obl.FS = nil }, true},
		{"net allow added", nil, func(c *Claims) { c.Obl.Net = &action.NetScope{Allow: []string{"example.com:443", "evil.com:443"}} }, true},
		{"net scope removed", nil, func(c *Claims) { c.Obl.Net = nil }, false},
		{"other cwd than parent's", func(p *Claims) { p.Obl.Cwd = "/data" }, func(c *Claims) { c.Obl.Cwd = "/etc" }, true},
		{"txn changed", nil, func(c *Claims) { c.Txn = "task-2" }, false},
		{"txn dropped", nil, func(c *Claims) { c.Txn = "" }, true},
		{"par jti mismatch", nil, func(c *Claims) { c.Par = &Parent{JTI: "p2", Hash: c.Par.Hash} }, false},
		{"no par", nil, func(c *Claims) { c.Par = nil }, true},
		{"parent without scope", func(p *Claims) { p.Scp = nil; p.Depth = 0 }, nil, true},
		{"parent without scope (delegation)", func(p *Claims) { p.Scp = nil }, nil, false},
		{"action grant for another subject", nil, func(c *Claims) { c.Subject = "spiffe://etb.local/agent/other" }, true},
		{"other audience", nil, func(c *Claims) { c.Audience = "spiffe://etb.local/other-enforcer" }, true},
		{"other issuer", nil, func(c *Claims) { c.Issuer = "elsewhere" }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, c := parent, cd
			if tt.action {
				c = ca
			}
			p.Obl, c.Obl = cloneObl(p.Obl), cloneObl(c.Obl)
			if tt.parent != nil {
				tt.parent(&p)
			}
			if tt.child != nil {
				tt.child(&c)
			}
			err := CheckAttenuation(&p, &c)
			t.Log(err)
			if !errors.Is(err, ErrAttenuation) {
				t.Fatalf("CheckAttenuation = %v, want ErrAttenuation", err)
			}
		})
	}
	if err := CheckAttenuation(nil, &cd); !errors.Is(err, ErrAttenuation) {
		t.Fatalf("nil parent: %v", err)
	}
}

func b64decode(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }

func cloneObl(o action.Obligations) action.Obligations {
	b, _ := json.Marshal(o)
	var c action.Obligations
	if err := json.Unmarshal(b, &c); err != nil {
		panic(err)
	}
	return c
}

// The obligations a gateway computes for a child (the decision's tightened
// by the parent's) always pass NoLooser against the parent.
func TestNoLooserAcceptsTightenedObligations(t *testing.T) {
	parent := action.Obligations{Timeout: action.Duration(30 * time.Second), MemoryBytes: 1 << 30,
		FS:  &action.FSScope{Read: []string{"/data"}, Write: []string{"/data/out"}},
		Net: &action.NetScope{Allow: []string{"example.com:443"}}}
	for name, decision := range map[string]action.Obligations{
		"none":    {},
		"timeout": {Timeout: action.Duration(time.Hour)},
		"fs":      {FS: &action.FSScope{Read: []string{"/"}, Write: []string{"/data/out/x", "/tmp"}}},
		"net":     {Net: &action.NetScope{Allow: []string{"evil.com:443", "example.com:443"}}},
		"env":     {Env: &action.EnvScope{Allow: []string{"HOME"}}, Cwd: "/data"},
		"limits":  {CPUSeconds: 5, MaxProcesses: 10, MemoryBytes: 2 << 30},
	} {
		child, err := decision.Tighten(parent)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := NoLooser(parent, child); err != nil {
			t.Errorf("%s: tightened obligations refused: %v", name, err)
		}
		if name != "none" {
			if err := NoLooser(child, parent); err == nil && !child.Equal(parent) {
				t.Errorf("%s: parent accepted as no looser than the tighter child", name)
			}
		}
	}
}

func TestCheckActionInScope(t *testing.T) {
	parent, _, ca := delegationClaims(t)
	in := action.Spec{Kind: "fs.read", Name: "cat", Target: action.Target{Paths: []string{"/data/x"}}}
	if err := CheckActionInScope(&parent, in); err != nil {
		t.Fatalf("in-scope action refused: %v", err)
	}
	for name, s := range map[string]action.Spec{
		"outside path": {Kind: "fs.read", Name: "cat", Target: action.Target{Paths: []string{"/etc/shadow"}}},
		"dotdot":       {Kind: "fs.read", Name: "cat", Target: action.Target{Paths: []string{"/data/../etc/shadow"}}},
		"other kind":   {Kind: "shell.exec", Name: "cat"},
		"other host":   {Kind: "http.request", Name: "GET", Target: action.Target{Host: "evil.com", Port: 443}},
		"delegate":     {Kind: KindDelegate, Name: "spiffe://etb.local/agent/x"},
	} {
		if err := CheckActionInScope(&parent, s); !errors.Is(err, ErrAttenuation) {
			t.Errorf("%s: %v, want ErrAttenuation", name, err)
		}
	}
	if err := CheckActionInScope(&ca, in); !errors.Is(err, ErrAttenuation) {
		t.Fatalf("an action grant (no scp) served as a parent: %v", err)
	}
}

func TestDelegationClaimsValidate(t *testing.T) {
	parent, cd, _ := delegationClaims(t)
	for _, c := range []Claims{parent, cd} {
		if err := c.Validate(); err != nil {
			t.Fatalf("valid claims refused: %v", err)
		}
	}
	tests := map[string]func(*Claims){
		"depth without scp":   func(c *Claims) { c.Scp = nil },
		"negative depth":      func(c *Claims) { c.Depth = -1 },
		"invalid scp":         func(c *Claims) { c.Scp = &Scope{} },
		"scp with empty list": func(c *Claims) { c.Scp = &Scope{Actions: []ScopeAction{sa("fs.read", "*", []string{}, nil)}} },
		"par without txn":     func(c *Claims) { c.Txn = "" },
		"par without hash":    func(c *Claims) { c.Par = &Parent{JTI: "p1"} },
		"par hash not digest": func(c *Claims) { c.Par = &Parent{JTI: "p1", Hash: "sha256:XYZ"} },
		"par jti too long":    func(c *Claims) { c.Par = &Parent{JTI: strings.Repeat("a", 200), Hash: cd.Par.Hash} },
	}
	for name, mut := range tests {
		c := cd
		mut(&c)
		if err := c.Validate(); !errors.Is(err, ErrClaims) {
			t.Errorf("%s: Validate = %v, want ErrClaims", name, err)
		}
	}
}

// A delegation grant round-trips through Issue and VerifySignature: the new
// claims are part of the strictly canonical payload, and a payload that
// spells them differently is refused.
func TestDelegationGrantIsCanonical(t *testing.T) {
	pub, priv := newKey(t)
	keys := map[string]ed25519.PublicKey{KeyID(pub): pub}
	iss := NewIssuer(priv, "etb", time.Minute, fixedClock(t0))
	parent, cd, _ := delegationClaims(t)
	parent.IssuedAt, parent.NotBefore, parent.Expiry, parent.ID = 0, 0, 0, ""
	ptok, pc, err := iss.Issue(parent)
	if err != nil {
		t.Fatal(err)
	}
	cd.IssuedAt, cd.NotBefore, cd.ID = 0, 0, ""
	cd.Expiry = pc.Expiry
	cd.Par = &Parent{JTI: pc.ID, Hash: TokenHash(ptok)}
	ctok, cc, err := iss.Issue(cd)
	if err != nil {
		t.Fatal(err)
	}
	gotP, err := VerifySignature(ptok, keys)
	if err != nil {
		t.Fatal(err)
	}
	gotC, err := VerifySignature(ctok, keys)
	if err != nil {
		t.Fatal(err)
	}
	if !gotC.Scp.Equal(*cc.Scp) || gotC.Depth != 1 || gotC.Par.Hash != TokenHash(ptok) {
		t.Fatalf("child claims changed in transit: %+v", gotC)
	}
	if err := CheckAttenuation(gotP, gotC); err != nil {
		t.Fatalf("issued child refused: %v", err)
	}
	_, p, _ := segments(t, ctok)
	raw, _ := b64decode(p)
	h, _, _ := segments(t, ctok)
	hdr, _ := b64decode(h)
	var hdrv map[string]any
	if err := json.Unmarshal(hdr, &hdrv); err != nil {
		t.Fatal(err)
	}
	for name, payload := range map[string]string{
		"scp members reordered": strings.Replace(string(raw), `{"kind":"fs.read","name":"cat"`, `{"name":"cat","kind":"fs.read"`, 1),
		"extra scope member":    strings.Replace(string(raw), `"name":"cat"`, `"name":"cat","any":true`, 1),
		"empty paths":           strings.Replace(string(raw), `"paths":["/data/x"]`, `"paths":[]`, 1),
		"depth spelled 1.0":     strings.Replace(string(raw), `"depth":1`, `"depth":1.0`, 1),
	} {
		if payload == string(raw) {
			t.Fatalf("%s: mutation did not apply to %s", name, raw)
		}
		tok := signRaw(t, priv, hdrv, []byte(payload))
		if _, err := VerifySignature(tok, keys); !errors.Is(err, ErrClaims) {
			t.Errorf("%s: VerifySignature = %v, want ErrClaims", name, err)
		}
	}
	// The issuer refuses invalid delegation claims rather than sign them.
	bad := cd
	bad.Scp = &Scope{Actions: []ScopeAction{sa("fs.read", "*", []string{}, nil)}}
	if _, _, err := iss.Issue(bad); err == nil {
		t.Fatal("issued a grant whose scope has an empty (unrestricted-looking) path list")
	}
	bad = cd
	bad.Scp = nil
	if _, _, err := iss.Issue(bad); err == nil {
		t.Fatal("issued a grant with depth but no scope")
	}
}
