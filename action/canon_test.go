package action

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// AppendString writes what the general path (encoding/json, then RFC 8785
// by jcs.Transform) writes for every string, and refuses invalid UTF-8.
func TestAppendString(t *testing.T) {
	var controls strings.Builder
	for c := range 0x20 {
		controls.WriteByte(byte(c))
	}
	for _, s := range []string{
		"", "plain", `a"b\c`, `"`, `\`, controls.String(), "é€😀", "\u2028\u2029", "<>&", "\x7f",
		"tab\there\nnewline\rreturn", "ends with a quote\"", "\\\\\"\"",
	} {
		checkAppendString(t, s)
	}
	for _, bad := range []string{"\xff", "ok\xc3", "\xed\xa0\x80"} {
		if out, ok := AppendString([]byte("x"), bad); ok || string(out) != "x" {
			t.Errorf("AppendString(%q) = %q, %v; want the buffer unchanged and false", bad, out, ok)
		}
	}
}

func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "a\"b", "\x01\x1f", "é😀", "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !utf8.ValidString(s) {
			if _, ok := AppendString(nil, s); ok {
				t.Fatalf("AppendString(%q) accepted invalid UTF-8", s)
			}
			return
		}
		checkAppendString(t, s)
	})
}

func checkAppendString(t *testing.T, s string) {
	t.Helper()
	want, err := Canonical(s)
	if err != nil {
		t.Fatalf("Canonical(%q): %v", s, err)
	}
	got, ok := AppendString([]byte("prefix"), s)
	if !ok || string(got) != "prefix"+string(want) {
		t.Errorf("AppendString(%q) = %q, %v; want %q", s, got, ok, "prefix"+string(want))
	}
}

func BenchmarkAppendString(b *testing.B) {
	s := "spiffe://etb.local/agent/bench-client-07 echo hello /usr/bin/echo sha256:0123456789abcdef"
	buf := make([]byte, 0, 256)
	for b.Loop() {
		buf, _ = AppendString(buf[:0], s)
	}
}
