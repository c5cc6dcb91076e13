package client

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// readAnswer reads a body of declared length exactly, one of undeclared
// length as it comes, and fails on a body shorter than declared.
func TestReadAnswer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		length int64
		body   string
		want   string // "" with ok false: an error
		ok     bool
	}{
		{"declared", 5, "hello", "hello", true},
		{"undeclared", -1, "hello, world", "hello, world", true},
		{"empty", 0, "", "", true},
		{"short", 10, "hello", "", false},
	} {
		resp := &http.Response{ContentLength: tc.length, Body: io.NopCloser(strings.NewReader(tc.body))}
		got, err := readAnswer(resp)
		if tc.ok != (err == nil) || string(got) != tc.want {
			t.Errorf("%s: readAnswer = %q, %v; want %q (ok %v)", tc.name, got, err, tc.want, tc.ok)
		}
	}
}
