package grant

import (
	"crypto/ed25519"
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/etbproject/etb/action"
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

// FuzzScopeWithin checks that Within is sound: whatever a child scope
// within its parent covers, the parent covers too; and that Covers and
// Within never panic on any scope.
func FuzzScopeWithin(f *testing.F) {
	for _, s := range []struct{ child, parent, kind, name, path, host, port string }{
		{`{"actions":[{"kind":"fs.read","name":"cat","paths":["/data/x"]}]}`, `{"actions":[{"kind":"fs.read","name":"*","paths":["/data"]}]}`, "fs.read", "cat", "/data/x/y", "", ""},
		{`{"actions":[{"kind":"fs.read","name":"*","paths":["/data2"]}]}`, `{"actions":[{"kind":"fs.read","name":"*","paths":["/data"]}]}`, "fs.read", "cat", "/data2", "", ""},
		{`{"actions":[{"kind":"fs.read","name":"*","paths":["/data/../etc"]}]}`, `{"actions":[{"kind":"fs.read","name":"*","paths":["/data"]}]}`, "fs.read", "cat", "/data/../etc/passwd", "", ""},
		{`{"actions":[{"kind":"mcp.tool_call","name":"github_*"}]}`, `{"actions":[{"kind":"mcp.tool_call","name":"git*"}]}`, "mcp.tool_call", "github_x", "", "", ""},
		{`{"actions":[{"kind":"http.request","name":"GET","hosts":["example.com:443"]}]}`, `{"actions":[{"kind":"http.request","name":"GET","hosts":["example.com"]}]}`, "http.request", "GET", "", "example.com", "443"},
		{`{"actions":[{"kind":"http.request","name":"GET","hosts":["[::1]:8080"]}]}`, `{"actions":[{"kind":"http.request","name":"GET","hosts":["[::1]"]}]}`, "http.request", "GET", "", "::1", "8080"},
		{`{"actions":[{"kind":"http.request","name":"*"}]}`, `{"actions":[{"kind":"http.request","name":"GET","hosts":["example.com"]}]}`, "http.request", "GET", "", "evil.com", "443"},
		{`{"actions":[]}`, `{"actions":null}`, "", "", "", "", ""},
	} {
		f.Add(s.child, s.parent, s.kind, s.name, s.path, s.host, s.port)
	}
	f.Fuzz(func(t *testing.T, childJSON, parentJSON, kind, name, p, host, port string) {
		var child, parent Scope
		if json.Unmarshal([]byte(childJSON), &child) != nil || json.Unmarshal([]byte(parentJSON), &parent) != nil {
			return
		}
		n, _ := strconv.ParseInt(port, 10, 64)
		spec := action.Spec{Kind: kind, Name: name, Target: action.Target{Host: host, Port: n}}
		if p != "" {
			spec.Target.Paths = []string{p}
		}
		within := child.Within(parent) == nil
		if within && child.Covers(spec) == nil && parent.Covers(spec) != nil {
			t.Fatalf("child %s is within parent %s and covers %+v, which the parent does not: %v", childJSON, parentJSON, spec, parent.Covers(spec))
		}
		if within && parent.Within(parent) != nil {
			t.Fatalf("parent %s is not within itself", parentJSON)
		}
	})
}

// FuzzParseDelegationRequest checks that a request ParseDelegationRequest
// accepts is valid and survives its canonical encoding unchanged.
func FuzzParseDelegationRequest(f *testing.F) {
	for _, s := range []string{
		`{"depth":1,"scope":{"actions":[{"kind":"fs.read","name":"*","paths":["/data"]}]},"ttl_seconds":300}`,
		`{"depth":0,"scope":{"actions":[{"kind":"http.request","name":"GET","hosts":["example.com","[::1]:8080"]}]},"ttl_seconds":0}`,
		`{"depth":0,"scope":{"actions":[{"kind":"fs.read","name":"*","paths":[]}]},"ttl_seconds":0}`,
		`{"depth":-1,"scope":{"actions":[]},"ttl_seconds":601}`,
		`{"scope":{"actions":[{"kind":"agent.delegate","name":"*"}]}}`,
		`{}`, `null`, ``,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		r, err := ParseDelegationRequest(in)
		if err != nil {
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("accepted an invalid request %q: %v", in, err)
		}
		arg, err := r.Arg()
		if err != nil {
			t.Fatalf("accepted request %q does not encode: %v", in, err)
		}
		r2, err := ParseDelegationRequest(arg)
		if err != nil || !r2.Scope.Equal(r.Scope) || r2.Depth != r.Depth || r2.TTLSeconds != r.TTLSeconds {
			t.Fatalf("round trip of %q: %+v %v", in, r2, err)
		}
	})
}
