package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/etbproject/etb/enforce/sandbox"
)

func newDoctorCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "doctor",
		Short: "Report which enforcement features this host has",
		Long: `Doctor probes the kernel features the sandbox uses to enforce a grant's
obligations (user, PID, network and mount namespaces, seccomp, Landlock and
its ABI version, RLIMIT_NPROC) and says which obligations can be enforced
here. A permit whose obligations this host cannot enforce is refused before
anything runs.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			f := sandbox.Probe()
			yes := func(b bool) string {
				if b {
					return "yes"
				}
				return "NO"
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			fmt.Fprintln(w, "FEATURE\tAVAILABLE")
			fmt.Fprintf(w, "user namespaces\t%s\n", yes(f.UserNS))
			fmt.Fprintf(w, "PID namespaces\t%s\n", yes(f.PIDNS))
			fmt.Fprintf(w, "network namespaces\t%s\n", yes(f.NetNS))
			fmt.Fprintf(w, "mount namespaces\t%s\n", yes(f.MountNS))
			fmt.Fprintf(w, "seccomp\t%s\n", yes(f.Seccomp))
			fmt.Fprintf(w, "Landlock ABI\t%d\n", f.LandlockABI)
			fmt.Fprintf(w, "RLIMIT_NPROC binds this user\t%s\n", yes(f.ProcessLimit))
			w.Flush()
			fmt.Fprintln(cmd.OutOrStdout(), "\nOBLIGATION\tENFORCEABLE")
			w = tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			for _, o := range []struct {
				name string
				spec sandbox.Spec
			}{
				{"timeout", sandbox.Spec{}},
				{"cpu_seconds, memory_bytes, max_file_bytes", sandbox.Spec{CPUSeconds: 1, MemoryBytes: 1 << 30, MaxFileBytes: 1 << 20}},
				{"max_processes", sandbox.Spec{MaxProcesses: 64}},
				{"fs read/write/exec", sandbox.Spec{Read: []string{"/"}}},
				{"net none", sandbox.Spec{Network: &sandbox.Network{}}},
				{"net allow-list (egress proxy)", sandbox.Spec{Network: &sandbox.Network{Allow: []string{"example.org:443"}}}},
				{"env allow-list, cwd", sandbox.Spec{EnvAllow: []string{"PATH"}}},
			} {
				status := "yes"
				if o.name != "timeout" {
					if err := sandbox.Check(o.spec, f); err != nil {
						status = "NO: " + err.Error()
					}
				}
				fmt.Fprintf(w, "%s\t%s\n", o.name, status)
			}
			for _, n := range f.Notes {
				fmt.Fprintf(w, "note\t%s\n", n)
			}
			return w.Flush()
		},
	}
}
