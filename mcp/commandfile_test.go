package mcp

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/etbproject/etb/enforce"
)

// The upstream that runs is the file that was hashed, even if the path is
// replaced between the description (and the decision on it) and the start.
func TestUpstreamRunsTheHashedFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "server")
	if err := os.WriteFile(path, []byte("#!/bin/sh\necho authorized\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	spec, prog, err := enforce.OpenExec([]string{path}, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	// The swap: another program renamed over the described path.
	evil := filepath.Join(dir, "evil")
	if err := os.WriteFile(evil, []byte("#!/bin/sh\necho substituted\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(evil, path); err != nil {
		t.Fatal(err)
	}
	cmd, up := commandFile(spec, prog)
	cmd.Stderr = nil
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != "authorized" {
		t.Fatalf("ran %q, want the hashed program's output", got)
	}
	if up.ProgramSHA256 != spec.Target.ProgramSHA256 || up.Program != path {
		t.Fatalf("upstream %+v", up)
	}
}
