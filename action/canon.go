package action

import (
	"slices"
	"strconv"

	"github.com/gowebpki/jcs"
)

// maxExactInt is 2^53: every integer of smaller magnitude is exact as a
// float64, so RFC 8785 prints it unchanged.
const maxExactInt = 1 << 53

// AppendCanonical appends the RFC 8785 form of a to b, written directly
// (the generic path, encoding/json and a JCS transform, costs several times
// more). It reports false, leaving the caller to use Canonical, when a holds
// anything outside the simple case: a string with a byte outside printable
// ASCII, an integer not exactly representable as a float64, or a usage value
// that is not finite (which Canonical refuses too). Keys are written in
// sorted order and usage values in the ES6 number form (jcs.NumberToJSON),
// as RFC 8785 requires. TestAppendCanonicalMatchesJCS checks the two agree.
func AppendCanonical(b []byte, a *Action) ([]byte, bool) {
	ok := true
	str := func(s string) {
		if !ok {
			return
		}
		var good bool
		b, good = appendString(b, s)
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
		if l == nil {
			b = append(b, "null"...)
			return
		}
		b = append(b, '[')
		for i, s := range l {
			if i > 0 {
				b = append(b, ',')
			}
			str(s)
		}
		b = append(b, ']')
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
	if a.Env == nil {
		b = append(b, "null"...)
	} else {
		keys := make([]string, 0, len(a.Env))
		for k := range a.Env {
			keys = append(keys, k)
		}
		slices.Sort(keys) // byte order equals UTF-16 order for ASCII
		b = append(b, '{')
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			str(k)
			b = append(b, ':')
			str(a.Env[k])
		}
		b = append(b, '}')
	}
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
	if tk.Usage == nil {
		b = append(b, "null"...)
	} else {
		keys := make([]string, 0, len(tk.Usage))
		for k := range tk.Usage {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b = append(b, '{')
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			str(k)
			b = append(b, ':')
			n, err := jcs.NumberToJSON(tk.Usage[k])
			if err != nil {
				ok = false
			}
			b = append(b, n...)
		}
		b = append(b, '}')
	}
	key(`},"time":`)
	str(a.Time)
	key(`,"v":`)
	str(a.V)
	b = append(b, '}')
	return b, ok
}

// appendString appends s as an RFC 8785 string. It reports false if s
// holds a byte outside printable ASCII (0x20-0x7e).
func appendString(b []byte, s string) ([]byte, bool) {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c < 0x20 || c > 0x7e:
			return b, false
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		default:
			b = append(b, c)
		}
	}
	return append(b, '"'), true
}

// AppendString appends s as an RFC 8785 string when s is printable ASCII
// (0x20-0x7e), the case where that form is simply s quoted with '"' and
// '\' escaped. It reports false otherwise; the caller then uses Canonical.
func AppendString(b []byte, s string) ([]byte, bool) { return appendString(b, s) }
