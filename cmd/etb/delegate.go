package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/etbproject/etb/client"
	"github.com/etbproject/etb/grant"
)

func newDelegateCmd(g *globals) *cobra.Command {
	var gf gatewayFlags
	var req client.DelegationRequest
	var scope, parent, out string
	var ttl time.Duration
	c := &cobra.Command{
		Use:   "delegate --agent SPIFFE_ID --scope SCOPE --gateway URL",
		Short: "Ask a gateway for a delegation grant for a sub-agent",
		Long: `Delegate asks the gateway (etb serve) for a delegation grant that lets the
sub-agent --agent request grants for actions within --scope, in a new task
below --task, for at most --ttl, delegating further at most --depth levels.
The request is an action of kind agent.delegate that the policy decides like
any other; the caller's identity is its SVID (or unix-socket attestation).

--scope is JSON (or @FILE): {"actions": [{"kind": "shell.exec", "name": "ls"},
{"kind": "fs.read", "name": "*", "paths": ["/data"]}]} — a name is exact or a
prefix ending in "*"; paths and hosts, when given, bound the action's
target. With --delegation (a grant or @FILE) the caller acts under a
delegation itself, and the new grant can be no wider than it.

It writes {"grant", "task", "execution"} as JSON: hand the grant to the
sub-agent, which passes it with 'etb run --delegation'.`,
		Example: `  etb delegate --gateway https://127.0.0.1:8443 --cert a.crt --key a.key \
      --agent spiffe://etb.local/agent/b --scope '{"actions":[{"kind":"shell.exec","name":"ls"}]}' -o b.json
  etb run --gateway https://127.0.0.1:8443 --cert b.crt --key b.key --delegation @b.json -- ls`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if gf.url == "" {
				return usageError("--gateway is required: delegation is a gateway service feature")
			}
			raw, err := readArg(scope)
			if err != nil {
				return usageError("--scope: %v", err)
			}
			dec := json.NewDecoder(bytes.NewReader(raw))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&req.Scope); err != nil {
				return usageError("--scope: %v", err)
			}
			if err := req.Scope.Validate(); err != nil {
				return usageError("--scope: %v", err)
			}
			if ttl < 0 || ttl > grant.MaxLifetime {
				return usageError("--ttl %v: want 0 (the longest) to %v", ttl, grant.MaxLifetime)
			}
			req.TTLSeconds = int64(ttl / time.Second)
			if parent != "" {
				if req.Delegation, err = delegationArg(parent); err != nil {
					return usageError("--delegation: %v", err)
				}
			}
			cl, err := gf.client(g)
			if err != nil {
				return err
			}
			defer cl.Close()
			d, err := cl.Delegate(cmd.Context(), req)
			if err != nil {
				return &exitError{code: client.ExitDenied, msg: err.Error()}
			}
			return writeJSON(out, delegationFile{Grant: d.Grant, Task: d.Task, Execution: d.Execution})
		},
	}
	gf.register(c)
	c.Flags().StringVar(&req.Agent, "agent", "", "the sub-agent's SPIFFE ID")
	c.Flags().StringVar(&scope, "scope", "", "what the sub-agent may request: JSON, or @FILE")
	c.Flags().IntVar(&req.Depth, "depth", 0, "how many further levels the sub-agent may delegate")
	c.Flags().DurationVar(&ttl, "ttl", 0, "how long the delegation lasts (0: the longest a grant may, 10m)")
	c.Flags().StringVar(&req.Task.ID, "task", "", "the caller's task the sub-agent's task goes below (default: a new one)")
	c.Flags().StringVar(&parent, "delegation", "", "the delegation grant the caller itself acts under (a token, or @FILE)")
	c.Flags().StringVarP(&out, "output", "o", "-", "file to write (- for stdout)")
	c.MarkFlagRequired("agent")
	c.MarkFlagRequired("scope")
	return c
}

// delegationFile is what `etb delegate` writes.
type delegationFile struct {
	Grant     string `json:"grant"`
	Task      string `json:"task"`
	Execution string `json:"execution"`
}

// readArg returns s, or the contents of the file @s names.
func readArg(s string) ([]byte, error) {
	if path, ok := strings.CutPrefix(s, "@"); ok {
		return os.ReadFile(path)
	}
	if s == "" {
		return nil, fmt.Errorf("empty")
	}
	return []byte(s), nil
}

// delegationArg returns the delegation grant s holds: a compact JWS, or
// @FILE with one, or with the JSON `etb delegate` writes.
func delegationArg(s string) (string, error) {
	raw, err := readArg(s)
	if err != nil {
		return "", err
	}
	t := strings.TrimSpace(string(raw))
	if strings.HasPrefix(t, "{") {
		var f delegationFile
		if err := json.Unmarshal([]byte(t), &f); err != nil {
			return "", err
		}
		t = f.Grant
	}
	if strings.Count(t, ".") != 2 {
		return "", fmt.Errorf("not a compact JWS grant")
	}
	return t, nil
}
