package mcp_test

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
)

// BenchmarkStdioToolCall measures, side by side in one run, the latency
// of a tools/call from a go-sdk client to a stdio server (this test binary
// as the small Go server, tool greet) directly; through `etb mcp` as a
// subprocess with a policy permitting it (embedded gateway, durable
// ledger in a temporary home); and through `etb mcp --gateway` in front of
// `etb serve` (mTLS, the decision, grant, lease and events over HTTPS, the
// ledger in the server's home). It reports p50-ms and p99-ms; their
// difference to direct is what etb adds.
//
//	go test ./mcp/ -run '^$' -bench StdioToolCall -benchtime 400x
func BenchmarkStdioToolCall(b *testing.B) {
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	b.Setenv("ETB_MCP_TEST_SERVER", "1")
	connect := func(b *testing.B, cmd *exec.Cmd) *sdk.ClientSession {
		cs, err := sdk.NewClient(&sdk.Implementation{Name: "bench", Version: "1"}, nil).Connect(context.Background(), &sdk.CommandTransport{Command: cmd}, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cs.Close() })
		return cs
	}
	run := func(b *testing.B, cs *sdk.ClientSession) {
		ctx := context.Background()
		var lat []time.Duration
		for b.Loop() {
			t0 := time.Now()
			res, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "greet", Arguments: map[string]any{"name": "ada"}})
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
	policy := func(b *testing.B) string {
		pol := b.TempDir() + "/policy.yaml"
		if err := os.WriteFile(pol, []byte(`version: etb.policy/v1
name: bench
rules:
  - id: start
    effect: permit
    match: {kind: mcp.server_start}
  - id: greet
    effect: permit
    match: {kind: mcp.tool_call, name: etb-pin-test/greet}
`), 0o644); err != nil {
			b.Fatal(err)
		}
		return pol
	}
	b.Run("direct", func(b *testing.B) { run(b, connect(b, exec.Command(self))) })
	b.Run("etb-mcp", func(b *testing.B) {
		run(b, connect(b, exec.Command(etbBin, "--home", b.TempDir(), "mcp", "--policy", policy(b), "--", self)))
	})
	b.Run("etb-mcp-gateway", func(b *testing.B) {
		s := startGateway(b, policy(b))
		run(b, s.mcpSession(b, "spiffe://etb.local/agent/bench", nil, self))
	})
}
