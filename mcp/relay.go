package mcp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/etbproject/etb/action"
)

// While a forwarded tools/call runs, the upstream may ask the client for
// input: an LLM completion (sampling/createMessage) or the user's answer
// (elicitation/create), either as a request of its own (protocol versions
// before 2026-07-28) or as input requests in an input-required result,
// which the go-sdk client fulfills through the same handlers. The proxy
// relays each to the downstream client in the one form a server may use
// while serving a request: the downstream call's result carries the input
// request and an opaque request state; the client calls again with the
// same arguments, the state and its answer (older clients get a real
// request from the go-sdk server, which calls the tool again for them).
//
// Each relayed request is an action of its own (KindSampling,
// KindElicitation, KindRoots) in the session's task, decided by policy before the
// client sees it; a refusal is an error to the upstream, which never sees
// the client. The forwarded call keeps running, under its grant and lease,
// while the client answers: it runs beside the downstream request, which
// only waits for its outcome or its next input request. Only the session
// the call came from, with arguments of the same action digest, may
// answer, once per state; an unanswered request ends the call after
// Options.ApprovalWait (default two minutes).

// Kinds of the upstream's requests for client input.
const (
	KindSampling    = "mcp.sampling"
	KindElicitation = "mcp.elicitation"
	KindRoots       = "mcp.roots"
)

// relayKey carries a call's *relay in the context of its upstream request.
type relayKey struct{}

// relay is one forwarded tools/call and the input requests it makes.
type relay struct {
	ss     *sdk.ServerSession
	digest string // the call's action digest: an answer must come with the same call
	cancel context.CancelFunc
	asks   chan *inputAsk    // from the upstream's requests to the waiting downstream request
	done   chan relayOutcome // the call's outcome, buffered
	start  time.Time         // when the forward began (to pick among calls in flight)
	mu     sync.Mutex        // guards the fields below
	state  string            // the request state it is parked under, "" when a downstream request waits
	ask    *inputAsk         // the input request the client was given
	timer  *time.Timer       // ends the call if the client does not answer
	closed bool
}

type relayOutcome struct {
	res *sdk.CallToolResult
	err error
}

// inputAsk is one input request waiting for the client's answer.
type inputAsk struct {
	id     string
	req    sdk.InputRequest
	answer chan inputAnswer // buffered
}

type inputAnswer struct {
	res sdk.InputResponse
	err error
}

// relayCall runs govern for a tools/call beside the downstream request and
// returns what the client gets: the call's result, or its first input
// request.
func (p *Proxy) relayCall(ctx context.Context, ss *sdk.ServerSession, digest string,
	run func(ctx context.Context) (*sdk.CallToolResult, error)) (*sdk.CallToolResult, error) {
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	rel := &relay{ss: ss, digest: digest, cancel: cancel, asks: make(chan *inputAsk), done: make(chan relayOutcome, 1)}
	bg = context.WithValue(bg, relayKey{}, rel)
	go func() {
		defer cancel()
		res, err := run(bg)
		rel.done <- relayOutcome{res, err}
	}()
	return p.await(ctx, rel)
}

// await waits for rel's outcome or its next input request.
func (p *Proxy) await(ctx context.Context, rel *relay) (*sdk.CallToolResult, error) {
	select {
	case out := <-rel.done:
		return out.res, out.err
	case ask := <-rel.asks:
		state := newState()
		wait := p.opt.ApprovalWait
		if wait <= 0 {
			wait = defaultApprovalWait
		}
		rel.mu.Lock()
		rel.state, rel.ask = state, ask
		rel.timer = time.AfterFunc(wait, func() {
			if p.takeRelay(state) != nil {
				p.opt.Log("input request %s: the client did not answer within %s; ending the call", ask.id, wait)
				ask.answer <- inputAnswer{err: fmt.Errorf("etb: the client did not answer within %s", wait)}
				rel.cancel()
			}
		})
		rel.mu.Unlock()
		p.mu.Lock()
		p.relays[state] = rel
		p.mu.Unlock()
		return &sdk.CallToolResult{RequestState: state, InputRequests: sdk.InputRequestMap{ask.id: ask.req}}, nil
	case <-ctx.Done():
		// The client gave up on the call: so does the proxy (the
		// upstream gets notifications/cancelled, the execution its
		// interrupt).
		rel.cancel()
		out := <-rel.done
		if out.err == nil {
			out.err = ctx.Err()
		}
		return nil, out.err
	}
}

// takeRelay removes and returns the call parked under state.
func (p *Proxy) takeRelay(state string) *relay {
	p.mu.Lock()
	defer p.mu.Unlock()
	rel := p.relays[state]
	delete(p.relays, state)
	return rel
}

// resumeRelay gives the client's answer to the call parked under state
// and waits for what comes next. ok is false when no call is parked under
// state (it may be an approval's).
func (p *Proxy) resumeRelay(ctx context.Context, ss *sdk.ServerSession, state, digest string, responses sdk.InputResponseMap) (_ *sdk.CallToolResult, ok bool, err error) {
	rel := p.takeRelay(state)
	if rel == nil {
		return nil, false, nil
	}
	rel.mu.Lock()
	rel.timer.Stop()
	ask := rel.ask
	rel.state, rel.ask = "", nil
	rel.mu.Unlock()
	var refuse error
	switch {
	case rel.ss != ss:
		refuse = fmt.Errorf("request state %.40q belongs to another session", state)
	case rel.digest != digest:
		refuse = fmt.Errorf("the input was asked for action %s, this call is %s: the arguments changed", rel.digest, digest)
	}
	if refuse != nil {
		ask.answer <- inputAnswer{err: fmt.Errorf("etb: %w", refuse)}
		rel.cancel()
		<-rel.done
		return nil, true, refuse
	}
	if r, found := responses[ask.id]; found && r != nil {
		ask.answer <- inputAnswer{res: r}
	} else {
		ask.answer <- inputAnswer{err: fmt.Errorf("etb: the client gave no answer to input request %s", ask.id)}
	}
	res, err := p.await(ctx, rel)
	return res, true, err
}

// relayOf returns the call an upstream request for input belongs to: the
// one whose forward carries ctx, else (a request of its own, on a
// transport that does not tie it to a call) the latest call in flight,
// provided every call in flight is from one session. Nil when none.
func (p *Proxy) relayOf(ctx context.Context) *relay {
	if rel, ok := ctx.Value(relayKey{}).(*relay); ok {
		return rel
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var latest *relay
	for rel := range p.inflight {
		if latest != nil && latest.ss != rel.ss {
			return nil
		}
		if latest == nil || rel.start.After(latest.start) {
			latest = rel
		}
	}
	return latest
}

// forwarding marks rel as in flight upstream until the returned func runs.
func (p *Proxy) forwarding(ctx context.Context) func() {
	rel, ok := ctx.Value(relayKey{}).(*relay)
	if !ok {
		return func() {}
	}
	p.mu.Lock()
	rel.start = time.Now()
	p.inflight[rel] = true
	p.mu.Unlock()
	return func() {
		p.mu.Lock()
		delete(p.inflight, rel)
		p.mu.Unlock()
	}
}

// askClient governs an upstream request for client input (kind, the
// request's method, its params) and relays it to the client of the call it
// belongs to, returning the client's answer.
func (p *Proxy) askClient(ctx context.Context, kind, method string, params sdk.InputRequest, supported func(*sdk.ClientCapabilities) bool) (sdk.InputResponse, error) {
	rel := p.relayOf(ctx)
	if rel == nil {
		return nil, fmt.Errorf("etb: %s is relayed to the client only while one of its tool calls runs", method)
	}
	if ip := rel.ss.InitializeParams(); ip == nil || ip.Capabilities == nil || !supported(ip.Capabilities) {
		return nil, fmt.Errorf("etb: the client did not declare the capability %s needs", method)
	}
	raw, err := json.Marshal(params)
	if err != nil {
		return nil, fmt.Errorf("etb: %s params: %w", method, err)
	}
	args, err := action.Canonical(json.RawMessage(raw))
	if err != nil {
		return nil, fmt.Errorf("etb: %s params: %w", method, err)
	}
	spec := action.Spec{Kind: kind, Name: p.up.Name + "/" + method, Args: []string{string(args)}, Target: p.up.target()}
	var answer sdk.InputResponse
	refused, err := p.govern(ctx, rel.ss, nil, spec, map[string]string{"mcp.method": method}, "",
		func(ctx context.Context, _ granted) (any, bool, error) {
			ask := &inputAsk{id: "etb-" + newState()[:16], req: params, answer: make(chan inputAnswer, 1)}
			select {
			case rel.asks <- ask:
			case <-ctx.Done():
				return nil, false, ctx.Err()
			}
			select {
			case a := <-ask.answer:
				if a.err != nil {
					return nil, false, a.err
				}
				answer = a.res
				return a.res, false, nil
			case <-ctx.Done():
				return nil, false, ctx.Err()
			}
		})
	switch {
	case err != nil:
		return nil, err
	case refused != "":
		return nil, errors.New(refused)
	}
	return answer, nil
}

// relayRoots is a receiving middleware of the upstream client: a roots/list
// request of its own made during a tool call is relayed to that call's
// client (as sampling is); outside a call, the upstream client answers from
// its own (empty) list, as it did before relaying. (An input request for
// roots is answered by the go-sdk client itself, without middleware: the
// same empty list.)
func (p *Proxy) relayRoots(next sdk.MethodHandler) sdk.MethodHandler {
	return func(ctx context.Context, method string, req sdk.Request) (sdk.Result, error) {
		if method != "roots/list" || p.relayOf(ctx) == nil {
			return next(ctx, method, req)
		}
		r, err := p.askClient(ctx, KindRoots, method, &sdk.ListRootsParams{},
			func(c *sdk.ClientCapabilities) bool { return c.RootsV2 != nil || c.Roots != (sdk.RootCapabilities{}) })
		if err != nil {
			return nil, err
		}
		res, ok := r.(*sdk.ListRootsResult)
		if !ok {
			return nil, fmt.Errorf("etb: the client answered roots/list with %T", r)
		}
		return res, nil
	}
}

// relayHandlers makes the upstream client relay sampling and elicitation
// (and so declare both capabilities upstream).
func (p *Proxy) relayHandlers(o *sdk.ClientOptions) {
	o.CreateMessageWithToolsHandler = func(ctx context.Context, req *sdk.CreateMessageWithToolsRequest) (*sdk.CreateMessageWithToolsResult, error) {
		r, err := p.askClient(ctx, KindSampling, "sampling/createMessage", req.Params,
			func(c *sdk.ClientCapabilities) bool { return c.Sampling != nil })
		if err != nil {
			return nil, err
		}
		res, ok := r.(*sdk.CreateMessageWithToolsResult)
		if !ok {
			return nil, fmt.Errorf("etb: the client answered sampling with %T", r)
		}
		return res, nil
	}
	o.ElicitationHandler = func(ctx context.Context, req *sdk.ElicitRequest) (*sdk.ElicitResult, error) {
		r, err := p.askClient(ctx, KindElicitation, "elicitation/create", req.Params,
			func(c *sdk.ClientCapabilities) bool { return c.Elicitation != nil })
		if err != nil {
			return nil, err
		}
		res, ok := r.(*sdk.ElicitResult)
		if !ok {
			return nil, fmt.Errorf("etb: the client answered elicitation with %T", r)
		}
		return res, nil
	}
}

// newState returns a fresh opaque request state (128 random bits, hex).
func newState() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
