package sandbox

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"golang.org/x/sys/unix"
)

// Probe reports what this host can enforce. It starts the current binary
// (which must call MaybeRunHelper) in new namespaces to find out, so it
// costs a few process starts; call it once and keep the result.
func Probe() Features {
	var f Features
	f.LandlockABI = landlockABI()
	f.Seccomp = seccomp.Supported()
	f.ProcessLimit = os.Getuid() != 0
	if !f.ProcessLimit {
		f.Notes = append(f.Notes, "running as uid 0: RLIMIT_NPROC does not apply, max_processes cannot be enforced")
	}
	all := cloneFlags(true)
	if err := probeNS(all); err == nil {
		f.UserNS, f.PIDNS, f.NetNS, f.MountNS = true, true, true, true
	} else {
		f.Notes = append(f.Notes, "namespaces: "+err.Error())
		f.UserNS = probeNS(unix.CLONE_NEWUSER) == nil
		f.PIDNS = probeNS(unix.CLONE_NEWUSER|unix.CLONE_NEWPID) == nil
		f.NetNS = probeNS(unix.CLONE_NEWUSER|unix.CLONE_NEWNET) == nil
		f.MountNS = probeNS(unix.CLONE_NEWUSER|unix.CLONE_NEWPID|unix.CLONE_NEWNS) == nil
	}
	switch {
	case f.LandlockABI == 0:
		f.Notes = append(f.Notes, "no Landlock: filesystem and network allow-lists cannot be enforced")
	case f.LandlockABI < landlockNetABI:
		f.Notes = append(f.Notes, fmt.Sprintf("Landlock ABI %d: no TCP rules, network allow-lists cannot be enforced", f.LandlockABI))
	}
	if f.LandlockABI > 0 && f.LandlockABI < 6 {
		f.Notes = append(f.Notes, "Landlock ABI < 6: no signal or abstract-socket scoping (PID and network namespaces still isolate)")
	}
	f.Notes = append(f.Notes, "UDP is confined by the network namespace only (Landlock UDP rules need ABI 10)",
		"cgroups are not used: memory is bounded per process (RLIMIT_AS), processes per sandbox user (RLIMIT_NPROC)")
	return f
}

// probeNS starts the probe stage in the namespaces of flags and returns why
// it failed, if it did.
func probeNS(flags uintptr) error {
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{"etb-sandbox-probe"}
	cmd.Env = []string{envStage + "=" + stageProbe + ":" + strconv.FormatUint(uint64(flags), 10)}
	cmd.SysProcAttr = nsAttr(flags)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return fmt.Errorf("%w: %s", err, msg)
		}
		return err
	}
	return nil
}
