package ledger

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var crashRounds = flag.Int("ledger.crash.rounds", 8, "kill-and-restart rounds of TestCrashRecovery (e.g. 500 for a long run)")

const crashEnv = "ETB_LEDGER_CRASH_DB"

// crashEntry is the content the crash writer appends as entry j of append
// i of goroutine g in round r; the parent recomputes it from the ack line.
func crashEntry(r, g, i, j int) []byte {
	return []byte(fmt.Sprintf(`{"round":%d,"g":%d,"i":%d,"j":%d}`, r, g, i, j))
}

// TestHelperCrashWriter is not a test on its own: TestCrashRecovery runs the
// test binary with crashEnv set, and this appends from 16 goroutines until
// it is killed, printing "ack <round> <g> <i> <n> <first>" after each Append
// of n entries returns.
func TestHelperCrashWriter(t *testing.T) {
	path := os.Getenv(crashEnv)
	if path == "" {
		t.Skip("crash writer process only")
	}
	round, _ := strconv.Atoi(os.Getenv(crashEnv + "_ROUND"))
	ctx := context.Background()
	db, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := NewSQLiteStorage(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := NewSigner(testOrigin, testKey("log"))
	l, err := New(ctx, st, signer, testOrigin)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				n := 1 + (g+i)%3
				es := make([][]byte, n)
				for j := range es {
					es[j] = crashEntry(round, g, i, j)
				}
				first, err := l.Append(ctx, es...)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				// One write(2) per line, on the unbuffered stdout.
				fmt.Fprintf(os.Stdout, "ack %d %d %d %d %d\n", round, g, i, n, first)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// TestCrashRecovery kills a writer process with SIGKILL at a random moment
// (10-300 ms after start, or in every other round after its first
// acknowledged append) while 16 goroutines append, restarts it, and
// repeats. After each kill: every acknowledged append is stored with the
// acknowledged content, Fsck is clean, and the first checkpoint committed
// after the restart is consistent with the last one before the kill.
func TestCrashRecovery(t *testing.T) {
	if os.Getenv(crashEnv) != "" || os.Getenv(helperEnv) != "" {
		t.Skip("inside a helper")
	}
	if testing.Short() {
		t.Skip("spawns processes")
	}
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ledger.db")
	v := testVerifier(t, testOrigin, testKey("log"))
	var before *Checkpoint // latest checkpoint after the previous kill
	total := 0
	for round := 0; round < *crashRounds; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperCrashWriter$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashEnv+"="+path, crashEnv+"_ROUND="+strconv.Itoa(round))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var acks []string
		read := make(chan error, 1)
		acked := make(chan struct{})
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if len(acks) == 0 {
					close(acked)
				}
				acks = append(acks, sc.Text())
			}
			read <- sc.Err()
		}()
		if round%2 == 1 {
			// Every other round is killed only once appends are being
			// acknowledged, however slowly the writer starts (the race
			// detector, a loaded machine): the other rounds may all be
			// killed before the first append.
			select {
			case <-acked:
			case <-time.After(30 * time.Second):
				t.Fatalf("round %d: no append acknowledged in 30 s:\n%s", round, stderr.String())
			}
		}
		time.Sleep(time.Duration(10+rand.IntN(291)) * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-read
		err = cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("round %d: writer exited on its own (%v):\n%s", round, err, stderr.String())
		}

		// Recover and check, as a fresh process would.
		db, err := OpenSQLite(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		st, err := NewSQLiteStorage(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		rep, err := Fsck(ctx, st, v)
		if errors.Is(err, ErrNotFound) && before == nil && len(acks) == 0 {
			db.Close() // killed before New committed the first checkpoint
			continue
		}
		if err != nil {
			t.Fatalf("round %d: fsck after kill: %v", round, err)
		}
		for _, a := range acks {
			var r, g, i, n int
			var first uint64
			if _, err := fmt.Sscanf(a, "ack %d %d %d %d %d", &r, &g, &i, &n, &first); err != nil || r != round {
				t.Fatalf("round %d: writer printed %q (%v); its output:\n%s", round, a, err, strings.Join(acks, "\n"))
			}
			es, err := st.Entries(ctx, first, first+uint64(n))
			if err != nil {
				t.Fatalf("round %d: acknowledged entries [%d, %d) lost: %v", round, first, first+uint64(n), err)
			}
			for j, e := range es {
				if want := crashEntry(r, g, i, j); !bytes.Equal(e, want) {
					t.Fatalf("round %d: entry %d is %q, acknowledged %q", round, first+uint64(j), e, want)
				}
			}
		}
		if before != nil && rep.Size > before.Size {
			size, n, err := st.CheckpointCovering(ctx, before.Size)
			if err != nil {
				t.Fatal(err)
			}
			after, err := ParseCheckpoint(n, v)
			if err != nil || after.Size != size {
				t.Fatalf("round %d: first checkpoint after restart (size %d): %v", round, size, err)
			}
			signer, _ := NewSigner(testOrigin, testKey("log"))
			l, err := New(ctx, st, signer, testOrigin)
			if err != nil {
				t.Fatal(err)
			}
			p, err := l.ConsistencyProof(ctx, before.Size, after.Size)
			l.Close()
			if err != nil {
				t.Fatal(err)
			}
			if err := VerifyConsistency(*before, after, p); err != nil {
				t.Fatalf("round %d: first checkpoint after restart is inconsistent with the last before: %v", round, err)
			}
		}
		sz, n, err := st.LatestCheckpoint(ctx)
		if err != nil {
			t.Fatal(err)
		}
		cp, err := ParseCheckpoint(n, v)
		if err != nil || cp.Size != sz {
			t.Fatalf("round %d: latest checkpoint: %v", round, err)
		}
		before = &cp
		total += len(acks)
		db.Close()
		if strings.Contains(stderr.String(), "FAIL") {
			t.Fatalf("round %d: writer failed:\n%s", round, stderr.String())
		}
	}
	t.Logf("%d rounds, %d acknowledged appends, final size %d", *crashRounds, total, before.Size)
	if total == 0 {
		t.Fatal("no append was acknowledged in any round")
	}
}
