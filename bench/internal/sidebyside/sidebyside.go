// Package sidebyside runs the systems a benchmark compares one after the
// other, each in a child process of the benchmark's own binary, so that
// they never share the cores, and collects what each child measured.
//
// The parent runs its binary again with its flags plus -child=SYSTEM; the
// child measures that one system in-process (Child) and prints its result
// as JSON on standard output, which the parent decodes (Each). It owns
// only this orchestration: what is measured, and how results are printed,
// are the benchmark's.
package sidebyside

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime/pprof"
	"slices"
	"strings"
)

// CheckSystems checks that every name of the comma-separated list is one
// of known.
func CheckSystems(list string, known ...string) error {
	for _, s := range strings.Split(list, ",") {
		if !slices.Contains(known, s) {
			return fmt.Errorf("-systems: unknown system %q (want %s)", s, strings.Join(known, " or "))
		}
	}
	return nil
}

// Child measures system in this process with run, under a CPU profile
// written to profile+"."+system when profile is not empty, and returns
// what run measured.
func Child[R any](ctx context.Context, system, profile string, run func(context.Context) (R, error)) (R, error) {
	var zero R
	if profile != "" {
		f, err := os.Create(profile + "." + system)
		if err != nil {
			return zero, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return zero, err
		}
		defer pprof.StopCPUProfile()
	}
	r, err := run(ctx)
	if err != nil {
		return zero, fmt.Errorf("%s: %w", system, err)
	}
	return r, nil
}

// Print writes r as the child's JSON result on standard output.
func Print(r any) error { return json.NewEncoder(os.Stdout).Encode(r) }

// Each runs this binary once per system of the comma-separated list, one
// after the other, with args and -child=SYSTEM, and decodes what each
// prints into a new R. tool names the benchmark in progress lines. With
// verbose, the children's standard error is copied to this process's; on
// a failure it is shown anyway.
func Each[R any](ctx context.Context, tool, systems string, args []string, verbose bool) ([]*R, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	var results []*R
	for _, s := range strings.Split(systems, ",") {
		fmt.Fprintf(os.Stderr, "%s: measuring %s...\n", tool, s)
		cmd := exec.CommandContext(ctx, exe, append(append([]string(nil), args...), "-child="+s)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout = &stdout
		cmd.Stderr = &stderr
		if verbose {
			cmd.Stderr = io.MultiWriter(&stderr, os.Stderr)
		}
		if err := cmd.Run(); err != nil {
			os.Stderr.Write(stderr.Bytes())
			return nil, fmt.Errorf("child for %s: %w", s, err)
		}
		r := new(R)
		if err := json.Unmarshal(stdout.Bytes(), r); err != nil {
			os.Stderr.Write(stderr.Bytes())
			return nil, fmt.Errorf("child for %s printed %q: %w", s, stdout.String(), err)
		}
		results = append(results, r)
	}
	return results, nil
}
