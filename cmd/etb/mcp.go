package main

import (
	"fmt"
	"net"
	"os"

	"github.com/spf13/cobra"

	"github.com/etbproject/etb/gateway"
	"github.com/etbproject/etb/identity"
	"github.com/etbproject/etb/mcp"
)

func newMCPCmd(g *globals) *cobra.Command {
	var policyPath, listen, upstream string
	c := &cobra.Command{
		Use:   "mcp [flags] -- SERVER-COMMAND [ARG...] | mcp --listen ADDR --upstream URL",
		Short: "Govern an MCP server: every tool call through the trust boundary",
		Long: `Mcp starts SERVER-COMMAND as an upstream MCP server (stdio), and serves
the same tools on its own stdin/stdout. Every tools/call becomes an
mcp.tool_call action named SERVER/TOOL: the policy decides, a single-use
grant is signed and verified against the exact arguments forwarded, and
intent, decision, grant, start and end (a digest of the result, never its
content) go to the ledger. A denied call returns a tool error naming the
rule; the upstream never sees it. A tool whose name, description or input
schema changes after it was first seen is refused.

Replace the server command in the MCP client's configuration with
'etb mcp -- COMMAND ARGS'. Diagnostics go to stderr. When etb exits, the
upstream's process group is killed.

With --listen and --upstream, etb serves streamable HTTP on ADDR in front
of the remote MCP endpoint URL instead (requests on a loopback address
with another Host header, and cross-origin browser requests, are refused).
See docs/MCP.md.`,
		Example: `  etb mcp -- npx -y @modelcontextprotocol/server-filesystem /data
  etb mcp --policy mcp-policy.yaml -- node server.js
  etb mcp --listen 127.0.0.1:8788 --upstream http://127.0.0.1:3001/mcp`,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case (listen == "") != (upstream == ""):
				return usageError("--listen and --upstream go together")
			case listen != "" && len(args) > 0:
				return usageError("with --listen, give no server command")
			case listen == "" && len(args) == 0:
				return usageError("give the server command after --, as in: etb mcp -- node server.js")
			case listen == "" && cmd.ArgsLenAtDash() != 0:
				return usageError("put the server command after --, as in: etb mcp -- %s", args[0])
			}
			ctx := cmd.Context()
			gw, err := g.open(ctx, policyPath)
			if err != nil {
				return &exitError{code: gateway.ExitInternal, msg: err.Error()}
			}
			defer gw.Close()
			principal, err := identity.Local(ctx, gw.Config().TrustDomain)
			if err != nil {
				return &exitError{code: gateway.ExitInternal, msg: err.Error()}
			}
			host, _ := os.Hostname()
			logf := func(format string, a ...any) { fmt.Fprintf(os.Stderr, "etb mcp: "+format+"\n", a...) }
			opt := mcp.Options{Principal: principal, Env: map[string]string{"host": host}, Log: logf}
			if listen != "" {
				ln, err := net.Listen("tcp", listen)
				if err != nil {
					return &exitError{code: gateway.ExitInternal, msg: err.Error()}
				}
				logf("serving %s on http://%s/", upstream, ln.Addr())
				if err := mcp.RunHTTP(ctx, gw, ln, upstream, opt); err != nil {
					return &exitError{code: gateway.ExitInternal, msg: err.Error()}
				}
				return nil
			}
			if err := mcp.RunStdio(ctx, gw, args, os.Stdin, os.Stdout, opt); err != nil {
				return &exitError{code: gateway.ExitInternal, msg: err.Error()}
			}
			return nil
		},
	}
	c.Flags().StringVar(&policyPath, "policy", "", "policy file (default HOME/policy.yaml)")
	c.Flags().StringVar(&listen, "listen", "", "serve streamable HTTP on this address (with --upstream)")
	c.Flags().StringVar(&upstream, "upstream", "", "URL of the remote MCP endpoint (with --listen)")
	return c
}
