package mcp

import (
	"context"
	"fmt"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/etbproject/etb/gateway"
	"github.com/etbproject/etb/lineage"
)

// An embedded proxy asks the downstream client's user to approve a
// require_approval tools/call, resources/read or prompts/get through MCP
// elicitation, in the form the protocol lets a server ask while serving a
// request: the result carries an
// input request (SEP-2322 multi round-trip; the go-sdk turns it into an
// elicitation/create request for clients of older protocol versions) and
// an opaque request state; the client calls again with the same arguments,
// the state and the answer. The execution waits, parked, between the two
// calls: only the session it was asked in, with arguments of the same
// action digest, can resume it, once.

// approvalInput is the id of the approval's input request.
const approvalInput = "etb-approval"

// defaultApprovalWait bounds an unanswered elicitation when
// Options.ApprovalWait is 0.
const defaultApprovalWait = 2 * time.Minute

// parked is an execution waiting for its approver's answer.
type parked struct {
	ex       *gateway.Execution
	ss       *sdk.ServerSession
	approver string
	timer    *time.Timer
}

// needsApproval is what the boundary returns instead of a result when it
// parked the execution: the tool result must ask for input.
type needsApproval struct {
	state  string
	prompt string
}

func (n *needsApproval) Error() string { return "etb: approval requested: " + n.prompt }

// resumed is the approver's answer to a parked execution.
type resumed struct {
	ex       *gateway.Execution
	approver string
	ok       bool
}

// approverOf returns the approver name of ss's client when it declared the
// elicitation capability ("mcp-elicitation:NAME"), else "".
func approverOf(ss *sdk.ServerSession) string {
	if ss == nil {
		return ""
	}
	ip := ss.InitializeParams()
	if ip == nil || ip.Capabilities == nil || ip.Capabilities.Elicitation == nil {
		return ""
	}
	name := "unnamed-client"
	if ip.ClientInfo != nil && ip.ClientInfo.Name != "" {
		name = ip.ClientInfo.Name
	}
	return "mcp-elicitation:" + name
}

// asker returns how the boundary parks an execution of session ss until
// its user answers, or nil when ss's client cannot be asked.
func (p *Proxy) asker(ss *sdk.ServerSession) func(ex *gateway.Execution) string {
	approver := approverOf(ss)
	if approver == "" {
		return nil
	}
	return func(ex *gateway.Execution) string {
		state := newState()
		wait := p.opt.ApprovalWait
		if wait <= 0 {
			wait = defaultApprovalWait
		}
		pk := &parked{ex: ex, ss: ss, approver: approver}
		p.mu.Lock()
		p.parked[state] = pk
		p.mu.Unlock()
		pk.timer = time.AfterFunc(wait, func() {
			if p.unpark(state) == nil {
				return // answered meanwhile
			}
			p.expire(pk, fmt.Sprintf("%s did not answer within %s", approver, wait))
		})
		return state
	}
}

// expire ends a parked execution that will not be resumed.
func (p *Proxy) expire(pk *parked, why string) {
	ex := pk.ex
	p.opt.Log("%s (execution %s): approval expired: %s", ex.Action.Action.Name, ex.ID, why)
	if err := ex.Record(context.Background(), lineage.TypeInterrupt, lineage.InterruptBody{Reason: "approval_expired", Detail: why}); err != nil {
		p.opt.Log("record approval expiry of %s: %v", ex.ID, err)
	}
}

// unpark removes and returns the execution parked under state.
func (p *Proxy) unpark(state string) *parked { return take(p, p.parked, state) }

// take removes and returns m[key] under p.mu (the zero value if absent):
// whoever takes a parked request owns it.
func take[V any](p *Proxy, m map[string]V, key string) V {
	p.mu.Lock()
	defer p.mu.Unlock()
	v := m[key]
	delete(m, key)
	return v
}

// resume takes the execution parked under state for a call from ss whose
// action has digest, with the client's input responses. It refuses an
// unknown state, another session, or other arguments.
func (p *Proxy) resume(ss *sdk.ServerSession, state, digest string, responses sdk.InputResponseMap) (*resumed, error) {
	pk := p.unpark(state)
	switch {
	case pk == nil:
		return nil, fmt.Errorf("request state %.40q is unknown, expired or already used", state)
	}
	pk.timer.Stop()
	var err error
	switch {
	case pk.ss != ss:
		err = fmt.Errorf("approval state %.40q belongs to another session", state)
	case pk.ex.Digest != digest:
		err = fmt.Errorf("the approval was asked for action %s, this call is %s: the arguments changed", pk.ex.Digest, digest)
	}
	if err != nil {
		p.expire(pk, err.Error())
		return nil, err
	}
	res, _ := responses[approvalInput].(*sdk.ElicitResult)
	ok := res != nil && res.Action == "accept" && res.Content["approve"] == true
	return &resumed{ex: pk.ex, approver: pk.approver, ok: ok}, nil
}

// approvalRequest is the tool result that asks for the approval.
func approvalRequest(n *needsApproval) *sdk.CallToolResult {
	return &sdk.CallToolResult{RequestState: n.state, InputRequests: approvalInputs(n)}
}

// approvalInputs is the input request that asks for the approval.
func approvalInputs(n *needsApproval) sdk.InputRequestMap {
	return sdk.InputRequestMap{
		approvalInput: &sdk.ElicitParams{Message: n.prompt, RequestedSchema: map[string]any{
			"type": "object",
			"properties": map[string]any{"approve": map[string]any{"type": "boolean",
				"description": "true to approve exactly this request"}},
			"required": []string{"approve"},
		}},
	}
}
