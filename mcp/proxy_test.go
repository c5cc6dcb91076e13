package mcp

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/gateway"
	"github.com/etbproject/etb/grant"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/proof"
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

// counter counts the upstream's calls and keeps the last call's _meta.
type counter struct {
	atomic.Int64
	meta      atomic.Pointer[sdk.Meta]
	cancelled atomic.Int64
}

// inProcess connects a proxy governed by a fresh home to an in-memory
// upstream whose only tool counts its calls, and a client to the proxy.
func inProcess(t testing.TB, policySrc string) (p *Proxy, closeGW func(), cs *sdk.ClientSession, calls *counter) {
	t.Helper()
	return inProcessWith(t, policySrc, nil)
}

// inProcessWith is inProcess with the downstream client's options. The
// upstream also offers "block", which returns only when its request is
// cancelled (and then counts the cancellation).
func inProcessWith(t testing.TB, policySrc string, copt *sdk.ClientOptions) (p *Proxy, closeGW func(), cs *sdk.ClientSession, calls *counter) {
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
	calls = new(counter)
	up := sdk.NewServer(&sdk.Implementation{Name: "counter", Version: "1"}, nil)
	up.AddTool(&sdk.Tool{Name: "count", InputSchema: map[string]any{"type": "object"}},
		func(_ context.Context, req *sdk.CallToolRequest) (*sdk.CallToolResult, error) {
			calls.Add(1)
			m := req.Params.Meta
			calls.meta.Store(&m)
			return &sdk.CallToolResult{Content: []sdk.Content{&sdk.TextContent{Text: "counted"}}}, nil
		})
	up.AddTool(&sdk.Tool{Name: "progress", InputSchema: map[string]any{"type": "object"}}, progressTool(2, 0, "done"))
	up.AddTool(&sdk.Tool{Name: "late", InputSchema: map[string]any{"type": "object"}},
		func(_ context.Context, req *sdk.CallToolRequest) (*sdk.CallToolResult, error) {
			// Progress sent once the result is on its way: it reaches the
			// proxy after the call has ended downstream.
			ss, tok := req.Session, req.Params.GetProgressToken()
			time.AfterFunc(100*time.Millisecond, func() {
				ss.NotifyProgress(context.Background(), &sdk.ProgressNotificationParams{ProgressToken: tok, Progress: 1, Total: 1})
			})
			return &sdk.CallToolResult{Content: []sdk.Content{&sdk.TextContent{Text: "late"}}}, nil
		})
	up.AddTool(&sdk.Tool{Name: "slow", InputSchema: map[string]any{"type": "object"}}, progressTool(3, 150*time.Millisecond, "slow done"))
	up.AddTool(&sdk.Tool{Name: "block", InputSchema: map[string]any{"type": "object"}},
		func(ctx context.Context, _ *sdk.CallToolRequest) (*sdk.CallToolResult, error) {
			<-ctx.Done()
			calls.cancelled.Add(1)
			return nil, ctx.Err()
		})
	addAskers(up)
	ut, pt := sdk.NewInMemoryTransports()
	if _, err := up.Connect(ctx, ut, nil); err != nil {
		t.Fatal(err)
	}
	p = New(Embedded(gw), Options{Principal: action.Principal{ID: "spiffe://etb.local/test"}})
	if err := p.Connect(ctx, pt, Upstream{Program: "/in-memory"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	st, ct := sdk.NewInMemoryTransports()
	if _, err := p.Server().Connect(ctx, st, nil); err != nil {
		t.Fatal(err)
	}
	cs, err = sdk.NewClient(&sdk.Implementation{Name: "c", Version: "1"}, copt).Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	return p, closeGW, cs, calls
}

// progressTool notifies progress 1..n of n for the call's token, pausing
// after each, then answers text.
func progressTool(n int, pause time.Duration, text string) sdk.ToolHandler {
	return func(ctx context.Context, req *sdk.CallToolRequest) (*sdk.CallToolResult, error) {
		for i := 1; i <= n; i++ {
			if err := req.Session.NotifyProgress(ctx, &sdk.ProgressNotificationParams{ProgressToken: req.Params.GetProgressToken(),
				Progress: float64(i), Total: float64(n)}); err != nil {
				return nil, err
			}
			time.Sleep(pause)
		}
		return &sdk.CallToolResult{Content: []sdk.Content{&sdk.TextContent{Text: text}}}, nil
	}
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
	if err == nil || !strings.Contains(err.Error(), "ledger") && !strings.Contains(err.Error(), "database is closed") {
		t.Fatalf("with the ledger closed: err = %v, res = %+v; want an error naming the ledger or its database", err, res)
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

func TestTraceParent(t *testing.T) {
	for _, tc := range []struct {
		tp any
		ok bool
	}{
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", true},
		{"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", false}, // upper case
		{"00-00000000000000000000000000000000-00f067aa0ba902b7-01", false}, // zero trace id
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", false}, // zero parent id
		{"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", false}, // forbidden version
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", false},
		{"00-bad", false},
		{42, false},
	} {
		got, err := traceParent(sdk.Meta{"traceparent": tc.tp})
		if (err == nil) != tc.ok || tc.ok && got != tc.tp {
			t.Errorf("%v: %q, %v; want ok %v", tc.tp, got, err, tc.ok)
		}
	}
	if got, err := traceParent(sdk.Meta{}); got != "" || err != nil {
		t.Errorf("absent: %q %v", got, err)
	}
}

// A call's _meta.traceparent is recorded in the action's env and
// forwarded upstream unchanged; an invalid one refuses the call.
func TestTraceParentRecordedAndForwarded(t *testing.T) {
	p, _, cs, calls := inProcess(t, permitCount)
	ctx := context.Background()
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	res, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "count", Meta: sdk.Meta{"traceparent": tp}})
	if err != nil || res.IsError {
		t.Fatalf("call with traceparent: %v %+v", err, res)
	}
	if got := calls.meta.Load(); got == nil || (*got)["traceparent"] != tp {
		t.Fatalf("upstream saw _meta %v, want traceparent %s", got, tp)
	}
	res, err = cs.CallTool(ctx, &sdk.CallToolParams{Name: "count", Meta: sdk.Meta{"traceparent": "00-bad"}})
	if err != nil || !res.IsError || calls.Load() != 1 {
		t.Fatalf("invalid traceparent: %v %+v, upstream calls %d", err, res, calls.Load())
	}
	gw := p.b.(embedded).gw
	list, err := gw.List(ctx, 10)
	if err != nil || len(list) != 1 {
		t.Fatalf("executions: %v %+v", err, list)
	}
	b, err := gw.Evidence(ctx, list[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	var intent struct {
		Type string `json:"type"`
		Body struct {
			Action action.Action `json:"action"`
		} `json:"body"`
	}
	if err := json.Unmarshal([]byte(b.Events[0].Entry), &intent); err != nil {
		t.Fatal(err)
	}
	if intent.Type != "intent" || intent.Body.Action.Env[EnvTraceParent] != tp {
		t.Fatalf("intent %s env %v, want %s = %s", intent.Type, intent.Body.Action.Env, EnvTraceParent, tp)
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

// verifyHome verifies the evidence of every execution of p's embedded
// gateway and returns their summaries, newest first.
func verifyHome(t *testing.T, p *Proxy, want int) []gateway.Summary {
	t.Helper()
	ctx := context.Background()
	gw := p.b.(embedded).gw
	trust, err := gw.Trust()
	if err != nil {
		t.Fatal(err)
	}
	list, err := gw.List(ctx, 100)
	if err != nil || len(list) != want {
		t.Fatalf("executions: %v; %d, want %d: %+v", err, len(list), want, list)
	}
	for _, s := range list {
		b, err := gw.Evidence(ctx, s.ID)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := proof.Verify(ctx, b, trust); err != nil {
			t.Fatalf("evidence of %s (%s) does not verify: %v", s.ID, s.Outcome, err)
		}
	}
	return list
}

// Embedded, a require_approval decision asks the client's user through
// MCP elicitation when the client supports it: accepted, the call passes
// with the approval in the (verifying) evidence; declined, it is refused
// and never forwarded.
func TestElicitationApproval(t *testing.T) {
	var answer atomic.Value
	var asked atomic.Value
	answer.Store("accept")
	copt := &sdk.ClientOptions{ElicitationHandler: func(_ context.Context, req *sdk.ElicitRequest) (*sdk.ElicitResult, error) {
		asked.Store(req.Params.Message)
		if answer.Load() == "accept" {
			return &sdk.ElicitResult{Action: "accept", Content: map[string]any{"approve": true}}, nil
		}
		return &sdk.ElicitResult{Action: "decline"}, nil
	}}
	p, _, cs, calls := inProcessWith(t, `version: etb.policy/v1
name: t
rules:
  - id: ask-first
    effect: require_approval
    match: {kind: mcp.tool_call, name: counter/count}
    message: a human must look
`, copt)
	ctx := context.Background()
	res, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "count"})
	if err != nil || res.IsError || calls.Load() != 1 {
		t.Fatalf("approved call: %v %+v, upstream calls %d", err, res.Content[0], calls.Load())
	}
	if m, _ := asked.Load().(string); !strings.Contains(m, "ask-first") || !strings.Contains(m, "counter/count") {
		t.Errorf("the elicitation does not name the rule and the action: %q", m)
	}
	answer.Store("decline")
	res, err = cs.CallTool(ctx, &sdk.CallToolParams{Name: "count"})
	if err != nil || !res.IsError || !strings.Contains(res.Content[0].(*sdk.TextContent).Text, "declined by mcp-elicitation:c") || calls.Load() != 1 {
		t.Fatalf("declined call: %v %+v, upstream calls %d", err, res, calls.Load())
	}
	list := verifyHome(t, p, 2)
	if list[0].Outcome != "interrupted: approval_rejected" || list[1].Outcome != "exit 0" {
		t.Errorf("outcomes %q, %q", list[0].Outcome, list[1].Outcome)
	}
}

// A parked approval resumes only with its own state, once, for the same
// arguments: other arguments are refused and never forwarded.
func TestElicitationStateBoundToArguments(t *testing.T) {
	copt := &sdk.ClientOptions{
		ElicitationHandler: func(context.Context, *sdk.ElicitRequest) (*sdk.ElicitResult, error) {
			return nil, errors.New("not asked: the test answers itself")
		},
		MultiRoundTrip: &sdk.MultiRoundTripOptions{Disabled: true},
	}
	p, _, cs, calls := inProcessWith(t, `version: etb.policy/v1
name: t
rules:
  - id: ask-first
    effect: require_approval
    match: {kind: mcp.tool_call, name: counter/count}
`, copt)
	ctx := context.Background()
	yes := sdk.InputResponseMap{"etb-approval": &sdk.ElicitResult{Action: "accept", Content: map[string]any{"approve": true}}}
	first, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "count", Arguments: map[string]any{"n": 1}})
	if err != nil || !first.NeedsInput() || first.RequestState == "" {
		t.Fatalf("first call: %v %+v; want an input request", err, first)
	}
	for _, tc := range []struct {
		name   string
		params *sdk.CallToolParams
	}{
		{"forged state", &sdk.CallToolParams{Name: "count", Arguments: map[string]any{"n": 1}, RequestState: "forged", InputResponses: yes}},
		{"other arguments", &sdk.CallToolParams{Name: "count", Arguments: map[string]any{"n": 2}, RequestState: first.RequestState, InputResponses: yes}},
		{"state used up", &sdk.CallToolParams{Name: "count", Arguments: map[string]any{"n": 1}, RequestState: first.RequestState, InputResponses: yes}},
	} {
		res, err := cs.CallTool(ctx, tc.params)
		if err != nil || !res.IsError || calls.Load() != 0 {
			t.Errorf("%s: %v %+v, upstream calls %d; want a refusal", tc.name, err, res, calls.Load())
		}
	}
	// The parked execution ended when the wrong arguments came.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		list, err := p.b.(embedded).gw.List(ctx, 10)
		if err == nil && len(list) == 1 && list[0].Outcome == "interrupted: approval_expired" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("executions %v %+v, want one interrupted: approval_expired", err, list)
		}
	}
	verifyHome(t, p, 1)
}

// Embedded continuous enforcement: the grant's timeout obligation cancels
// the upstream request (the upstream sees the cancellation), the client
// gets an error result, and the interrupt is in the evidence.
func TestTimeoutCancelsUpstream(t *testing.T) {
	p, _, cs, calls := inProcess(t, `version: etb.policy/v1
name: t
defaults:
  obligations: {timeout: 300ms}
rules:
  - id: allow-block
    effect: permit
    match: {kind: mcp.tool_call, name: counter/block}
`)
	start := time.Now()
	res, err := cs.CallTool(context.Background(), &sdk.CallToolParams{Name: "block"})
	if err != nil || !res.IsError || !strings.Contains(res.Content[0].(*sdk.TextContent).Text, "timeout") {
		t.Fatalf("blocked call: %v %+v", err, res)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("the call returned after %v, want about 300ms", d)
	}
	for deadline := time.Now().Add(5 * time.Second); calls.cancelled.Load() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the upstream never saw the request cancelled")
		}
	}
	if list := verifyHome(t, p, 1); list[0].Outcome != "interrupted: timeout" {
		t.Errorf("outcome %q", list[0].Outcome)
	}
}

// With MayPermit, tools no rule could permit are not listed.
func TestHideDenied(t *testing.T) {
	p, _, cs, _ := inProcess(t, permitCount)
	ctx := context.Background()
	list := func() []string {
		res, err := cs.ListTools(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, tl := range res.Tools {
			names = append(names, tl.Name)
		}
		return names
	}
	if got := strings.Join(list(), ","); got != "ask,block,count,late,progress,slow" {
		t.Fatalf("tools without hiding: %s", got)
	}
	p.opt.MayPermit = p.b.(embedded).gw.Policy().MayPermit
	p.server.RemoveTools("ask", "block", "count", "late", "progress", "slow")
	p.mu.Lock()
	p.pins, p.current, p.mirrored = map[string]string{}, map[string]*sdk.Tool{}, map[string]bool{}
	p.mu.Unlock()
	if err := p.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(list(), ","); got != "count" {
		t.Fatalf("tools with hiding: %s, want count only", got)
	}
}

// callWithProgress calls the counter upstream's tool through the proxy,
// permitted by policy, with progress token token, and returns the channel
// on which the progress notifications that reach the client arrive.
func callWithProgress(t *testing.T, tool, token string) <-chan float64 {
	t.Helper()
	got := make(chan float64, 4)
	copt := &sdk.ClientOptions{ProgressNotificationHandler: func(_ context.Context, req *sdk.ProgressNotificationClientRequest) {
		if req.Params.ProgressToken == token {
			got <- req.Params.Progress
		}
	}}
	_, _, cs, _ := inProcessWith(t, `version: etb.policy/v1
name: t
rules:
  - id: allow
    effect: permit
    match: {kind: mcp.tool_call, name: counter/`+tool+`}
`, copt)
	res, err := cs.CallTool(context.Background(), &sdk.CallToolParams{Name: tool, Meta: sdk.Meta{"progressToken": token}})
	if err != nil || res.IsError {
		t.Fatalf("call %s: %v %+v", tool, err, res)
	}
	return got
}

// The upstream's progress notifications reach the client that asked.
func TestProgressPassesThrough(t *testing.T) {
	got := callWithProgress(t, "progress", "tok-1")
	for want := 1.0; want <= 2; want++ {
		select {
		case p := <-got:
			if p != want {
				t.Errorf("progress %v, want %v", p, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("progress %v never arrived downstream", want)
		}
	}
}

// A progress notification that reaches the proxy after the call's result
// (within the route's grace second) is still passed downstream, though
// the downstream request has ended.
func TestLateProgressPassesThrough(t *testing.T) {
	got := callWithProgress(t, "late", "tok-late")
	select {
	case p := <-got:
		if p != 1 {
			t.Errorf("progress %v, want 1", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("progress sent after the result never arrived downstream")
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

// Execution.Approve (gateway/fastpath.go) grants only a pending
// require_approval decision, once, and needs an approver.
func TestApproveOnlyPending(t *testing.T) {
	p, _, _, _ := inProcess(t, `version: etb.policy/v1
name: t
rules:
  - id: allow-count
    effect: permit
    match: {kind: mcp.tool_call, name: counter/count}
  - id: ask-block
    effect: require_approval
    match: {kind: mcp.tool_call, name: counter/block}
`)
	gw := p.b.(embedded).gw
	ctx := context.Background()
	begin := func(tool string) *gateway.Execution {
		spec, err := Describe(p.up, tool, nil, "/")
		if err != nil {
			t.Fatal(err)
		}
		ex, err := gw.Begin(ctx, &action.Action{Principal: p.opt.Principal, Action: spec})
		if err != nil {
			t.Fatal(err)
		}
		return ex
	}
	if err := begin("count").Approve(ctx, "t1", "mcp-elicitation:c", ""); err == nil {
		t.Error("a permit was approved")
	}
	ex := begin("block")
	if err := ex.Approve(ctx, "t2", "", ""); err == nil || ex.Token != "" {
		t.Errorf("approval without an approver: %v", err)
	}
	if err := ex.Approve(ctx, "t3", "mcp-elicitation:c", "ok"); err != nil || ex.Token == "" {
		t.Fatalf("approve: %v", err)
	}
	if err := ex.Approve(ctx, "t4", "mcp-elicitation:c", "again"); err == nil {
		t.Error("approved twice")
	}
	if err := ex.Reject(ctx, "t5", "mcp-elicitation:c", ""); err == nil {
		t.Error("rejected after the grant")
	}
	d, _ := ex.Action.Action.Digest()
	if err := ex.Authorize(ctx, d); err != nil {
		t.Fatalf("the approved grant does not verify: %v", err)
	}
	if err := ex.Authorize(ctx, d); err == nil {
		t.Fatal("the approved grant verified twice")
	}
}

// Execution.AuthorizeStart (gateway/fastpath.go) checks the grant before
// anything is written, commits the jti with the start, and refuses a
// second use; after a refusal the chain still links to what the ledger
// holds, so the evidence verifies.
func TestAuthorizeStartSingleUse(t *testing.T) {
	p, _, _, _ := inProcess(t, permitCount)
	gw := p.b.(embedded).gw
	ctx := context.Background()
	spec, err := Describe(p.up, "count", nil, "/")
	if err != nil {
		t.Fatal(err)
	}
	ex, err := gw.Begin(ctx, &action.Action{Principal: p.opt.Principal, Action: spec})
	if err != nil {
		t.Fatal(err)
	}
	other, err := Describe(p.up, "count", json.RawMessage(`{"x":"smuggled"}`), "/")
	if err != nil {
		t.Fatal(err)
	}
	dOther, _ := other.Digest()
	if err := ex.AuthorizeStart(ctx, dOther, lineage.StartBody{}); err == nil {
		t.Fatal("a grant started another action")
	}
	d, _ := spec.Digest()
	if err := ex.AuthorizeStart(ctx, d, lineage.StartBody{}); err != nil {
		t.Fatalf("first start: %v", err)
	}
	err = ex.AuthorizeStart(ctx, d, lineage.StartBody{})
	if !errors.Is(err, grant.ErrReplayed) {
		t.Fatalf("second start: %v, want grant.ErrReplayed", err)
	}
	if err := ex.Authorize(ctx, d); !errors.Is(err, grant.ErrReplayed) {
		t.Fatalf("Authorize after AuthorizeStart: %v, want grant.ErrReplayed", err)
	}
	if err := ex.Record(ctx, lineage.TypeEnd, lineage.EndBody{}); err != nil {
		t.Fatal(err)
	}
	list := verifyHome(t, p, 1)
	if list[0].Outcome != "exit 0" {
		t.Errorf("outcome %q", list[0].Outcome)
	}
}
