package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/mod/sumdb/note"

	"github.com/etbproject/etb/identity"
	"github.com/etbproject/etb/ledger"
	"github.com/etbproject/etb/proof"
	"github.com/etbproject/etb/tlogclient"
	"github.com/etbproject/etb/witness"
)

func newLedgerCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "ledger", Short: "Check the ledger's integrity"}
	c.AddCommand(&cobra.Command{
		Use:   "fsck",
		Short: "Recompute every hash of the ledger and verify every checkpoint",
		Long: `Fsck checks the home's ledger from first principles: it recomputes every
leaf hash from the stored entries and every tile hash from its children,
verifies every stored checkpoint's signature and root, and checks each
checkpoint is consistent with the one before. Exit status 1 names the first
problem found.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			gw, err := g.open(cmd.Context(), "")
			if err != nil {
				return err
			}
			defer gw.Close()
			rep, err := gw.Fsck(cmd.Context())
			if err != nil {
				return &exitError{code: 1, msg: "fsck: " + err.Error()}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: %d entries, %d tiles, %d checkpoints verified\n", rep.Size, rep.Tiles, rep.Checkpoints)
			return nil
		},
	})
	return c
}

func newMonitorCmd() *cobra.Command {
	var trustPath, since string
	var every time.Duration
	c := &cobra.Command{
		Use:   "monitor URL --trust TRUST",
		Short: "Follow a log and prove every new checkpoint consistent with the last",
		Long: `Monitor follows the log served at URL (the tlog-tiles prefix, for example
http://127.0.0.1:8443/log), verifies each new checkpoint with the trust
file's log key, and proves it consistent with the previous one from the
log's tiles. If the log ever shows two inconsistent views, it prints both
checkpoints and the proof as evidence and exits 2; other failures exit 1.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if trustPath == "" {
				return usageError("--trust is required")
			}
			t, err := readWith(trustPath, proof.ParseTrust)
			if err != nil {
				return usageError("%v", err)
			}
			v, err := note.NewVerifier(t.Log.Key)
			if err != nil {
				return usageError("trust file log key: %v", err)
			}
			var prev []byte
			if since != "" {
				if prev, err = os.ReadFile(since); err != nil {
					return usageError("%v", err)
				}
			}
			err = tlogclient.Monitor(cmd.Context(), args[0], v, prev, every, cmd.OutOrStdout())
			var inc *tlogclient.InconsistencyError
			switch {
			case errors.As(err, &inc):
				cmd.OutOrStdout().Write(inc.Evidence())
				return &exitError{code: 2, msg: "the log is inconsistent: " + inc.Error()}
			case errors.Is(err, context.Canceled):
				return nil
			}
			return err
		},
	}
	c.Flags().StringVar(&trustPath, "trust", "", "trust file naming the log's key")
	c.Flags().StringVar(&since, "since", "", "a checkpoint seen earlier to start from")
	c.Flags().DurationVar(&every, "every", time.Second, "polling interval")
	return c
}

func newWitnessCmd() *cobra.Command {
	c := &cobra.Command{Use: "witness", Short: "Run a C2SP tlog-witness"}
	var listen, name, keyPath, dbPath string
	var logs []string
	serve := &cobra.Command{
		Use:   "serve --listen ADDR --name NAME --key FILE --db FILE --log VKEY...",
		Short: "Cosign checkpoints of the given logs (C2SP tlog-witness, cosignature/v1)",
		Long: `Serve runs a witness: POST /add-checkpoint with a consistency proof from the
checkpoint it last saw of that log. It verifies the log's signature,
refuses a stale size (409) or an inconsistent checkpoint (422), persists
the new checkpoint and answers with its cosignature. The key file is created
on first use; its verifier key is printed for the logs' trust files.`,
		Example: `  etb witness serve --listen 127.0.0.1:8444 --name witness.example/w1 --key w1.key --db w1.db \
      --log "$(jq -r .log.key trust.json)"`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if listen == "" || name == "" || keyPath == "" || dbPath == "" || len(logs) == 0 {
				return usageError("--listen, --name, --key, --db and at least one --log are required")
			}
			key, err := identity.ReadKey(keyPath)
			if errors.Is(err, os.ErrNotExist) {
				if key, err = identity.GenerateKey(); err == nil {
					err = identity.WriteKey(keyPath, key)
				}
			}
			if err != nil {
				return err
			}
			known := map[string]string{}
			for _, k := range logs {
				v, err := note.NewVerifier(k)
				if err != nil {
					return usageError("--log %q: %v", k, err)
				}
				known[v.Name()] = k
			}
			ctx := cmd.Context()
			db, err := ledger.OpenSQLite(ctx, dbPath)
			if err != nil {
				return err
			}
			defer db.Close()
			w, err := witness.New(ctx, db, witness.Config{Name: name, Key: key, Logs: known})
			if err != nil {
				return err
			}
			vkey, err := w.VerifierKey()
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "witness %s listening on %s\nverifier key: %s\n", name, ln.Addr(), vkey)
			srv := &http.Server{Handler: w.Handler(), ReadHeaderTimeout: 10 * time.Second}
			go func() { <-ctx.Done(); srv.Close() }()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	serve.Flags().StringVar(&listen, "listen", "", "address to listen on")
	serve.Flags().StringVar(&name, "name", "", "the witness's cosigner name")
	serve.Flags().StringVar(&keyPath, "key", "", "Ed25519 key file (created if missing)")
	serve.Flags().StringVar(&dbPath, "db", "", "SQLite file for the witness's state")
	serve.Flags().StringArrayVar(&logs, "log", nil, "verifier key of a log to witness (repeatable)")
	c.AddCommand(serve)
	return c
}
