package action

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Obligations are the conditions a permit is given under. They travel in the
// decision record and in the grant's obl claim, and the enforcer applies them
// (see docs/POLICY.md). The zero value imposes nothing beyond the enforcer's
// defaults. A nil list means "not restricted"; an empty list means "nothing
// allowed".
type Obligations struct {
	// Timeout bounds the wall-clock run time; the enforcer kills the whole
	// process tree when it expires.
	Timeout Duration `json:"timeout,omitempty" yaml:"timeout"`
	// CPUSeconds, MemoryBytes, MaxProcesses and MaxFileBytes are kernel
	// resource limits (RLIMIT_CPU, RLIMIT_AS, RLIMIT_NPROC, RLIMIT_FSIZE).
	CPUSeconds   uint64 `json:"cpu_seconds,omitempty" yaml:"cpu_seconds"`
	MemoryBytes  uint64 `json:"memory_bytes,omitempty" yaml:"memory_bytes"`
	MaxProcesses uint64 `json:"max_processes,omitempty" yaml:"max_processes"`
	MaxFileBytes uint64 `json:"max_file_bytes,omitempty" yaml:"max_file_bytes"`
	// FS restricts the filesystem to allow-listed paths (Landlock).
	FS *FSScope `json:"fs,omitempty" yaml:"fs"`
	// Net restricts the network: present means a network namespace with
	// only loopback, reaching out only to Allow through the egress proxy.
	Net *NetScope `json:"net,omitempty" yaml:"net"`
	// Env, when present, is the allow-list of environment variable names.
	Env *EnvScope `json:"env,omitempty" yaml:"env"`
	// Cwd is the working directory the command must run in.
	Cwd string `json:"cwd,omitempty" yaml:"cwd"`
}

// FSScope lists absolute paths (a directory covers everything beneath it).
// A nil list is not restricted, but once any list is set, everything not
// listed in some list is denied. Write and Exec imply Read.
type FSScope struct {
	Read  []string `json:"read" yaml:"read"`
	Write []string `json:"write" yaml:"write"`
	Exec  []string `json:"exec" yaml:"exec"`
}

// effective spells out what a present scope allows: a list left out allows
// nothing, and read covers what write and exec imply.
func (f *FSScope) effective() FSScope {
	e := FSScope{Read: []string{}, Write: []string{}, Exec: []string{}}
	e.Write = append(e.Write, f.Write...)
	e.Exec = append(e.Exec, f.Exec...)
	for _, l := range [][]string{f.Read, f.Write, f.Exec} {
		for _, p := range l {
			if !slices.Contains(e.Read, p) {
				e.Read = append(e.Read, p)
			}
		}
	}
	return e
}

// NetScope lists "host:port" destinations; empty means no network.
type NetScope struct {
	Allow []string `json:"allow" yaml:"allow"`
}

// EnvScope lists the environment variable names a command may see; empty
// means none.
type EnvScope struct {
	Allow []string `json:"allow" yaml:"allow"`
}

// Sandboxed reports whether o asks for anything beyond a timeout, that is
// for limits only the kernel sandbox enforces.
func (o Obligations) Sandboxed() bool {
	return o.CPUSeconds != 0 || o.MemoryBytes != 0 || o.MaxProcesses != 0 || o.MaxFileBytes != 0 ||
		o.FS != nil || o.Net != nil || o.Env != nil || o.Cwd != ""
}

// Equal reports whether o and p impose exactly the same conditions.
func (o Obligations) Equal(p Obligations) bool {
	o.Normalize()
	p.Normalize()
	a, err1 := Canonical(o)
	b, err2 := Canonical(p)
	return err1 == nil && err2 == nil && string(a) == string(b)
}

// Normalize makes equal obligations encode equally: a present network
// scope always has a list (empty: no network).
func (o *Obligations) Normalize() {
	if o.Net != nil && o.Net.Allow == nil {
		o.Net = &NetScope{Allow: []string{}}
	}
	if o.Env != nil && o.Env.Allow == nil {
		o.Env = &EnvScope{Allow: []string{}}
	}
}

func (o Obligations) envAllow() []string {
	if o.Env == nil {
		return nil
	}
	return o.Env.Allow
}

// Validate checks the shape of o: absolute, clean paths; host:port
// destinations.
func (o Obligations) Validate() error {
	if o.FS != nil {
		for name, l := range map[string][]string{"read": o.FS.Read, "write": o.FS.Write, "exec": o.FS.Exec} {
			for _, p := range l {
				if !filepath.IsAbs(p) || filepath.Clean(p) != p {
					return fmt.Errorf("obligation fs.%s: %q is not a clean absolute path", name, p)
				}
			}
		}
	}
	if o.Net != nil {
		for _, hp := range o.Net.Allow {
			i := strings.LastIndexByte(hp, ':')
			if i <= 0 || i == len(hp)-1 || hp != strings.ToLower(hp) {
				return fmt.Errorf("obligation net.allow: %q is not a lower-case host:port", hp)
			}
		}
	}
	for _, e := range o.envAllow() {
		if e == "" || strings.ContainsAny(e, "=\x00") {
			return fmt.Errorf("obligation env: %q is not a variable name", e)
		}
	}
	if o.Cwd != "" && (!filepath.IsAbs(o.Cwd) || filepath.Clean(o.Cwd) != o.Cwd) {
		return fmt.Errorf("obligation cwd: %q is not a clean absolute path", o.Cwd)
	}
	return nil
}

// Tighten returns the most restrictive combination of o and p, so that
// whatever either allows alone, the result allows no more: the smaller of
// two non-zero limits, the intersection of allow-lists (for paths, the
// paths of either list that lie within a path of the other). Two different
// working directories cannot both be honoured: that is an error, and the
// caller must deny.
func (o Obligations) Tighten(p Obligations) (Obligations, error) {
	// Within a present net or env scope a nil list means "none", not
	// "unrestricted": normalise before intersecting.
	o.Normalize()
	p.Normalize()
	o.Timeout = Duration(minNonZero(uint64(o.Timeout), uint64(p.Timeout)))
	o.CPUSeconds = minNonZero(o.CPUSeconds, p.CPUSeconds)
	o.MemoryBytes = minNonZero(o.MemoryBytes, p.MemoryBytes)
	o.MaxProcesses = minNonZero(o.MaxProcesses, p.MaxProcesses)
	o.MaxFileBytes = minNonZero(o.MaxFileBytes, p.MaxFileBytes)
	switch {
	case o.FS == nil:
		o.FS = p.FS
	case p.FS != nil:
		a, b := o.FS.effective(), p.FS.effective()
		o.FS = &FSScope{
			Read:  intersectPaths(a.Read, b.Read),
			Write: intersectPaths(a.Write, b.Write),
			Exec:  intersectPaths(a.Exec, b.Exec),
		}
	}
	switch {
	case o.Net == nil:
		o.Net = p.Net
	case p.Net != nil:
		o.Net = &NetScope{Allow: intersect(o.Net.Allow, p.Net.Allow)}
	}
	o.Normalize()
	switch {
	case o.Env == nil:
		o.Env = p.Env
	case p.Env != nil:
		o.Env = &EnvScope{Allow: intersect(o.Env.Allow, p.Env.Allow)}
	}
	if o.Cwd != "" && p.Cwd != "" && o.Cwd != p.Cwd {
		return o, fmt.Errorf("obligations require two working directories, %q and %q", o.Cwd, p.Cwd)
	}
	if o.Cwd == "" {
		o.Cwd = p.Cwd
	}
	return o, nil
}

func minNonZero(a, b uint64) uint64 {
	if a == 0 || (b != 0 && b < a) {
		return b
	}
	return a
}

// intersect returns the sorted elements in both a and b; nil (unrestricted)
// is the identity.
func intersect(a, b []string) []string {
	switch {
	case a == nil:
		return sortedCopy(b)
	case b == nil:
		return sortedCopy(a)
	}
	out := []string{}
	for _, x := range a {
		if slices.Contains(b, x) && !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	slices.Sort(out)
	return out
}

// intersectPaths returns the paths of a within a path of b and those of b
// within a path of a: exactly the set both allow.
func intersectPaths(a, b []string) []string {
	switch {
	case a == nil:
		return sortedCopy(b)
	case b == nil:
		return sortedCopy(a)
	}
	out := []string{}
	add := func(p string) {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	for _, x := range a {
		for _, y := range b {
			if within(x, y) {
				add(x)
			} else if within(y, x) {
				add(y)
			}
		}
	}
	// Drop paths another result path already covers.
	pruned := []string{}
	for _, p := range out {
		covered := false
		for _, q := range out {
			if q != p && within(p, q) {
				covered = true
			}
		}
		if !covered {
			pruned = append(pruned, p)
		}
	}
	slices.Sort(pruned)
	return pruned
}

// within reports whether path p is d or lies beneath it.
func within(p, d string) bool {
	return p == d || d == "/" || strings.HasPrefix(p, d+"/")
}

func sortedCopy(l []string) []string {
	if l == nil {
		return nil
	}
	c := slices.Clone(l)
	slices.Sort(c)
	return c
}

// Duration is a time.Duration written in JSON and YAML as a Go duration
// string ("30s", "1m30s").
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON implements json.Unmarshaler. Only a duration string is
// accepted; a negative duration is an error.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"30s\": %w", err)
	}
	return d.parse(s)
}

// UnmarshalText implements encoding.TextUnmarshaler (used by YAML decoders).
func (d *Duration) UnmarshalText(b []byte) error { return d.parse(string(b)) }

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

func (d *Duration) parse(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w", s, err)
	}
	if v < 0 {
		return fmt.Errorf("duration %q is negative", s)
	}
	*d = Duration(v)
	return nil
}
