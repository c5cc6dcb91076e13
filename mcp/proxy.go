// Package mcp is etb's governing proxy for the Model Context Protocol: it
// sits between an MCP client and an upstream MCP server (stdio subprocess
// or streamable HTTP), mirrors the upstream's tools, resources and
// prompts, and puts every tools/call, resources/read and prompts/get
// through the trust boundary (policy → grant → verified execution →
// hash-linked events), decided in process (Embedded) or by `etb serve`
// with this process as the enforcer (Remote).
//
// It owns the mapping of MCP requests to etb.action/v1 documents
// (Describe, DescribeResource, DescribePrompt, DescribeServerStart), tool
// pinning (a tool whose definition changes after it was first seen is
// refused), the governed start of a stdio upstream (in the kernel sandbox
// when the grant's obligations need it), in-band approval through MCP
// elicitation, the session's task and trace context, and the order of the
// per-request steps: decide, verify the grant against the digest of
// exactly what will be forwarded (single use), record start, forward
// (cancelled on revocation, lease loss or timeout), record end (a digest
// and size of the result, never its content) or interrupt.
//
// It must never forward a request, or start an upstream, whose decision is
// not a permit (or an approved require_approval), whose grant does not
// verify, whose tool definition changed, whose obligations cannot be
// enforced, or whose start could not be made durable; every such error
// path refuses and the upstream never sees the request.
package mcp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/etbproject/etb/action"
)

// Version is the proxy's implementation version announced downstream.
const Version = "0.1.0"

// pathKeys are the top-level argument names whose string values (or lists
// of strings) are taken as file paths and resolved into action.target.paths.
var pathKeys = []string{"path", "paths", "source", "destination"}

// Upstream identifies the server a call is forwarded to. It is what the
// action's target records (never anything the agent supplied).
type Upstream struct {
	// Name is the implementation name the upstream announced in initialize.
	Name string
	// Program is the resolved absolute path of the upstream command and
	// ProgramSHA256 the digest of its contents; Argv its arguments. Empty
	// for a remote upstream.
	Program       string
	ProgramSHA256 string
	Argv          []string
	// PID is the upstream process (0 for a remote upstream).
	PID int
	// Host (lower case) and Port locate a remote (HTTP) upstream; empty
	// for a stdio upstream.
	Host string
	Port int64
}

// target is the part of every action's target that names the upstream.
func (up Upstream) target() action.Target {
	return action.Target{Program: up.Program, ProgramSHA256: up.ProgramSHA256,
		Argv: append([]string{}, up.Argv...), Host: strings.ToLower(up.Host), Port: up.Port}
}

// Describe maps one tools/call to the action spec etb governs: kind
// mcp.tool_call, name "SERVER/TOOL", args the single-element list holding
// the RFC 8785 canonical JSON of the arguments object ("{}" when absent),
// and a target naming the upstream (program and argv, or host and port of
// a remote upstream) plus the absolute,
// cleaned paths found under the argument keys path, paths, source and
// destination (relative paths are resolved against cwd). The arguments must
// be a JSON object.
func Describe(up Upstream, tool string, args json.RawMessage, cwd string) (action.Spec, error) {
	if tool == "" {
		return action.Spec{}, errors.New("mcp: tool name is empty")
	}
	if len(args) == 0 || string(args) == "null" {
		args = json.RawMessage("{}")
	}
	var obj map[string]any
	dec := json.NewDecoder(strings.NewReader(string(args)))
	dec.UseNumber()
	if err := dec.Decode(&obj); err != nil || obj == nil {
		return action.Spec{}, fmt.Errorf("mcp: arguments of tool %q are not a JSON object: %.80q", tool, args)
	}
	if dec.More() {
		return action.Spec{}, fmt.Errorf("mcp: arguments of tool %q: trailing data", tool)
	}
	canon, err := action.Canonical(json.RawMessage(args))
	if err != nil {
		return action.Spec{}, fmt.Errorf("mcp: arguments of tool %q: %w", tool, err)
	}
	paths, err := argPaths(obj, cwd)
	if err != nil {
		return action.Spec{}, fmt.Errorf("mcp: arguments of tool %q: %w", tool, err)
	}
	return action.Spec{
		Kind:   action.KindMCPTool,
		Name:   up.Name + "/" + tool,
		Args:   []string{string(canon)},
		Target: withPaths(up.target(), paths),
	}, nil
}

func withPaths(t action.Target, paths []string) action.Target {
	t.Paths = paths
	return t
}

// argPaths collects and resolves the path-like arguments, sorted and
// de-duplicated so the target does not depend on key order.
func argPaths(obj map[string]any, cwd string) ([]string, error) {
	var out []string
	add := func(key string, v any) error {
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("argument %q holds %T, want a string path", key, v)
		}
		if s == "" {
			return fmt.Errorf("argument %q is an empty path", key)
		}
		out = append(out, resolvePath(s, cwd))
		return nil
	}
	for _, k := range pathKeys {
		v, ok := obj[k]
		if !ok {
			continue
		}
		if list, ok := v.([]any); ok {
			for _, e := range list {
				if err := add(k, e); err != nil {
					return nil, err
				}
			}
			continue
		}
		if err := add(k, v); err != nil {
			return nil, err
		}
	}
	sort.Strings(out)
	uniq := out[:0]
	for i, p := range out {
		if i == 0 || p != out[i-1] {
			uniq = append(uniq, p)
		}
	}
	return uniq, nil
}

// resolvePath makes p absolute against cwd (a leading "~/" is the user's
// home, as the filesystem servers expand it), cleans it, and follows the
// symlinks of its longest existing prefix, so that a rule on the path sees
// where the server will really write.
func resolvePath(p, cwd string) string {
	if strings.HasPrefix(p, "~/") {
		if h, err := os.UserHomeDir(); err == nil {
			p = filepath.Join(h, p[2:])
		}
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(cwd, p)
	}
	p = filepath.Clean(p)
	rest := ""
	for dir := p; ; {
		if r, err := filepath.EvalSymlinks(dir); err == nil {
			return filepath.Join(r, rest)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return p
		}
		rest = filepath.Join(filepath.Base(dir), rest)
		dir = parent
	}
}

// ToolHash is the pin of a tool: the SHA-256 of the canonical JSON of its
// name, description and input schema.
func ToolHash(t *sdk.Tool) (string, error) {
	return action.CanonicalHash(struct {
		Name        string `json:"name"`
		Description string `json:"description"`
		InputSchema any    `json:"inputSchema"`
	}{t.Name, t.Description, t.InputSchema})
}

// Options configure a Proxy.
type Options struct {
	// Principal is who the downstream client is (the agent).
	Principal action.Principal
	// Env is copied into every action's env (for example "mode").
	Env map[string]string
	// Cwd resolves relative path arguments; the upstream's working
	// directory. Default: the process's.
	Cwd string
	// Log receives one line per refusal; nil discards.
	Log func(format string, args ...any)
	// Task, if set, is the task of every session instead of one task per
	// session (for a stdio proxy, which has one session: the agent's task
	// id, as etb run --task gives it).
	Task string
	// ParentTask is the parent of every session's task (the agent's own
	// task, for example); empty for a root task.
	ParentTask string
	// PinFile, if set, holds the tool pins (see ReadPins): when it
	// exists its pins are used from the start, and a tool it does not
	// list is refused; when it does not, the pins of the first listing
	// are written to it.
	PinFile string
	// MayPermit, if set, hides from tools/list every tool for which it
	// reports false (policy.Bundle.MayPermit: no rule could permit a call
	// of it). Hidden tools are not callable downstream. It is consulted
	// when a tool is first seen.
	MayPermit func(kind, name string) bool
	// ApprovalWait bounds how long an embedded proxy waits for the user's
	// answer to an elicitation (0: as long as the request lives). A
	// remote proxy waits as its client's Options.ApprovalWait says.
	ApprovalWait time.Duration
}

// Proxy governs one upstream session and serves its tools downstream.
type Proxy struct {
	b        Boundary
	opt      Options
	upstream *sdk.ClientSession
	up       Upstream
	server   *sdk.Server

	mu      sync.Mutex
	pins    map[string]string    // tool name → hash on first sight
	current map[string]*sdk.Tool // upstream's latest definition
	changed map[string]string    // tool name → "pinned X, now Y"
	// mirrored holds the tools offered downstream; pinned is set when
	// the pins came from Options.PinFile (an unlisted tool is refused).
	mirrored map[string]bool
	pinned   bool
	tasks    map[*sdk.ServerSession]string // session → task id
	parked   map[string]*parked            // request state → execution awaiting approval
	relays   map[string]*relay             // request state → call awaiting its client's input (relay.go)
	inflight map[*relay]bool               // calls being forwarded upstream
	// progress routes the upstream's progress notifications to the
	// session whose forwarded request carries the token.
	progress map[string]*route

	resources map[string]*sdk.Resource         // mirrored, by URI
	templates map[string]*sdk.ResourceTemplate // mirrored, by URI template
	prompts   map[string]*sdk.Prompt           // mirrored, by name
}

// New returns a proxy that will govern requests with b. Connect it to an
// upstream before serving.
func New(b Boundary, opt Options) *Proxy {
	if opt.Cwd == "" {
		opt.Cwd, _ = os.Getwd()
	}
	if opt.Log == nil {
		opt.Log = func(string, ...any) {}
	}
	return &Proxy{b: b, opt: opt, pins: map[string]string{}, mirrored: map[string]bool{}, current: map[string]*sdk.Tool{},
		changed: map[string]string{}, tasks: map[*sdk.ServerSession]string{}, parked: map[string]*parked{}, progress: map[string]*route{},
		relays: map[string]*relay{}, inflight: map[*relay]bool{}}
}

// ClientOptions are the upstream client options the proxy needs (it
// follows the upstream's list_changed notifications).
func (p *Proxy) ClientOptions() *sdk.ClientOptions {
	o := p.clientOptions()
	p.passThroughClient(o)
	p.relayHandlers(o)
	return o
}

func (p *Proxy) clientOptions() *sdk.ClientOptions {
	return &sdk.ClientOptions{
		// Input-required results come back to the proxy, which relays
		// their input requests, governed (fulfill in relay.go).
		MultiRoundTrip: &sdk.MultiRoundTripOptions{Disabled: true},
		ProgressNotificationHandler: func(ctx context.Context, req *sdk.ProgressNotificationClientRequest) {
			p.mu.Lock()
			r := p.progress[progressKey(req.Params.ProgressToken)]
			p.mu.Unlock()
			if r != nil {
				// The forwarded request's context: over streamable
				// HTTP it ties the notification to the client's
				// request, whose event stream carries it. Without its
				// cancellation: a notification the go-sdk delivers
				// just after the result (see routeProgress) comes
				// once that request has ended, and is passed on all
				// the same.
				if err := r.ss.NotifyProgress(context.WithoutCancel(r.ctx), req.Params); err != nil {
					p.opt.Log("pass progress downstream: %v", err)
				}
			}
		},
		ToolListChangedHandler: func(ctx context.Context, _ *sdk.ToolListChangedRequest) {
			if !p.connected() {
				return // Connect lists everything once it is done
			}
			if err := p.Refresh(ctx); err != nil {
				p.opt.Log("refresh tools after list_changed: %v", err)
			}
		},
		ResourceListChangedHandler: func(ctx context.Context, _ *sdk.ResourceListChangedRequest) {
			if !p.connected() {
				return // Connect lists everything once it is done
			}
			if err := p.RefreshResources(ctx); err != nil {
				p.opt.Log("refresh resources after list_changed: %v", err)
			}
		},
		PromptListChangedHandler: func(ctx context.Context, _ *sdk.PromptListChangedRequest) {
			if !p.connected() {
				return // Connect lists everything once it is done
			}
			if err := p.RefreshPrompts(ctx); err != nil {
				p.opt.Log("refresh prompts after list_changed: %v", err)
			}
		},
	}
}

// connected reports whether Connect has set up both sides (a
// notification may arrive while it is still running).
func (p *Proxy) connected() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.server != nil && p.upstream != nil
}

// Connect connects to the upstream over t, records what it is (up; Name
// is taken from the upstream's initialize result), pins its tools and
// builds the downstream server mirroring them.
func (p *Proxy) Connect(ctx context.Context, t sdk.Transport, up Upstream) error {
	c := sdk.NewClient(&sdk.Implementation{Name: "etb-mcp-proxy", Version: Version}, p.ClientOptions())
	cs, err := c.Connect(ctx, t, nil)
	if err != nil {
		return fmt.Errorf("mcp: connect upstream: %w", err)
	}
	init := cs.InitializeResult()
	if init == nil || init.ServerInfo == nil || init.ServerInfo.Name == "" {
		cs.Close()
		return errors.New("mcp: upstream announced no implementation name")
	}
	up.Name = init.ServerInfo.Name
	if ct, ok := t.(*sdk.CommandTransport); ok && ct.Command.Process != nil {
		up.PID = ct.Command.Process.Pid
	}
	// Offer downstream what the upstream offers (tools, resources,
	// prompts), each following list changes.
	upCaps := init.Capabilities
	if upCaps == nil {
		upCaps = &sdk.ServerCapabilities{}
	}
	caps := &sdk.ServerCapabilities{}
	if upCaps.Tools != nil {
		caps.Tools = &sdk.ToolCapabilities{ListChanged: true}
	}
	if upCaps.Resources != nil {
		caps.Resources = &sdk.ResourceCapabilities{ListChanged: true}
	}
	if upCaps.Prompts != nil {
		caps.Prompts = &sdk.PromptCapabilities{ListChanged: true}
	}
	sopt := &sdk.ServerOptions{Capabilities: caps}
	p.passThroughServer(upCaps, caps, sopt)
	p.mu.Lock()
	p.upstream, p.up = cs, up
	p.server = sdk.NewServer(&sdk.Implementation{Name: up.Name, Title: "etb governing proxy for " + up.Name, Version: init.ServerInfo.Version},
		sopt)
	p.mu.Unlock()
	var refresh []func(context.Context) error
	if caps.Tools != nil {
		refresh = append(refresh, p.Refresh)
	}
	if caps.Resources != nil {
		refresh = append(refresh, p.RefreshResources)
	}
	if caps.Prompts != nil {
		refresh = append(refresh, p.RefreshPrompts)
	}
	var pf *PinSet
	if p.opt.PinFile != "" {
		var err error
		if pf, err = ReadPins(p.opt.PinFile); err == nil && pf.Server != up.Name {
			err = fmt.Errorf("mcp: pin file %s is for server %q, the upstream is %q", p.opt.PinFile, pf.Server, up.Name)
		}
		switch {
		case err == nil:
			p.mu.Lock()
			maps.Copy(p.pins, pf.Tools)
			p.pinned = true
			p.mu.Unlock()
		case errors.Is(err, os.ErrNotExist):
			pf = nil
		default:
			cs.Close()
			return err
		}
	}
	for _, f := range refresh {
		if err := f(ctx); err != nil {
			cs.Close()
			return err
		}
	}
	if p.opt.PinFile != "" && pf == nil {
		p.mu.Lock()
		set := &PinSet{V: PinsVersion, Server: up.Name, Tools: maps.Clone(p.pins)}
		p.mu.Unlock()
		if err := WritePins(p.opt.PinFile, set); err != nil {
			cs.Close()
			return err
		}
		p.opt.Log("pinned %d tool(s) of %s in %s", len(set.Tools), up.Name, p.opt.PinFile)
	}
	return nil
}

// Server is the downstream server (valid after Connect).
func (p *Proxy) Server() *sdk.Server { return p.server }

// Upstream is the upstream session (valid after Connect).
func (p *Proxy) Upstream() *sdk.ClientSession { return p.upstream }

// Close closes the upstream session.
func (p *Proxy) Close() error {
	if p.upstream == nil {
		return nil
	}
	return p.upstream.Close()
}

// Refresh lists the upstream's tools, pins new ones, marks changed ones as
// refused, and updates the downstream mirror. A changed tool keeps its
// pinned definition downstream and every call to it is refused.
func (p *Proxy) Refresh(ctx context.Context) error {
	seen := map[string]*sdk.Tool{}
	for t, err := range p.upstream.Tools(ctx, nil) {
		if err != nil {
			return fmt.Errorf("mcp: list upstream tools: %w", err)
		}
		seen[t.Name] = t
	}
	var add []*sdk.Tool
	var remove []string
	p.mu.Lock()
	for name, t := range seen {
		h, err := ToolHash(t)
		if err != nil {
			p.mu.Unlock()
			return fmt.Errorf("mcp: pin tool %q: %w", name, err)
		}
		pin, ok := p.pins[name]
		switch {
		case !ok && p.pinned:
			if _, already := p.changed[name]; !already {
				p.opt.Log("tool %q is not in the pin file %s; calls to it are refused", name, p.opt.PinFile)
			}
			p.changed[name] = "not in the pin file, now " + h
		case !ok:
			p.pins[name] = h
		case pin != h:
			if _, already := p.changed[name]; !already {
				p.opt.Log("tool %q changed its definition: pinned %s, now %s; calls to it are refused", name, pin, h)
			}
			p.changed[name] = fmt.Sprintf("pinned %s, now %s", pin, h)
		}
		p.current[name] = t
		if !p.mirrored[name] {
			// Mirrored once, as first seen: a changed tool keeps that
			// definition downstream.
			p.mirrored[name] = true
			add = append(add, t)
		}
	}
	for name := range p.current {
		if _, ok := seen[name]; !ok {
			delete(p.current, name)
			delete(p.mirrored, name)
			remove = append(remove, name)
		}
	}
	p.mu.Unlock()
	if len(remove) > 0 {
		p.server.RemoveTools(remove...)
	}
	for _, t := range add {
		if p.opt.MayPermit != nil && !p.opt.MayPermit(action.KindMCPTool, p.up.Name+"/"+t.Name) {
			p.opt.Log("tool %q is hidden: no rule of the policy can permit it", t.Name)
			continue
		}
		p.mirror(t)
	}
	return nil
}

// mirror adds t to the downstream server with the governing handler.
func (p *Proxy) mirror(t *sdk.Tool) {
	name := t.Name
	safely(p.opt.Log, "tool "+name, func() {
		p.server.AddTool(t, func(ctx context.Context, req *sdk.CallToolRequest) (*sdk.CallToolResult, error) {
			return p.callTool(ctx, req.Session, req.Params)
		})
	})
}

// taskOf returns the session's task: Options.Task if set, else the
// session id (a fresh random id for a stdio session, which has none).
func (p *Proxy) taskOf(ss *sdk.ServerSession) string {
	if p.opt.Task != "" {
		return p.opt.Task
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	t, ok := p.tasks[ss]
	if !ok {
		t = action.NewID(time.Now())
		if ss != nil && ss.ID() != "" {
			t = ss.ID()
		}
		p.tasks[ss] = t
	}
	return t
}

// Refused is the tool result of a call the boundary did not let through.
func Refused(format string, args ...any) *sdk.CallToolResult {
	msg := fmt.Sprintf(format, args...)
	if !strings.HasPrefix(msg, "etb: ") {
		msg = "etb: " + msg
	}
	return &sdk.CallToolResult{IsError: true, Content: []sdk.Content{&sdk.TextContent{Text: msg}}}
}

// CallTool governs one call of tool with the raw arguments from session ss:
// it describes, decides and, only for a verified permit of an unchanged
// tool, forwards the call upstream. A refusal is a result with IsError
// (never forwarded); an error means etb could not govern the call.
func (p *Proxy) CallTool(ctx context.Context, ss *sdk.ServerSession, tool string, args json.RawMessage, meta sdk.Meta) (*sdk.CallToolResult, error) {
	return p.callTool(ctx, ss, &sdk.CallToolParamsRaw{Name: tool, Arguments: args, Meta: meta})
}

// callTool is CallTool for the call's params: a call that carries a
// request state resumes the execution parked for its approval (see
// approval.go).
func (p *Proxy) callTool(ctx context.Context, ss *sdk.ServerSession, params *sdk.CallToolParamsRaw) (*sdk.CallToolResult, error) {
	tool, meta, args := params.Name, params.Meta, params.Arguments
	spec, err := Describe(p.up, tool, args, p.opt.Cwd)
	if err != nil {
		p.opt.Log("refused: %v", err)
		return Refused("refused: %v", err), nil
	}
	p.mu.Lock()
	def := p.current[tool]
	change, changed := p.changed[tool]
	pin := p.pins[tool]
	p.mu.Unlock()
	if def == nil {
		return Refused("refused: tool %q is not offered by %s", tool, p.up.Name), nil
	}
	env := map[string]string{"mcp.tool": tool, "mcp.tool_sha256": pin}
	for k, v := range annotationEnv(def.Annotations) {
		env[k] = v
	}
	refusal := ""
	if changed {
		refusal = fmt.Sprintf("tool %q changed its definition since it was first seen (%s)", tool, change)
	}
	// What is forwarded is exactly the canonical arguments the grant's
	// digest covers.
	fwd := json.RawMessage(spec.Args[0])
	digest, err := spec.Digest()
	if err != nil {
		return Refused("refused: %v", err), nil
	}
	extra := func(r *request) { r.ask = p.asker(ss) }
	if params.RequestState != "" {
		// The client's answer to an input request of a call in flight
		// (relay.go), or to an approval (approval.go).
		if res, ok, err := relayResume(ctx, p, ss, params.RequestState, digest, params.InputResponses, toolInput); ok {
			if err != nil {
				p.opt.Log("refused %s: %v", spec.Name, err)
				return Refused("refused: %v", err), nil
			}
			return res, nil
		}
		rs, err := p.resume(ss, params.RequestState, digest, params.InputResponses)
		if err != nil {
			p.opt.Log("refused %s: %v", spec.Name, err)
			return Refused("refused: %v", err), nil
		}
		extra = func(r *request) { r.resume = rs }
	}
	return relayRun(ctx, p, ss, digest, func(ctx context.Context) (*sdk.CallToolResult, error) {
		var res *sdk.CallToolResult
		refused, err := p.govern(ctx, ss, meta, spec, env, refusal, func(ctx context.Context, _ granted) (any, bool, error) {
			defer p.routeProgress(ctx, params.GetProgressToken(), ss)()
			defer p.forwarding(ctx)()
			r, err := fulfill(ctx, p, func(r *sdk.CallToolResult) (sdk.InputRequestMap, string) { return r.InputRequests, r.RequestState },
				func(ctx context.Context, state string, answers sdk.InputResponseMap) (*sdk.CallToolResult, error) {
					return p.upstream.CallTool(ctx, &sdk.CallToolParams{Meta: meta, Name: tool, Arguments: fwd,
						RequestState: state, InputResponses: answers})
				})
			if err != nil {
				return nil, false, err
			}
			res = r
			return r, r.IsError, nil
		}, extra)
		var ask *needsApproval
		if errors.As(err, &ask) {
			return approvalRequest(ask), nil
		}
		if err != nil {
			return nil, err
		}
		if refused != "" {
			return Refused("%s", refused), nil
		}
		return res, nil
	}, toolInput)
}

// toolInput is a tools/call result asking for input.
func toolInput(state string, m sdk.InputRequestMap) *sdk.CallToolResult {
	return &sdk.CallToolResult{RequestState: state, InputRequests: m}
}

// govern runs one request through the boundary: the action is spec in
// the session's task, with the proxy's env, extraEnv and the request's
// trace context; forward is called only for a verified grant of exactly
// spec and a durable start. It returns a non-empty refusal message when
// the request was not forwarded or was cut short by the boundary, and an
// error when etb could not govern it (nothing was forwarded, or the
// outcome could not be recorded) or the upstream failed.
func (p *Proxy) govern(ctx context.Context, ss *sdk.ServerSession, meta sdk.Meta, spec action.Spec, extraEnv map[string]string,
	refusal string, forward forwardFunc, opts ...func(*request)) (string, error) {
	env := map[string]string{}
	for k, v := range p.opt.Env {
		env[k] = v
	}
	env["mcp.server"] = p.up.Name
	for k, v := range extraEnv {
		env[k] = v
	}
	tp, err := traceParent(meta)
	if err != nil {
		p.opt.Log("refused %s: %v", spec.Name, err)
		return "etb: refused: " + err.Error(), nil
	}
	if tp != "" {
		env[EnvTraceParent] = tp
	}
	a := &action.Action{Principal: p.opt.Principal, Action: spec,
		Task: action.Task{ID: p.taskOf(ss), ParentID: p.opt.ParentTask}, Env: env}
	r := &request{a: a, pid: p.up.PID, refusal: refusal, forward: forward, log: p.opt.Log}
	for _, o := range opts {
		o(r)
	}
	return p.b.run(ctx, r)
}

// progressKey is the map key of a progress token (a string or a number).
func progressKey(token any) string { return fmt.Sprintf("%T:%v", token, token) }

// routeProgress sends the upstream's progress notifications for token to
// ss while a forwarded request runs; the returned func stops it a second
// later (the go-sdk may deliver a notification sent just before the
// result after it). A token routed to another session is not taken over.
func (p *Proxy) routeProgress(ctx context.Context, token any, ss *sdk.ServerSession) func() {
	if token == nil || ss == nil {
		return func() {}
	}
	k := progressKey(token)
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.progress[k]
	switch {
	case r == nil:
		r = &route{ss: ss, ctx: ctx}
		p.progress[k] = r
	case r.ss != ss:
		return func() {}
	}
	r.n++
	return func() {
		time.AfterFunc(time.Second, func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			if r.n--; r.n == 0 && p.progress[k] == r {
				delete(p.progress, k)
			}
		})
	}
}

// route is where progress notifications of a token go, and how many
// forwarded requests use it.
type route struct {
	ss  *sdk.ServerSession
	ctx context.Context // of the first forwarded request using the token
	n   int
}

// annotationEnv renders a tool's declared annotations as env entries for
// rules: mcp.annotations (canonical JSON, "{}" when none) and one
// mcp.<hint> entry ("true"/"false") per hint the tool declares.
func annotationEnv(a *sdk.ToolAnnotations) map[string]string {
	env := map[string]string{"mcp.annotations": "{}"}
	if a == nil {
		return env
	}
	if c, err := action.Canonical(a); err == nil {
		env["mcp.annotations"] = string(c)
	}
	env["mcp.read_only_hint"] = strconv.FormatBool(a.ReadOnlyHint)
	env["mcp.idempotent_hint"] = strconv.FormatBool(a.IdempotentHint)
	if a.DestructiveHint != nil {
		env["mcp.destructive_hint"] = strconv.FormatBool(*a.DestructiveHint)
	}
	if a.OpenWorldHint != nil {
		env["mcp.open_world_hint"] = strconv.FormatBool(*a.OpenWorldHint)
	}
	return env
}

func joinOr(s []string, empty string) string {
	if len(s) == 0 {
		return empty
	}
	return strings.Join(s, ", ")
}

// commandFile is the command that runs the upstream described by spec
// from prog, the open file whose contents spec's hash is of: the child
// executes it as /proc/self/fd/3 (kept open, so a "#!" script works), in a
// process group of its own, killed if etb dies.
func commandFile(spec action.Spec, prog *os.File) (*exec.Cmd, Upstream) {
	t := spec.Target
	cmd := &exec.Cmd{Path: "/proc/self/fd/3", Args: append([]string{t.Program}, spec.Args...), Dir: t.Cwd,
		ExtraFiles: []*os.File{prog}, Stderr: os.Stderr,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}}
	return cmd, Upstream{Program: t.Program, ProgramSHA256: t.ProgramSHA256, Argv: append([]string{}, spec.Args...)}
}
