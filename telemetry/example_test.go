package telemetry_test

import (
	"context"
	"fmt"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/policy"
	"github.com/etbproject/etb/telemetry"
)

// A host builds its Tracer once from the environment (os.Getenv in a
// program), then wraps each governed execution in a span. With no
// OTEL_EXPORTER_OTLP_*ENDPOINT set, nothing is recorded, but the caller's
// trace context still reaches the upstream server.
func Example() {
	env := map[string]string{"OTEL_SERVICE_NAME": "etb-gateway"}
	cfg := telemetry.ConfigFromEnv(func(k string) string { return env[k] })
	ctx := context.Background()
	tr, err := telemetry.New(ctx, cfg)
	if err != nil {
		fmt.Println(err) // a malformed configuration, reported at startup
		return
	}
	defer tr.Shutdown(ctx)

	a := &action.Action{
		ID:        "exe-1",
		Principal: action.Principal{ID: "spiffe://etb.local/agent/coder"},
		Action:    action.Spec{Kind: action.KindMCPTool, Name: "read_file", Args: []string{"/etc/hosts"}},
		Task:      action.Task{ID: "task-1", RootID: "task-1"},
		Env:       map[string]string{telemetry.EnvTraceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
	}
	digest, err := a.Action.Digest()
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, span := tr.StartExecution(ctx, a.Env[telemetry.EnvTraceparent], telemetry.AttrsFromAction(a, digest))
	_ = ctx // the context carries the span to whatever the execution calls
	span.Decision(policy.Decision{Decision: policy.Permit, Rules: []string{"allow-read"}})
	span.Grant("0123456789abcdef0123456789abcdef")
	fmt.Println("tracing on:", tr.Enabled())
	fmt.Println("span name:", telemetry.SpanName(a.Action.Kind, a.Action.Name))
	fmt.Println("traceparent for upstream:", span.Traceparent())
	span.End("ok", nil)
	// Output:
	// tracing on: false
	// span name: etb.execute mcp.tool_call read_file
	// traceparent for upstream: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
}

func ExampleConfigFromEnv() {
	env := map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
		"OTEL_EXPORTER_OTLP_HEADERS":  "authorization=Bearer%20t0ken",
	}
	cfg := telemetry.ConfigFromEnv(func(k string) string { return env[k] })
	fmt.Println(cfg.Endpoint, cfg.Insecure, cfg.ServiceName, cfg.Headers["authorization"])
	// Output: http://collector:4318/v1/traces true etb Bearer t0ken
}

func ExampleParseTraceparent() {
	for _, h := range []string{
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
	} {
		sc, err := telemetry.ParseTraceparent(h)
		if err != nil {
			fmt.Println("invalid")
			continue
		}
		fmt.Println(sc.TraceID(), sc.SpanID(), sc.IsSampled())
	}
	// Output:
	// 4bf92f3577b34da6a3ce929d0e0e4736 00f067aa0ba902b7 true
	// invalid
	// invalid
}
