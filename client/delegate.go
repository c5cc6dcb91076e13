package client

import (
	"context"
	"fmt"
	"net/http"

	"github.com/etbproject/etb/grant"
)

// DelegationRequest asks the gateway for a delegation grant: Agent (a
// sub-agent's SPIFFE ID) may then request grants for actions within Scope,
// in a new task below Task, for at most TTLSeconds, and may delegate further
// at most Depth levels. Delegation, if the caller itself acts under one,
// is that grant: the new one is its child and can be no wider.
type DelegationRequest struct {
	Agent      string      `json:"agent"`
	Scope      grant.Scope `json:"scope"`
	Depth      int         `json:"depth"`
	TTLSeconds int64       `json:"ttl_seconds"`
	Task       Task        `json:"task"`
	Delegation string      `json:"delegation,omitempty"`
}

// Delegation is a granted delegation: hand Grant and Task to the
// sub-agent, which passes them as Task{Delegation: Grant} in its own
// Decide calls.
type Delegation struct {
	*Authorization
	// Task is the sub-agent's task.
	Task string
}

// Delegate asks for a delegation grant for a sub-agent. The request is an
// action (kind agent.delegate) the policy decides like any other; a
// decision other than permit is returned with an error.
func (c *Client) Delegate(ctx context.Context, req DelegationRequest) (*Delegation, error) {
	var out Authorization
	if err := c.do(ctx, c.hc, http.MethodPost, "/v1/delegations", req, &out); err != nil {
		return nil, err
	}
	if out.Grant == "" || out.DelegatedTask == "" {
		return &Delegation{Authorization: &out}, fmt.Errorf("client: delegation to %s not granted: %s by %v", req.Agent, out.Decision.Decision, out.Decision.Rules)
	}
	return &Delegation{Authorization: &out, Task: out.DelegatedTask}, nil
}
