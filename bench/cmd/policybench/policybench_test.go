package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/policy"
	"go.yaml.in/yaml/v3"
)

// defaultPolicyTests returns the inputs of the tests: section of etb's
// default policy, decoded as action documents.
func defaultPolicyTests(t *testing.T) []*input {
	t.Helper()
	var f struct {
		Tests []struct {
			Name  string         `yaml:"name"`
			Input map[string]any `yaml:"input"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(policy.DefaultPolicy, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Tests) < 10 {
		t.Fatalf("default policy has %d tests, expected at least 10", len(f.Tests))
	}
	var out []*input
	for _, tc := range f.Tests {
		raw, err := json.Marshal(tc.Input)
		if err != nil {
			t.Fatal(err)
		}
		var a action.Action
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&a); err != nil {
			t.Fatalf("test %q: %v", tc.Name, err)
		}
		in, err := newInput(tc.Name, &a)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, in)
	}
	return out
}

// edgeInputs probe each clause of the forbid and permit rules.
func edgeInputs(t *testing.T) []*input {
	t.Helper()
	var out []*input
	for _, c := range []struct {
		name string
		a    *action.Action
	}{
		{"sort --output=f", shellAction("sort", "/usr/bin/sort", "--output=f", "x")},
		{"sort --compress-program", shellAction("sort", "/usr/bin/sort", "--compress-program=gzip", "x")},
		{"sort -mo", shellAction("sort", "/usr/bin/sort", "-mo", "out", "x")},
		{"sort --reverse", shellAction("sort", "/usr/bin/sort", "--reverse", "x")},
		{"sort -", shellAction("sort", "/usr/bin/sort", "-")},
		{"uniq one operand", shellAction("uniq", "/usr/bin/uniq", "-c", "in")},
		{"uniq two operands", shellAction("uniq", "/usr/bin/uniq", "-c", "in", "out")},
		{"rm -R", shellAction("rm", "/usr/bin/rm", "-R", "d")},
		{"rm -vf", shellAction("rm", "/bin/rm", "-vf", "d")},
		{"rm --force", shellAction("rm", "/usr/bin/rm", "--force", "d")},
		{"rm --verbose", shellAction("rm", "/usr/bin/rm", "--verbose", "d")},
		{"rm no args", shellAction("rm", "/usr/bin/rm")},
		{"wget", shellAction("wget", "/usr/bin/wget", "http://x")},
		{"netcat from /tmp", shellAction("netcat", "/tmp/netcat")},
		{"ls from /usr/local", shellAction("ls", "/usr/local/bin/ls")},
		{"cat from /bin", shellAction("cat", "/bin/cat", "f")},
		{"true", shellAction("true", "/usr/bin/true")},
		{"sleep from /bin", shellAction("sleep", "/bin/sleep", "5")},
		{"sleep from /tmp", shellAction("sleep", "/tmp/sleep", "5")},
		{"printenv", shellAction("printenv", "/usr/bin/printenv")},
		{"mcp tool named ls", &action.Action{Action: action.Spec{Kind: "mcp.tool_call", Name: "ls"}}},
		{"curl as an mcp tool", &action.Action{Action: action.Spec{Kind: "mcp.tool_call", Name: "curl"}}},
	} {
		in, err := newInput(c.name, c.a)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, in)
	}
	return out
}

// TestEnginesAgree is what makes the timing comparison meaningful: on the
// default policy's own tests, the benchmark inputs and inputs probing every
// clause, OPA with default.rego reaches etb's decision, rule ids and
// timeout, through both of OPA's input paths.
func TestEnginesAgree(t *testing.T) {
	ctx := context.Background()
	e, err := newEtb()
	if err != nil {
		t.Fatal(err)
	}
	o, err := newOPA(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bins, err := benchInputs()
	if err != nil {
		t.Fatal(err)
	}
	all := append(append(defaultPolicyTests(t), bins...), edgeInputs(t)...)
	if err := check(ctx, e, o, all); err != nil {
		t.Fatal(err)
	}
	// The inputs cover every outcome, so agreement is not vacuous.
	seen := map[string]bool{}
	for _, in := range all {
		d := e.decide(ctx, in.action)
		for _, r := range d.Rules {
			seen[r] = true
		}
	}
	for _, r := range []string{"allow-read-only", "allow-sleep", "forbid-writing-output", "forbid-recursive-delete", "forbid-network-tools", policy.RuleDefaultDeny} {
		if !seen[r] {
			t.Errorf("no input exercised rule %s", r)
		}
	}
}

// TestCheckCatchesDisagreement: a Rego policy missing one forbid clause is
// caught by check, so a broken equivalence can never be timed.
func TestCheckCatchesDisagreement(t *testing.T) {
	ctx := context.Background()
	e, err := newEtb()
	if err != nil {
		t.Fatal(err)
	}
	broken := strings.Replace(defaultRego, `"curl", "wget", `, "", 1)
	if broken == defaultRego {
		t.Fatal("test did not change the Rego policy")
	}
	o, err := newOPAFrom(ctx, broken)
	if err != nil {
		t.Fatal(err)
	}
	ins, err := benchInputs()
	if err != nil {
		t.Fatal(err)
	}
	err = check(ctx, e, o, ins)
	if err == nil || !strings.Contains(err.Error(), "forbid curl") {
		t.Fatalf("check() = %v, want a disagreement on the curl input", err)
	}
}

func TestOutcomeOfRejectsMalformed(t *testing.T) {
	if _, err := outcomeOf(nil); err == nil {
		t.Fatal("empty result set accepted")
	}
}
