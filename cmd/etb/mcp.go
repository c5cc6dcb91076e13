package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime/debug"
	"time"

	"github.com/spf13/cobra"

	"github.com/etbproject/etb/client"
	"github.com/etbproject/etb/gateway"
	"github.com/etbproject/etb/identity"
	"github.com/etbproject/etb/mcp"
)

func newMCPCmd(g *globals) *cobra.Command {
	var policyPath, listen, upstream, task, parent string
	var gf gatewayFlags
	var hideDenied bool
	var pins string
	c := &cobra.Command{
		Use:   "mcp [flags] -- SERVER-COMMAND [ARG...] | mcp --listen ADDR --upstream URL",
		Short: "Govern an MCP server: every tool call through the trust boundary",
		Long: `Mcp starts SERVER-COMMAND as an upstream MCP server (stdio), and serves
the same tools on its own stdin/stdout. Starting the server is itself an
action (kind mcp.server_start, named after the program, with its argv and
sha256): a denial refuses to start it (exit status 77), and a permit whose
obligations need the kernel sandbox (filesystem, network, limits) runs the
server inside it, or refuses when this host cannot enforce them.

Every tools/call becomes an mcp.tool_call action named SERVER/TOOL: the
policy decides, a single-use grant is signed and verified against the
exact arguments forwarded, and intent, decision, grant, start and end (a
digest of the result, never its content) go to the ledger. A denied call
returns a tool error naming the rule; the upstream never sees it. A tool
whose name, description or input schema changes after it was first seen
is refused. resources/read and prompts/get are actions likewise
(mcp.resource_read, mcp.prompt_get).

When the server asks the client for an LLM completion, the user's answer
or the client's roots while it serves a request, each is an action too
(mcp.sampling, mcp.elicitation, mcp.roots, named SERVER/METHOD, the
request's params as argument): permitted, it reaches the client as an
input request of that request's result, and the answer goes back to the
server; refused, the server gets an error and the client is never asked.

Replace the server command in the MCP client's configuration with
'etb mcp -- COMMAND ARGS'. Diagnostics go to stderr. When etb exits, the
upstream's process tree is killed (its group, its descendants, and
what was seen in its tree while it ran).

With --listen and --upstream, etb serves streamable HTTP on ADDR in front
of the remote MCP endpoint URL instead (requests on a loopback address
with another Host header, and cross-origin browser requests, are refused).

With --gateway (and the identity flags of etb run --gateway), decisions
are made by a gateway (etb serve) and this process is the enforcer: it
verifies each grant itself, keeps the execution's lease while the call
runs, and cancels the upstream request (notifications/cancelled) when the
gateway revokes it. A call the policy requires approval for waits up to
--approval-wait for etb approve of exactly those arguments; embedded, the
MCP client is asked through elicitation when it supports it.

The proxy runs Go's garbage collector at GOGC=400 unless the GOGC
environment variable is set: its live heap is a few megabytes, and the
MCP SDK allocates about 32 KiB per message it decodes, so the default
collects every few calls, on the latency of each.

A request's _meta.traceparent (W3C trace context) must be valid; it is
recorded in the action's env as trace.traceparent and forwarded upstream
unchanged. Each MCP session is a task (--task, or a new one per session;
below --parent if given); the server start is a task of its own.
See docs/MCP.md.`,
		Example: `  etb mcp -- npx -y @modelcontextprotocol/server-filesystem /data
  etb mcp --policy mcp-policy.yaml -- node server.js
  etb mcp --listen 127.0.0.1:8788 --upstream http://127.0.0.1:3001/mcp
  etb mcp --gateway https://127.0.0.1:8443 --cert agent.crt --key agent.key -- node server.js`,
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
			proxyGC()
			logf := func(format string, a ...any) { fmt.Fprintf(os.Stderr, "etb mcp: "+format+"\n", a...) }
			host, _ := os.Hostname()
			opt := mcp.Options{Env: map[string]string{"host": host}, Log: logf, Task: task, ParentTask: parent, ApprovalWait: gf.wait, PinFile: pins}
			var b mcp.Boundary
			if gf.url != "" {
				if policyPath != "" {
					return usageError("--policy is the gateway's, not a --gateway client's")
				}
				if hideDenied {
					return usageError("--hide-denied needs the policy: it works without --gateway only")
				}
				cl, err := gf.client(g)
				if err != nil {
					return err
				}
				defer cl.Close()
				if n, err := cl.FlushSpool(ctx); err != nil {
					logf("%d spooled report(s) delivered; the rest stay spooled: %v", n, err)
				}
				b = mcp.Remote(cl)
			} else {
				gw, err := g.open(ctx, policyPath)
				if err != nil {
					return &exitError{code: gateway.ExitInternal, msg: err.Error()}
				}
				defer gw.Close()
				if opt.Principal, err = identity.Local(ctx, gw.Config().TrustDomain); err != nil {
					return &exitError{code: gateway.ExitInternal, msg: err.Error()}
				}
				b = mcp.Embedded(gw)
				if hideDenied {
					opt.MayPermit = gw.Policy().MayPermit
				}
			}
			if listen != "" {
				ln, err := net.Listen("tcp", listen)
				if err != nil {
					return &exitError{code: gateway.ExitInternal, msg: err.Error()}
				}
				logf("serving %s on http://%s/", upstream, ln.Addr())
				if err := mcp.RunHTTP(ctx, b, ln, upstream, opt); err != nil {
					return &exitError{code: gateway.ExitInternal, msg: err.Error()}
				}
				return nil
			}
			if err := mcp.RunStdio(ctx, b, args, os.Stdin, os.Stdout, opt); err != nil {
				var refused *mcp.RefusedError
				if errors.As(err, &refused) {
					return &exitError{code: client.ExitDenied, msg: err.Error()}
				}
				return &exitError{code: gateway.ExitInternal, msg: err.Error()}
			}
			return nil
		},
	}
	c.Flags().StringVar(&policyPath, "policy", "", "policy file (default HOME/policy.yaml)")
	c.Flags().StringVar(&listen, "listen", "", "serve streamable HTTP on this address (with --upstream)")
	c.Flags().StringVar(&upstream, "upstream", "", "URL of the remote MCP endpoint (with --listen)")
	c.Flags().StringVar(&task, "task", "", "task id of the MCP session's calls (default: a new task per session)")
	c.Flags().StringVar(&parent, "parent", "", "parent task of the sessions' tasks, for a sub-agent's task")
	c.Flags().StringVar(&pins, "pins", "", "tool pin file: used when it exists (a tool it does not list is refused), written from the first listing otherwise")
	c.Flags().BoolVar(&hideDenied, "hide-denied", false, "list only the tools some rule of the policy could permit (embedded mode)")
	gf.register(c)
	c.Flags().DurationVar(&gf.wait, "approval-wait", 2*time.Minute,
		"how long a call the policy requires approval for waits for it (etb approve with --gateway, MCP elicitation embedded) before it is refused")
	return c
}

// proxyGC lets the heap of a proxy grow to five times its live size
// before a collection (GOGC=400), unless the environment sets GOGC. The
// proxy's live heap is small and nearly all it allocates is per message:
// at the default of 100 a collection runs every few calls and adds about
// a millisecond to the p50 of a tools/call (docs/PERFORMANCE.md).
func proxyGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(400)
	}
}
