package measure

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
)

// clockTick is the unit of the CPU times in /proc/PID/stat (USER_HZ). Linux
// reports them in 1/100 s on every architecture this benchmark runs on;
// reading sysconf(_SC_CLK_TCK) would take cgo.
const clockTick = 10 * time.Millisecond

// ProcessCPU returns the CPU time (user plus system, of all its threads)
// that process pid has used since it started, from /proc/PID/stat, to the
// clock tick (10 ms).
func ProcessCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("measure: CPU time of process %d: %w", pid, err)
	}
	return statCPU(pid, b)
}

// statCPU returns utime plus stime of a /proc/PID/stat line.
func statCPU(pid int, b []byte) (time.Duration, error) {
	// The second field, the command name in parentheses, may hold spaces
	// and parentheses: fields are counted from its last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("measure: /proc/%d/stat has no command field: %q", pid, b)
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("measure: /proc/%d/stat has %d fields after the command, want at least 13", pid, len(f))
	}
	var ticks uint64
	for _, s := range f[11:13] {
		v, err := strconv.ParseUint(string(s), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("measure: /proc/%d/stat CPU field %q: %w", pid, s, err)
		}
		ticks += v
	}
	return time.Duration(ticks) * clockTick, nil
}

// SelfCPU returns the CPU time (user plus system) this process has used
// since it started, from getrusage, to the microsecond.
func SelfCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("measure: getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
