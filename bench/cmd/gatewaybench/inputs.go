package main

import (
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/enforce"
)

// outcome is the comparable part of a decision: what both systems must
// agree on.
type outcome struct {
	Decision string
	Rules    []string
	Timeout  time.Duration // zero unless permitted
}

func (o *outcome) String() string {
	if o == nil {
		return "<none>"
	}
	return fmt.Sprintf("%s %v timeout=%s", o.Decision, o.Rules, o.Timeout)
}

func (o *outcome) equal(p outcome) bool {
	return o != nil && o.Decision == p.Decision && slices.Equal(o.Rules, p.Rules) && o.Timeout == p.Timeout
}

// input is one command both systems are asked about, and the outcome etb's
// default policy (and default.rego) gives it.
type input struct {
	name string
	argv []string
	want outcome
}

// inputs returns the rotation of inputs: one permit, one forbidden, one
// default deny. It is a function, not a variable, so that no package state
// is mutable.
func inputs() []input {
	return []input{
		{"echo hello", []string{"echo", "hello"}, outcome{"permit", []string{"allow-read-only"}, 5 * time.Minute}},
		{"rm -rf /tmp/x", []string{"rm", "-rf", "/tmp/x"}, outcome{"deny", []string{"forbid-recursive-delete"}, 0}},
		{"python3 -c print(1)", []string{"python3", "-c", "print(1)"}, outcome{"deny", []string{"etb.default-deny"}, 0}},
	}
}

// specs describes every input as the enforcer would (enforce.DescribeExec:
// resolved program, its hash, the args hash), in the temporary directory.
func specs() ([]action.Spec, error) {
	var out []action.Spec
	for _, in := range inputs() {
		s, err := enforce.DescribeExec(in.argv, os.TempDir())
		if err != nil {
			return nil, fmt.Errorf("describe %q: %w", in.name, err)
		}
		out = append(out, s)
	}
	return out, nil
}
