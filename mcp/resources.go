package mcp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/etbproject/etb/action"
)

// Kinds of the actions besides mcp.tool_call (action.KindMCPTool).
const (
	KindResourceRead = "mcp.resource_read"
	KindPromptGet    = "mcp.prompt_get"
)

// CodeRefused is the JSON-RPC error code of a resources/read or
// prompts/get the boundary refused (in the server-defined range).
const CodeRefused = -32003

// refusedError is the JSON-RPC error returned for a refused request.
func refusedError(msg string) error {
	return &jsonrpc.Error{Code: CodeRefused, Message: msg}
}

// DescribeResource maps a resources/read to an action spec: kind
// mcp.resource_read, name the upstream's name, args [URI], and the
// upstream's target, plus the resolved path of a file: URI in
// target.paths. The URI must be absolute.
func DescribeResource(up Upstream, uri string) (action.Spec, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return action.Spec{}, fmt.Errorf("mcp: resource URI %q: %w", uri, err)
	}
	if u.Scheme == "" {
		return action.Spec{}, fmt.Errorf("mcp: resource URI %q has no scheme", uri)
	}
	t := up.target()
	if strings.EqualFold(u.Scheme, "file") {
		if u.Path == "" {
			return action.Spec{}, fmt.Errorf("mcp: file URI %q has no path", uri)
		}
		t.Paths = []string{resolvePath(u.Path, "/")}
	}
	return action.Spec{Kind: KindResourceRead, Name: up.Name, Args: []string{uri}, Target: t}, nil
}

// DescribePrompt maps a prompts/get to an action spec: kind mcp.prompt_get,
// name "SERVER/PROMPT", args the one-element list holding the canonical
// JSON of the arguments object ("{}" when none).
func DescribePrompt(up Upstream, name string, args map[string]string) (action.Spec, error) {
	if name == "" {
		return action.Spec{}, errors.New("mcp: prompt name is empty")
	}
	if args == nil {
		args = map[string]string{}
	}
	c, err := action.Canonical(args)
	if err != nil {
		return action.Spec{}, fmt.Errorf("mcp: arguments of prompt %q: %w", name, err)
	}
	return action.Spec{Kind: KindPromptGet, Name: up.Name + "/" + name, Args: []string{string(c)}, Target: up.target()}, nil
}

// ReadResource governs one resources/read: only a verified permit is
// forwarded; a refusal is a JSON-RPC error with code CodeRefused.
func (p *Proxy) ReadResource(ctx context.Context, ss *sdk.ServerSession, params *sdk.ReadResourceParams) (*sdk.ReadResourceResult, error) {
	spec, err := DescribeResource(p.up, params.URI)
	if err != nil {
		return nil, refusedError("etb: refused: " + err.Error())
	}
	return governRead(ctx, p, ss, params.Meta, spec, params.RequestState, params.InputResponses,
		func(ctx context.Context) (*sdk.ReadResourceResult, error) {
			return fulfill(ctx, p, func(r *sdk.ReadResourceResult) (sdk.InputRequestMap, string) { return r.InputRequests, r.RequestState },
				func(ctx context.Context, state string, answers sdk.InputResponseMap) (*sdk.ReadResourceResult, error) {
					return p.upstream.ReadResource(ctx, &sdk.ReadResourceParams{Meta: params.Meta, URI: spec.Args[0],
						RequestState: state, InputResponses: answers})
				})
		},
		func(state string, m sdk.InputRequestMap) *sdk.ReadResourceResult {
			return &sdk.ReadResourceResult{RequestState: state, InputRequests: m}
		})
}

// GetPrompt governs one prompts/get like ReadResource.
func (p *Proxy) GetPrompt(ctx context.Context, ss *sdk.ServerSession, params *sdk.GetPromptParams) (*sdk.GetPromptResult, error) {
	spec, err := DescribePrompt(p.up, params.Name, params.Arguments)
	if err != nil {
		return nil, refusedError("etb: refused: " + err.Error())
	}
	// Forward the arguments decoded from the canonical bytes the digest
	// covers.
	var args map[string]string
	if err := json.Unmarshal([]byte(spec.Args[0]), &args); err != nil {
		return nil, refusedError("etb: refused: " + err.Error())
	}
	return governRead(ctx, p, ss, params.Meta, spec, params.RequestState, params.InputResponses,
		func(ctx context.Context) (*sdk.GetPromptResult, error) {
			return fulfill(ctx, p, func(r *sdk.GetPromptResult) (sdk.InputRequestMap, string) { return r.InputRequests, r.RequestState },
				func(ctx context.Context, state string, answers sdk.InputResponseMap) (*sdk.GetPromptResult, error) {
					return p.upstream.GetPrompt(ctx, &sdk.GetPromptParams{Meta: params.Meta, Name: params.Name, Arguments: args,
						RequestState: state, InputResponses: answers})
				})
		},
		func(state string, m sdk.InputRequestMap) *sdk.GetPromptResult {
			return &sdk.GetPromptResult{RequestState: state, InputRequests: m}
		})
}

// governRead runs a resources/read or prompts/get (spec; forward asks the
// upstream) through the boundary beside the downstream request, relaying
// the upstream's input requests (relay.go) and asking the client's user to
// approve a require_approval decision (approval.go); a request that carries
// a request state answers the one parked under it. A refusal is an error
// with code CodeRefused.
func governRead[R any](ctx context.Context, p *Proxy, ss *sdk.ServerSession, meta sdk.Meta, spec action.Spec,
	state string, responses sdk.InputResponseMap, forward func(context.Context) (R, error),
	needInput func(string, sdk.InputRequestMap) R) (R, error) {
	var zero R
	digest, err := spec.Digest()
	if err != nil {
		return zero, refusedError("etb: refused: " + err.Error())
	}
	extra := func(r *request) { r.ask = p.asker(ss) }
	if state != "" {
		// The client's answer to an input request of a request in
		// flight (relay.go), or to an approval (approval.go).
		if res, ok, err := relayResume(ctx, p, ss, state, digest, responses, needInput); ok {
			if err != nil {
				return zero, refusedError("etb: refused: " + err.Error())
			}
			return res, nil
		}
		rs, err := p.resume(ss, state, digest, responses)
		if err != nil {
			return zero, refusedError("etb: refused: " + err.Error())
		}
		extra = func(r *request) { r.resume = rs }
	}
	return relayRun(ctx, p, ss, digest, func(ctx context.Context) (R, error) {
		var res R
		refused, err := p.govern(ctx, ss, meta, spec, nil, "", func(ctx context.Context, _ granted) (any, bool, error) {
			defer p.forwarding(ctx)()
			r, err := forward(ctx)
			res = r
			return r, false, err
		}, extra)
		var ask *needsApproval
		if errors.As(err, &ask) {
			return needInput(ask.state, approvalInputs(ask)), nil
		}
		if err != nil {
			return zero, err
		}
		if refused != "" {
			return zero, refusedError(refused)
		}
		return res, nil
	}, needInput)
}

// RefreshResources mirrors the upstream's resources and resource
// templates downstream (every read of them governed).
func (p *Proxy) RefreshResources(ctx context.Context) error {
	res := map[string]*sdk.Resource{}
	for r, err := range p.upstream.Resources(ctx, nil) {
		if err != nil {
			return fmt.Errorf("mcp: list upstream resources: %w", err)
		}
		res[r.URI] = r
	}
	tpl := map[string]*sdk.ResourceTemplate{}
	for t, err := range p.upstream.ResourceTemplates(ctx, nil) {
		if err != nil {
			return fmt.Errorf("mcp: list upstream resource templates: %w", err)
		}
		tpl[t.URITemplate] = t
	}
	handler := func(ctx context.Context, req *sdk.ReadResourceRequest) (*sdk.ReadResourceResult, error) {
		return p.ReadResource(ctx, req.Session, req.Params)
	}
	p.mu.Lock()
	var goneR, goneT []string
	for uri := range p.resources {
		if _, ok := res[uri]; !ok {
			goneR = append(goneR, uri)
		}
	}
	for u := range p.templates {
		if _, ok := tpl[u]; !ok {
			goneT = append(goneT, u)
		}
	}
	p.resources, p.templates = res, tpl
	p.mu.Unlock()
	p.server.RemoveResources(goneR...)
	p.server.RemoveResourceTemplates(goneT...)
	for _, r := range res {
		safely(p.opt.Log, "resource "+r.URI, func() { p.server.AddResource(r, handler) })
	}
	for _, t := range tpl {
		safely(p.opt.Log, "resource template "+t.URITemplate, func() { p.server.AddResourceTemplate(t, handler) })
	}
	return nil
}

// RefreshPrompts mirrors the upstream's prompts downstream.
func (p *Proxy) RefreshPrompts(ctx context.Context) error {
	prompts := map[string]*sdk.Prompt{}
	for pr, err := range p.upstream.Prompts(ctx, nil) {
		if err != nil {
			return fmt.Errorf("mcp: list upstream prompts: %w", err)
		}
		prompts[pr.Name] = pr
	}
	p.mu.Lock()
	var gone []string
	for name := range p.prompts {
		if _, ok := prompts[name]; !ok {
			gone = append(gone, name)
		}
	}
	p.prompts = prompts
	p.mu.Unlock()
	p.server.RemovePrompts(gone...)
	for _, pr := range prompts {
		safely(p.opt.Log, "prompt "+pr.Name, func() {
			p.server.AddPrompt(pr, func(ctx context.Context, req *sdk.GetPromptRequest) (*sdk.GetPromptResult, error) {
				return p.GetPrompt(ctx, req.Session, req.Params)
			})
		})
	}
	return nil
}

// safely runs add, turning the go-sdk's panic on an invalid definition into
// a log line: the item is then not offered downstream (so never reachable).
func safely(log func(string, ...any), what string, add func()) {
	defer func() {
		if r := recover(); r != nil {
			log("%s not mirrored: %v", what, r)
		}
	}()
	add()
}
