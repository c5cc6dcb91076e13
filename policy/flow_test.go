package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etbproject/etb/action"
)

// flowPolicy is the "read a secret, then send it out" pair from issue 6,
// plus a window rule and limits.
const flowPolicy = header + `
defaults: {obligations: {timeout: 5m}}
rules:
- id: read-secrets
  effect: permit
  match: {kind: fs.read}
  when: 'action.target.paths.exists(p, p.startsWith("/etc/secrets/"))'
  labels: [secret_read, audit:secrets]
- id: read-anything
  effect: permit
  match: {kind: fs.read}
  labels: [fs_read]
- id: http-out
  effect: permit
  match: {kind: http.request}
- id: no-egress-after-secret
  effect: forbid
  match: {kind: http.request}
  when: '"secret_read" in task.labels && !(action.target.host in ["api.internal.example", "pypi.org"])'
  message: no egress outside the allow-list after a secret was read
- id: shell
  effect: permit
  match: {kind: shell.exec}
  labels: [ran_shell]
- id: no-curl-after-read
  effect: forbid
  match: {kind: shell.exec, name: curl}
  when: 'task.recent.exists(r, r.kind == "fs.read" && r.decision == "permit")'
- id: review-after-denials
  effect: require_approval
  match: {kind: shell.exec}
  when: 'task.recent.filter(r, r.decision == "deny").size() >= 3'
- id: deploy
  effect: require_approval
  match: {kind: shell.exec, name: deploy}
- id: http-many-args
  effect: require_approval
  match: {kind: http.request}
  when: 'action.args.size() > 5'
  message: many arguments
limits:
- id: shell-per-agent
  match: {kind: shell.exec}
  when: 'principal.user != "ci"'
  key: 'principal.id'
  window: 1m
  max: 3
  on_exceed: deny
  message: too many commands this minute
- id: http-budget
  match: {kind: http.request}
  key: 'principal.id + "|" + action.target.host'
  window: 1h
  max: 10.5
  cost: 'double(action.args.size()) * 1.5'
  on_exceed: require_approval
`

const agent = "spiffe://etb.local/agent/a"

func fsRead(paths ...string) *action.Action {
	return &action.Action{ID: "r", Principal: action.Principal{ID: agent},
		Action: action.Spec{Kind: "fs.read", Name: "read", Target: action.Target{Paths: paths}},
		Task:   action.Task{ID: "t1", RootID: "t1"}}
}

func httpReq(host string, args ...string) *action.Action {
	return &action.Action{ID: "h", Principal: action.Principal{ID: agent},
		Action: action.Spec{Kind: action.KindHTTP, Name: "POST", Args: args, Target: action.Target{Host: host, Port: 443}},
		Task:   action.Task{ID: "t1", RootID: "t1"}}
}

func shellBy(name, principal string) *action.Action {
	a := shellAction(name, "/usr/bin/"+name)
	a.Principal.ID = principal
	return a
}

// with returns a copy of a with its task state replaced.
func with(a *action.Action, labels []string, recent []action.Recent, usage map[string]float64) *action.Action {
	c := *a
	c.Task.Labels, c.Task.Recent, c.Task.Usage = labels, recent, usage
	return &c
}

func TestFlowDecisions(t *testing.T) {
	b := mustLoad(t, flowPolicy)
	readPermit := action.Recent{Kind: "fs.read", Name: "read", Decision: Permit}
	deny := action.Recent{Kind: action.KindShellExec, Name: "rm", Decision: Deny}
	other := action.Recent{Kind: action.KindShellExec, Name: "ls", Decision: Permit}
	window := func(oldest action.Recent) []action.Recent {
		w := []action.Recent{oldest}
		for len(w) < action.MaxRecent {
			w = append(w, other)
		}
		return w
	}
	shellSlot := "shell-per-agent/" + agent
	for _, tc := range []struct {
		name   string
		in     *action.Action
		want   string
		rules  []string
		labels []string
		resv   []Reservation
	}{
		// Labels.
		{"secret read adds labels", fsRead("/etc/secrets/key"), Permit, []string{"read-anything", "read-secrets"}, []string{"audit:secrets", "fs_read", "secret_read"}, nil},
		{"ordinary read", fsRead("/home/dev/notes"), Permit, []string{"read-anything"}, []string{"fs_read"}, nil},
		{"egress before a secret", httpReq("evil.example"), Permit, []string{"http-out"}, []string{}, []Reservation{{Slot: "http-budget/" + agent + "|evil.example", Limit: "http-budget", Key: agent + "|evil.example", Cost: 0}}},
		{"egress after a secret is denied", with(httpReq("evil.example"), []string{"secret_read"}, nil, nil), Deny, []string{"no-egress-after-secret"}, []string{}, nil},
		{"allow-listed egress after a secret", with(httpReq("pypi.org"), []string{"fs_read", "secret_read"}, nil, nil), Permit, []string{"http-out"}, []string{}, []Reservation{{Slot: "http-budget/" + agent + "|pypi.org", Limit: "http-budget", Key: agent + "|pypi.org", Cost: 0}}},
		{"host case does not evade the allow-list", with(httpReq("EVIL.example"), []string{"secret_read"}, nil, nil), Deny, []string{"no-egress-after-secret"}, []string{}, nil},
		{"unsorted duplicate labels", with(httpReq("evil.example"), []string{"z", "secret_read", "z"}, nil, nil), Deny, []string{"no-egress-after-secret"}, []string{}, nil},
		// Recent window.
		{"curl after a permitted read", with(shellBy("curl", agent), nil, []action.Recent{other, readPermit}, nil), Deny, []string{"no-curl-after-read"}, []string{}, nil},
		{"read at the oldest end of a full window", with(shellBy("curl", agent), nil, window(readPermit), nil), Deny, []string{"no-curl-after-read"}, []string{}, nil},
		{"denied read does not count", with(shellBy("curl", agent), nil, []action.Recent{{Kind: "fs.read", Decision: Deny}}, nil), Permit, []string{"shell"}, []string{"ran_shell"}, []Reservation{{Slot: shellSlot, Limit: "shell-per-agent", Key: agent, Cost: 1}}},
		{"three denials need approval", with(shellBy("ls", agent), nil, []action.Recent{deny, other, deny, deny}, nil), RequireApproval, []string{"review-after-denials"}, []string{}, nil},
		{"two denials do not", with(shellBy("ls", agent), nil, []action.Recent{deny, other, deny}, nil), Permit, []string{"shell"}, []string{"ran_shell"}, []Reservation{{Slot: shellSlot, Limit: "shell-per-agent", Key: agent, Cost: 1}}},
		// Limits.
		{"within a rate limit", with(shellBy("ls", agent), nil, nil, map[string]float64{shellSlot: 2}), Permit, []string{"shell"}, []string{"ran_shell"}, []Reservation{{Slot: shellSlot, Limit: "shell-per-agent", Key: agent, Cost: 1}}},
		{"rate limit exceeded", with(shellBy("ls", agent), nil, nil, map[string]float64{shellSlot: 3}), Deny, []string{"shell-per-agent"}, []string{}, nil},
		{"fractional usage over the limit", with(shellBy("ls", agent), nil, nil, map[string]float64{shellSlot: 2.01}), Deny, []string{"shell-per-agent"}, []string{}, nil},
		{"key per principal", with(shellBy("ls", "spiffe://etb.local/agent/b"), nil, nil, map[string]float64{shellSlot: 100}), Permit, []string{"shell"}, []string{"ran_shell"}, []Reservation{{Slot: "shell-per-agent/spiffe://etb.local/agent/b", Limit: "shell-per-agent", Key: "spiffe://etb.local/agent/b", Cost: 1}}},
		{"limit guard", func() *action.Action {
			a := with(shellBy("ls", agent), nil, nil, map[string]float64{shellSlot: 100})
			a.Principal.User = "ci"
			return a
		}(), Permit, []string{"shell"}, []string{"ran_shell"}, nil},
		{"budget within", with(httpReq("x.example", "a", "b", "c"), nil, nil, map[string]float64{"http-budget/" + agent + "|x.example": 6}), Permit, []string{"http-out"}, []string{}, []Reservation{{Slot: "http-budget/" + agent + "|x.example", Limit: "http-budget", Key: agent + "|x.example", Cost: 4.5}}},
		{"budget exceeded needs approval", with(httpReq("x.example", "a", "b", "c"), nil, nil, map[string]float64{"http-budget/" + agent + "|x.example": 6.5}), RequireApproval, []string{"http-budget"}, []string{}, nil},
		{"approval by a rule and by a limit", with(httpReq("x.example", "1", "2", "3", "4", "5", "6"), nil, nil, map[string]float64{"http-budget/" + agent + "|x.example": 2}), RequireApproval, []string{"http-budget", "http-many-args"}, []string{}, nil},
		{"approval by a rule within the budget", with(httpReq("x.example", "1", "2", "3", "4", "5", "6"), nil, nil, map[string]float64{"http-budget/" + agent + "|x.example": 1.5}), RequireApproval, []string{"http-many-args"}, []string{}, nil},
		{"forbid wins over a limit", with(httpReq("evil.example", "a", "b", "c"), []string{"secret_read"}, nil, map[string]float64{"http-budget/" + agent + "|evil.example": 100}), Deny, []string{"no-egress-after-secret"}, []string{}, nil},
		{"a limit denies an approval", with(shellBy("deploy", agent), nil, nil, map[string]float64{shellSlot: 3}), Deny, []string{"shell-per-agent"}, []string{}, nil},
		{"approval within the limit reserves nothing", with(shellBy("deploy", agent), nil, nil, nil), RequireApproval, []string{"deploy"}, []string{}, nil},
		{"a limit never widens", with(&action.Action{Action: action.Spec{Kind: action.KindMCPTool, Name: "x"}}, nil, nil, nil), Deny, []string{RuleDefaultDeny}, []string{}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := b.Evaluate(context.Background(), tc.in)
			if d.Decision != tc.want || !slices.Equal(d.Rules, tc.rules) || !slices.Equal(d.LabelsToAdd, tc.labels) || !slices.Equal(d.Reservations, tc.resv) {
				t.Fatalf("got %s %v labels %v reservations %v (%q),\nwant %s %v labels %v reservations %v", d.Decision, d.Rules, d.LabelsToAdd, d.Reservations, d.Messages, tc.want, tc.rules, tc.labels, tc.resv)
			}
			if len(d.Messages) != len(d.Rules) {
				t.Errorf("%d messages for %d rules", len(d.Messages), len(d.Rules))
			}
			if (d.Decision == Deny) != (d.Obligations == action.Obligations{}) {
				t.Errorf("%s with obligations %+v", d.Decision, d.Obligations)
			}
			validDecision(t, d)
			// Re-derivation: the same input gives the same outcome.
			if again := b.Evaluate(context.Background(), tc.in); !again.SameOutcome(d) {
				t.Errorf("re-derived decision differs:\n%+v\n%+v", again, d)
			}
		})
	}
}

// TestSecretThenEgress plays the scenario as the gateway would: the
// labels a permitted step adds are the task state of the next step.
func TestSecretThenEgress(t *testing.T) {
	b := mustLoad(t, flowPolicy)
	ctx := context.Background()
	step1 := fsRead("/etc/secrets/api-token")
	d1 := b.Evaluate(ctx, step1)
	if d1.Decision != Permit || !slices.Contains(d1.LabelsToAdd, "secret_read") {
		t.Fatalf("step 1: %s labels %v, want a permit adding secret_read", d1.Decision, d1.LabelsToAdd)
	}
	step2 := httpReq("attacker.example", "payload")
	step2.Task.Labels = d1.LabelsToAdd
	step2.Task.Recent = []action.Recent{{Kind: step1.Action.Kind, Name: step1.Action.Name, Decision: d1.Decision}}
	step2.Task.StateVersion = 1
	d2 := b.Evaluate(ctx, step2)
	if d2.Decision != Deny || !slices.Equal(d2.Rules, []string{"no-egress-after-secret"}) {
		t.Fatalf("step 2: %s %v %q, want deny by no-egress-after-secret", d2.Decision, d2.Rules, d2.Messages)
	}
	if d2.StateVersion != 1 {
		t.Errorf("state version %d, want 1", d2.StateVersion)
	}
	if !strings.Contains(d2.Messages[0], "allow-list") {
		t.Errorf("message %q", d2.Messages[0])
	}
}

// Re-deriving a recorded decision with altered task state must not give the
// recorded outcome: every part of the state the decision saw is bound.
func TestAlteredTaskStateChangesTheDecision(t *testing.T) {
	b := mustLoad(t, flowPolicy)
	ctx := context.Background()
	shellSlot := "shell-per-agent/" + agent
	base := shellBy("curl", agent)
	base.Task.Labels = []string{"secret_read"}
	base.Task.Recent = []action.Recent{{Kind: action.KindShellExec, Name: "ls", Decision: Permit}}
	base.Task.Usage = map[string]float64{shellSlot: 1}
	base.Task.StateVersion = 7
	recorded := b.Evaluate(ctx, base)
	if recorded.Decision != Permit || recorded.StateVersion != 7 {
		t.Fatalf("recorded: %+v", recorded)
	}
	for name, alter := range map[string]func(*action.Task){
		"labels": func(tk *action.Task) { tk.Labels = nil },
		"recent": func(tk *action.Task) { tk.Recent = []action.Recent{{Kind: "fs.read", Decision: Permit}} },
		"recent host": func(tk *action.Task) {
			tk.Recent = []action.Recent{{Kind: action.KindShellExec, Name: "ls", Host: "x", Decision: Permit}}
		},
		"usage":         func(tk *action.Task) { tk.Usage = map[string]float64{shellSlot: 0} },
		"usage to deny": func(tk *action.Task) { tk.Usage = map[string]float64{shellSlot: 2.5} },
		"other slot":    func(tk *action.Task) { tk.Usage = map[string]float64{shellSlot: 1, "x/y": 1} },
		"state version": func(tk *action.Task) { tk.StateVersion = 6 },
	} {
		t.Run(name, func(t *testing.T) {
			a := *base
			a.Task.Labels, a.Task.Recent, a.Task.Usage = slices.Clone(base.Task.Labels), slices.Clone(base.Task.Recent), map[string]float64{}
			for k, v := range base.Task.Usage {
				a.Task.Usage[k] = v
			}
			alter(&a.Task)
			if d := b.Evaluate(ctx, &a); d.SameOutcome(recorded) {
				t.Fatalf("altered %s re-derives the recorded decision %+v", name, recorded)
			}
		})
	}
	if again := b.Evaluate(ctx, base); !again.SameOutcome(recorded) {
		t.Fatal("unaltered input does not re-derive")
	}
}

func TestLimitSlots(t *testing.T) {
	b := mustLoad(t, flowPolicy)
	ctx := context.Background()
	got, err := b.LimitSlots(ctx, httpReq("X.example", "a"))
	if err != nil {
		t.Fatal(err)
	}
	want := []LimitSlot{{Slot: "http-budget/" + agent + "|x.example", Limit: "http-budget", Key: agent + "|x.example", Window: time.Hour, Max: 10.5, Cost: 1.5}}
	if !slices.Equal(got, want) {
		t.Fatalf("slots %+v, want %+v", got, want)
	}
	if got, err := b.LimitSlots(ctx, fsRead("/a")); err != nil || len(got) != 0 {
		t.Fatalf("fs.read: slots %v, %v; want none", got, err)
	}
	if got, err := mustLoad(t, combo).LimitSlots(ctx, shellAction("echo", "/usr/bin/echo")); err != nil || got != nil {
		t.Fatalf("no limits: slots %v, %v", got, err)
	}
	// Evaluate judges by exactly the slots LimitSlots names.
	in := httpReq("x.example", "a")
	in.Task.Usage = map[string]float64{got0(t, b, in).Slot: 9.5}
	if d := b.Evaluate(ctx, in); d.Decision != RequireApproval {
		t.Fatalf("usage at the named slot: %s %v", d.Decision, d.Rules)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	for name, tc := range map[string]struct {
		ctx context.Context
		in  *action.Action
	}{
		"nil":       {ctx, nil},
		"cancelled": {cancelled, httpReq("x")},
		"bad input": {ctx, with(httpReq("x"), nil, make([]action.Recent, action.MaxRecent+1), nil)},
	} {
		if s, err := b.LimitSlots(tc.ctx, tc.in); err == nil {
			t.Errorf("%s: slots %v, no error", name, s)
		}
	}
}

func got0(t *testing.T, b *Bundle, in *action.Action) LimitSlot {
	t.Helper()
	s, err := b.LimitSlots(context.Background(), in)
	if err != nil || len(s) != 1 {
		t.Fatalf("slots %v, %v", s, err)
	}
	return s[0]
}

// A key or cost expression that fails, or yields a value that would widen
// the limit, denies: the action is never let through uncounted.
func TestLimitErrorsDeny(t *testing.T) {
	src := header + `
rules:
- {id: all, effect: permit}
limits:
- id: by-team
  match: {name: team}
  key: 'env["TEAM"]'
  window: 1m
  max: 10
- id: by-arg
  match: {name: [arg, long]}
  key: 'action.args[0]'
  window: 1m
  max: 10
- id: neg-cost
  match: {name: neg}
  key: '"all"'
  cost: 'double(principal.uid) - 2000.0'
  window: 1m
  max: 10
- id: div-cost
  match: {name: div}
  key: '"all"'
  cost: '10 / (action.args.size() - 1)'
  window: 1m
  max: 10
- id: guard
  match: {name: guard}
  when: 'env["MODE"] == "x"'
  key: '"all"'
  window: 1m
  max: 10
`
	b := mustLoad(t, src)
	ctx := context.Background()
	noTeam := shellAction("team", "/usr/bin/team")
	withTeam := shellAction("team", "/usr/bin/team")
	withTeam.Env = map[string]string{"TEAM": "red"}
	badUTF8 := shellAction("arg", "/usr/bin/arg", "\xff")
	for _, tc := range []struct {
		name string
		in   *action.Action
		want string
	}{
		{"missing map key", noTeam, `limit "by-team": key`},
		{"index out of range", shellAction("arg", "/usr/bin/arg"), `limit "by-arg": key`},
		{"key too long", shellAction("long", "/usr/bin/long", strings.Repeat("k", MaxLimitKeyBytes+1)), "more than 1024"},
		{"key not UTF-8", badUTF8, "UTF-8"},
		{"negative cost", shellAction("neg", "/usr/bin/neg"), "cost is -1000"},
		{"division by zero", shellAction("div", "/usr/bin/div", "x"), `limit "div-cost": cost`},
		{"failing guard", shellAction("guard", "/usr/bin/guard"), `limit "guard": when`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := b.Evaluate(ctx, tc.in)
			if d.Decision != Deny || !slices.Equal(d.Rules, []string{RuleError}) || !strings.Contains(strings.Join(d.Messages, "\n"), tc.want) {
				t.Fatalf("got %s %v %q, want deny [%s] mentioning %q", d.Decision, d.Rules, d.Messages, RuleError, tc.want)
			}
			if d.Reservations != nil || len(d.LabelsToAdd) != 0 || d.Obligations != (action.Obligations{}) {
				t.Errorf("deny carries %+v", d)
			}
			if s, err := b.LimitSlots(ctx, tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("LimitSlots = %v, %v; want an error mentioning %q", s, err, tc.want)
			}
		})
	}
	// Controls: the same limits with good inputs permit and reserve.
	for _, in := range []*action.Action{withTeam, shellAction("arg", "/usr/bin/arg", "k"), shellAction("div", "/usr/bin/div", "x", "y")} {
		if d := b.Evaluate(ctx, in); d.Decision != Permit || len(d.Reservations) != 1 {
			t.Errorf("control %s: %s %v %q reservations %v", in.Action.Name, d.Decision, d.Rules, d.Messages, d.Reservations)
		}
	}
	neg := shellAction("neg", "/usr/bin/neg")
	neg.Principal.UID = 2005
	if d := b.Evaluate(ctx, neg); d.Decision != Permit || d.Reservations[0].Cost != 5 {
		t.Errorf("control neg: %+v", d)
	}
}

func TestFlowLoadErrors(t *testing.T) {
	rule := func(s string) string { return header + "rules:\n- " + s + "\n" }
	limit := func(s string) string {
		return header + "rules:\n- {id: r1, effect: permit}\nlimits:\n- " + s + "\n"
	}
	for _, tc := range []struct {
		name, src string
		want      []string
	}{
		{"labels on forbid", rule("{id: r1, effect: forbid, labels: [x]}"), []string{`rule "r1"`, "permit rules only"}},
		{"labels on approval", rule("{id: r1, effect: require_approval, labels: [x]}"), []string{`rule "r1"`, "permit rules only"}},
		{"upper-case label", rule("{id: r1, effect: permit, labels: [Secret]}"), []string{`label "Secret"`}},
		{"label with space", rule("{id: r1, effect: permit, labels: ['a b']}"), []string{`label "a b"`}},
		{"empty label", rule("{id: r1, effect: permit, labels: ['']}"), []string{`label ""`}},
		{"long label", rule("{id: r1, effect: permit, labels: [" + strings.Repeat("a", 65) + "]}"), []string{"must match"}},
		{"duplicate label", rule("{id: r1, effect: permit, labels: [a, a]}"), []string{`"a" is listed twice`}},
		{"labels not a list", rule("{id: r1, effect: permit, labels: {a: b}}"), []string{`rule "r1"`}},
		{"recent over budget", rule(`{id: r1, effect: permit, when: 'task.recent.exists(r, action.args.exists(a, action.args.exists(b, a + b == r.name)))'}`), []string{"budget"}},
		{"unknown recent field", rule(`{id: r1, effect: permit, when: 'task.recent.exists(r, r.target == "x")'}`), []string{"undefined field 'target'"}},
		{"limits not a list", header + "limits: {a: b}\n", []string{"limits must be a list"}},
		{"unknown limit key", limit("{id: l1, key: '\"a\"', window: 1m, max: 1, rate: 3}"), []string{`limit "l1"`, `unknown key "rate"`}},
		{"unknown limit match key", limit("{id: l1, key: '\"a\"', window: 1m, max: 1, match: {tool: x}}"), []string{`limit "l1" match`, `"tool"`}},
		{"bad limit id", limit("{id: L1, key: '\"a\"', window: 1m, max: 1}"), []string{`limit id "L1"`}},
		{"reserved limit id", limit("{id: etb.x, key: '\"a\"', window: 1m, max: 1}"), []string{"reserved"}},
		{"limit id of a rule", limit("{id: r1, key: '\"a\"', window: 1m, max: 1}"), []string{`limit id "r1" is already`}},
		{"duplicate limit id", limit("{id: l1, key: '\"a\"', window: 1m, max: 1}\n- {id: l1, key: '\"a\"', window: 1m, max: 1}"), []string{`limit id "l1" is already`}},
		{"no key", limit("{id: l1, window: 1m, max: 1}"), []string{`limit "l1"`, "key is empty"}},
		{"key not a string", limit("{id: l1, key: 'principal.uid', window: 1m, max: 1}"), []string{`limit "l1": key`, "has type int, want string"}},
		{"key does not compile", limit("{id: l1, key: 'principal.', window: 1m, max: 1}"), []string{`limit "l1": key`, "Syntax error"}},
		{"cost not a number", limit("{id: l1, key: '\"a\"', cost: '\"1\"', window: 1m, max: 1}"), []string{`limit "l1": cost`, "want int or uint or double"}},
		{"cost bool", limit("{id: l1, key: '\"a\"', cost: 'true', window: 1m, max: 1}"), []string{`limit "l1": cost`}},
		{"when not bool", limit("{id: l1, key: '\"a\"', when: '1', window: 1m, max: 1}"), []string{`limit "l1": when`, "want bool"}},
		{"key over budget", limit("{id: l1, key: 'action.args.exists(a, action.args.exists(b, a + b == \"x\")) ? \"a\" : \"b\"', window: 1m, max: 1}"), []string{`limit "l1": key`, "budget"}},
		{"cost over budget", limit("{id: l1, key: '\"a\"', cost: 'action.args.map(a, action.args.filter(b, a + b == \"x\").size()).size()', window: 1m, max: 1}"), []string{`limit "l1": cost`, "budget"}},
		{"no window", limit("{id: l1, key: '\"a\"', max: 1}"), []string{`limit "l1"`, "window is 0s"}},
		{"negative window", limit("{id: l1, key: '\"a\"', window: -1m, max: 1}"), []string{"negative"}},
		{"no max", limit("{id: l1, key: '\"a\"', window: 1m}"), []string{`limit "l1"`, "max is 0"}},
		{"negative max", limit("{id: l1, key: '\"a\"', window: 1m, max: -5}"), []string{"max is -5"}},
		{"infinite max", limit("{id: l1, key: '\"a\"', window: 1m, max: .inf}"), []string{"max is +Inf"}},
		{"max not a number", limit("{id: l1, key: '\"a\"', window: 1m, max: lots}"), []string{`limit "l1"`}},
		{"bad on_exceed", limit("{id: l1, key: '\"a\"', window: 1m, max: 1, on_exceed: warn}"), []string{`on_exceed is "warn"`}},
		{"bad expect key", header + "tests:\n- {name: x, expect: {decision: deny, labels: [a]}}\n", []string{`unknown key "labels"`}},
		{"recent too long in a test", header + "tests:\n- name: x\n  input: {action: {kind: a}, task: {recent: [" + strings.Repeat("{kind: a},", action.MaxRecent) + "{kind: a}]}}\n  expect: {decision: deny}\n", []string{`test "x"`, "17 entries"}},
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

// A rule over the recent window is cheap because the window is bounded,
// and the untracked program is used only when the input respects the
// bound the estimate assumed.
func TestRecentWindowCost(t *testing.T) {
	b := mustLoad(t, flowPolicy)
	for _, r := range b.rules {
		if r.id == "no-curl-after-read" && r.cost > 1000 {
			t.Errorf("%s: estimated cost %d; the window bound is not applied", r.id, r.cost)
		}
	}
	a := shellAction("curl", "/usr/bin/curl")
	a.Task.Recent = make([]action.Recent, action.MaxRecent)
	if !withinBounds(a) {
		t.Fatal("a full window is out of bounds")
	}
	// Normalize refuses a longer window, so Evaluate denies it.
	over := *a
	over.Task.Recent = make([]action.Recent, action.MaxRecent+1)
	if d := b.Evaluate(context.Background(), &over); d.Decision != Deny || d.Rules[0] != RuleError || !strings.Contains(d.Messages[0], "17 entries") {
		t.Errorf("17-entry window: %s %v %q", d.Decision, d.Rules, d.Messages)
	}
	long := strings.Repeat("x", MaxStringSize+1)
	for name, mutate := range map[string]func(*action.Task){
		"window too long": func(tk *action.Task) { tk.Recent = make([]action.Recent, action.MaxRecent+1) },
		"long recent":     func(tk *action.Task) { tk.Recent = []action.Recent{{Host: long}} },
		"long usage key":  func(tk *action.Task) { tk.Usage = map[string]float64{long: 1} },
		"many usage keys": func(tk *action.Task) {
			tk.Usage = map[string]float64{}
			for i := range MaxListSize + 1 {
				tk.Usage[fmt.Sprint(i)] = 1
			}
		},
	} {
		c := *a
		mutate(&c.Task)
		if withinBounds(&c) {
			t.Errorf("%s: within bounds", name)
		}
	}
}

func TestMayPermit(t *testing.T) {
	b := mustLoad(t, header+`
rules:
- {id: p-ls, effect: permit, match: {kind: shell.exec, name: [ls, rm, cat]}}
- {id: f-rm, effect: forbid, match: {kind: shell.exec, name: rm}}
- {id: f-cat-root, effect: forbid, match: {name: cat}, when: 'principal.user == "root"'}
- {id: a-deploy, effect: require_approval, match: {kind: mcp.tool_call, name: deploy}}
- {id: p-any-http, effect: permit, match: {kind: http.request}}
- {id: f-http-evil, effect: forbid, match: {name: evil}}
- {id: f-all-x, effect: forbid, match: {kind: x.op}}
`)
	for _, tc := range []struct {
		kind, name string
		want       bool
	}{
		{action.KindShellExec, "ls", true},
		{action.KindShellExec, "rm", false},     // unconditional forbid
		{action.KindShellExec, "cat", true},     // the forbid has a when
		{action.KindShellExec, "python", false}, // no permit selects it
		{action.KindMCPTool, "deploy", true},    // approval counts
		{action.KindMCPTool, "search", false},
		{action.KindHTTP, "GET", true},
		{action.KindHTTP, "evil", false}, // kind-less forbid
		{"x.op", "anything", false},
	} {
		if got := b.MayPermit(tc.kind, tc.name); got != tc.want {
			t.Errorf("MayPermit(%s, %s) = %v, want %v", tc.kind, tc.name, got, tc.want)
		}
	}
	if mustLoad(t, header).MayPermit(action.KindShellExec, "ls") {
		t.Error("an empty policy may permit")
	}
	// MayPermit false implies every input of that kind and name is denied.
	for _, name := range []string{"rm", "python"} {
		if d := b.Evaluate(context.Background(), shellAction(name, "/usr/bin/"+name)); d.Decision != Deny {
			t.Errorf("%s: %s", name, d.Decision)
		}
	}
}

func TestFlowHash(t *testing.T) {
	const base = header + `
rules:
- {id: r1, effect: permit, labels: [b, a]}
limits:
- {id: l1, key: 'principal.id', window: 1m, max: 3}
`
	same := map[string]string{
		"label order":      strings.Replace(base, "[b, a]", "[a, b]", 1),
		"explicit default": strings.Replace(base, "max: 3}", "max: 3, cost: '1', on_exceed: deny}", 1),
		"window spelling":  strings.Replace(base, "window: 1m", "window: 60s", 1),
		"max spelling":     strings.Replace(base, "max: 3", "max: 3.0", 1),
	}
	different := map[string]string{
		"labels":    strings.Replace(base, "[b, a]", "[a, c]", 1),
		"no labels": strings.Replace(base, ", labels: [b, a]", "", 1),
		"key":       strings.Replace(base, "principal.id", "principal.user", 1),
		"window":    strings.Replace(base, "1m", "2m", 1),
		"max":       strings.Replace(base, "max: 3", "max: 4", 1),
		"cost":      strings.Replace(base, "max: 3}", "max: 3, cost: '2'}", 1),
		"on_exceed": strings.Replace(base, "max: 3}", "max: 3, on_exceed: require_approval}", 1),
		"when":      strings.Replace(base, "max: 3}", "max: 3, when: 'true'}", 1),
		"match":     strings.Replace(base, "max: 3}", "max: 3, match: {kind: a}}", 1),
		"message":   strings.Replace(base, "max: 3}", "max: 3, message: m}", 1),
		"no limits": strings.Replace(base, "limits:\n- {id: l1, key: 'principal.id', window: 1m, max: 3}\n", "", 1),
	}
	want := mustLoad(t, base).Hash()
	for name, src := range same {
		if got := mustLoad(t, src).Hash(); got != want {
			t.Errorf("%s changed the hash", name)
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
	// A policy without labels or limits hashes as before they existed.
	plain := header + "rules:\n- {id: r1, effect: permit}\n"
	c := canonPolicy{Version: Version, Name: "t", Rules: []canonRule{{ID: "r1", Effect: Permit, Kind: []string{}, Name: []string{}}}}
	raw, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "limits") || strings.Contains(string(raw), "labels") {
		t.Fatalf("canonical form of a plain policy mentions limits or labels: %s", raw)
	}
	if h, _ := action.CanonicalHash(c); h != mustLoad(t, plain).Hash() {
		t.Fatalf("plain policy hash %s, want %s", mustLoad(t, plain).Hash(), h)
	}
}

func TestFlowSelfTests(t *testing.T) {
	src := flowPolicy + `
tests:
- name: secret then egress
  input:
    action: {kind: http.request, name: POST, target: {host: evil.example}}
    task: {labels: [secret_read]}
  expect: {decision: deny, rules: [no-egress-after-secret]}
- name: read adds labels
  input: {action: {kind: fs.read, name: read, target: {paths: [/etc/secrets/k]}}}
  expect: {decision: permit, labels_to_add: [secret_read, fs_read, audit:secrets]}
- name: window
  input:
    action: {kind: shell.exec, name: curl}
    task: {recent: [{kind: fs.read, name: read, decision: permit}]}
  expect: {decision: deny, rules: [no-curl-after-read]}
- name: rate limit
  input:
    principal: {id: spiffe://etb.local/agent/a}
    action: {kind: shell.exec, name: ls}
    task: {usage: {"shell-per-agent/spiffe://etb.local/agent/a": 3}}
  expect: {decision: deny, rules: [shell-per-agent]}
- name: wrong labels expectation
  input: {action: {kind: fs.read, name: read}}
  expect: {decision: permit, labels_to_add: [secret_read]}
`
	b := mustLoad(t, src)
	res := b.RunTests(context.Background())
	if len(res) != 5 {
		t.Fatalf("%d results", len(res))
	}
	for _, r := range res[:4] {
		if !r.Pass {
			t.Errorf("%s: %s", r.Name, r.Detail)
		}
	}
	if res[4].Pass || !strings.Contains(res[4].Detail, "labels_to_add are [fs_read], want [secret_read]") {
		t.Errorf("wrong expectation passed or was badly reported: %+v", res[4])
	}
}

func TestReservationsJSON(t *testing.T) {
	b := mustLoad(t, flowPolicy)
	for _, tc := range []struct {
		in   *action.Action
		want string
	}{
		{shellBy("ls", agent), `"reservations":[{"slot":"shell-per-agent/` + agent + `","limit":"shell-per-agent","key":"` + agent + `","cost":1}]`},
		{fsRead("/a"), ""},
	} {
		d := b.Evaluate(context.Background(), tc.in)
		raw, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		if tc.want == "" && strings.Contains(string(raw), "reservations") || tc.want != "" && !strings.Contains(string(raw), tc.want) {
			t.Errorf("%s", raw)
		}
		var back Decision
		if err := json.Unmarshal(raw, &back); err != nil || !back.SameOutcome(d) {
			t.Errorf("JSON round trip changed the outcome: %v %+v", err, back)
		}
	}
}

// The commented flow and limit examples in the default policy load and do
// what its comments say.
func TestDefaultPolicyFlowExamples(t *testing.T) {
	lines := strings.Split(string(DefaultPolicy), "\n")
	block := func(from, to, prefix string) string {
		var out []string
		in := false
		for _, l := range lines {
			if strings.Contains(l, from) {
				in = true
			}
			if in {
				if !strings.HasPrefix(l, prefix) {
					t.Fatalf("line %q in the example lacks %q", l, prefix)
				}
				out = append(out, "  "+strings.TrimPrefix(l, prefix))
			}
			if in && strings.Contains(l, to) {
				return strings.Join(out, "\n") + "\n"
			}
		}
		t.Fatalf("example %q..%q not found", from, to)
		return ""
	}
	src := header + "rules:\n" + block("- id: read-secrets", `r.decision == "deny"`, "  # ") +
		"  - {id: http, effect: permit, match: {kind: http.request}}\n  - {id: shell, effect: permit, match: {kind: shell.exec}}\n" +
		strings.TrimPrefix(block("# limits:", "message: at most 100", "# "), "  ")
	b := mustLoad(t, src)
	ctx := context.Background()
	read := shellAction("cat", "/usr/bin/cat", "/etc/secrets/token")
	read.Action.Target.Paths = []string{"/etc/secrets/token"}
	d := b.Evaluate(ctx, read)
	if d.Decision != Permit || !slices.Equal(d.LabelsToAdd, []string{"secret_read"}) || len(d.Reservations) != 1 {
		t.Fatalf("read: %+v", d)
	}
	out := httpReq("evil.example")
	out.Task.Labels = d.LabelsToAdd
	if d := b.Evaluate(ctx, out); d.Decision != Deny || d.Rules[0] != "no-egress-after-secret" {
		t.Fatalf("egress after the read: %s %v", d.Decision, d.Rules)
	}
	busy := shellAction("ls", "/usr/bin/ls")
	busy.Task.Usage = map[string]float64{"shell-per-agent/" + busy.Principal.ID: 100}
	if d := b.Evaluate(ctx, busy); d.Decision != Deny || d.Rules[0] != "shell-per-agent" {
		t.Fatalf("101st command: %s %v", d.Decision, d.Rules)
	}
}
