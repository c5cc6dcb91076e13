package mcp

import (
	"context"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
)

// passThroughClient adds to the upstream client's options what passes from
// the upstream to the downstream clients: log messages and resource
// updates (notifications; reading the resource is still governed).
//
// Requests of the upstream to the client (sampling, elicitation, roots)
// are not passed through: under protocol 2026-07-28 a server makes them as
// multi round-trip input requests in its results (SEP-2322), which the
// proxy does not relay yet, and the go-sdk refuses them otherwise.
func (p *Proxy) passThroughClient(o *sdk.ClientOptions) {
	o.LoggingMessageHandler = func(ctx context.Context, req *sdk.LoggingMessageRequest) {
		p.mu.Lock()
		srv := p.server
		p.mu.Unlock()
		if srv == nil {
			return
		}
		for ss := range srv.Sessions() {
			if err := ss.Log(ctx, req.Params); err != nil {
				p.opt.Log("pass a log message downstream: %v", err)
			}
		}
	}
	o.ResourceUpdatedHandler = func(ctx context.Context, req *sdk.ResourceUpdatedNotificationRequest) {
		p.mu.Lock()
		srv := p.server
		p.mu.Unlock()
		if srv != nil {
			if err := srv.ResourceUpdated(ctx, req.Params); err != nil {
				p.opt.Log("pass a resource update downstream: %v", err)
			}
		}
	}
}

// passThroughServer adds to the downstream server's options what passes
// from the clients to the upstream without running anything there:
// completion suggestions and resource subscriptions (reading a resource is
// still governed), when the upstream offers them.
func (p *Proxy) passThroughServer(upCaps *sdk.ServerCapabilities, caps *sdk.ServerCapabilities, o *sdk.ServerOptions) {
	if upCaps.Completions != nil {
		caps.Completions = &sdk.CompletionCapabilities{}
		o.CompletionHandler = func(ctx context.Context, req *sdk.CompleteRequest) (*sdk.CompleteResult, error) {
			return p.upstream.Complete(ctx, req.Params)
		}
	}
	if upCaps.Resources != nil && upCaps.Resources.Subscribe {
		caps.Resources.Subscribe = true
		o.SubscribeHandler = func(ctx context.Context, req *sdk.SubscribeRequest) error {
			return p.upstream.Subscribe(ctx, req.Params)
		}
		o.UnsubscribeHandler = func(ctx context.Context, req *sdk.UnsubscribeRequest) error {
			return p.upstream.Unsubscribe(ctx, req.Params)
		}
	}
	if upCaps.Logging != nil {
		caps.Logging = &sdk.LoggingCapabilities{}
	}
}
