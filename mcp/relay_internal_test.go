package mcp

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/etbproject/etb/gateway"
	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
)

// addAskers gives the in-process upstream (inProcessWith) a tool, a prompt
// and a resource that ask their client for input the 2026-07-28 way: an
// input-required result with one input request (sampling, roots,
// elicitation), answered on the next call.
func addAskers(up *sdk.Server) {
	up.AddTool(&sdk.Tool{Name: "ask", InputSchema: map[string]any{"type": "object"}},
		func(_ context.Context, req *sdk.CallToolRequest) (*sdk.CallToolResult, error) {
			if r, ok := req.Params.InputResponses["llm"].(*sdk.CreateMessageWithToolsResult); ok && req.Params.RequestState == "asked-llm" {
				var b strings.Builder
				for _, c := range r.Content {
					if tc, ok := c.(*sdk.TextContent); ok {
						b.WriteString(tc.Text)
					}
				}
				return &sdk.CallToolResult{Content: []sdk.Content{&sdk.TextContent{Text: "the model said: " + b.String()}}}, nil
			}
			return &sdk.CallToolResult{RequestState: "asked-llm", InputRequests: sdk.InputRequestMap{
				"llm": &sdk.CreateMessageParams{MaxTokens: 5, Messages: []*sdk.SamplingMessage{
					{Role: "user", Content: &sdk.TextContent{Text: "name a colour"}}}}}}, nil
		})
	up.AddPrompt(&sdk.Prompt{Name: "ask-roots"},
		func(_ context.Context, req *sdk.GetPromptRequest) (*sdk.GetPromptResult, error) {
			if r, ok := req.Params.InputResponses["roots"].(*sdk.ListRootsResult); ok {
				var uris []string
				for _, root := range r.Roots {
					uris = append(uris, root.URI)
				}
				return &sdk.GetPromptResult{Messages: []*sdk.PromptMessage{{Role: "user",
					Content: &sdk.TextContent{Text: "roots: " + strings.Join(uris, " ")}}}}, nil
			}
			return &sdk.GetPromptResult{RequestState: "asked-roots", InputRequests: sdk.InputRequestMap{"roots": &sdk.ListRootsParams{}}}, nil
		})
	up.AddResource(&sdk.Resource{URI: "ask://form", Name: "form"},
		func(_ context.Context, req *sdk.ReadResourceRequest) (*sdk.ReadResourceResult, error) {
			if r, ok := req.Params.InputResponses["form"].(*sdk.ElicitResult); ok {
				return &sdk.ReadResourceResult{Contents: []*sdk.ResourceContents{{URI: "ask://form", Text: "answer: " + r.Action}}}, nil
			}
			return &sdk.ReadResourceResult{RequestState: "asked-form", InputRequests: sdk.InputRequestMap{
				"form": &sdk.ElicitParams{Message: "who are you?", RequestedSchema: map[string]any{"type": "object"}}}}, nil
		})
}

// TestInputRequestsRelayed: an upstream speaking 2026-07-28 asks for input
// during a tool call (sampling), a prompt (roots) and a resource read
// (elicitation). Each input request is an action of its own; permitted
// ones reach the real go-sdk client (which answers and calls again by
// itself) and the answer reaches the upstream; a forbidden one never
// reaches the client.
func TestInputRequestsRelayed(t *testing.T) {
	var elicited atomic.Int32
	p, _, cs, _ := inProcessWith(t, `version: etb.policy/v1
name: t
rules:
  - id: askers
    effect: permit
    match: {kind: mcp.tool_call, name: counter/ask}
  - id: prompt
    effect: permit
    match: {kind: mcp.prompt_get, name: counter/ask-roots}
  - id: resource
    effect: permit
    match: {kind: mcp.resource_read, name: counter}
  - id: sampling
    effect: permit
    match: {kind: mcp.sampling, name: counter/sampling/createMessage}
    when: action.args[0].contains("name a colour")
  - id: roots
    effect: permit
    match: {kind: mcp.roots, name: counter/roots/list}
  - id: no-forms
    effect: forbid
    match: {kind: mcp.elicitation}
`, &sdk.ClientOptions{
		CreateMessageHandler: func(context.Context, *sdk.CreateMessageRequest) (*sdk.CreateMessageResult, error) {
			return &sdk.CreateMessageResult{Role: "assistant", Model: "m", Content: &sdk.TextContent{Text: "teal"}}, nil
		},
		ElicitationHandler: func(context.Context, *sdk.ElicitRequest) (*sdk.ElicitResult, error) {
			elicited.Add(1)
			return &sdk.ElicitResult{Action: "accept"}, nil
		},
	})
	ctx := context.Background()
	res, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "ask", Arguments: map[string]any{}})
	if err != nil || res.IsError || len(res.Content) != 1 || !strings.Contains(res.Content[0].(*sdk.TextContent).Text, "the model said: teal") {
		t.Fatalf("tool asking for sampling: %v %+v", err, res)
	}
	// The roots the test client has (none added): an empty list reaches
	// the upstream through the relay.
	pr, err := cs.GetPrompt(ctx, &sdk.GetPromptParams{Name: "ask-roots"})
	if err != nil || len(pr.Messages) != 1 || !strings.HasPrefix(pr.Messages[0].Content.(*sdk.TextContent).Text, "roots:") {
		t.Fatalf("prompt asking for roots: %v %+v", err, pr)
	}
	_, err = cs.ReadResource(ctx, &sdk.ReadResourceParams{URI: "ask://form"})
	if err == nil || !strings.Contains(err.Error(), "no-forms") {
		t.Fatalf("resource asking for a forbidden elicitation: want a refusal naming no-forms, got %v", err)
	}
	if n := elicited.Load(); n != 0 {
		t.Errorf("the client was asked a forbidden elicitation %d times", n)
	}
	got := byKind(verifyHome(t, p, 6), func(s gateway.Summary) string { return s.Decision + " " })
	for kind, want := range map[string]string{"mcp.tool_call": "permit ", "mcp.sampling": "permit ", "mcp.prompt_get": "permit ",
		"mcp.roots": "permit ", "mcp.resource_read": "permit ", "mcp.elicitation": "deny "} {
		if got[kind] != want {
			t.Errorf("%s: %q, want %q", kind, got[kind], want)
		}
	}
}

// TestUnansweredInputRequestEnds: a client that never answers an input
// request does not keep the upstream request (and its grant) alive: after
// ApprovalWait it is cancelled and recorded as interrupted, and its state
// no longer answers anything.
func TestUnansweredInputRequestEnds(t *testing.T) {
	p, _, cs, _ := inProcessWith(t, `version: etb.policy/v1
name: t
rules:
  - id: askers
    effect: permit
    match: {kind: mcp.tool_call, name: counter/ask}
  - id: sampling
    effect: permit
    match: {kind: mcp.sampling}
`, &sdk.ClientOptions{
		MultiRoundTrip: &sdk.MultiRoundTripOptions{Disabled: true},
		CreateMessageHandler: func(context.Context, *sdk.CreateMessageRequest) (*sdk.CreateMessageResult, error) {
			return nil, errors.New("not asked directly")
		},
	})
	p.opt.ApprovalWait = 200 * time.Millisecond
	ctx := context.Background()
	res, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "ask", Arguments: map[string]any{}})
	if err != nil || len(res.InputRequests) != 1 || res.RequestState == "" {
		t.Fatalf("want an input request, got %v %+v", err, res)
	}
	// Wait until both executions (the call, the sampling) have ended.
	deadline := time.Now().Add(10 * time.Second)
	var list []gateway.Summary
	for {
		list, err = p.b.(embedded).gw.List(ctx, 10)
		if err != nil {
			t.Fatal(err)
		}
		ended := 0
		for _, s := range list {
			if strings.HasPrefix(s.Outcome, "interrupted") {
				ended++
			}
		}
		if ended == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the unanswered request did not end: %+v", list)
		}
		time.Sleep(50 * time.Millisecond)
	}
	late, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "ask", Arguments: map[string]any{},
		RequestState: res.RequestState, InputResponses: sdk.InputResponseMap{}})
	if err != nil || !late.IsError || !strings.Contains(late.Content[0].(*sdk.TextContent).Text, "unknown") {
		t.Fatalf("a late answer: %v %+v", err, late)
	}
	verifyHome(t, p, 2) // the call and its sampling; the late answer was refused before any decision
}

// TestPromptApprovalThenInput: a prompts/get that needs approval asks the
// client's user first (elicitation), then, approved and forwarded, relays
// the upstream's own input request (roots); declined, it never reaches the
// upstream.
func TestPromptApprovalThenInput(t *testing.T) {
	var approve atomic.Bool
	approve.Store(true)
	var asked atomic.Int32
	p, _, cs, _ := inProcessWith(t, `version: etb.policy/v1
name: t
rules:
  - id: look-first
    effect: require_approval
    match: {kind: mcp.prompt_get, name: counter/ask-roots}
  - id: roots
    effect: permit
    match: {kind: mcp.roots}
`, &sdk.ClientOptions{ElicitationHandler: func(context.Context, *sdk.ElicitRequest) (*sdk.ElicitResult, error) {
		asked.Add(1)
		if approve.Load() {
			return &sdk.ElicitResult{Action: "accept", Content: map[string]any{"approve": true}}, nil
		}
		return &sdk.ElicitResult{Action: "decline"}, nil
	}})
	ctx := context.Background()
	pr, err := cs.GetPrompt(ctx, &sdk.GetPromptParams{Name: "ask-roots"})
	if err != nil || len(pr.Messages) != 1 || !strings.HasPrefix(pr.Messages[0].Content.(*sdk.TextContent).Text, "roots:") {
		t.Fatalf("approved prompt: %v %+v", err, pr)
	}
	approve.Store(false)
	if _, err := cs.GetPrompt(ctx, &sdk.GetPromptParams{Name: "ask-roots"}); err == nil || !strings.Contains(err.Error(), "declined") {
		t.Fatalf("declined prompt: want a refusal, got %v", err)
	}
	if n := asked.Load(); n != 2 {
		t.Errorf("the user was asked %d times, want 2", n)
	}
	got := byKind(verifyHome(t, p, 3), func(s gateway.Summary) string { return s.Outcome + ";" })
	if got["mcp.prompt_get"] != "interrupted: approval_rejected;exit 0;" || got["mcp.roots"] != "exit 0;" {
		t.Errorf("outcomes: %v", got)
	}
}

// byKind joins f of each execution, newest first, by action kind.
func byKind(list []gateway.Summary, f func(gateway.Summary) string) map[string]string {
	got := map[string]string{}
	for _, s := range list {
		got[s.Kind] += f(s)
	}
	return got
}
