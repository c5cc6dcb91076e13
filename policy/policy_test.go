package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"

	"github.com/etbproject/etb/action"
)

const header = "version: etb.policy/v1\nname: t\n"

func mustLoad(t testing.TB, src string) *Bundle {
	t.Helper()
	b, err := Load([]byte(src))
	if err != nil {
		t.Fatalf("Load: %v\n%s", err, src)
	}
	return b
}

func TestLoadErrors(t *testing.T) {
	long := strings.Repeat("action.name == \"x\" || ", MaxWhenBytes/20) + "true"
	for _, tc := range []struct {
		name, src string
		want      []string // substrings of the error
	}{
		{"empty", "", []string{"empty policy"}},
		{"bad yaml", "version: [", []string{"YAML"}},
		{"not a mapping", "- a\n- b\n", []string{"must be a mapping"}},
		{"two documents", header + "---\n" + header, []string{"more than one YAML document"}},
		{"wrong version", "version: etb.policy/v2\nname: t\n", []string{`"etb.policy/v2"`}},
		{"no name", "version: etb.policy/v1\n", []string{"name is empty"}},
		{"unknown top key", header + "rulez: []\n", []string{`unknown key "rulez"`}},
		{"unknown rule key", header + "rules:\n- id: r1\n  effect: permit\n  whne: 'true'\n", []string{`rule "r1"`, `unknown key "whne"`}},
		{"unknown match key", header + "rules:\n- id: r1\n  effect: permit\n  match: {kind: a, tool: b}\n", []string{`rule "r1" match`, `"tool"`}},
		{"unknown obligation", header + "rules:\n- id: r1\n  effect: permit\n  obligations: {timout: 1s}\n", []string{`rule "r1" obligations`, `"timout"`}},
		{"unknown defaults key", header + "defaults: {timeout: 1s}\n", []string{`defaults`, `"timeout"`}},
		{"unknown test key", header + "tests:\n- name: x\n  inputs: {}\n", []string{`test "x"`, `"inputs"`}},
		{"unknown expect key", header + "tests:\n- name: x\n  expect: {decision: deny, rule: [a]}\n", []string{`test "x" expect`, `"rule"`}},
		{"unknown input field", header + "tests:\n- name: x\n  input: {action: {kind: a, nmae: b}}\n  expect: {decision: deny}\n", []string{`test "x"`, `nmae`}},
		{"bad test decision", header + "tests:\n- name: x\n  expect: {decision: allow}\n", []string{`test "x"`, `"allow"`}},
		{"duplicate test", header + "tests:\n- {name: x, expect: {decision: deny}}\n- {name: x, expect: {decision: deny}}\n", []string{`duplicate test name "x"`}},
		{"duplicate yaml key", header + "rules:\n- id: r1\n  id: r2\n  effect: permit\n", []string{"already defined"}},
		{"duplicate id", header + "rules:\n- {id: r1, effect: permit}\n- {id: r1, effect: forbid}\n", []string{`duplicate rule id "r1"`}},
		{"bad id", header + "rules:\n- {id: R1, effect: permit}\n", []string{`rule id "R1"`}},
		{"missing id", header + "rules:\n- {effect: permit}\n", []string{`rule id ""`}},
		{"reserved id", header + "rules:\n- {id: etb.error, effect: permit}\n", []string{`"etb.error"`, "reserved"}},
		{"bad effect", header + "rules:\n- {id: r1, effect: allow}\n", []string{`rule "r1"`, `"allow"`}},
		{"kind not a string", header + "rules:\n- {id: r1, effect: permit, match: {kind: 5}}\n", []string{`rule "r1" match.kind`, "want a string"}},
		{"kind is a map", header + "rules:\n- {id: r1, effect: permit, match: {kind: {a: b}}}\n", []string{`rule "r1" match.kind`, "string or a list"}},
		{"empty match list", header + "rules:\n- {id: r1, effect: forbid, match: {name: []}}\n", []string{`rule "r1" match.name`, "empty list"}},
		{"effect not a string", header + "rules:\n- {id: r1, effect: [permit]}\n", []string{`rule "r1"`, "cannot unmarshal"}},
		{"duplicate name", header + "rules:\n- {id: r1, effect: permit, match: {name: [ls, ls]}}\n", []string{`rule "r1"`, `"ls" is listed twice`}},
		{"bad timeout", header + "rules:\n- {id: r1, effect: permit, obligations: {timeout: soon}}\n", []string{`"soon"`}},
		{"negative timeout", header + "defaults: {obligations: {timeout: -1s}}\n", []string{"negative"}},
		{"alias", header + "rules:\n- &a {id: r1, effect: permit}\n- *a\n", []string{"anchors and aliases"}},
		{"rules not a list", header + "rules: {a: b}\n", []string{"rules must be a list"}},
		{"cel syntax", header + "rules:\n- {id: r1, effect: permit, when: 'action.name ==='}\n", []string{`rule "r1"`, "Syntax error"}},
		{"cel unknown field", header + "rules:\n- {id: r1, effect: permit, when: 'action.target.Program == \"x\"'}\n", []string{`rule "r1"`, "undefined field 'Program'"}},
		{"cel unknown variable", header + "rules:\n- {id: r1, effect: permit, when: 'request.name == \"x\"'}\n", []string{`rule "r1"`, "undeclared reference"}},
		{"cel wrong type", header + "rules:\n- {id: r1, effect: permit, when: 'principal.uid == \"0\"'}\n", []string{`rule "r1"`, "no matching overload"}},
		{"cel non-bool", header + "rules:\n- {id: r1, effect: permit, when: 'action.name'}\n", []string{`rule "r1"`, "type string, want bool"}},
		{"cel dyn", header + "rules:\n- {id: r1, effect: permit, when: '[true, \"a\"][0]'}\n", []string{`rule "r1"`, "want bool"}},
		{"over cost budget", header + "rules:\n- {id: r1, effect: permit, when: 'action.args.exists(a, action.args.exists(b, task.labels.exists(c, a + b == c)))'}\n", []string{`rule "r1"`, "estimated worst-case cost", "budget of 1000000"}},
		{"when too long", header + "rules:\n- id: r1\n  effect: permit\n  when: '" + long + "'\n", []string{`rule "r1"`, "limit of 4096"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Load([]byte(tc.src))
			if err == nil {
				t.Fatalf("Load succeeded (hash %s), want an error containing %q", b.Hash(), tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestLoadLimits(t *testing.T) {
	if _, err := Load(make([]byte, MaxSourceBytes+1)); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("oversized source: err = %v, want a limit error", err)
	}
	var sb strings.Builder
	sb.WriteString(header + "rules:\n")
	for i := range MaxRules + 1 {
		fmt.Fprintf(&sb, "- {id: r%d, effect: permit}\n", i)
	}
	if _, err := Load([]byte(sb.String())); err == nil || !strings.Contains(err.Error(), "10001 rules") {
		t.Errorf("too many rules: err = %v", err)
	}
}

func TestEmptyPolicyDeniesEverything(t *testing.T) {
	for _, src := range []string{header, header + "rules: []\n", header + "rules:\n"} {
		b := mustLoad(t, src)
		d := b.Evaluate(context.Background(), shellAction("echo", "/usr/bin/echo", "hi"))
		if d.Decision != Deny || !slices.Equal(d.Rules, []string{RuleDefaultDeny}) {
			t.Errorf("%q: got %s %v, want deny [%s]", src, d.Decision, d.Rules, RuleDefaultDeny)
		}
	}
}

// combo is a policy exercising every combination of effects.
const combo = header + `
defaults: {obligations: {timeout: 5m}}
rules:
- {id: p-echo, effect: permit, match: {kind: shell.exec, name: echo}, message: echo ok, obligations: {timeout: 1m}}
- {id: p-echo-short, effect: permit, match: {kind: shell.exec, name: echo}, when: 'action.args.size() == 1', obligations: {timeout: 10s}}
- {id: f-echo-secret, effect: forbid, match: {kind: shell.exec, name: echo}, when: '"secret" in action.args', message: no secrets}
- {id: f-root, effect: forbid, when: 'principal.user == "root"', message: not as root}
- {id: a-deploy, effect: require_approval, match: {kind: [shell.exec, mcp.tool_call], name: deploy}, message: deploys need a human, obligations: {timeout: 2m}}
- {id: p-deploy, effect: permit, match: {kind: shell.exec, name: deploy}, obligations: {timeout: 30s}}
- {id: f-deploy-prod, effect: forbid, match: {name: deploy}, when: '"prod" in action.args'}
- {id: p-any-labelled, effect: permit, match: {kind: mcp.tool_call}, when: '"trusted" in task.labels'}
- {id: p-env, effect: permit, match: {kind: shell.exec, name: envcheck}, when: 'env["MODE"] == "test"'}
`

func TestCombination(t *testing.T) {
	b := mustLoad(t, combo)
	root := shellAction("echo", "/usr/bin/echo", "hi")
	root.Principal.User = "root"
	mcp := &action.Action{Action: action.Spec{Kind: action.KindMCPTool, Name: "search"}, Task: action.Task{Labels: []string{"trusted"}}}
	mcpDeploy := &action.Action{Action: action.Spec{Kind: action.KindMCPTool, Name: "deploy"}}
	envOK := shellAction("envcheck", "/usr/bin/envcheck")
	envOK.Env = map[string]string{"MODE": "test"}
	for _, tc := range []struct {
		name    string
		in      *action.Action
		want    string
		rules   []string
		timeout time.Duration
	}{
		{"permits tighten obligations", shellAction("echo", "/usr/bin/echo", "hi"), Permit, []string{"p-echo", "p-echo-short"}, 10 * time.Second},
		{"one permit", shellAction("echo", "/usr/bin/echo", "a", "b"), Permit, []string{"p-echo"}, time.Minute},
		{"forbid overrides permit", shellAction("echo", "/usr/bin/echo", "secret", "x"), Deny, []string{"f-echo-secret"}, 0},
		{"all matching forbids are named", func() *action.Action {
			a := shellAction("echo", "/usr/bin/echo", "secret")
			a.Principal.User = "root"
			return a
		}(), Deny, []string{"f-echo-secret", "f-root"}, 0},
		{"kind-less forbid", root, Deny, []string{"f-root"}, 0},
		{"require approval beats permit", shellAction("deploy", "/usr/bin/deploy", "staging"), RequireApproval, []string{"a-deploy"}, 30 * time.Second},
		{"require approval on second kind", mcpDeploy, RequireApproval, []string{"a-deploy"}, 2 * time.Minute},
		{"forbid beats require approval", shellAction("deploy", "/usr/bin/deploy", "prod"), Deny, []string{"f-deploy-prod"}, 0},
		{"kind wildcard with when", mcp, Permit, []string{"p-any-labelled"}, 5 * time.Minute},
		{"kind wildcard when false", &action.Action{Action: action.Spec{Kind: action.KindMCPTool, Name: "search"}}, Deny, []string{RuleDefaultDeny}, 0},
		{"env map", envOK, Permit, []string{"p-env"}, 5 * time.Minute},
		{"default deny", shellAction("cat", "/usr/bin/cat", "x"), Deny, []string{RuleDefaultDeny}, 0},
		{"unknown kind", &action.Action{Action: action.Spec{Kind: "fs.write", Name: "echo"}}, Deny, []string{RuleDefaultDeny}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := b.Evaluate(context.Background(), tc.in)
			if d.Decision != tc.want || !slices.Equal(d.Rules, tc.rules) || d.Obligations.Timeout.D() != tc.timeout {
				t.Fatalf("got %s %v timeout %v (%q), want %s %v timeout %v", d.Decision, d.Rules, d.Obligations.Timeout.D(), d.Messages, tc.want, tc.rules, tc.timeout)
			}
			if len(d.Messages) != len(d.Rules) {
				t.Errorf("%d messages for %d rules", len(d.Messages), len(d.Rules))
			}
			if d.Policy != (Ref{BundleHash: b.Hash(), Engine: Engine}) {
				t.Errorf("policy ref = %+v", d.Policy)
			}
			if want, _ := canonicalHashNormalized(tc.in); d.InputHash != want {
				t.Errorf("input hash %s, want %s", d.InputHash, want)
			}
		})
	}
}

func canonicalHashNormalized(in *action.Action) (string, error) {
	a := *in
	if err := a.Normalize(); err != nil {
		return "", err
	}
	return action.CanonicalHash(&a)
}

// faultProgram is a cel.Program whose Eval panics or returns a fixed value,
// to reach the defensive paths CEL's type checker normally makes
// unreachable.
type faultProgram struct {
	cel.Program
	out   ref.Val
	panic bool
}

func (p faultProgram) Eval(any) (ref.Val, *cel.EvalDetails, error) {
	if p.panic {
		panic("boom")
	}
	return p.out, nil, nil
}

func TestEvaluationErrorsDeny(t *testing.T) {
	src := header + `
rules:
- {id: permit-all, effect: permit}
- {id: forbid-x, effect: forbid, match: {name: forbidden}}
- {id: args5, effect: permit, match: {name: [echo, forbidden]}, when: 'action.args[5] == "x"'}
- {id: home, effect: permit, match: {name: home}, when: 'env["HOME"] == "/root"'}
- {id: big, effect: permit, match: {name: big}, when: 'action.args.all(a, a != "x")'}
`
	small, err := load([]byte(src), 10_000)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	bigArgs := make([]string, 20_000)
	for i := range bigArgs {
		bigArgs[i] = "y"
	}
	noHome := shellAction("home", "/usr/bin/home")
	noHome.Env = nil
	badVersion := shellAction("echo", "/usr/bin/echo")
	badVersion.V = "etb.action/v0"

	for _, tc := range []struct {
		name string
		ctx  context.Context
		in   *action.Action
		want []string // substrings of the message
	}{
		{"index out of range", ctx, shellAction("echo", "/usr/bin/echo", "one"), []string{`rule "args5" failed`, "index out of bounds"}},
		{"error beats forbid", ctx, shellAction("forbidden", "/usr/bin/forbidden"), []string{`rule "args5" failed`}},
		{"missing map key", ctx, noHome, []string{`rule "home" failed`, "no such key: HOME"}},
		{"run-time cost overrun", ctx, shellAction("big", "/usr/bin/big", bigArgs...), []string{`rule "big" failed`, "cost limit exceeded"}},
		{"cancelled context", cancelled, shellAction("echo", "/usr/bin/echo", "1", "2", "3", "4", "5", "x"), []string{"not evaluated", "context canceled"}},
		{"cancelled context, no candidates", cancelled, shellAction("nomatch", "/usr/bin/nomatch"), []string{"context canceled"}},
		{"nil input", ctx, nil, []string{"input action is nil"}},
		{"bad input version", ctx, badVersion, []string{"etb.action/v0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := small.Evaluate(tc.ctx, tc.in)
			if d.Decision != Deny || !slices.Equal(d.Rules, []string{RuleError}) {
				t.Fatalf("got %s %v %q, want deny [%s]", d.Decision, d.Rules, d.Messages, RuleError)
			}
			if d.Obligations != (action.Obligations{}) {
				t.Errorf("deny carries obligations %+v", d.Obligations)
			}
			msg := strings.Join(d.Messages, "\n")
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("messages %q do not contain %q", msg, w)
				}
			}
		})
	}

	// The same action within bounds is permitted, so the denials above are
	// caused by the faults, not by the policy.
	if d := small.Evaluate(ctx, shellAction("echo", "/usr/bin/echo", "1", "2", "3", "4", "5", "x")); d.Decision != Permit {
		t.Errorf("control: got %s %v %q, want permit", d.Decision, d.Rules, d.Messages)
	}
	if d := small.Evaluate(ctx, shellAction("big", "/usr/bin/big", "y")); d.Decision != Permit {
		t.Errorf("control: got %s %v %q, want permit", d.Decision, d.Rules, d.Messages)
	}
}

func TestFaultsInsideCELDeny(t *testing.T) {
	for _, tc := range []struct {
		name string
		prg  faultProgram
		want string
	}{
		{"panic", faultProgram{panic: true}, "panic: boom"},
		{"non-bool", faultProgram{out: types.String("yes")}, "not bool"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := mustLoad(t, header+"rules:\n- {id: r1, effect: permit, when: 'true'}\n")
			b.rules[0].prg, b.rules[0].bounded = tc.prg, tc.prg
			d, tr := b.Explain(context.Background(), shellAction("echo", "/usr/bin/echo"))
			if d.Decision != Deny || !slices.Equal(d.Rules, []string{RuleError}) || !strings.Contains(d.Messages[0], tc.want) {
				t.Fatalf("got %s %v %q, want deny [%s] mentioning %q", d.Decision, d.Rules, d.Messages, RuleError, tc.want)
			}
			if !strings.Contains(tr[0].Error, tc.want) || tr[0].Matched {
				t.Errorf("trace %+v", tr[0])
			}
		})
	}
}

func TestEvaluateDoesNotMutateInput(t *testing.T) {
	b := mustLoad(t, combo)
	in := &action.Action{
		Action: action.Spec{Kind: action.KindShellExec, Name: "echo", Target: action.Target{Host: "EXAMPLE.com"}},
	}
	before := *in
	d := b.Evaluate(context.Background(), in)
	if !reflect.DeepEqual(*in, before) {
		t.Errorf("input changed: %+v, was %+v", *in, before)
	}
	if d.InputHash == "" {
		t.Error("empty input hash")
	}
}

func TestDecisionJSONHasNoNulls(t *testing.T) {
	b := mustLoad(t, combo)
	for _, in := range []*action.Action{nil, shellAction("echo", "/usr/bin/echo", "hi"), shellAction("cat", "/usr/bin/cat")} {
		raw, err := json.Marshal(b.Evaluate(context.Background(), in))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(raw), "null") {
			t.Errorf("decision JSON has a null: %s", raw)
		}
	}
}

func TestDeterminism(t *testing.T) {
	b1 := mustLoad(t, combo)
	b2 := mustLoad(t, combo)
	in := shellAction("echo", "/usr/bin/echo", "hi")
	in.Env = map[string]string{}
	for i := range 50 {
		in.Env[fmt.Sprintf("K%02d", i)] = "v"
	}
	ref := b1.Evaluate(context.Background(), in)
	for range 20 {
		// A fresh map has a different iteration order.
		env := map[string]string{}
		for k, v := range in.Env {
			env[k] = v
		}
		c := *in
		c.Env = env
		if d := b2.Evaluate(context.Background(), &c); !d.SameOutcome(ref) {
			t.Fatalf("decision differs:\n%+v\n%+v", d, ref)
		}
	}
}

func TestSameOutcome(t *testing.T) {
	base := mustLoad(t, combo).Evaluate(context.Background(), shellAction("echo", "/usr/bin/echo", "hi"))
	other := base
	other.EvalNS++
	if !base.SameOutcome(other) {
		t.Error("EvalNS difference must not matter")
	}
	for name, change := range map[string]func(*Decision){
		"decision":      func(d *Decision) { d.Decision = Deny },
		"rules":         func(d *Decision) { d.Rules = []string{"p-echo"} },
		"messages":      func(d *Decision) { d.Messages = []string{"x", "y"} },
		"obligations":   func(d *Decision) { d.Obligations.Timeout = 1 },
		"labels":        func(d *Decision) { d.LabelsToAdd = []string{"x"} },
		"bundle hash":   func(d *Decision) { d.Policy.BundleHash = "sha256:00" },
		"engine":        func(d *Decision) { d.Policy.Engine = "x" },
		"input hash":    func(d *Decision) { d.InputHash = "sha256:00" },
		"state version": func(d *Decision) { d.StateVersion = 1 },
		"reservations":  func(d *Decision) { d.Reservations = []Reservation{{Slot: "l/k", Limit: "l", Key: "k", Cost: 1}} },
	} {
		d := base
		d.Rules, d.Messages, d.LabelsToAdd = slices.Clone(d.Rules), slices.Clone(d.Messages), slices.Clone(d.LabelsToAdd)
		change(&d)
		if base.SameOutcome(d) || d.SameOutcome(base) {
			t.Errorf("%s: SameOutcome is true", name)
		}
	}
}

func TestHashStability(t *testing.T) {
	const base = `version: etb.policy/v1
name: h
defaults: {obligations: {timeout: 5m}}
rules:
- id: r1
  effect: permit
  match: {kind: shell.exec, name: [ls, cat]}
  when: 'action.args.size() < 3'
  message: ok
  obligations: {timeout: 30s}
- {id: r2, effect: forbid, match: {name: rm}}
`
	same := map[string]string{
		"comments and blank lines": "# top comment\n" + strings.ReplaceAll(base, "rules:\n", "\nrules: # the rules\n\n"),
		"key order": `name: h
rules:
- effect: permit
  obligations: {timeout: 30s}
  message: ok
  when: 'action.args.size() < 3'
  match: {name: [ls, cat], kind: shell.exec}
  id: r1
- {match: {name: rm}, effect: forbid, id: r2}
defaults: {obligations: {timeout: 5m}}
version: etb.policy/v1
`,
		"block style and quoting": `version: "etb.policy/v1"
name: 'h'
defaults:
  obligations:
    timeout: 300s
rules:
  - id: r1
    effect: permit
    match:
      kind: [shell.exec]
      name:
        - cat
        - ls
    when: >-
      action.args.size() < 3
    message: "ok"
    obligations:
      timeout: 0.5m
  - id: r2
    effect: forbid
    match:
      name: [rm]
`,
		"tests section": base + "tests:\n- {name: t, input: {action: {kind: shell.exec, name: ls}}, expect: {decision: permit}}\n",
	}
	different := map[string]string{
		"effect":      strings.Replace(base, "effect: forbid", "effect: require_approval", 1),
		"when":        strings.Replace(base, "size() < 3", "size() < 4", 1),
		"message":     strings.Replace(base, "message: ok", "message: okay", 1),
		"obligations": strings.Replace(base, "timeout: 30s", "timeout: 31s", 1),
		"defaults":    strings.Replace(base, "timeout: 5m", "timeout: 6m", 1),
		"match":       strings.Replace(base, "[ls, cat]", "[ls, cat, head]", 1),
		"id":          strings.Replace(base, "id: r2", "id: r3", 1),
		"name":        strings.Replace(base, "name: h", "name: g", 1),
		"description": strings.Replace(base, "name: h\n", "name: h\ndescription: d\n", 1),
		"new rule":    base + "- {id: r3, effect: permit}\n",
	}
	want := mustLoad(t, base).Hash()
	if !strings.HasPrefix(want, "sha256:") || len(want) != len("sha256:")+64 {
		t.Fatalf("hash %q is not sha256:<hex>", want)
	}
	for name, src := range same {
		if got := mustLoad(t, src).Hash(); got != want {
			t.Errorf("%s changed the hash: %s, want %s", name, got, want)
		}
	}
	seen := map[string]string{want: "base"}
	for name, src := range different {
		got := mustLoad(t, src).Hash()
		if prev, dup := seen[got]; dup {
			t.Errorf("%s has the same hash as %s", name, prev)
		}
		seen[got] = name
	}
}

func TestSourceIsKeptAndCopied(t *testing.T) {
	b := mustLoad(t, combo)
	src := b.Source()
	if string(src) != combo {
		t.Fatal("Source differs from the loaded bytes")
	}
	src[0] = 'X'
	if string(b.Source()) != combo {
		t.Error("Source returned the bundle's own slice")
	}
	again := mustLoad(t, string(b.Source()))
	if again.Hash() != b.Hash() || again.Name() != "t" {
		t.Errorf("reload: hash %s name %q, want %s t", again.Hash(), again.Name(), b.Hash())
	}
}

func TestDefaultPolicyTestsPass(t *testing.T) {
	b, err := Load(DefaultPolicy)
	if err != nil {
		t.Fatal(err)
	}
	if b.Name() != "default" {
		t.Errorf("name %q", b.Name())
	}
	res := b.RunTests(context.Background())
	if len(res) < 10 {
		t.Errorf("only %d tests in the default policy", len(res))
	}
	covered := map[string]bool{}
	for _, r := range res {
		if !r.Pass {
			t.Errorf("%s: %s", r.Name, r.Detail)
		}
		for _, id := range r.Got.Rules {
			covered[id] = true
		}
	}
	for _, r := range b.rules {
		if !covered[r.id] {
			t.Errorf("rule %s is not covered by a test", r.id)
		}
	}
}

// TestDefaultPolicyOnThisMachine resolves programs the way the shell
// adapter does (PATH lookup, symlinks followed) and checks the commands
// `etb run` is documented to permit and deny.
func TestDefaultPolicyOnThisMachine(t *testing.T) {
	b, err := Load(DefaultPolicy)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		argv []string
		want string
		rule string
	}{
		{[]string{"echo", "hello"}, Permit, "allow-read-only"},
		{[]string{"ls"}, Permit, "allow-read-only"},
		{[]string{"sleep", "1"}, Permit, "allow-sleep"},
		{[]string{"rm", "-rf", "/tmp/x"}, Deny, "forbid-recursive-delete"},
		{[]string{"rm", "-r", "-f", "/tmp/x"}, Deny, "forbid-recursive-delete"},
		{[]string{"sh", "-c", "ls"}, Deny, RuleDefaultDeny},
		{[]string{"bash", "-c", "ls"}, Deny, RuleDefaultDeny},
	} {
		path, err := exec.LookPath(tc.argv[0])
		if err != nil {
			t.Logf("%s not installed; skipped", tc.argv[0])
			continue
		}
		real, err := filepath.EvalSymlinks(path)
		if err != nil {
			t.Fatal(err)
		}
		d := b.Evaluate(context.Background(), shellAction(tc.argv[0], real, tc.argv[1:]...))
		if d.Decision != tc.want || !slices.Contains(d.Rules, tc.rule) {
			t.Errorf("%v (%s): got %s %v %q, want %s by %s", tc.argv, real, d.Decision, d.Rules, d.Messages, tc.want, tc.rule)
		}
		if tc.want == Permit && d.Obligations.Timeout == 0 {
			t.Errorf("%v: permit without a timeout", tc.argv)
		}
	}
}

func TestRunTestsReportsFailures(t *testing.T) {
	src := combo + `
tests:
- name: right
  input: {action: {kind: shell.exec, name: echo, args: [hi]}}
  expect: {decision: permit, rules: [p-echo-short, p-echo], obligations: {timeout: 10s}}
- name: wrong decision
  input: {action: {kind: shell.exec, name: cat}}
  expect: {decision: permit}
- name: wrong rules
  input: {action: {kind: shell.exec, name: echo, args: [hi]}}
  expect: {decision: permit, rules: [p-echo]}
- name: wrong obligations
  input: {action: {kind: shell.exec, name: echo, args: [hi]}}
  expect: {decision: permit, obligations: {timeout: 1m}}
- name: empty rules means none
  input: {action: {kind: shell.exec, name: cat}}
  expect: {decision: deny, rules: []}
`
	res := mustLoad(t, src).RunTests(context.Background())
	want := []struct {
		name   string
		pass   bool
		detail string
	}{
		{"right", true, ""},
		{"wrong decision", false, "decision is deny, want permit"},
		{"wrong rules", false, "rules are [p-echo p-echo-short], want [p-echo]"},
		{"wrong obligations", false, "obligations are {timeout: 10s}, want {timeout: 1m0s}"},
		{"empty rules means none", false, "rules are [etb.default-deny], want []"},
	}
	if len(res) != len(want) {
		t.Fatalf("%d results, want %d", len(res), len(want))
	}
	for i, w := range want {
		r := res[i]
		if r.Name != w.name || r.Pass != w.pass || !strings.Contains(r.Detail, w.detail) || (w.pass && r.Detail != "") {
			t.Errorf("result %d = {%s %v %q}, want {%s %v %q}", i, r.Name, r.Pass, r.Detail, w.name, w.pass, w.detail)
		}
		if r.Got.Decision == "" || r.Want == "" {
			t.Errorf("result %d lacks Got or Want: %+v", i, r)
		}
	}
}

func TestExplain(t *testing.T) {
	b := mustLoad(t, combo)
	in := shellAction("echo", "/usr/bin/echo", "a", "b")
	d, tr := b.Explain(context.Background(), in)
	if !d.SameOutcome(b.Evaluate(context.Background(), in)) {
		t.Fatal("Explain and Evaluate disagree")
	}
	if len(tr) != len(b.rules) {
		t.Fatalf("%d traces for %d rules", len(tr), len(b.rules))
	}
	want := map[string][2]bool{ // candidate, matched
		"p-echo":        {true, true},
		"p-echo-short":  {true, false},
		"f-echo-secret": {true, false},
		"f-root":        {true, false},
	}
	for i, x := range tr {
		if x.RuleID != b.rules[i].id || x.Effect != b.rules[i].effect || x.Error != "" {
			t.Errorf("trace %d = %+v", i, x)
		}
		w := want[x.RuleID]
		if x.Candidate != w[0] || x.Matched != w[1] {
			t.Errorf("%s: candidate %v matched %v, want %v %v", x.RuleID, x.Candidate, x.Matched, w[0], w[1])
		}
	}
}

// TestIndexSelectsExactlyTheMatchingRules compares the index with a linear
// scan over a large generated policy.
func TestIndexSelectsExactlyTheMatchingRules(t *testing.T) {
	b := mustLoad(t, string(thousandRules(1000)))
	kinds := []string{action.KindShellExec, "kind1.op", "kind9.op", "nope"}
	for _, kind := range kinds {
		for n := range 260 {
			name := fmt.Sprintf("cmd%d", n)
			var want []int
			for i, r := range b.rules {
				if (len(r.kinds) == 0 || slices.Contains(r.kinds, kind)) && (len(r.names) == 0 || slices.Contains(r.names, name)) {
					want = append(want, i)
				}
			}
			got := b.candidates(nil, kind, name)
			if !slices.Equal(got, want) {
				t.Fatalf("%s/%s: candidates %v, want %v", kind, name, got, want)
			}
			if len(got) > 20 {
				t.Fatalf("%s/%s: %d candidates out of 1000", kind, name, len(got))
			}
		}
	}
}

func TestInputHashMatchesGeneric(t *testing.T) {
	for name, a := range map[string]*action.Action{
		"typical":        shellAction("echo", "/usr/bin/echo", "hello", `quo"te`, `back\slash`),
		"zero":           {},
		"html chars":     {Env: map[string]string{"<a>": "&b"}},
		"unicode":        shellAction("echo", "/usr/bin/echo", "héllo", "😀", "\u2028"),
		"control":        shellAction("echo", "/usr/bin/echo", "a\nb\tc\x01"),
		"invalid utf8":   shellAction("echo", "/usr/bin/echo", "\xff\xfe"),
		"big int":        {Principal: action.Principal{UID: 1<<53 + 1}, Task: action.Task{Step: -1 << 60}},
		"exact int edge": {Principal: action.Principal{UID: 1<<53 - 1}, Action: action.Spec{Target: action.Target{Port: -(1<<53 - 1)}}},
		"env order":      {Env: map[string]string{"b": "1", "a": "2", "B": "3", "_": "4", "aa": "5"}},
		"non-ascii keys": {Env: map[string]string{"\uffff": "1", "😀": "2", "a": "3"}},
	} {
		t.Run(name, func(t *testing.T) {
			if err := a.Normalize(); err != nil {
				t.Fatal(err)
			}
			checkInputHash(t, a)
		})
	}
}

func checkInputHash(t *testing.T, a *action.Action) {
	t.Helper()
	want, werr := action.CanonicalHash(a)
	got, gerr := inputHash(a)
	if got != want || (werr == nil) != (gerr == nil) {
		fast, ok := action.AppendCanonical(nil, a)
		generic, _ := action.Canonical(a)
		t.Fatalf("inputHash = %s, %v; want %s, %v\nfast (%v): %s\ngeneric:     %s", got, gerr, want, werr, ok, fast, generic)
	}
}

func TestConcurrentEvaluate(t *testing.T) {
	b := mustLoad(t, combo)
	want := b.Evaluate(context.Background(), shellAction("echo", "/usr/bin/echo", "hi"))
	errs := make(chan string, 8)
	for range 8 {
		go func() {
			for range 200 {
				if d := b.Evaluate(context.Background(), shellAction("echo", "/usr/bin/echo", "hi")); !d.SameOutcome(want) {
					errs <- fmt.Sprintf("%+v", d)
					return
				}
			}
			errs <- ""
		}()
	}
	for range 8 {
		if e := <-errs; e != "" {
			t.Errorf("concurrent decision differs: %s", e)
		}
	}
}

// withinBounds decides whether the runtime cost tracker may be skipped; it
// must say no for any input the load-time estimate did not cover.
func TestWithinBounds(t *testing.T) {
	ok := shellAction("echo", "/usr/bin/echo", "hi")
	if !withinBounds(ok) {
		t.Fatal("a small action is out of bounds")
	}
	long := strings.Repeat("x", MaxStringSize+1)
	many := make([]string, MaxListSize+1)
	for name, mutate := range map[string]func(*action.Action){
		"long arg":     func(a *action.Action) { a.Action.Args = []string{long} },
		"many args":    func(a *action.Action) { a.Action.Args = many },
		"long program": func(a *action.Action) { a.Action.Target.Program = long },
		"many labels":  func(a *action.Action) { a.Task.Labels = many },
		"long env":     func(a *action.Action) { a.Env = map[string]string{"k": long} },
		"long env key": func(a *action.Action) { a.Env = map[string]string{long: "v"} },
		"many paths":   func(a *action.Action) { a.Action.Target.Paths = many },
	} {
		a := shellAction("echo", "/usr/bin/echo")
		mutate(a)
		if withinBounds(a) {
			t.Errorf("%s: within bounds", name)
		}
	}
}
