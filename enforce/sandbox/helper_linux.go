package sandbox

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/etbproject/etb/enforce/sandbox/internal/stage"
	"golang.org/x/sys/unix"
)

// MaybeRunHelper must be called first thing in main() (and in TestMain): if
// this process was started by Probe as a sandbox stage, it runs that stage
// and never returns. Otherwise it returns at once.
//
// The helper that Command starts does not get here: it runs from the init
// function of package stage (imported by this package), before the rest of
// the binary is initialised, and exits from there.
func MaybeRunHelper() {
	s, ok := os.LookupEnv(envStage)
	if !ok {
		return
	}
	if p, ok := strings.CutPrefix(s, stageProbe+":"); ok {
		os.Exit(runProbe(p))
	}
	fmt.Fprintf(os.Stderr, "etb-sandbox: unknown stage %q\n", s)
	os.Exit(exitSetup)
}

// runProbe checks that the namespaces in flags can be created and set up:
// it is started in them by Probe and exits 0 if it can prepare them.
func runProbe(flags string) int {
	n, err := strconv.ParseUint(flags, 10, 64)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etb-sandbox: probe: %v\n", err)
		return exitSetup
	}
	if n&unix.CLONE_NEWNS != 0 {
		if err := stage.PrivateProc(); err != nil {
			fmt.Fprintf(os.Stderr, "etb-sandbox: probe: %v\n", err)
			return exitSetup
		}
	}
	if n&unix.CLONE_NEWNET != 0 {
		if err := stage.LoopbackUp(); err != nil {
			fmt.Fprintf(os.Stderr, "etb-sandbox: probe: %v\n", err)
			return exitSetup
		}
	}
	return 0
}
