package mcp

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/gateway"
)

func TestDescribe(t *testing.T) {
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink("/etc", link); err != nil {
		t.Fatal(err)
	}
	up := Upstream{Name: "srv", Program: "/usr/bin/node", Argv: []string{"server.js"}}
	tests := []struct {
		name      string
		args      string
		wantArgs  string
		wantPaths []string
		wantErr   string
	}{
		{name: "absent arguments", args: "", wantArgs: "{}", wantPaths: []string{}},
		{name: "null arguments", args: "null", wantArgs: "{}", wantPaths: []string{}},
		{name: "canonical order and spacing", args: `{ "b": 1, "a": "x" }`, wantArgs: `{"a":"x","b":1}`, wantPaths: []string{}},
		{name: "relative path resolved", args: `{"path":"notes.txt"}`, wantArgs: `{"path":"notes.txt"}`, wantPaths: []string{dir + "/notes.txt"}},
		{name: "dot-dot cleaned", args: `{"path":"` + dir + `/a/../../x"}`, wantArgs: `{"path":"` + dir + `/a/../../x"}`, wantPaths: []string{filepath.Dir(dir) + "/x"}},
		{name: "symlink followed", args: `{"path":"` + link + `/passwd"}`, wantArgs: `{"path":"` + link + `/passwd"}`, wantPaths: []string{"/etc/passwd"}},
		{name: "symlinked prefix of a new file", args: `{"path":"` + link + `/new/file"}`, wantArgs: `{"path":"` + link + `/new/file"}`, wantPaths: []string{"/etc/new/file"}},
		{name: "paths list, sorted and de-duplicated", args: `{"paths":["/b","/a","/b"]}`, wantArgs: `{"paths":["/b","/a","/b"]}`, wantPaths: []string{"/a", "/b"}},
		{name: "source and destination", args: `{"source":"/s","destination":"/d"}`, wantArgs: `{"destination":"/d","source":"/s"}`, wantPaths: []string{"/d", "/s"}},
		{name: "array arguments", args: `[1,2]`, wantErr: "not a JSON object"},
		{name: "string arguments", args: `"x"`, wantErr: "not a JSON object"},
		{name: "trailing data", args: `{} {}`, wantErr: "trailing data"},
		{name: "non-string path", args: `{"path":3}`, wantErr: `argument "path" holds`},
		{name: "empty path", args: `{"path":""}`, wantErr: "empty path"},
		{name: "non-string in paths", args: `{"paths":["/a",{}]}`, wantErr: `argument "paths" holds`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := Describe(up, "tool", json.RawMessage(tt.args), dir)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if spec.Kind != action.KindMCPTool || spec.Name != "srv/tool" {
				t.Errorf("kind %q name %q", spec.Kind, spec.Name)
			}
			if len(spec.Args) != 1 || spec.Args[0] != tt.wantArgs {
				t.Errorf("args %q, want [%q]", spec.Args, tt.wantArgs)
			}
			if strings.Join(spec.Target.Paths, "|") != strings.Join(tt.wantPaths, "|") {
				t.Errorf("paths %q, want %q", spec.Target.Paths, tt.wantPaths)
			}
			if spec.Target.Program != up.Program || strings.Join(spec.Target.Argv, " ") != "server.js" {
				t.Errorf("target %+v does not name the upstream", spec.Target)
			}
		})
	}
	if _, err := Describe(up, "", nil, dir); err == nil {
		t.Error("an empty tool name was accepted")
	}
}

// The digest binds the grant to the server, the tool and the arguments:
// changing any of them changes the digest.
func TestDescribeDigestBinding(t *testing.T) {
	base := Upstream{Name: "srv", Program: "/bin/a"}
	digest := func(up Upstream, tool, args string) string {
		s, err := Describe(up, tool, json.RawMessage(args), "/")
		if err != nil {
			t.Fatal(err)
		}
		d, err := s.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	d0 := digest(base, "t", `{"a":1,"b":2}`)
	if d := digest(base, "t", `{"b":2, "a":1}`); d != d0 {
		t.Errorf("key order changed the digest")
	}
	for name, d := range map[string]string{
		"argument value": digest(base, "t", `{"a":1,"b":3}`),
		"tool":           digest(base, "u", `{"a":1,"b":2}`),
		"server name":    digest(Upstream{Name: "other", Program: "/bin/a"}, "t", `{"a":1,"b":2}`),
		"server program": digest(Upstream{Name: "srv", Program: "/bin/b"}, "t", `{"a":1,"b":2}`),
	} {
		if d == d0 {
			t.Errorf("changing the %s kept the digest", name)
		}
	}
}

func TestToolHash(t *testing.T) {
	schema := map[string]any{"type": "object", "properties": map[string]any{"p": map[string]any{"type": "string"}}}
	base := &sdk.Tool{Name: "t", Description: "d", InputSchema: schema}
	h0, err := ToolHash(base)
	if err != nil {
		t.Fatal(err)
	}
	same := &sdk.Tool{Name: "t", Description: "d", InputSchema: json.RawMessage(`{"properties":{"p":{"type":"string"}},"type":"object"}`),
		Title: "titles are not pinned"}
	if h, _ := ToolHash(same); h != h0 {
		t.Errorf("the same definition in another encoding hashed differently")
	}
	for name, tl := range map[string]*sdk.Tool{
		"name":        {Name: "u", Description: "d", InputSchema: schema},
		"description": {Name: "t", Description: "d!", InputSchema: schema},
		"schema":      {Name: "t", Description: "d", InputSchema: map[string]any{"type": "object"}},
	} {
		if h, _ := ToolHash(tl); h == h0 {
			t.Errorf("a changed %s kept the pin", name)
		}
	}
}

// inProcess connects a proxy governed by a fresh home to an in-memory
// upstream whose only tool counts its calls, and a client to the proxy.
func inProcess(t testing.TB, policySrc string) (p *Proxy, closeGW func(), cs *sdk.ClientSession, calls *atomic.Int64) {
	t.Helper()
	ctx := context.Background()
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(pol, []byte(policySrc), 0o644); err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.Open(ctx, t.TempDir(), gateway.Options{PolicyPath: pol})
	if err != nil {
		t.Fatal(err)
	}
	// Gateway.Close must run once only.
	var once sync.Once
	closeGW = func() { once.Do(func() { gw.Close() }) }
	t.Cleanup(closeGW)
	calls = new(atomic.Int64)
	up := sdk.NewServer(&sdk.Implementation{Name: "counter", Version: "1"}, nil)
	up.AddTool(&sdk.Tool{Name: "count", InputSchema: map[string]any{"type": "object"}},
		func(context.Context, *sdk.CallToolRequest) (*sdk.CallToolResult, error) {
			calls.Add(1)
			return &sdk.CallToolResult{Content: []sdk.Content{&sdk.TextContent{Text: "counted"}}}, nil
		})
	ut, pt := sdk.NewInMemoryTransports()
	if _, err := up.Connect(ctx, ut, nil); err != nil {
		t.Fatal(err)
	}
	p = New(gw, Options{Principal: action.Principal{ID: "spiffe://etb.local/test"}})
	if err := p.Connect(ctx, pt, Upstream{Program: "/in-memory"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	st, ct := sdk.NewInMemoryTransports()
	if _, err := p.Server().Connect(ctx, st, nil); err != nil {
		t.Fatal(err)
	}
	cs, err = sdk.NewClient(&sdk.Implementation{Name: "c", Version: "1"}, nil).Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	return p, closeGW, cs, calls
}

const permitCount = `version: etb.policy/v1
name: t
rules:
  - id: allow-count
    effect: permit
    match: {kind: mcp.tool_call, name: counter/count}
    when: action.args[0] == "{}"
`

func TestDeniedCallNeverReachesUpstream(t *testing.T) {
	_, _, cs, calls := inProcess(t, permitCount)
	ctx := context.Background()
	res, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "count", Arguments: map[string]any{"x": 1}})
	if err != nil {
		t.Fatal(err)
	}
	if !res.IsError || calls.Load() != 0 {
		t.Fatalf("denied call: isError=%v, upstream saw %d calls", res.IsError, calls.Load())
	}
	res, err = cs.CallTool(ctx, &sdk.CallToolParams{Name: "count"})
	if err != nil || res.IsError || calls.Load() != 1 {
		t.Fatalf("permitted call: %v isError=%v, upstream saw %d calls", err, res != nil && res.IsError, calls.Load())
	}
}

// With the ledger gone nothing can be made durable: the call fails and
// the upstream never sees it.
func TestLedgerFailureRefuses(t *testing.T) {
	_, closeGW, cs, calls := inProcess(t, permitCount)
	closeGW()
	res, err := cs.CallTool(context.Background(), &sdk.CallToolParams{Name: "count"})
	if err == nil || !strings.Contains(err.Error(), "ledger") {
		t.Fatalf("with the ledger closed: err = %v, res = %+v; want an error naming the ledger", err, res)
	}
	if calls.Load() != 0 {
		t.Fatalf("upstream saw %d calls with the ledger closed", calls.Load())
	}
}

func TestUnknownToolRefused(t *testing.T) {
	p, _, _, calls := inProcess(t, permitCount)
	res, err := p.CallTool(context.Background(), nil, "not-offered", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res.IsError || calls.Load() != 0 {
		t.Fatalf("unknown tool: isError=%v calls=%d", res.IsError, calls.Load())
	}
}

func TestAnnotationEnv(t *testing.T) {
	f := false
	env := annotationEnv(&sdk.ToolAnnotations{ReadOnlyHint: true, DestructiveHint: &f})
	if env["mcp.read_only_hint"] != "true" || env["mcp.destructive_hint"] != "false" || env["mcp.open_world_hint"] != "" {
		t.Errorf("env %v", env)
	}
	if !strings.Contains(env["mcp.annotations"], `"readOnlyHint":true`) {
		t.Errorf("annotations %q", env["mcp.annotations"])
	}
	if e := annotationEnv(nil); e["mcp.annotations"] != "{}" || len(e) != 1 {
		t.Errorf("no annotations: %v", e)
	}
}

// If what is about to be forwarded differs from what was granted, the
// enforcer refuses and nothing is forwarded.
func TestForwardedMustMatchGrant(t *testing.T) {
	p, _, _, calls := inProcess(t, permitCount)
	ctx := context.Background()
	spec, err := Describe(p.up, "count", nil, "/")
	if err != nil {
		t.Fatal(err)
	}
	forwarded := false
	refused, err := p.govern(ctx, nil, spec, nil, "", func(granted action.Spec) (action.Spec, forwardFunc, error) {
		swapped, err := Describe(p.up, "count", json.RawMessage(`{"x":"smuggled"}`), "/")
		return swapped, func(context.Context) (any, bool, error) { forwarded = true; return struct{}{}, false, nil }, err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(refused, "refused by the enforcer") || forwarded || calls.Load() != 0 {
		t.Fatalf("refusal %q, forwarded %v, upstream calls %d", refused, forwarded, calls.Load())
	}
}

func TestRequireApprovalRefused(t *testing.T) {
	_, _, cs, calls := inProcess(t, `version: etb.policy/v1
name: t
rules:
  - id: ask-first
    effect: require_approval
    match: {kind: mcp.tool_call}
    message: a human must look
`)
	res, err := cs.CallTool(context.Background(), &sdk.CallToolParams{Name: "count"})
	if err != nil {
		t.Fatal(err)
	}
	if !res.IsError || !strings.Contains(res.Content[0].(*sdk.TextContent).Text, "approval required by ask-first") || calls.Load() != 0 {
		t.Fatalf("require_approval: isError=%v %+v, upstream calls %d", res.IsError, res.Content, calls.Load())
	}
}

func TestRemoteUpstream(t *testing.T) {
	tests := []struct {
		url, host string
		port      int64
		err       bool
	}{
		{url: "http://127.0.0.1:3001/mcp", host: "127.0.0.1", port: 3001},
		{url: "https://MCP.Example.COM/mcp", host: "mcp.example.com", port: 443},
		{url: "http://example.com/", host: "example.com", port: 80},
		{url: "ftp://example.com/", err: true},
		{url: "http:///mcp", err: true},
		{url: "http://h:0/", err: true},
		{url: "http://h:70000/", err: true},
		{url: "::", err: true},
	}
	for _, tt := range tests {
		up, err := RemoteUpstream(tt.url)
		if (err != nil) != tt.err {
			t.Errorf("%s: err = %v, want error %v", tt.url, err, tt.err)
			continue
		}
		if err == nil && (up.Host != tt.host || up.Port != tt.port) {
			t.Errorf("%s: host %q port %d, want %q %d", tt.url, up.Host, up.Port, tt.host, tt.port)
		}
	}
}

func TestDescribeResourceAndPrompt(t *testing.T) {
	up := Upstream{Name: "srv", Host: "127.0.0.1", Port: 3001}
	s, err := DescribeResource(up, "file:///tmp/../etc/passwd")
	if err != nil {
		t.Fatal(err)
	}
	if s.Kind != KindResourceRead || s.Name != "srv" || s.Args[0] != "file:///tmp/../etc/passwd" ||
		len(s.Target.Paths) != 1 || s.Target.Paths[0] != "/etc/passwd" || s.Target.Host != "127.0.0.1" || s.Target.Port != 3001 {
		t.Errorf("file resource: %+v", s)
	}
	for _, bad := range []string{"relative/path", "file://host", "%zz"} {
		if _, err := DescribeResource(up, bad); err == nil {
			t.Errorf("resource URI %q accepted", bad)
		}
	}
	p1, err := DescribePrompt(up, "greet", map[string]string{"b": "2", "a": "1"})
	if err != nil {
		t.Fatal(err)
	}
	if p1.Kind != KindPromptGet || p1.Name != "srv/greet" || p1.Args[0] != `{"a":"1","b":"2"}` {
		t.Errorf("prompt: %+v", p1)
	}
	if p2, _ := DescribePrompt(up, "greet", nil); p2.Args[0] != "{}" {
		t.Errorf("prompt without arguments: %q", p2.Args)
	}
	if _, err := DescribePrompt(up, "", nil); err == nil {
		t.Error("empty prompt name accepted")
	}
}

// FuzzDescribe: Describe never panics, and describing the granted
// (canonical) arguments again yields the same digest — the property the
// proxy's grant check relies on.
func FuzzDescribe(f *testing.F) {
	for _, s := range []string{``, `{}`, `{"path":"a/../b","x":[1,2.50,"\u00e9"]}`, `{"paths":["/a","/a"]}`,
		`{"source":"~/x","destination":"/y"}`, `[]`, `{"a":1e400}`, `{"a":"\ud800"}`} {
		f.Add(s)
	}
	up := Upstream{Name: "srv", Program: "/bin/srv"}
	f.Fuzz(func(t *testing.T, args string) {
		s, err := Describe(up, "tool", json.RawMessage(args), "/work")
		if err != nil {
			return
		}
		d1, err := s.Digest()
		if err != nil {
			t.Fatal(err)
		}
		again, err := Describe(up, "tool", json.RawMessage(s.Args[0]), "/work")
		if err != nil {
			t.Fatalf("granted arguments %q do not describe again: %v", s.Args[0], err)
		}
		if d2, _ := again.Digest(); d2 != d1 || again.Args[0] != s.Args[0] {
			t.Fatalf("digest not stable: %q → %q", s.Args[0], again.Args[0])
		}
	})
}
