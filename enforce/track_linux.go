package enforce

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Subreaper makes this process a child subreaper (PR_SET_CHILD_SUBREAPER,
// a process-wide setting): descendants orphaned by its children are then
// reparented to it instead of init, where a Tracker still finds them. Call
// it before starting the command a Tracker is to follow.
func Subreaper() error {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("enforce: becoming a child subreaper: %w", err)
	}
	return nil
}

// A Tracker follows the process tree of a command this process started in
// its own process group and that someone else starts and waits for (an MCP
// SDK's command transport, say), as Run follows its own: the tree is
// sampled while it runs, and Kill SIGKILLs every process attributed to it —
// the child's group, the descendants of the child, processes seen in the
// tree earlier, and orphans holding the write end of the child's standard
// output — until none is left. The gaps without a PID namespace are Run's
// (see "Process trees" in the package documentation).
//
// Orphans reparented to this process (see Subreaper) are reaped while the
// tree is sampled and at Kill; the child itself never is: its owner waits
// for it. Once its owner has, the child's pid may name another process,
// which the start time recorded by Track tells apart.
type Tracker struct {
	mu     sync.Mutex // guards t
	t      *tree
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once
	result error
}

// Track starts following the tree of pid, a running child of this process
// that leads its own process group. It samples the tree now and every
// observeEvery until Kill.
func Track(pid int) (*Tracker, error) {
	p, ok, err := readProc(pid)
	switch {
	case err != nil:
		return nil, err
	case !ok:
		return nil, fmt.Errorf("enforce: track pid %d: no such process", pid)
	case p.ppid != os.Getpid() || p.pgid != pid:
		return nil, fmt.Errorf("enforce: track pid %d: not a child of this process leading its own group (parent %d, group %d)", pid, p.ppid, p.pgid)
	}
	markers := map[string]bool{}
	if link, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/fd/1"); err == nil && strings.HasPrefix(link, "pipe:") {
		markers[link] = true
	}
	t := newTree(pid, markers)
	t.childStart = p.start
	tr := &Tracker{t: t, stop: make(chan struct{}), done: make(chan struct{})}
	tr.sample()
	go tr.run()
	return tr, nil
}

func (tr *Tracker) run() {
	defer close(tr.done)
	tick := time.NewTicker(observeEvery)
	defer tick.Stop()
	for {
		select {
		case <-tr.stop:
			return
		case <-tick.C:
			tr.sample()
		}
	}
}

// Sample records the tree's members now, besides the periodic samples: a
// caller knows moments when the command has likely started what it keeps
// (after its start-up, say), which a descendant that then leaves the group
// and loses its parent might otherwise slip between.
func (tr *Tracker) Sample() { tr.sample() }

// sample records the tree's members and reaps those that were reparented
// here and have exited, so that a long-lived command's orphans do not
// pile up as zombies. Best effort: Kill scans again.
func (tr *Tracker) sample() {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	procs, err := readProcs()
	if err != nil {
		return
	}
	for pid, p := range tr.t.members(procs) {
		if pid != tr.t.child && p.ppid == tr.t.self && p.state == 'Z' {
			var ws unix.WaitStatus
			unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		}
	}
}

// Kill stops sampling and kills the tree (see Tracker). An error means some
// member could not be signalled or the tree did not die within
// killTimeout. Later calls return the first call's result.
func (tr *Tracker) Kill() error {
	tr.once.Do(func() {
		close(tr.stop)
		<-tr.done
		tr.mu.Lock()
		defer tr.mu.Unlock()
		tr.result = tr.t.teardown()
	})
	return tr.result
}
