package mcp

import (
	"context"
	"testing"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/gateway"
)

// Completion suggestions and resource subscriptions pass between the
// client and the upstream when the upstream offers them; a resource update
// the upstream announces reaches the subscribed client.
func TestCompletionAndSubscriptionsPassThrough(t *testing.T) {
	ctx := context.Background()
	gw, err := gateway.Open(ctx, t.TempDir(), gateway.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	subscribed := make(chan string, 1)
	up := sdk.NewServer(&sdk.Implementation{Name: "docs", Version: "1"}, &sdk.ServerOptions{
		CompletionHandler: func(_ context.Context, req *sdk.CompleteRequest) (*sdk.CompleteResult, error) {
			return &sdk.CompleteResult{Completion: sdk.CompletionResultDetails{Values: []string{req.Params.Argument.Value + "-one", req.Params.Argument.Value + "-two"}}}, nil
		},
		SubscribeHandler: func(_ context.Context, req *sdk.SubscribeRequest) error {
			subscribed <- req.Params.URI
			return nil
		},
		UnsubscribeHandler: func(context.Context, *sdk.UnsubscribeRequest) error { return nil },
	})
	up.AddResource(&sdk.Resource{URI: "test://doc", Name: "doc"}, func(context.Context, *sdk.ReadResourceRequest) (*sdk.ReadResourceResult, error) {
		return &sdk.ReadResourceResult{Contents: []*sdk.ResourceContents{{URI: "test://doc", Text: "v1"}}}, nil
	})
	ut, pt := sdk.NewInMemoryTransports()
	if _, err := up.Connect(ctx, ut, nil); err != nil {
		t.Fatal(err)
	}
	p := New(Embedded(gw), Options{Principal: action.Principal{ID: "spiffe://etb.local/test"}})
	if err := p.Connect(ctx, pt, Upstream{Program: "/in-memory"}); err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	st, ct := sdk.NewInMemoryTransports()
	if _, err := p.Server().Connect(ctx, st, nil); err != nil {
		t.Fatal(err)
	}
	updated := make(chan string, 1)
	cs, err := sdk.NewClient(&sdk.Implementation{Name: "c", Version: "1"}, &sdk.ClientOptions{
		ResourceUpdatedHandler: func(_ context.Context, req *sdk.ResourceUpdatedNotificationRequest) { updated <- req.Params.URI },
	}).Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if caps := cs.InitializeResult().Capabilities; caps.Completions == nil || caps.Resources == nil || !caps.Resources.Subscribe {
		t.Fatalf("the proxy does not offer what the upstream does: %+v", caps)
	}
	res, err := cs.Complete(ctx, &sdk.CompleteParams{Ref: &sdk.CompleteReference{Type: "ref/resource", URI: "test://doc"},
		Argument: sdk.CompleteParamsArgument{Name: "q", Value: "ab"}})
	if err != nil || len(res.Completion.Values) != 2 || res.Completion.Values[0] != "ab-one" {
		t.Fatalf("completion: %+v %v", res, err)
	}
	if err := cs.Subscribe(ctx, &sdk.SubscribeParams{URI: "test://doc"}); err != nil {
		t.Fatal(err)
	}
	select {
	case uri := <-subscribed:
		if uri != "test://doc" {
			t.Fatalf("upstream subscribed to %q", uri)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the subscription never reached the upstream")
	}
	if err := up.ResourceUpdated(ctx, &sdk.ResourceUpdatedNotificationParams{URI: "test://doc"}); err != nil {
		t.Fatal(err)
	}
	select {
	case uri := <-updated:
		if uri != "test://doc" {
			t.Fatalf("update for %q", uri)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the resource update never reached the subscribed client")
	}
}
