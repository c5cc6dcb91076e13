package mcp

import (
	"fmt"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/etbproject/etb/telemetry"
)

// EnvTraceParent is the action env key holding the W3C traceparent of the
// request (from _meta.traceparent), so that it is in the evidence.
const EnvTraceParent = telemetry.EnvTraceparent

// traceParent returns the request's _meta.traceparent ("" when absent),
// refusing one that is not a valid W3C Trace Context traceparent
// (telemetry.ParseTraceparent).
func traceParent(meta sdk.Meta) (string, error) {
	v, ok := meta["traceparent"]
	if !ok {
		return "", nil
	}
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("_meta.traceparent holds %T, want a string", v)
	}
	if _, err := telemetry.ParseTraceparent(s); err != nil {
		return "", fmt.Errorf("_meta.traceparent: %w", err)
	}
	return s, nil
}
