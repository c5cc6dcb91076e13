package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/etbproject/etb/gateway"
)

func newRunCmd(g *globals) *cobra.Command {
	var policyPath, evidence, task, parent string
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
killed); 127 when the program cannot be found; 70 when etb itself failed.`,
		Example: `  etb run -- echo hello
  etb run --evidence out.json -- ls -l
  etb run --policy ./policy.yaml -- cat README.md`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() != 0 {
				return usageError("put the command after --, as in: etb run -- %s", args[0])
			}
			ctx := cmd.Context()
			gw, err := g.open(ctx, policyPath)
			if err != nil {
				return &exitError{code: gateway.ExitInternal, msg: err.Error()}
			}
			defer gw.Close()
			cwd, err := os.Getwd()
			if err != nil {
				return &exitError{code: gateway.ExitInternal, msg: err.Error()}
			}
			res, err := gw.Exec(ctx, gateway.ExecRequest{Argv: args, Cwd: cwd, Task: task, Parent: parent,
				Env: os.Environ(), Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr})
			if err != nil {
				return &exitError{code: gateway.ExitInternal, msg: err.Error()}
			}
			if res.Message != "" {
				fmt.Fprintln(os.Stderr, "etb:", res.Message)
			}
			if evidence != "" && res.Execution != nil {
				b, err := gw.Evidence(ctx, res.Execution.ID)
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
	return c
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
