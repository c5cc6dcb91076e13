package sandbox

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"unsafe"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// deniedSyscalls returns the calls refused with EPERM inside the sandbox:
// they read or write other processes' memory, change mounts, load kernel
// code or keys, reboot, join namespaces, or (io_uring) issue operations that
// seccomp cannot see.
func deniedSyscalls() []string {
	return []string{
		"process_vm_readv", "process_vm_writev", "pidfd_getfd",
		"mount", "umount2", "fsopen", "fsconfig", "fsmount", "fspick",
		"move_mount", "open_tree", "mount_setattr", "pivot_root", "chroot",
		"bpf", "perf_event_open", "userfaultfd",
		"keyctl", "add_key", "request_key",
		"init_module", "finit_module", "delete_module",
		"reboot", "kexec_load", "kexec_file_load",
		"setns",
		"io_uring_setup", "io_uring_enter", "io_uring_register",
	}
}

// mptcpMin is the smallest socket protocol number refused. IPPROTO_MPTCP
// (262) is the only protocol above 255; Landlock's TCP rules do not cover
// it. Comparing the whole 64-bit argument with >= also refuses a protocol
// whose upper 32 bits are set, which the kernel would truncate to an int
// (an exact "== 262" test could be bypassed that way).
const mptcpMin = 256

// seccompPolicy returns the sandbox's filter: allow by default; deny with
// EPERM the calls above, MPTCP sockets, new user namespaces, and every
// ptrace request except PTRACE_TRACEME and PTRACE_DETACH (the helper starts
// the target with the first and releases it with the second; with no other
// request a tracer can do nothing to its tracee); deny clone3 with ENOSYS
// (its flags are in memory, out of the filter's reach; libc and Go fall back
// to clone, whose flags are checked).
func seccompPolicy() seccomp.Policy {
	return seccomp.Policy{
		DefaultAction: seccomp.ActionAllow,
		Syscalls: []seccomp.SyscallGroup{
			{Action: seccomp.ActionErrno, Names: deniedSyscalls()},
			{
				Action: seccomp.ActionErrno,
				NamesWithCondtions: []seccomp.NameWithConditions{
					{Name: "ptrace", Conditions: seccomp.ArgumentConditions{
						{Argument: 0, Operation: seccomp.NotEqual, Value: unix.PTRACE_TRACEME},
						{Argument: 0, Operation: seccomp.NotEqual, Value: unix.PTRACE_DETACH}}},
					{Name: "socket", Conditions: seccomp.ArgumentConditions{
						{Argument: 2, Operation: seccomp.GreaterOrEqual, Value: mptcpMin}}},
					{Name: "unshare", Conditions: seccomp.ArgumentConditions{
						{Argument: 0, Operation: seccomp.BitsSet, Value: unix.CLONE_NEWUSER}}},
					{Name: "clone", Conditions: seccomp.ArgumentConditions{
						{Argument: 0, Operation: seccomp.BitsSet, Value: unix.CLONE_NEWUSER}}},
				},
			},
			{Action: seccomp.ActionErrno | seccomp.Action(unix.ENOSYS), Names: []string{"clone3"}},
		},
	}
}

// Terminal ioctls that write into another process's input: TIOCSTI pushes
// bytes into the terminal's input queue (typed by the user, as it were),
// TIOCLINUX can paste the console selection.
const (
	ioctlTIOCSTI   = 0x5412
	ioctlTIOCLINUX = 0x541C
)

// seccompProgram assembles the filter: an architecture check that kills the
// process on any other audit architecture (go-seccomp-bpf alone applies its
// default action, allow, to a foreign architecture, which would let a
// process bypass every rule through the 32-bit entry, int 0x80 on x86-64);
// rules on 32-bit arguments, which compare the low word only because the
// kernel truncates them to int (a 64-bit comparison could be bypassed by
// setting high bits): ioctl TIOCSTI and TIOCLINUX, and, if denyUnix,
// socket(AF_UNIX); then seccompPolicy.
//
// denyUnix closes a gap of Landlock before ABI 9: connecting to a unix
// socket by path is not a filesystem access it controls, so a sandbox with
// restricted files or network could otherwise reach any service listening
// on a unix socket it can name (a session bus, an ssh agent, a container
// daemon) and act through it. socketpair stays allowed.
func seccompProgram(denyUnix bool) ([]bpf.RawInstruction, error) {
	info, err := arch.GetInfo("")
	if err != nil {
		return nil, fmt.Errorf("seccomp: %w", err)
	}
	p := seccompPolicy()
	insts, err := p.Assemble()
	if err != nil {
		return nil, fmt.Errorf("seccomp: assembling policy: %w", err)
	}
	const (
		nrOffset   = 0 // offsetof(struct seccomp_data, nr)
		archOffset = 4 // offsetof(struct seccomp_data, arch)
	)
	eperm := uint32(seccomp.ActionErrno) | uint32(unix.EPERM)
	prog := []bpf.Instruction{
		bpf.LoadAbsolute{Off: archOffset, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(info.ID), SkipTrue: 1},
		bpf.RetConstant{Val: uint32(seccomp.ActionKillProcess)},
		bpf.LoadAbsolute{Off: nrOffset, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.SYS_IOCTL, SkipFalse: 4},
		bpf.LoadAbsolute{Off: argLowOffset(1), Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: ioctlTIOCSTI, SkipTrue: 1},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: ioctlTIOCLINUX, SkipFalse: 1},
		bpf.RetConstant{Val: eperm},
	}
	if denyUnix {
		prog = append(prog,
			bpf.LoadAbsolute{Off: nrOffset, Size: 4},
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.SYS_SOCKET, SkipFalse: 3},
			bpf.LoadAbsolute{Off: argLowOffset(0), Size: 4},
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.AF_UNIX, SkipFalse: 1},
			bpf.RetConstant{Val: eperm},
		)
	}
	raw, err := bpf.Assemble(append(prog, insts...))
	if err != nil {
		return nil, fmt.Errorf("seccomp: assembling BPF: %w", err)
	}
	return raw, nil
}

// argLowOffset returns the offset in struct seccomp_data of the low 32 bits
// of system call argument i.
func argLowOffset(i uint32) uint32 {
	off := 16 + 8*i                                    // offsetof(struct seccomp_data, args[i])
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 { // big-endian
		off += 4
	}
	return off
}

// seccompFilter returns seccompProgram(denyUnix) in the kernel's format.
func seccompFilter(denyUnix bool) ([]unix.SockFilter, error) {
	raw, err := seccompProgram(denyUnix)
	if err != nil {
		return nil, err
	}
	filter := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		filter[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	return filter, nil
}

// loadSeccomp installs filter on the calling thread only (no TSYNC); the
// thread must have no_new_privs set.
func loadSeccomp(filter []unix.SockFilter) error {
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	_, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, 0, uintptr(unsafe.Pointer(&prog)))
	runtime.KeepAlive(filter)
	if e != 0 {
		return fmt.Errorf("seccomp: installing filter: %w", e)
	}
	return nil
}
