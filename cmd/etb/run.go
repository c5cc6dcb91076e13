package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/etbproject/etb/client"
	"github.com/etbproject/etb/gateway"
)

func newRunCmd(g *globals) *cobra.Command {
	var policyPath, evidence, task, parent string
	var gf gatewayFlags
	c := &cobra.Command{
		Use:   "run [flags] -- COMMAND [ARG...]",
		Short: "Run a command inside the trust boundary",
		Long: `Run evaluates the policy on COMMAND, signs a single-use grant for a permit,
records intent, decision and grant durably in the ledger, verifies the grant,
and runs COMMAND under the grant's obligations (for example its timeout),
recording how it started and ended.

Exit status: the command's own status when it ran; 77 when the policy denied
it or the enforcer refused the grant (the reason and rule id are printed on
stderr); 124 when its timeout obligation expired (its whole process tree is
killed); 127 when the program cannot be found; 70 when etb itself failed.

With --gateway, the decision is made by a gateway (etb serve) and this
process is the enforcer: it verifies the grant itself (against the gateway's
trust file, pinned in HOME/enforcer on first use, with its own replay store
there), renews the lease while COMMAND runs, kills the process tree at once
when the gateway revokes the execution or the policy no longer permits it,
and at lease expiry when the gateway cannot be reached. A report it cannot
deliver is spooled in HOME/enforcer/spool and delivered on the next run.

Tasks: --task puts the action in a task (created on first use), --parent
places a new task below an existing one; rules see the task's labels,
recent actions and limit usage. Tracing: with OTEL_EXPORTER_OTLP_ENDPOINT
set, each execution is exported as an OpenTelemetry span, parented by
$TRACEPARENT when it holds a W3C traceparent.`,
		Example: `  etb run -- echo hello
  etb run --evidence out.json -- ls -l
  etb run --policy ./policy.yaml -- cat README.md
  etb run --gateway https://127.0.0.1:8443 --cert agent.crt --key agent.key -- ls
  etb run --gateway unix:///tmp/etb.sock -- echo hello`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() != 0 {
				return usageError("put the command after --, as in: etb run -- %s", args[0])
			}
			ctx := cmd.Context()
			if gf.url != "" {
				if policyPath != "" {
					return usageError("--policy is the gateway's, not a --gateway client's")
				}
				return runRemote(cmd, g, &gf, args, task, parent, evidence)
			}
			gw, err := g.open(ctx, policyPath)
			if err != nil {
				return &exitError{code: gateway.ExitInternal, msg: err.Error()}
			}
			defer gw.Close()
			cwd, err := os.Getwd()
			if err != nil {
				return &exitError{code: gateway.ExitInternal, msg: err.Error()}
			}
			res, err := gw.Exec(ctx, gateway.ExecRequest{Argv: args, Cwd: cwd, Task: task, Parent: parent, Traceparent: os.Getenv("TRACEPARENT"),
				Env: os.Environ(), Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr})
			if err != nil {
				return &exitError{code: gateway.ExitInternal, msg: err.Error()}
			}
			if res.Message != "" {
				fmt.Fprintln(os.Stderr, "etb:", res.Message)
			}
			if evidence != "" && res.Execution != nil {
				b, err := gw.EvidenceFor(ctx, res.Execution.ID, nil)
				if err != nil {
					return &exitError{code: gateway.ExitInternal, msg: "evidence: " + err.Error()}
				}
				if err := writeJSON(evidence, b); err != nil {
					return &exitError{code: gateway.ExitInternal, msg: err.Error()}
				}
			}
			if res.ExitCode != 0 {
				return &exitError{code: res.ExitCode}
			}
			return nil
		},
	}
	c.Flags().StringVar(&policyPath, "policy", "", "policy file (default: the home's policy.yaml)")
	c.Flags().StringVar(&evidence, "evidence", "", "write the execution's evidence bundle to this file")
	c.Flags().StringVar(&task, "task", "", "task id this action belongs to (default: a new task)")
	c.Flags().StringVar(&parent, "parent", "", "parent task id, for a sub-agent's task")
	gf.register(c)
	c.Flags().DurationVar(&gf.wait, "wait-approval", 0, "with --gateway: wait this long for a human when the policy requires approval")
	c.Flags().StringVar(&gf.delegation, "delegation", "", "with --gateway: act as a sub-agent under this delegation grant (a token, or @FILE from 'etb delegate')")
	return c
}

// runRemote is `etb run --gateway`: the enforcer side of the gateway flow.
func runRemote(cmd *cobra.Command, g *globals, gf *gatewayFlags, args []string, task, parent, evidence string) error {
	ctx := cmd.Context()
	cl, err := gf.client(g)
	if err != nil {
		return err
	}
	defer cl.Close()
	cwd, err := os.Getwd()
	if err != nil {
		return &exitError{code: client.ExitInternal, msg: err.Error()}
	}
	t := client.Task{ID: task, ParentID: parent}
	if gf.delegation != "" {
		if t.Delegation, err = delegationArg(gf.delegation); err != nil {
			return usageError("--delegation: %v", err)
		}
	}
	res, err := cl.RunCommand(ctx, client.RunRequest{Argv: args, Cwd: cwd, Task: t,
		Env: os.Environ(), Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr})
	if client.IsCode(err, "out_of_scope") || client.IsCode(err, "delegation_invalid") || client.IsCode(err, "revoked") {
		// Refused before anything was authorized: a denial.
		return &exitError{code: client.ExitDenied, msg: err.Error()}
	}
	if err != nil {
		return &exitError{code: client.ExitInternal, msg: err.Error()}
	}
	if res.Message != "" {
		fmt.Fprintln(os.Stderr, "etb:", res.Message)
	}
	if res.Spooled {
		fmt.Fprintln(os.Stderr, "etb: the gateway could not be reached; the outcome is spooled and will be delivered on the next run")
	}
	if evidence != "" && res.Execution != "" && !res.Spooled {
		b, err := cl.Evidence(ctx, res.Execution)
		if err != nil {
			return &exitError{code: client.ExitInternal, msg: "evidence: " + err.Error()}
		}
		if err := writeJSON(evidence, b); err != nil {
			return &exitError{code: client.ExitInternal, msg: err.Error()}
		}
	}
	if res.ExitCode != 0 {
		return &exitError{code: res.ExitCode}
	}
	return nil
}

// writeJSON writes v as indented JSON to path ("-" is stdout).
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if path == "-" {
		_, err = os.Stdout.Write(b)
		return err
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
