package mcp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/etbproject/etb/action"
)

// While it serves a forwarded request (tools/call, resources/read,
// prompts/get), the upstream may ask the client for input: an LLM
// completion (sampling/createMessage), the user's answer
// (elicitation/create) or the client's roots (roots/list). Under protocol
// 2026-07-28 it does so with input requests in an input-required result
// (SEP-2322), which the proxy's upstream client hands back to the proxy
// (fulfill); before, sampling and elicitation come as requests of their own
// (relayHandlers), tied to the latest call in flight. The proxy relays
// each to the downstream client in the one form a server may use while
// serving a request: the downstream result carries the input request and
// an opaque request state; the client sends the same request again with
// the state and its answer (older clients get a real request from the
// go-sdk server, which calls the handler again for them).
//
// Each relayed request is an action of its own (KindSampling,
// KindElicitation, KindRoots) in the session's task, decided by policy
// before the client sees it; a refusal is an error to the upstream, which
// never sees the client. The forwarded request keeps running, under its
// grant and lease, while the client answers: it runs beside the downstream
// request, which only waits for its outcome or its next input request.
// Only the session the request came from, with arguments of the same
// action digest, may answer, once per state; an unanswered request ends
// after Options.ApprovalWait (default two minutes).

// Kinds of the upstream's requests for client input.
const (
	KindSampling    = "mcp.sampling"
	KindElicitation = "mcp.elicitation"
	KindRoots       = "mcp.roots"
)

// relayKey carries a call's *relay in the context of its upstream request.
type relayKey struct{}

// relay is one forwarded request (tools/call, resources/read, prompts/get)
// and the input requests the upstream makes while serving it.
type relay struct {
	ss     *sdk.ServerSession
	digest string // the call's action digest: an answer must come with the same call
	cancel context.CancelFunc
	asks   chan *inputAsk    // from the upstream's requests to the waiting downstream request
	done   chan relayOutcome // the call's outcome, buffered
	start  time.Time         // when the forward began (to pick among calls in flight)
	mu     sync.Mutex        // guards the fields below
	ask    *inputAsk         // the input request the client was given, while parked
	timer  *time.Timer       // ends the request if the client does not answer
}

type relayOutcome struct {
	res any // the request's result type
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

// relayRun runs run (which governs and forwards one request) beside the
// downstream request ctx, and returns what the client gets: the outcome,
// or the first input request, as needInput makes it into a result.
func relayRun[R any](ctx context.Context, p *Proxy, ss *sdk.ServerSession, digest string,
	run func(ctx context.Context) (R, error), needInput func(state string, m sdk.InputRequestMap) R) (R, error) {
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	rel := &relay{ss: ss, digest: digest, cancel: cancel, asks: make(chan *inputAsk), done: make(chan relayOutcome, 1)}
	bg = context.WithValue(bg, relayKey{}, rel)
	go func() {
		defer cancel()
		res, err := run(bg)
		rel.done <- relayOutcome{res, err}
	}()
	return relayAwait(ctx, p, rel, needInput)
}

// relayAwait waits for rel's outcome or its next input request.
func relayAwait[R any](ctx context.Context, p *Proxy, rel *relay, needInput func(string, sdk.InputRequestMap) R) (R, error) {
	var zero R
	select {
	case out := <-rel.done:
		res, _ := out.res.(R)
		return res, out.err
	case ask := <-rel.asks:
		state := newState()
		wait := p.opt.ApprovalWait
		if wait <= 0 {
			wait = defaultApprovalWait
		}
		// Parked under state with its timer set before anyone can take
		// it: relayResume takes rel.mu after taking it from p.relays.
		rel.mu.Lock()
		rel.ask = ask
		p.mu.Lock()
		p.relays[state] = rel
		p.mu.Unlock()
		rel.timer = time.AfterFunc(wait, func() {
			if p.takeRelay(state) != nil {
				p.opt.Log("input request %s: the client did not answer within %s; ending the request", ask.id, wait)
				ask.answer <- inputAnswer{err: fmt.Errorf("etb: the client did not answer within %s", wait)}
				rel.cancel()
			}
		})
		rel.mu.Unlock()
		return needInput(state, sdk.InputRequestMap{ask.id: ask.req}), nil
	case <-ctx.Done():
		// The client gave up on the request: so does the proxy (the
		// upstream gets notifications/cancelled, the execution its
		// interrupt).
		rel.cancel()
		out := <-rel.done
		if out.err == nil {
			out.err = ctx.Err()
		}
		return zero, out.err
	}
}

// takeRelay removes and returns the request parked under state.
func (p *Proxy) takeRelay(state string) *relay { return take(p, p.relays, state) }

// relayResume gives the client's answer to the request parked under state
// and waits for what comes next. ok is false when no request is parked
// under state (it may be an approval's).
func relayResume[R any](ctx context.Context, p *Proxy, ss *sdk.ServerSession, state, digest string, responses sdk.InputResponseMap,
	needInput func(string, sdk.InputRequestMap) R) (_ R, ok bool, err error) {
	var zero R
	rel := p.takeRelay(state)
	if rel == nil {
		return zero, false, nil
	}
	rel.mu.Lock()
	rel.timer.Stop()
	ask := rel.ask
	rel.ask = nil
	rel.mu.Unlock()
	var refuse error
	switch {
	case rel.ss != ss:
		refuse = fmt.Errorf("request state %.40q belongs to another session", state)
	case rel.digest != digest:
		refuse = fmt.Errorf("the input was asked for action %s, this request is %s: the arguments changed", rel.digest, digest)
	}
	if refuse != nil {
		ask.answer <- inputAnswer{err: fmt.Errorf("etb: %w", refuse)}
		rel.cancel()
		<-rel.done
		return zero, true, refuse
	}
	if r, found := responses[ask.id]; found && r != nil {
		ask.answer <- inputAnswer{res: r}
	} else {
		ask.answer <- inputAnswer{err: fmt.Errorf("etb: the client gave no answer to input request %s", ask.id)}
	}
	res, err := relayAwait(ctx, p, rel, needInput)
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
		return nil, fmt.Errorf("etb: %s is relayed to a client only while the proxy serves one of its requests", method)
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

// inputResult is a result that may ask for input (SEP-2322).
type inputResult interface {
	*sdk.CallToolResult | *sdk.ReadResourceResult | *sdk.GetPromptResult
	NeedsInput() bool
}

// maxInputRounds bounds how many times one request may ask for input.
const maxInputRounds = 10

// fulfill calls the upstream (call, with the request state and answers of
// the previous round), and while the result asks for input relays each
// input request to the client (askInput, each governed) and calls again
// with the answers. The upstream client's own automatic fulfilment is off
// (Connect), so that every input request is tied to the request it came
// with.
func fulfill[R inputResult](ctx context.Context, p *Proxy, inputs func(R) (sdk.InputRequestMap, string),
	call func(ctx context.Context, state string, answers sdk.InputResponseMap) (R, error)) (R, error) {
	var state string
	var answers sdk.InputResponseMap
	for round := 0; ; round++ {
		r, err := call(ctx, state, answers)
		if err != nil || r == nil || !r.NeedsInput() {
			return r, err
		}
		var reqs sdk.InputRequestMap
		reqs, state = inputs(r)
		if len(reqs) == 0 || round+1 >= maxInputRounds {
			var zero R
			return zero, fmt.Errorf("etb: the upstream asked for input %d times (at most %d), or asked for none", round+1, maxInputRounds)
		}
		answers = make(sdk.InputResponseMap, len(reqs))
		for _, id := range slices.Sorted(maps.Keys(reqs)) {
			a, err := p.askInput(ctx, reqs[id])
			if err != nil {
				var zero R
				return zero, fmt.Errorf("etb: input request %q of the upstream: %w", id, err)
			}
			answers[id] = a
		}
	}
}

// askInput relays one input request of the upstream (of any kind) and
// checks that the answer is of the kind asked.
func (p *Proxy) askInput(ctx context.Context, ir sdk.InputRequest) (sdk.InputResponse, error) {
	var r sdk.InputResponse
	var err error
	ok := false
	switch ir := ir.(type) {
	case *sdk.CreateMessageParams:
		r, err = p.askClient(ctx, KindSampling, "sampling/createMessage", ir, samplingCap)
		_, ok = r.(*sdk.CreateMessageWithToolsResult)
	case *sdk.CreateMessageWithToolsParams:
		r, err = p.askClient(ctx, KindSampling, "sampling/createMessage", ir, samplingCap)
		_, ok = r.(*sdk.CreateMessageWithToolsResult)
	case *sdk.ElicitParams:
		r, err = p.askClient(ctx, KindElicitation, "elicitation/create", ir, elicitationCap)
		_, ok = r.(*sdk.ElicitResult)
	case *sdk.ListRootsParams:
		r, err = p.askClient(ctx, KindRoots, "roots/list", ir, rootsCap)
		_, ok = r.(*sdk.ListRootsResult)
	default:
		return nil, fmt.Errorf("unknown input request %T", ir)
	}
	switch {
	case err != nil:
		return nil, err
	case !ok:
		return nil, fmt.Errorf("the client answered %T with %T", ir, r)
	}
	return r, nil
}

func samplingCap(c *sdk.ClientCapabilities) bool    { return c.Sampling != nil }
func elicitationCap(c *sdk.ClientCapabilities) bool { return c.Elicitation != nil }
func rootsCap(c *sdk.ClientCapabilities) bool       { return c.RootsV2 != nil }

// relayHandlers makes the upstream client relay sampling and elicitation
// requests of their own (protocol versions before 2026-07-28), and so
// declare both capabilities upstream. Such a request is tied to the latest
// call in flight (relayOf). A roots/list of its own is answered by the
// upstream client from its own, empty, list: it is not tied to a call (a
// server typically asks right after initialization), and a client's roots
// are disclosed only through a relay tied to a request.
func (p *Proxy) relayHandlers(o *sdk.ClientOptions) {
	o.CreateMessageWithToolsHandler = func(ctx context.Context, req *sdk.CreateMessageWithToolsRequest) (*sdk.CreateMessageWithToolsResult, error) {
		r, err := p.askClient(ctx, KindSampling, "sampling/createMessage", req.Params, samplingCap)
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
		r, err := p.askClient(ctx, KindElicitation, "elicitation/create", req.Params, elicitationCap)
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

// newState returns a fresh opaque request state: 128 bits from
// crypto/rand, hex. With the session and the action digest it is what lets
// a client answer a parked approval or input request, so all of it is
// random (unlike action.NewID, whose first 48 bits are the time).
func newState() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
