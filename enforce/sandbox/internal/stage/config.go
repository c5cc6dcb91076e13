// Package stage is the sandbox helper: the code that runs as PID 1 of the
// sandbox's namespaces, from a package init function, and starts the
// target under every limit it was given.
//
// It owns the helper's side of the protocol with package sandbox (the
// Config encoding and the environment variables that carry it) and the
// order of the setup steps. It never decides a limit: the parent computes
// everything that can be computed outside (the seccomp program, the Landlock
// access masks, the environment of the target) and the helper only applies
// it. It must never start the target when a step failed: any error ends the
// helper with ExitSetup before the target runs.
//
// # Why an init function
//
// The helper is a re-execution of the calling binary. Go runs every package
// init function of a binary before main, and those of a large binary (TLS,
// CEL, SQLite, protobuf, seccomp syscall tables...) cost milliseconds that
// bwrap, a small C program, does not pay. Package initialisation follows
// import paths in lexical order among packages whose imports are
// initialised, so a package that imports only the runtime, syscall, os and
// os/signal is initialised a few hundred microseconds into the process, and
// its init function can do the whole job and exit without ever returning.
// Keep it that way: every import added here (golang.org/x/sys/unix,
// strings, fmt, encoding/binary...) makes the helper wait for more package
// initialisation; check with GODEBUG=inittrace=1.
package stage

import (
	"encoding/base64"
	"errors"
	"strconv"
)

// Environment of the helper process. EnvStage selects what the re-executed
// binary does; EnvConfig carries the encoded Config of StageInit. Neither
// reaches the target.
const (
	EnvStage  = "ETB_SANDBOX_STAGE"
	EnvConfig = "ETB_SANDBOX_CONFIG"
	StageInit = "init"
)

// ExitSetup is the helper's exit status when the sandbox could not be set
// up; the target never ran.
const ExitSetup = 125

// MaxEncoded bounds the encoded Config: one environment string may not
// exceed 128 KiB (MAX_ARG_STRLEN), including the name.
const MaxEncoded = 128<<10 - len(EnvConfig) - 2

// Config is everything the helper does, decided by the parent.
type Config struct {
	// Path is the target executed by path when ExeFD < 0. With ExeFD >= 0
	// the target is the open file at that descriptor of the helper: it is
	// executed as /proc/self/fd/3 of the target, which keeps descriptor 3
	// open on its own executable (needed for #! scripts).
	Path  string
	ExeFD int
	Argv  []string
	Env   []string

	// Resource limits set on the target (0: not set).
	CPUSeconds, MemoryBytes, MaxProcesses, MaxFileBytes uint64

	Network   bool // new network namespace: bring lo up
	ControlFD int  // >= 0: egress proxy control socket; bridge 127.0.0.1:ProxyPort to it
	ProxyPort int

	// Seccomp is the filter (struct sock_filter array, native byte
	// order); required.
	Seccomp []byte

	// Landlock ruleset; applied when Landlock is true.
	Landlock                          bool
	HandledFS, HandledNet, ScopedMask uint64
	PathRules                         []PathRule
	PortRules                         []PortRule
}

// PathRule allows Access beneath Path (a file or directory).
type PathRule struct {
	Path   string
	Access uint64
}

// PortRule allows Access (Landlock network rights) on TCP port Port.
type PortRule struct {
	Port, Access uint64
}

// configVersion is the first byte of an encoded Config.
const configVersion = 1

// Encode returns c as one environment-safe string.
func (c *Config) Encode() (string, error) {
	var e encoder
	e.byte(configVersion)
	e.str(c.Path)
	e.int(int64(c.ExeFD))
	e.strs(c.Argv)
	e.strs(c.Env)
	for _, v := range []uint64{c.CPUSeconds, c.MemoryBytes, c.MaxProcesses, c.MaxFileBytes} {
		e.u64(v)
	}
	e.bool(c.Network)
	e.int(int64(c.ControlFD))
	e.int(int64(c.ProxyPort))
	e.str(string(c.Seccomp))
	e.bool(c.Landlock)
	e.u64(c.HandledFS)
	e.u64(c.HandledNet)
	e.u64(c.ScopedMask)
	e.u64(uint64(len(c.PathRules)))
	for _, r := range c.PathRules {
		e.str(r.Path)
		e.u64(r.Access)
	}
	e.u64(uint64(len(c.PortRules)))
	for _, r := range c.PortRules {
		e.u64(r.Port)
		e.u64(r.Access)
	}
	s := base64.RawURLEncoding.EncodeToString(e.b)
	if len(s) > MaxEncoded {
		return "", errors.New("sandbox configuration is " + strconv.Itoa(len(s)) +
			" bytes encoded, more than one environment string may hold (" + strconv.Itoa(MaxEncoded) + "): argv and environment too large")
	}
	return s, nil
}

// Decode parses the output of Encode.
func Decode(s string) (Config, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return Config{}, errors.New("decoding configuration: " + err.Error())
	}
	d := decoder{b: b}
	var c Config
	if v := d.byte(); v != configVersion {
		return Config{}, errors.New("configuration version " + strconv.Itoa(int(v)) + ", want " + strconv.Itoa(configVersion))
	}
	c.Path = d.str()
	c.ExeFD = int(d.int())
	c.Argv = d.strs()
	c.Env = d.strs()
	c.CPUSeconds, c.MemoryBytes, c.MaxProcesses, c.MaxFileBytes = d.u64(), d.u64(), d.u64(), d.u64()
	c.Network = d.bool()
	c.ControlFD = int(d.int())
	c.ProxyPort = int(d.int())
	c.Seccomp = []byte(d.str())
	c.Landlock = d.bool()
	c.HandledFS, c.HandledNet, c.ScopedMask = d.u64(), d.u64(), d.u64()
	for n := d.count(); n > 0 && d.err == nil; n-- {
		c.PathRules = append(c.PathRules, PathRule{Path: d.str(), Access: d.u64()})
	}
	for n := d.count(); n > 0 && d.err == nil; n-- {
		c.PortRules = append(c.PortRules, PortRule{Port: d.u64(), Access: d.u64()})
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = errors.New(strconv.Itoa(len(d.b)) + " trailing bytes")
	}
	if d.err != nil {
		return Config{}, errors.New("decoding configuration: " + d.err.Error())
	}
	if len(c.Argv) == 0 || (c.Path == "" && c.ExeFD < 0) {
		return Config{}, errors.New("configuration has no target")
	}
	if len(c.Seccomp) == 0 || len(c.Seccomp)%8 != 0 || len(c.Seccomp)/8 > 4096 {
		return Config{}, errors.New("configuration has a seccomp filter of " + strconv.Itoa(len(c.Seccomp)) + " bytes, want 1 to 4096 instructions of 8 bytes")
	}
	return c, nil
}

// encoder writes little-endian integers and length-prefixed strings.
type encoder struct{ b []byte }

func (e *encoder) byte(v byte) { e.b = append(e.b, v) }
func (e *encoder) u64(v uint64) {
	for i := 0; i < 8; i++ {
		e.b = append(e.b, byte(v>>(8*i)))
	}
}
func (e *encoder) int(v int64) { e.u64(uint64(v)) }
func (e *encoder) bool(v bool) {
	if v {
		e.byte(1)
	} else {
		e.byte(0)
	}
}
func (e *encoder) str(s string) { e.u64(uint64(len(s))); e.b = append(e.b, s...) }
func (e *encoder) strs(l []string) {
	e.u64(uint64(len(l)))
	for _, s := range l {
		e.str(s)
	}
}

// decoder reads what encoder wrote; the first error sticks.
type decoder struct {
	b   []byte
	err error
}

var errShort = errors.New("truncated")

func (d *decoder) byte() byte {
	if d.err != nil || len(d.b) < 1 {
		d.err = errShort
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}
func (d *decoder) u64() uint64 {
	if d.err != nil || len(d.b) < 8 {
		d.err = errShort
		return 0
	}
	var v uint64
	for i := 0; i < 8; i++ {
		v |= uint64(d.b[i]) << (8 * i)
	}
	d.b = d.b[8:]
	return v
}
func (d *decoder) int() int64 { return int64(d.u64()) }
func (d *decoder) bool() bool {
	switch d.byte() {
	case 0:
		return false
	case 1:
		return true
	}
	if d.err == nil {
		d.err = errors.New("bad boolean")
	}
	return false
}

// count reads a length that must fit in what is left.
func (d *decoder) count() uint64 {
	n := d.u64()
	if d.err == nil && n > uint64(len(d.b)) {
		d.err = errShort
		return 0
	}
	return n
}
func (d *decoder) str() string {
	n := d.count()
	if d.err != nil {
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}
func (d *decoder) strs() []string {
	n := d.count()
	var l []string
	for ; n > 0 && d.err == nil; n-- {
		l = append(l, d.str())
	}
	return l
}
