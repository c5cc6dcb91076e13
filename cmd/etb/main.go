// Command etb is the execution trust boundary: it governs commands
// (`etb run`), keeps their evidence, and verifies it (`etb verify`).
//
// This file and its siblings only parse flags and call packages.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/etbproject/etb/enforce/sandbox"
	"github.com/etbproject/etb/gateway"
)

// exitError carries a specific exit status out of a command.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// usageError is exit status 2.
func usageError(format string, args ...any) error {
	return &exitError{code: 2, msg: fmt.Sprintf(format, args...)}
}

type globals struct {
	home string
}

func (g *globals) homeDir() (string, error) {
	if g.home != "" {
		return g.home, nil
	}
	return gateway.DefaultHome()
}

func (g *globals) open(ctx context.Context, policyPath string) (*gateway.Gateway, error) {
	dir, err := g.homeDir()
	if err != nil {
		return nil, err
	}
	return gateway.Open(ctx, dir, gateway.Options{PolicyPath: policyPath})
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "etb",
		Short: "etb puts a trust boundary around each action an agent takes",
		Long: `etb governs actions of autonomous agents. Before an action runs, etb
evaluates policy on it and signs a short-lived, single-use grant bound to
that exact action; the enforcer verifies the grant, runs the action inside
its obligations and records every step in a hash-linked, Merkle-logged
ledger. Anyone holding the public keys can verify the evidence offline.

The embedded home (config, keys, default policy, SQLite ledger) is created
on first use at --home, $ETB_HOME or ~/.etb.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.home, "home", "", "etb home directory (default $ETB_HOME or ~/.etb)")
	root.AddCommand(newInitCmd(g), newRunCmd(g), newTrustCmd(g), newVerifyCmd(), newLogCmd(g),
		newEvidenceCmd(g), newPolicyCmd(), newIdentityCmd(g),
		newLedgerCmd(g), newWitnessCmd(), newDoctorCmd(), newServeCmd(g), newRevokeCmd(g), newMCPCmd(g))
	root.AddCommand(newApprovalCmds(g)...)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError("%v\nRun '%s --help' for usage.", err, c.CommandPath())
	})
	return root
}

func main() {
	// A sandboxed command is started by re-executing this binary as the
	// sandbox helper: that must happen before anything else.
	sandbox.MaybeRunHelper()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	err := newRoot().ExecuteContext(ctx)
	stop()
	if err == nil {
		return
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintln(os.Stderr, "etb:", ee.msg)
		}
		os.Exit(ee.code)
	}
	fmt.Fprintln(os.Stderr, "etb:", err)
	if strings.HasPrefix(err.Error(), "unknown command") {
		os.Exit(2)
	}
	os.Exit(1)
}

// usageArgs turns an argument-count error into a usage error (exit 2).
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if err := check(c, args); err != nil {
			return usageError("%v\nRun '%s --help' for usage.", err, c.CommandPath())
		}
		return nil
	}
}
