package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/etbproject/etb/internal/etbtest"
)

// Embedded `etb run`s and agents governed through `etb serve` append to
// the same home's log at the same time; a monitor follows the log over the
// plain-HTTP tlog-tiles listener and finds every checkpoint consistent, and
// fsck is clean afterwards.
func TestServeAndEmbeddedRunsShareTheLog(t *testing.T) {
	home, dir := t.TempDir(), t.TempDir()
	etb(t, home, "init")
	issue(t, home, "spiffe://etb.local/agent/a", "agent-a")
	addr, logAddr := etbtest.FreeAddr(t), etbtest.FreeAddr(t)
	srv := startServe(t, home, addr, "--log-listen", logAddr)
	trust := filepath.Join(dir, "trust.json")
	exportTrust(t, home, trust)

	ctx, cancel := context.WithCancel(context.Background())
	mon := exec.CommandContext(ctx, etbBin, "--home", home, "log", "monitor", "http://"+logAddr+"/log", "--trust", trust, "--every", "50ms")
	var monOut, monErr etbtest.Buffer
	mon.Stdout, mon.Stderr = &monOut, &monErr
	if err := mon.Start(); err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	errs := make(chan string, 16)
	for i := 0; i < 4; i++ {
		wg.Add(2)
		go func(i int) { // embedded, on the home serve is using
			defer wg.Done()
			if r := etb(t, home, "run", "--", "echo", fmt.Sprint("embedded ", i)); r.code != 0 {
				errs <- "embedded: " + r.stderr
			}
		}(i)
		go func(i int) { // through the gateway
			defer wg.Done()
			cmd := exec.Command(etbBin, "--home", home, "run", "--gateway", "https://"+addr,
				"--cert", filepath.Join(home, "agent-a.crt"), "--key", filepath.Join(home, "agent-a.key"), "--", "echo", fmt.Sprint("remote ", i))
			if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), fmt.Sprint("remote ", i)) {
				errs <- fmt.Sprintf("remote: %v %s", err, out)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	// Let the monitor see the last checkpoint (8 executions × 5 events).
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && !strings.Contains(monOut.String(), "size 40 root"); {
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	mon.Wait()
	if strings.Contains(monOut.String()+monErr.String(), "inconsistent") || !strings.Contains(monOut.String(), "size 40 root") || !strings.Contains(monOut.String(), "consistent with size") {
		t.Fatalf("monitor output:\n%s\n%s", monOut.String(), monErr.String())
	}
	srv.Stop(t)
	if r := etb(t, home, "ledger", "fsck"); r.code != 0 {
		t.Fatalf("fsck after concurrent appends: %s %s", r.stdout, r.stderr)
	}
	list := etb(t, home, "log", "-n", "100")
	if n := strings.Count(list.stdout, "exit 0"); n != 8 {
		t.Fatalf("%d executions ended with exit 0, want 8:\n%s", n, list.stdout)
	}
}
