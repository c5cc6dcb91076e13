package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/gateway"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/policy"
	"github.com/etbproject/etb/proof"
)

func newInitCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "init",
		Short: "Create the etb home (config, signing keys, default policy, ledger)",
		Long: `Init creates the home directory if it does not exist: config.json, Ed25519
keys for grants and for log checkpoints (keys/, mode 0600), the documented
default policy (policy.yaml) and the SQLite ledger (etb.db). It never
overwrites anything; every other command runs it on first use.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := g.homeDir()
			if err != nil {
				return err
			}
			created, err := gateway.Home{Dir: dir}.Init(cmd.Context())
			if err != nil {
				return err
			}
			gw, err := gateway.Open(cmd.Context(), dir, gateway.Options{})
			if err != nil {
				return err
			}
			defer gw.Close()
			if created {
				fmt.Fprintf(cmd.OutOrStdout(), "initialised %s\n  policy: %s (%s)\n", dir, gateway.Home{Dir: dir}.PolicyPath(), gw.Policy().Hash())
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "%s is already initialised\n", dir)
			}
			return nil
		},
	}
}

func newTrustCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "trust", Short: "Export the public keys a verifier needs"}
	c.AddCommand(&cobra.Command{
		Use:   "export",
		Short: "Print the trust file (etb.trust/v1): log checkpoint key, grant keys, issuer, enforcer",
		Long: `Export prints the trust file of this home as JSON. It holds only public
keys: the log's checkpoint verifier key in signed-note form
("<name>+<hash>+<base64>", usable by any note verifier), the grant signing
keys by key id, and the issuer and enforcer identities. Give it to whoever
verifies evidence: etb verify BUNDLE --trust trust.json`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			gw, err := g.open(cmd.Context(), "")
			if err != nil {
				return err
			}
			defer gw.Close()
			t, err := gw.Trust()
			if err != nil {
				return err
			}
			return writeJSON("-", t)
		},
	})
	return c
}

func newVerifyCmd() *cobra.Command {
	var trustPath, since string
	var quiet bool
	c := &cobra.Command{
		Use:   "verify BUNDLE --trust TRUST",
		Short: "Verify an evidence bundle offline",
		Long: `Verify checks an evidence bundle (etb.bundle/v1) with nothing but the public
keys in a trust file: the checkpoint signature, the inclusion proof of every
event, the event hash chain and lifecycle order (no start without a durable
permit and grant), the grant's signature and its binding to the recorded
action, policy, caller and execution, and it re-derives the decision by
evaluating the bundled policy on the recorded input. When the trust file
names witnesses, the checkpoint needs a quorum of their cosignatures; with
--since, it must be consistent with that earlier checkpoint (the bundle
carries the proof: 'etb evidence --since').

A task bundle ('etb evidence --task') is checked execution by execution,
and as a tree: every parent → child grant link (signature, par hash, the
child no wider than its parent), and the task state every decision saw
(labels, recent window, state version) folded through the tree in ledger
order.

Exit status: 0 valid; 1 invalid (the first failing check is named);
2 usage error or unreadable input.`,
		Example: `  etb trust export > trust.json
  etb verify out.json --trust trust.json`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if trustPath == "" {
				return usageError("--trust is required: the trust file from 'etb trust export'")
			}
			b, err := readWith(args[0], proof.ParseBundle)
			if err != nil {
				return usageError("%v", err)
			}
			t, err := readWith(trustPath, proof.ParseTrust)
			if err != nil {
				return usageError("%v", err)
			}
			var opt proof.Options
			if since != "" {
				if opt.Since, err = os.ReadFile(since); err != nil {
					return usageError("%v", err)
				}
			}
			rep, err := proof.VerifyWith(cmd.Context(), b, t, opt)
			if err != nil {
				return &exitError{code: 1, msg: "INVALID: " + err.Error()}
			}
			if !quiet {
				w := cmd.OutOrStdout()
				if rep.Task != "" {
					fmt.Fprintf(w, "VALID task tree %s: %d executions, %d events under checkpoint of size %d\n", rep.Task, len(rep.Executions), rep.Events, rep.CheckpointSize)
					for _, x := range rep.Executions {
						via := ""
						if x.Parent != "" {
							via = " (delegated from grant " + lineage.ShortID(x.Parent) + ")"
						}
						fmt.Fprintf(w, "  %s task %s %s %s %s: %s by %s; outcome %s%s\n", lineage.ShortID(x.Execution), lineage.ShortID(x.Task),
							x.Principal, x.Kind, x.Name, x.Decision, strings.Join(x.Rules, ","), x.Outcome, via)
					}
				} else {
					fmt.Fprintf(w, "VALID execution %s: %d events under checkpoint of size %d\n", rep.Execution, rep.Events, rep.CheckpointSize)
					fmt.Fprintf(w, "  decision %s by %s; outcome %s\n", rep.Decision, strings.Join(rep.Rules, ","), rep.Outcome)
				}
				for _, c := range rep.Checks {
					fmt.Fprintf(w, "  ok  %s\n", c)
				}
			}
			return nil
		},
	}
	c.Flags().StringVar(&trustPath, "trust", "", "trust file (from 'etb trust export')")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "print nothing when valid")
	c.Flags().StringVar(&since, "since", "", "a checkpoint (signed note) seen earlier: the bundle's checkpoint must be consistent with it")
	return c
}

func readWith[T any](path string, parse func(io.Reader) (T, error)) (T, error) {
	var zero T
	f, err := os.Open(path)
	if err != nil {
		return zero, err
	}
	defer f.Close()
	v, err := parse(f)
	if err != nil {
		return zero, fmt.Errorf("%s: %w", path, err)
	}
	return v, nil
}

func newLogCmd(g *globals) *cobra.Command {
	var limit int
	var asJSON bool
	c := &cobra.Command{
		Use:   "log",
		Short: "List recent executions (time, agent, action, decision, rule, outcome)",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			gw, err := g.open(cmd.Context(), "")
			if err != nil {
				return err
			}
			defer gw.Close()
			list, err := gw.List(cmd.Context(), limit)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON("-", list)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			fmt.Fprintln(w, "EXECUTION\tTIME\tAGENT\tACTION\tDECISION\tRULE\tOUTCOME")
			for _, s := range list {
				t, _ := time.Parse(time.RFC3339Nano, s.Time)
				fmt.Fprintf(w, "%s\t%s\t%s\t%s %s %s\t%s\t%s\t%s\n", lineage.ShortID(s.ID), t.Local().Format("2006-01-02 15:04:05"),
					s.Agent, s.Kind, s.Name, s.Args, s.Decision, s.Rules, s.Outcome)
			}
			return w.Flush()
		},
	}
	c.Flags().IntVarP(&limit, "limit", "n", 20, "how many executions")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	show := &cobra.Command{
		Use:   "show EXEC_ID",
		Short: "Print one execution's events (the id as etb log prints it, or a unique prefix)",
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			gw, err := g.open(cmd.Context(), "")
			if err != nil {
				return err
			}
			defer gw.Close()
			id, err := gw.ResolveID(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			events, idx, err := gw.Events(cmd.Context(), id)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON("-", events)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "execution %s (task %s)\n", id, events[0].Task)
			for i, e := range events {
				fmt.Fprintf(w, "  #%d seq %d %-9s %s %s\n      %s\n", idx[i], e.Seq, e.Type, e.Time, e.Actor, e.Body)
			}
			return nil
		},
	}
	show.Flags().BoolVar(&asJSON, "json", false, "print the events as JSON")
	tree := &cobra.Command{
		Use:   "tree TASK_ID",
		Short: "Print a task's tree across agents: each action, decision, rule, outcome, duration, interruptions",
		Long: `Tree prints the task (the id as etb log prints it, or a unique prefix) and every task below
it (sub-tasks and the tasks of sub-agents it delegated to), each with its
executions in time order: agent, action, decision and rule, outcome,
duration and the reasons of any interruptions. Labels the task gained are
shown beside it.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			gw, err := g.open(cmd.Context(), "")
			if err != nil {
				return err
			}
			defer gw.Close()
			id, _, err := gw.ResolveTask(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			t, err := gw.TaskTree(cmd.Context(), id)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON("-", t)
			}
			printTree(cmd.OutOrStdout(), t, "")
			return nil
		},
	}
	tree.Flags().BoolVar(&asJSON, "json", false, "print the tree as JSON")
	c.AddCommand(show, tree, newMonitorCmd())
	return c
}

// printTree prints one task and, indented, the tasks below it.
func printTree(w io.Writer, t *gateway.TaskNode, indent string) {
	labels := ""
	if len(t.Labels) > 0 {
		labels = " [" + strings.Join(t.Labels, ",") + "]"
	}
	fmt.Fprintf(w, "%stask %s%s\n", indent, lineage.ShortID(t.ID), labels)
	for _, x := range t.Executions {
		rule := x.Rules
		if rule == "" {
			rule = "-"
		}
		outcome := x.Outcome
		if outcome == "" {
			outcome = "-"
		}
		line := fmt.Sprintf("%s  %s %s %s %s %s: %s by %s, %s, %s", indent, lineage.ShortID(x.ID), x.Agent, x.Kind, x.Name, x.Args,
			x.Decision, rule, outcome, x.Duration.Round(time.Millisecond))
		if len(x.Interrupts) > 0 {
			line += " (interrupted: " + strings.Join(x.Interrupts, ", ") + ")"
		}
		fmt.Fprintln(w, line)
	}
	for _, c := range t.Children {
		printTree(w, c, indent+"  ")
	}
}

func newEvidenceCmd(g *globals) *cobra.Command {
	var out, since, task string
	c := &cobra.Command{
		Use:   "evidence (EXEC_ID | --task TASK_ID)",
		Short: "Write the evidence bundle (etb.bundle/v1) of an execution or of a whole task tree",
		Long: `Evidence writes the bundle of one execution: its events from the ledger,
each with a C2SP tlog-proof against the latest checkpoint (or, with
witnesses configured, the latest checkpoint cosigned by a quorum of them),
its grant and its policy. With --since, the bundle also carries the
consistency proof from that earlier checkpoint, for 'etb verify --since'.

With --task, the bundle holds the whole tree of that task (from its root):
every execution of every task in it, across agents and sub-agents, with
every grant (delegations included) and policy, for 'etb verify' to check
all of it at once, including each parent → child grant link and the task
state every decision saw.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if task != "" {
				return usageArgs(cobra.NoArgs)(cmd, args)
			}
			return usageArgs(cobra.ExactArgs(1))(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			gw, err := g.open(cmd.Context(), "")
			if err != nil {
				return err
			}
			defer gw.Close()
			if task != "" {
				if since != "" {
					return usageError("--since is not supported with --task yet")
				}
				b, err := gw.EvidenceForTask(cmd.Context(), task)
				if err != nil {
					return err
				}
				return writeJSON(out, b)
			}
			id, err := gw.ResolveID(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			var seen []byte
			if since != "" {
				if seen, err = os.ReadFile(since); err != nil {
					return usageError("%v", err)
				}
			}
			b, err := gw.EvidenceFor(cmd.Context(), id, seen)
			if err != nil {
				return err
			}
			return writeJSON(out, b)
		},
	}
	c.Flags().StringVarP(&out, "output", "o", "-", "file to write (- for stdout)")
	c.Flags().StringVar(&since, "since", "", "a checkpoint (signed note) the verifier saw earlier: include the consistency proof from it")
	c.Flags().StringVar(&task, "task", "", "write the bundle of this task's whole tree instead of one execution")
	return c
}

func newPolicyCmd() *cobra.Command {
	c := &cobra.Command{Use: "policy", Short: "Test and evaluate policy files"}
	c.AddCommand(&cobra.Command{
		Use:   "test POLICY_FILE",
		Short: "Load a policy (type-check, cost bound, hash) and run its tests:",
		Long:  "Test loads the policy file, rejecting it if any rule fails to type-check or exceeds the cost budget, prints its bundle hash, and runs every case under tests:. Exit status 1 if any test fails.",
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := loadPolicy(args[0])
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "policy %s %s\n", b.Name(), b.Hash())
			results := b.RunTests(cmd.Context())
			failed := 0
			for _, r := range results {
				if r.Pass {
					fmt.Fprintf(w, "PASS %s\n", r.Name)
					continue
				}
				failed++
				fmt.Fprintf(w, "FAIL %s: %s\n", r.Name, r.Detail)
			}
			fmt.Fprintf(w, "%d passed, %d failed\n", len(results)-failed, failed)
			if failed > 0 {
				return &exitError{code: 1}
			}
			return nil
		},
	})
	var input string
	eval := &cobra.Command{
		Use:   "eval POLICY_FILE --input ACTION_JSON",
		Short: "Evaluate a policy on an action: decision, rules and explanation",
		Long: `Eval evaluates the policy on an etb.action/v1 document (missing fields take
their zero values) and prints the decision record and, per candidate rule,
whether it matched or failed. Exit status 0 whatever the decision; 2 if the
input cannot be read.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if input == "" {
				return usageError("--input is required: a JSON etb.action/v1 document ('-' for stdin)")
			}
			b, err := loadPolicy(args[0])
			if err != nil {
				return err
			}
			var raw []byte
			if input == "-" {
				raw, err = io.ReadAll(os.Stdin)
			} else {
				raw, err = os.ReadFile(input)
			}
			if err != nil {
				return usageError("%v", err)
			}
			a, err := action.Parse(raw)
			if err != nil {
				return usageError("%s: %v", input, err)
			}
			d, trace := b.Explain(cmd.Context(), a)
			out := struct {
				Decision policy.Decision `json:"decision"`
				Trace    []policy.Trace  `json:"explanation"`
			}{d, trace}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(out)
		},
	}
	eval.Flags().StringVar(&input, "input", "", "action JSON file ('-' for stdin)")
	c.AddCommand(eval)
	return c
}

func loadPolicy(path string) (*policy.Bundle, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, usageError("%v", err)
	}
	b, err := policy.Load(src)
	if err != nil {
		return nil, &exitError{code: 1, msg: fmt.Sprintf("%s: %v", path, err)}
	}
	return b, nil
}

var _ = errors.New
