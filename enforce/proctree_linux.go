package enforce

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// procInfo is what one line of /proc/PID/stat says about a process.
type procInfo struct {
	pid, ppid, pgid int
	state           byte   // 'R', 'S', 'Z', ...
	start           uint64 // start time in clock ticks since boot: (pid, start) names one process
}

// parseStat parses the contents of /proc/PID/stat. The command name is in
// parentheses and may itself contain spaces and parentheses, so the fields
// are counted from the last ')'.
func parseStat(b []byte) (procInfo, error) {
	open := bytes.IndexByte(b, '(')
	end := bytes.LastIndexByte(b, ')')
	if open < 1 || end < open {
		return procInfo{}, fmt.Errorf("enforce: malformed /proc stat line %q", b)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b[:open])))
	if err != nil {
		return procInfo{}, fmt.Errorf("enforce: malformed pid in /proc stat line %q: %w", b, err)
	}
	// Fields after ")": state(3) ppid(4) pgrp(5) session(6) ... starttime(22).
	f := strings.Fields(string(b[end+1:]))
	if len(f) < 20 || len(f[0]) != 1 {
		return procInfo{}, fmt.Errorf("enforce: short /proc stat line for pid %d: %q", pid, b)
	}
	p := procInfo{pid: pid, state: f[0][0]}
	if p.ppid, err = strconv.Atoi(f[1]); err != nil {
		return procInfo{}, fmt.Errorf("enforce: bad ppid in /proc stat of pid %d: %w", pid, err)
	}
	if p.pgid, err = strconv.Atoi(f[2]); err != nil {
		return procInfo{}, fmt.Errorf("enforce: bad pgrp in /proc stat of pid %d: %w", pid, err)
	}
	if p.start, err = strconv.ParseUint(f[19], 10, 64); err != nil {
		return procInfo{}, fmt.Errorf("enforce: bad starttime in /proc stat of pid %d: %w", pid, err)
	}
	return p, nil
}

// readProc reads /proc/PID/stat. A process that no longer exists is
// reported with ok == false and no error.
func readProc(pid int) (p procInfo, ok bool, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			return procInfo{}, false, nil
		}
		return procInfo{}, false, fmt.Errorf("enforce: reading /proc/%d/stat: %w", pid, err)
	}
	p, err = parseStat(b)
	if err != nil {
		return procInfo{}, false, err
	}
	return p, true, nil
}

// readProcs returns every process visible in /proc, by pid. Processes that
// exit while the table is read are simply absent.
func readProcs() (map[int]procInfo, error) {
	d, err := os.Open("/proc")
	if err != nil {
		return nil, fmt.Errorf("enforce: process table: %w", err)
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("enforce: process table: %w", err)
	}
	procs := make(map[int]procInfo, len(names))
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil || pid <= 0 {
			continue
		}
		p, ok, err := readProc(pid)
		if err != nil {
			return nil, err
		}
		if ok {
			procs[pid] = p
		}
	}
	return procs, nil
}

// holdsWriteEnd reports whether process pid has one of the pipes named in
// markers ("pipe:[inode]") open for writing. Only write ends count: the
// enforcing process holds the read ends itself (close-on-exec), so a child
// forked elsewhere in this process could briefly hold a read end between
// fork and exec, but never a write end once the command has started.
func holdsWriteEnd(pid int, markers map[string]bool) bool {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd/"
	d, err := os.Open(dir)
	if err != nil {
		return false
	}
	fds, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return false
	}
	for _, fd := range fds {
		link, err := os.Readlink(dir + fd)
		if err != nil || !markers[link] {
			continue
		}
		info, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/fdinfo/" + fd)
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(info)) {
			v, ok := strings.CutPrefix(line, "flags:")
			if !ok {
				continue
			}
			flags, err := strconv.ParseUint(strings.TrimSpace(v), 8, 64)
			if err == nil && flags&unix.O_ACCMODE != unix.O_RDONLY {
				return true
			}
		}
	}
	return false
}

// tree identifies the process tree of one command started by this process
// (self) as its direct child, in its own process group (pgid == child).
//
// Because this process is a child subreaper, descendants orphaned by the
// command are reparented to it, not to init. A process belongs to the tree
// if it is the child; is in the child's process group; was seen in the
// tree before (same pid and start time); or is a child of self holding the
// write end of one of the command's output pipes (markers) — and then so
// are all its descendants. Other children of self (other commands run
// concurrently) match none of these and are never touched.
type tree struct {
	self, child int
	// childStart is the child's start time when someone else may reap
	// it (Track): its pid may then name another process later. 0 when
	// the child is reaped only after teardown (Run).
	childStart uint64
	markers    map[string]bool
	seen       map[int]uint64 // pid → start time of every member seen so far
}

func newTree(child int, markers map[string]bool) *tree {
	return &tree{self: os.Getpid(), child: child, markers: markers, seen: map[int]uint64{}}
}

// members returns the tree's processes in procs and records them as seen.
func (t *tree) members(procs map[int]procInfo) map[int]procInfo {
	kids := map[int][]int{}
	for pid, p := range procs {
		kids[p.ppid] = append(kids[p.ppid], pid)
	}
	m := map[int]procInfo{}
	var stack []int
	add := func(p procInfo) {
		if p.pid == t.self || p.pid <= 1 {
			return
		}
		if _, ok := m[p.pid]; !ok {
			m[p.pid] = p
			stack = append(stack, p.pid)
		}
	}
	reused := t.reused(procs)
	for pid, p := range procs {
		switch {
		case !reused && (pid == t.child || p.pgid == t.child):
			add(p)
		case t.wasSeen(p):
			add(p)
		case p.ppid == t.self && holdsWriteEnd(pid, t.markers):
			add(p)
		}
	}
	for len(stack) > 0 {
		pid := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, k := range kids[pid] {
			add(procs[k])
		}
	}
	// Anything seen before that still exists is in m again, so m is all
	// that needs remembering.
	clear(t.seen)
	for pid, p := range m {
		t.seen[pid] = p.start
	}
	return m
}

// reused reports whether the child's pid now names another process: the
// child was reaped by its owner and the pid given out again. Its process
// group is then not the child's: while any member of a group lives, Linux
// gives its id to no new process.
func (t *tree) reused(procs map[int]procInfo) bool {
	p, ok := procs[t.child]
	return t.childStart != 0 && ok && p.start != t.childStart
}

// wasSeen reports whether p, same pid and start time, was a member before.
func (t *tree) wasSeen(p procInfo) bool {
	start, ok := t.seen[p.pid]
	return ok && start == p.start
}

// observe records the tree's current members, so that a descendant that
// later leaves the process group, closes its inherited descriptors and is
// orphaned is still recognised at teardown.
func (t *tree) observe() error {
	procs, err := readProcs()
	if err != nil {
		return err
	}
	t.members(procs)
	return nil
}

// killTimeout bounds how long teardown may take before it reports failure.
const killTimeout = 10 * time.Second

// teardown SIGKILLs the whole tree, including the direct child, and repeats
// until no member is left alive: a member may fork between a scan and its
// kill, so one pass is not enough. Members that became zombies and were
// reparented to self are reaped here; the direct child is never reaped here
// (os/exec owns its exit status), it is only left a zombie.
// An error means some member could not be signalled (EPERM: a setuid
// program in the tree) or the tree did not die within killTimeout.
func (t *tree) teardown() error {
	deadline := time.Now().Add(killTimeout)
	pause := 200 * time.Microsecond
	for {
		// Scan before killing: killing a parent first would orphan its
		// children and lose the ppid links that attribute them.
		procs, err := readProcs()
		if err != nil {
			return err
		}
		m := t.members(procs)
		// Run reaps the child only after teardown, so its pid and
		// therefore the group id cannot have been reused; Track's child
		// is checked by its start time. Best effort: a member that
		// cannot be signalled is reported by kill below.
		if !t.reused(procs) {
			unix.Kill(-t.child, unix.SIGKILL)
		}
		var alive []int
		var errs []error
		for pid, p := range m {
			if p.state == 'Z' || p.state == 'X' {
				if pid == t.child {
					continue
				}
				if p.ppid == t.self {
					var ws unix.WaitStatus
					if got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); got == pid || errors.Is(err, unix.ECHILD) {
						continue
					}
					alive = append(alive, pid)
				} else if _, ours := m[p.ppid]; ours {
					alive = append(alive, pid) // gone once its parent is killed
				}
				continue
			}
			alive = append(alive, pid)
			if err := kill(p); err != nil {
				errs = append(errs, err)
			}
		}
		if len(errs) > 0 && len(errs) == len(alive) {
			// Only processes that cannot be signalled are left (for
			// example a setuid program): waiting will not help.
			return errors.Join(errs...)
		}
		if len(alive) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			slices.Sort(alive)
			err := fmt.Errorf("enforce: process tree of pid %d still has processes %v after %v", t.child, alive, killTimeout)
			return errors.Join(append([]error{err}, errs...)...)
		}
		time.Sleep(pause)
		pause = min(2*pause, 10*time.Millisecond)
	}
}

// kill sends SIGKILL to the process p names, and to no other: it opens a
// pidfd, then checks that the pid still has p's start time, so a pid
// recycled since the scan is never signalled.
func kill(p procInfo) error {
	fd, err := unix.PidfdOpen(p.pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil
		}
		return fmt.Errorf("enforce: pidfd_open(%d): %w", p.pid, err)
	}
	defer unix.Close(fd)
	now, ok, err := readProc(p.pid)
	if err != nil {
		return err
	}
	if !ok || now.start != p.start {
		return nil // exited (and possibly recycled) since the scan
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("enforce: SIGKILL pid %d: %w", p.pid, err)
	}
	return nil
}
