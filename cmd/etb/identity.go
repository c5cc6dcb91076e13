package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/etbproject/etb/gateway"
	"github.com/etbproject/etb/identity"
)

func newIdentityCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "identity", Short: "Workload identities (SPIFFE X.509-SVIDs) from the embedded CA"}
	var certPath, keyPath string
	var ttl time.Duration
	issue := &cobra.Command{
		Use:   "issue SPIFFE_ID",
		Short: "Issue a short-lived X.509-SVID and key for a workload",
		Long: `Issue creates (on first use) the home's embedded CA under ca/ and issues an
X.509-SVID for SPIFFE_ID, which must be in the home's trust domain, for
example spiffe://etb.local/agent/builder. It writes the certificate and a new
P-256 key (mode 0600), replacing earlier ones atomically: a server or client
using them picks up the new pair without a restart. The CA bundle a peer
needs is ca/ca.crt.`,
		Example: `  etb identity issue spiffe://etb.local/agent/builder
  etb identity issue spiffe://etb.local/approver/alice --ttl 15m --cert alice.crt --key alice.key`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := spiffeid.FromString(args[0])
			if err != nil {
				return usageError("%q is not a SPIFFE ID: %v", args[0], err)
			}
			dir, err := g.homeDir()
			if err != nil {
				return err
			}
			h := gateway.Home{Dir: dir}
			if _, err := h.Init(cmd.Context()); err != nil {
				return err
			}
			cfg, err := h.LoadConfig()
			if err != nil {
				return err
			}
			td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
			if err != nil {
				return err
			}
			ca, err := identity.LoadOrCreateCA(filepath.Join(dir, "ca"), td)
			if err != nil {
				return err
			}
			name := strings.ReplaceAll(strings.Trim(id.Path(), "/"), "/", "-")
			if certPath == "" {
				certPath = name + ".crt"
			}
			if keyPath == "" {
				keyPath = name + ".key"
			}
			if err := ca.IssueFiles(id, certPath, keyPath, ttl); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "issued %s (valid %s)\n  certificate %s\n  key         %s\n  CA bundle   %s\n",
				id, ttl, certPath, keyPath, filepath.Join(dir, "ca", identity.CACertFile))
			return nil
		},
	}
	issue.Flags().StringVar(&certPath, "cert", "", "certificate file to write (default NAME.crt from the ID's path)")
	issue.Flags().StringVar(&keyPath, "key", "", "key file to write (default NAME.key)")
	issue.Flags().DurationVar(&ttl, "ttl", identity.DefaultSVIDTTL, "validity (at most 24h)")
	c.AddCommand(issue)
	return c
}
