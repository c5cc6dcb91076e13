package mcp_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
)

// TestSamplingAndElicitationRelayed: server-everything asks its client for
// an LLM completion and for a form while serving a tool call. Through
// `etb mcp`, each request is an action of its own: the permitted sampling
// reaches the real go-sdk client and its answer reaches the server; the
// forbidden elicitation never reaches the client and the server gets an
// error. Every execution's evidence verifies.
func TestSamplingAndElicitationRelayed(t *testing.T) {
	ev := peer(t, "server-everything")
	home := t.TempDir()
	pol := policyFile(t, `version: etb.policy/v1
name: mcp-relay
rules:
  - id: triggers
    effect: permit
    match: {kind: mcp.tool_call}
    when: action.name in ["mcp-servers/everything/trigger-sampling-request", "mcp-servers/everything/trigger-elicitation-request"]
  - id: short-sampling
    effect: permit
    match: {kind: mcp.sampling, name: mcp-servers/everything/sampling/createMessage}
    when: action.args[0].contains("relay me")
  - id: no-forms
    effect: forbid
    match: {kind: mcp.elicitation}
    message: no forms from this server
`)
	var mu sync.Mutex
	var prompts []string
	elicited := false
	copt := &sdk.ClientOptions{
		CreateMessageHandler: func(_ context.Context, req *sdk.CreateMessageRequest) (*sdk.CreateMessageResult, error) {
			mu.Lock()
			defer mu.Unlock()
			for _, m := range req.Params.Messages {
				if tc, ok := m.Content.(*sdk.TextContent); ok {
					prompts = append(prompts, tc.Text)
				}
			}
			return &sdk.CreateMessageResult{Role: "assistant", Model: "test-model",
				Content: &sdk.TextContent{Text: "sampled by the test client"}}, nil
		},
		ElicitationHandler: func(context.Context, *sdk.ElicitRequest) (*sdk.ElicitResult, error) {
			mu.Lock()
			elicited = true
			mu.Unlock()
			return &sdk.ElicitResult{Action: "decline"}, nil
		},
	}
	cs := sessionWith(t, home, pol, copt, append(ev, "stdio")...)

	res := call(t, cs, "trigger-sampling-request", map[string]any{"prompt": "relay me", "maxTokens": 10})
	if res.IsError || !strings.Contains(text(res), "sampled by the test client") {
		t.Fatalf("sampling through the proxy: isError=%v %q", res.IsError, text(res))
	}
	mu.Lock()
	if len(prompts) != 1 || !strings.Contains(prompts[0], "relay me") {
		t.Errorf("the client was asked %q, want one prompt with the tool's text", prompts)
	}
	mu.Unlock()

	// A sampling request the policy does not permit: the client is not
	// asked, the server's tool fails.
	res = call(t, cs, "trigger-sampling-request", map[string]any{"prompt": "something else", "maxTokens": 10})
	if !res.IsError || !strings.Contains(text(res), "etb.default-deny") {
		t.Errorf("unpermitted sampling: isError=%v %q", res.IsError, text(res))
	}
	res = call(t, cs, "trigger-elicitation-request", map[string]any{})
	if !res.IsError || !strings.Contains(text(res), "denied by no-forms") {
		t.Errorf("forbidden elicitation: isError=%v %q", res.IsError, text(res))
	}
	mu.Lock()
	if len(prompts) != 1 || elicited {
		t.Errorf("the client was asked for a refused request: prompts %q, elicited %v", prompts, elicited)
	}
	mu.Unlock()
	cs.Close()

	got := map[string][]string{}
	for _, s := range verifyAll(t, home, pol, 7) {
		got[s.Kind] = append(got[s.Kind], s.Decision)
	}
	for kind, want := range map[string]string{
		"mcp.tool_call":   "permit permit permit",
		"mcp.sampling":    "deny permit", // newest first
		"mcp.elicitation": "deny",
	} {
		if g := strings.Join(got[kind], " "); g != want {
			t.Errorf("%s decisions: %q, want %q", kind, g, want)
		}
	}
}

// TestRelayedAnswerAdversarial: the request state of a relayed input
// request answers that request only: with other arguments the call is
// refused and ended, and the state does not work twice.
func TestRelayedAnswerAdversarial(t *testing.T) {
	ev := peer(t, "server-everything")
	home := t.TempDir()
	pol := policyFile(t, `version: etb.policy/v1
name: mcp-relay
rules:
  - id: sampling-tool
    effect: permit
    match: {kind: mcp.tool_call, name: mcp-servers/everything/trigger-sampling-request}
  - id: sampling
    effect: permit
    match: {kind: mcp.sampling}
`)
	// A client that handles the input-required results itself.
	copt := &sdk.ClientOptions{
		MultiRoundTrip: &sdk.MultiRoundTripOptions{Disabled: true},
		CreateMessageHandler: func(context.Context, *sdk.CreateMessageRequest) (*sdk.CreateMessageResult, error) {
			t.Error("the proxy sent a request of its own to a 2026-07-28 client")
			return nil, nil
		},
	}
	cs := sessionWith(t, home, pol, copt, append(ev, "stdio")...)
	ctx := context.Background()
	args := map[string]any{"prompt": "first", "maxTokens": 10}
	res := call(t, cs, "trigger-sampling-request", args)
	if len(res.InputRequests) != 1 || res.RequestState == "" {
		t.Fatalf("want one input request and a state, got %+v", res)
	}
	var id string
	for k, r := range res.InputRequests {
		id = k
		if _, ok := r.(*sdk.CreateMessageWithToolsParams); !ok {
			t.Fatalf("input request %s is %T, want sampling params", k, r)
		}
	}
	answer := sdk.InputResponseMap{id: &sdk.CreateMessageWithToolsResult{Role: "assistant", Model: "m",
		Content: []sdk.Content{&sdk.TextContent{Text: "answer"}}}}
	retry := func(a map[string]any, state string) *sdk.CallToolResult {
		t.Helper()
		r, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "trigger-sampling-request", Arguments: a,
			RequestState: state, InputResponses: answer})
		if err != nil {
			t.Fatalf("retry: %v", err)
		}
		return r
	}
	// Other arguments with the state: refused, and the call is over.
	changed := retry(map[string]any{"prompt": "second", "maxTokens": 10}, res.RequestState)
	if !changed.IsError || !strings.Contains(text(changed), "arguments changed") {
		t.Fatalf("answer with other arguments: isError=%v %q", changed.IsError, text(changed))
	}
	again := retry(args, res.RequestState)
	if !again.IsError || !strings.Contains(text(again), "unknown") {
		t.Fatalf("the state used a second time: isError=%v %q", again.IsError, text(again))
	}
	// A fresh call answered properly completes.
	res = call(t, cs, "trigger-sampling-request", args)
	for k := range res.InputRequests {
		answer = sdk.InputResponseMap{k: answer[id]}
	}
	done := retry(args, res.RequestState)
	if done.IsError || !strings.Contains(text(done), "answer") {
		t.Fatalf("answered call: isError=%v %q", done.IsError, text(done))
	}
	cs.Close()
	got := map[string][]string{}
	for _, s := range verifyAll(t, home, pol, 5) {
		got[s.Kind] = append(got[s.Kind], s.Decision+" "+s.Outcome)
	}
	t.Logf("executions: %v", got)
	if g := got["mcp.sampling"]; len(g) != 2 || g[0] != "permit exit 0" || strings.HasSuffix(g[1], "exit 0") {
		t.Errorf("sampling executions (newest first) %q: want the answered one ended, the refused one not", g)
	}
}

// TestSamplingRelayedThroughGateway: against `etb serve`, a sampling
// request of server-everything is decided by the gateway like any action:
// permitted, the client answers it; the evidence (from the gateway's home)
// verifies.
func TestSamplingRelayedThroughGateway(t *testing.T) {
	ev := peer(t, "server-everything")
	pol := policyFile(t, `version: etb.policy/v1
name: mcp-relay-gateway
rules:
  - id: sampling-tool
    effect: permit
    match: {kind: mcp.tool_call, name: mcp-servers/everything/trigger-sampling-request}
  - id: sampling
    effect: permit
    match: {kind: mcp.sampling, name: mcp-servers/everything/sampling/createMessage}
`)
	gw := startGateway(t, pol)
	cs := gw.mcpSessionWith(t, "spiffe://etb.local/agent/a", &sdk.ClientOptions{
		CreateMessageHandler: func(context.Context, *sdk.CreateMessageRequest) (*sdk.CreateMessageResult, error) {
			return &sdk.CreateMessageResult{Role: "assistant", Model: "m", Content: &sdk.TextContent{Text: "via the gateway"}}, nil
		},
	}, nil, append(ev, "stdio")...)
	res := call(t, cs, "trigger-sampling-request", map[string]any{"prompt": "hello", "maxTokens": 5})
	if res.IsError || !strings.Contains(text(res), "via the gateway") {
		t.Fatalf("sampling through etb mcp --gateway: isError=%v %q", res.IsError, text(res))
	}
	cs.Close()
	gw.stop(t)
	kinds := map[string]string{}
	for _, s := range verifyAllList(t, gw.home, pol) {
		kinds[s.Kind] += s.Decision + " " + s.Outcome + ";"
	}
	if kinds["mcp.sampling"] != "permit exit 0;" || kinds["mcp.tool_call"] != "permit exit 0;" {
		t.Errorf("executions at the gateway: %v", kinds)
	}
}
