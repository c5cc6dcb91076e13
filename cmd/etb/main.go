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
	"time"

	"github.com/spf13/cobra"

	"github.com/etbproject/etb/enforce/sandbox"
	"github.com/etbproject/etb/gateway"
	"github.com/etbproject/etb/telemetry"
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
	// tracer exports one span per execution when the OpenTelemetry
	// environment (OTEL_EXPORTER_OTLP_ENDPOINT, ...) asks for it.
	tracer     *telemetry.Tracer
	tracerDone bool
}

// tracing returns the tracer the environment configures (nil if none). A
// tracing problem is reported and never stops a command.
func (g *globals) tracing(ctx context.Context) *telemetry.Tracer {
	if g.tracerDone {
		return g.tracer
	}
	g.tracerDone = true
	cfg := telemetry.ConfigFromEnv(os.Getenv)
	for _, w := range cfg.Warnings {
		fmt.Fprintln(os.Stderr, "etb: tracing:", w)
	}
	if cfg.Endpoint == "" || cfg.Disabled {
		return nil
	}
	t, err := telemetry.New(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etb: tracing off:", err)
		return nil
	}
	g.tracer = t
	return t
}

// shutdown flushes the spans not yet exported.
func (g *globals) shutdown() {
	if g.tracer == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.tracer.Shutdown(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "etb: tracing:", err)
	}
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
	return gateway.Open(ctx, dir, gateway.Options{PolicyPath: policyPath, Tracer: g.tracing(ctx)})
}

func newRoot() *cobra.Command {
	return newRootWith(&globals{})
}

func newRootWith(g *globals) *cobra.Command {
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
		newLedgerCmd(g), newWitnessCmd(), newDoctorCmd(), newServeCmd(g), newRevokeCmd(g), newMCPCmd(g), newDelegateCmd(g))
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
	g := &globals{}
	err := newRootWith(g).ExecuteContext(ctx)
	g.shutdown()
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
