package ledger

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

const helperEnv = "ETB_LEDGER_HELPER_DB"

// TestHelperAppendProcess is not a test on its own: TestTwoProcesses runs
// the test binary with helperEnv set, and this appends to that database as
// a separate process would.
func TestHelperAppendProcess(t *testing.T) {
	path := os.Getenv(helperEnv)
	if path == "" {
		t.Skip("helper process only")
	}
	f := openLog(t, path)
	name := os.Getenv(helperEnv + "_NAME")
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				e := []byte(fmt.Sprintf("process %s goroutine %d entry %d", name, g, i))
				if _, err := f.log.Append(context.Background(), e, append(e, '!')); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// TestTwoProcesses: two OS processes append to one SQLite file at once; the
// result is one consistent tree in which every entry proves.
func TestTwoProcesses(t *testing.T) {
	if os.Getenv(helperEnv) != "" {
		t.Skip("inside a helper")
	}
	path := filepath.Join(t.TempDir(), "ledger.db")
	f := openLog(t, path) // creates the schema and the empty checkpoint
	var cmds []*exec.Cmd
	var outs []*bytes.Buffer
	for _, name := range []string{"a", "b"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperAppendProcess$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), helperEnv+"="+path, helperEnv+"_NAME="+name)
		out := new(bytes.Buffer)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds, outs = append(cmds, cmd), append(outs, out)
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("helper %d: %v\n%s", i, err, outs[i])
		}
		if !bytes.Contains(outs[i].Bytes(), []byte("--- PASS: TestHelperAppendProcess")) {
			t.Fatalf("helper %d did not run:\n%s", i, outs[i])
		}
	}
	checkTree(t, f, 2*4*50*2)
}
