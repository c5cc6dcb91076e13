package enforce

import (
	"bufio"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestTracker: a child's own child that leaves the group (setsid) and is
// orphaned when its parent dies and is reaped by its owner is still killed
// by the Tracker, and the Tracker refuses what it cannot follow.
func TestTracker(t *testing.T) {
	if err := Subreaper(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", "setsid sleep 120 & echo $!; exec sleep 120")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	grandchild, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(grandchild, syscall.SIGKILL)
	tr, err := Track(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	// The owner kills and reaps the child: the grandchild, in a group and
	// session of its own, is now an orphan of this process.
	cmd.Process.Kill()
	cmd.Wait()
	if err := syscall.Kill(grandchild, 0); err != nil {
		t.Fatalf("grandchild %d gone before Kill: %v", grandchild, err)
	}
	if err := tr.Kill(); err != nil {
		t.Fatal(err)
	}
	if p, ok, _ := readProc(grandchild); ok && p.state != 'Z' {
		t.Fatalf("grandchild %d survived Kill (state %c)", grandchild, p.state)
	}
	if err := tr.Kill(); err != nil {
		t.Fatalf("second Kill: %v", err)
	}

	// Not a child of this process, and a child in this process's group.
	if _, err := Track(os.Getppid()); err == nil {
		t.Error("Track of the parent process succeeded")
	}
	same := exec.Command("sleep", "120")
	if err := same.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { same.Process.Kill(); same.Wait() }()
	if _, err := Track(same.Process.Pid); err == nil {
		t.Error("Track of a child in this process's group succeeded")
	}
}
