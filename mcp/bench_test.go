package mcp

import (
	"context"
	"slices"
	"testing"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
)

// BenchmarkToolCall compares one tools/call made directly to an in-memory
// upstream with the same call through the proxy (policy, grant, durable
// intent/decision/grant, start and end in the SQLite ledger). The
// difference is the latency the boundary adds. Besides ns/op it reports
// the p50 and p99 of the calls' latencies (p50-ms, p99-ms).
//
//	go test ./mcp/ -run '^$' -bench BenchmarkToolCall -benchtime 400x
func BenchmarkToolCall(b *testing.B) {
	ctx := context.Background()
	run := func(b *testing.B, cs *sdk.ClientSession) {
		b.ReportAllocs()
		var lat []time.Duration
		for b.Loop() {
			t0 := time.Now()
			res, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "count"})
			lat = append(lat, time.Since(t0))
			if err != nil || res.IsError {
				b.Fatalf("call: %v %+v", err, res)
			}
		}
		slices.Sort(lat)
		q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))]) / 1e6 }
		b.ReportMetric(q(0.50), "p50-ms")
		b.ReportMetric(q(0.99), "p99-ms")
	}
	b.Run("direct", func(b *testing.B) {
		up := sdk.NewServer(&sdk.Implementation{Name: "counter", Version: "1"}, nil)
		up.AddTool(&sdk.Tool{Name: "count", InputSchema: map[string]any{"type": "object"}},
			func(context.Context, *sdk.CallToolRequest) (*sdk.CallToolResult, error) {
				return &sdk.CallToolResult{Content: []sdk.Content{&sdk.TextContent{Text: "counted"}}}, nil
			})
		st, ct := sdk.NewInMemoryTransports()
		if _, err := up.Connect(ctx, st, nil); err != nil {
			b.Fatal(err)
		}
		cs, err := sdk.NewClient(&sdk.Implementation{Name: "c", Version: "1"}, nil).Connect(ctx, ct, nil)
		if err != nil {
			b.Fatal(err)
		}
		defer cs.Close()
		run(b, cs)
	})
	b.Run("proxied", func(b *testing.B) {
		_, _, cs, _ := inProcess(b, permitCount)
		run(b, cs)
	})
}
