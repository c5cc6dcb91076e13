package action

import (
	"slices"
	"strconv"
	"unicode/utf8"

	"github.com/gowebpki/jcs"
)

// maxExactInt is 2^53: every integer of smaller magnitude is exact as a
// float64, so RFC 8785 prints it unchanged.
const maxExactInt = 1 << 53

// AppendCanonical appends the RFC 8785 form of a to b, written directly
// (the generic path, encoding/json and a JCS transform, costs several times
// more). It reports false, leaving the caller to use Canonical, when a holds
// anything outside the simple case: a string that is not UTF-8, an env key
// outside printable ASCII (keys are sorted by bytes, which is RFC 8785's
// UTF-16 order only for ASCII), an integer not exactly representable as a
// float64, or a usage value that is not finite (which Canonical refuses
// too). Keys are written in
// sorted order and usage values in the ES6 number form (jcs.NumberToJSON),
// as RFC 8785 requires. TestAppendCanonicalMatchesJCS checks the two agree.
func AppendCanonical(b []byte, a *Action) ([]byte, bool) {
	ok := true
	str := func(s string) {
		if !ok {
			return
		}
		var good bool
		b, good = AppendString(b, s)
		ok = ok && good
	}
	num := func(v int64) {
		if v <= -maxExactInt || v >= maxExactInt {
			ok = false
			return
		}
		b = strconv.AppendInt(b, v, 10)
	}
	list := func(l []string) {
		var good bool
		b, good = AppendStrings(b, l)
		ok = ok && good
	}
	key := func(k string) { b = append(b, k...) } // k is `"name":` or `,"name":`

	p, s, t, tk := &a.Principal, &a.Action, &a.Action.Target, &a.Task
	key(`{"action":{"args":`)
	list(s.Args)
	key(`,"args_hash":`)
	str(s.ArgsHash)
	key(`,"kind":`)
	str(s.Kind)
	key(`,"name":`)
	str(s.Name)
	key(`,"target":{"argv":`)
	list(t.Argv)
	key(`,"cwd":`)
	str(t.Cwd)
	key(`,"host":`)
	str(t.Host)
	key(`,"paths":`)
	list(t.Paths)
	key(`,"port":`)
	num(t.Port)
	key(`,"program":`)
	str(t.Program)
	key(`,"program_sha256":`)
	str(t.ProgramSHA256)
	key(`}},"env":`)
	b = appendMap(b, a.Env, &ok, func(b []byte, v string) ([]byte, bool) { return AppendString(b, v) })
	key(`,"id":`)
	str(a.ID)
	key(`,"principal":{"attestation":`)
	str(p.Attestation)
	key(`,"exe":`)
	str(p.Exe)
	key(`,"exe_sha256":`)
	str(p.ExeSHA256)
	key(`,"id":`)
	str(p.ID)
	key(`,"on_behalf_of":`)
	str(p.OnBehalfOf)
	key(`,"uid":`)
	num(p.UID)
	key(`,"user":`)
	str(p.User)
	key(`},"task":{"id":`)
	str(tk.ID)
	key(`,"labels":`)
	list(tk.Labels)
	key(`,"parent_id":`)
	str(tk.ParentID)
	key(`,"recent":`)
	if tk.Recent == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i := range tk.Recent {
			r := &tk.Recent[i]
			if i > 0 {
				b = append(b, ',')
			}
			key(`{"decision":`)
			str(r.Decision)
			key(`,"host":`)
			str(r.Host)
			key(`,"kind":`)
			str(r.Kind)
			key(`,"name":`)
			str(r.Name)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	key(`,"root_id":`)
	str(tk.RootID)
	key(`,"state_version":`)
	num(tk.StateVersion)
	key(`,"step":`)
	num(tk.Step)
	key(`,"usage":`)
	b = appendMap(b, tk.Usage, &ok, func(b []byte, v float64) ([]byte, bool) {
		n, err := jcs.NumberToJSON(v)
		return append(b, n...), err == nil
	})
	key(`},"time":`)
	str(a.Time)
	key(`,"v":`)
	str(a.V)
	b = append(b, '}')
	return b, ok
}

// appendMap appends m as an RFC 8785 object ("null" for a nil m, as
// encoding/json writes it), its values written by value; it clears *ok for
// a key outside printable ASCII (keys are sorted by bytes, which is RFC
// 8785's UTF-16 order only for ASCII) or a value value cannot write.
func appendMap[V any](b []byte, m map[string]V, ok *bool, value func([]byte, V) ([]byte, bool)) []byte {
	if m == nil {
		return append(b, "null"...)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		var good bool
		b, good = AppendString(b, k)
		*ok = *ok && good && printableASCII(k)
		b = append(b, ':')
		b, good = value(b, m[k])
		*ok = *ok && good
	}
	return append(b, '}')
}

// printableASCII reports whether every byte of s is in 0x20-0x7e.
func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// AppendString appends s as an RFC 8785 string: '"' and '\\' escaped,
// control characters as \b \t \n \f \r or \u00xx, everything else as is.
// It reports false (the caller then uses Canonical) when s is not valid
// UTF-8.
func AppendString(b []byte, s string) ([]byte, bool) {
	if !utf8.ValidString(s) {
		return b, false
	}
	const hex = "0123456789abcdef"
	b = append(b, '"')
	// Runs of bytes that need no escape are copied whole.
	run := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		b = append(b, s[run:i]...)
		run = i + 1
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\b':
			b = append(b, '\\', 'b')
		case '\t':
			b = append(b, '\\', 't')
		case '\n':
			b = append(b, '\\', 'n')
		case '\f':
			b = append(b, '\\', 'f')
		case '\r':
			b = append(b, '\\', 'r')
		default:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
	}
	b = append(b, s[run:]...)
	return append(b, '"'), true
}

// AppendStrings appends l as an RFC 8785 array of strings ("null" for a
// nil l, as encoding/json writes it).
func AppendStrings(b []byte, l []string) ([]byte, bool) {
	if l == nil {
		return append(b, "null"...), true
	}
	b = append(b, '[')
	for i, s := range l {
		if i > 0 {
			b = append(b, ',')
		}
		var ok bool
		if b, ok = AppendString(b, s); !ok {
			return b, false
		}
	}
	return append(b, ']'), true
}

// AppendCanonical appends the RFC 8785 form of o when it holds only scalar
// obligations (timeout, limits, cwd): each member omitted when zero, keys
// sorted. It reports false for path, network or environment scopes, or a
// number beyond 2^53; the caller then uses Canonical.
func (o Obligations) AppendCanonical(b []byte) ([]byte, bool) {
	if o.FS != nil || o.Net != nil || o.Env != nil {
		return b, false
	}
	ok := true
	b = append(b, '{')
	member := func(name string) {
		if b[len(b)-1] != '{' {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, name...)
		b = append(b, '"', ':')
	}
	unum := func(name string, v uint64) {
		if v == 0 {
			return
		}
		member(name)
		ok = ok && v < maxExactInt
		b = strconv.AppendUint(b, v, 10)
	}
	str := func(name, v string) {
		if v == "" {
			return
		}
		member(name)
		var good bool
		b, good = AppendString(b, v)
		ok = ok && good
	}
	unum("cpu_seconds", o.CPUSeconds)
	str("cwd", o.Cwd)
	unum("max_file_bytes", o.MaxFileBytes)
	unum("max_processes", o.MaxProcesses)
	unum("memory_bytes", o.MemoryBytes)
	if o.Timeout != 0 {
		str("timeout", o.Timeout.D().String())
	}
	return append(b, '}'), ok
}
