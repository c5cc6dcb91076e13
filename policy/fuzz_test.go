package policy

import (
	"context"
	"encoding/json"
	"slices"
	"testing"

	"github.com/etbproject/etb/action"
)

func validDecision(t *testing.T, d Decision) {
	t.Helper()
	if d.Decision != Permit && d.Decision != Deny && d.Decision != RequireApproval {
		t.Fatalf("decision %q", d.Decision)
	}
	if d.Rules == nil || d.Messages == nil || d.LabelsToAdd == nil || len(d.Rules) == 0 {
		t.Fatalf("nil or empty slices in %+v", d)
	}
	if !slices.IsSorted(d.Rules) {
		t.Fatalf("rules not sorted: %v", d.Rules)
	}
	if d.Decision != Permit && d.Decision != RequireApproval && d.Obligations != (action.Obligations{}) {
		t.Fatalf("%s carries obligations", d.Decision)
	}
}

// FuzzLoad: Load never panics; whatever loads reloads from Source to the
// same hash and evaluates to a valid decision.
func FuzzLoad(f *testing.F) {
	f.Add(DefaultPolicy)
	f.Add([]byte(combo))
	f.Add([]byte(header))
	f.Add([]byte(header + "rules:\n- {id: r1, effect: permit, when: 'action.args[0] == \"x\"'}\n"))
	f.Add([]byte(header + "rules:\n- &a {id: r1, effect: permit}\n- *a\n"))
	f.Add([]byte("version: [\n"))
	f.Add([]byte(header + "tests:\n- {name: x, input: {action: {kind: a}}, expect: {decision: deny}}\n"))
	f.Add([]byte(flowPolicy))
	f.Add([]byte(header + "rules:\n- {id: r, effect: permit, labels: [a]}\nlimits:\n- {id: l, key: 'principal.id', window: 1s, max: 1, cost: '2'}\n"))
	f.Fuzz(func(t *testing.T, src []byte) {
		b, err := Load(src)
		if err != nil {
			return
		}
		again, err := Load(b.Source())
		if err != nil || again.Hash() != b.Hash() {
			t.Fatalf("reload: %v, hash %v vs %s", err, again, b.Hash())
		}
		validDecision(t, b.Evaluate(context.Background(), shellAction("echo", "/usr/bin/echo", "x")))
		if _, err := b.LimitSlots(context.Background(), shellAction("echo", "/usr/bin/echo", "x")); err != nil {
			if d := b.Evaluate(context.Background(), shellAction("echo", "/usr/bin/echo", "x")); d.Decision == Permit {
				t.Fatalf("LimitSlots failed (%v) but Evaluate permits", err)
			}
		}
		for _, r := range b.RunTests(context.Background()) {
			validDecision(t, r.Got)
		}
	})
}

// FuzzEvaluate: any action document evaluates under the default policy
// without panicking, to one of the three decisions, deterministically.
func FuzzEvaluate(f *testing.F) {
	b, err := Load(DefaultPolicy)
	if err != nil {
		f.Fatal(err)
	}
	for _, a := range []*action.Action{
		shellAction("echo", "/usr/bin/echo", "hello"),
		shellAction("rm", "/usr/bin/rm", "-rf", "/"),
		shellAction("sort", "/usr/bin/sort", "-o", "x"),
		shellAction("uniq", "/usr/bin/uniq", "a", "b"),
		shellAction("curl", "/usr/bin/curl"),
		{Action: action.Spec{Kind: action.KindMCPTool, Name: "x"}},
	} {
		raw, err := json.Marshal(a)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	f.Add([]byte(`{"action":{"kind":"shell.exec","name":"ls","target":{"program":"/bin/ls","port":9007199254740993}},"env":{"\u00e9":"x"}}`))
	f.Add([]byte(`{"v":"etb.action/v1","action":{"kind":"shell.exec"}}`))
	f.Add([]byte(`{"action":{"kind":"http.request","name":"GET","target":{"host":"x"}},"task":{"labels":["secret_read","a"],"recent":[{"kind":"fs.read","decision":"permit"}],"usage":{"l/k":1.5e300},"state_version":3}}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		a, err := action.Parse(raw)
		if err != nil {
			return
		}
		d := b.Evaluate(context.Background(), a)
		validDecision(t, d)
		if d.InputHash == "" {
			t.Fatalf("no input hash: %+v", d)
		}
		if d2 := b.Evaluate(context.Background(), a); !d.SameOutcome(d2) {
			t.Fatalf("not deterministic: %+v vs %+v", d, d2)
		}
		checkInputHash(t, a)
	})
}

// FuzzInputHash: the fast canonical encoder agrees with action.CanonicalHash.
func FuzzInputHash(f *testing.F) {
	f.Add("echo", "hello", "/usr/bin/echo", "HOME", "/root", int64(0), int64(1), 1.5)
	f.Add("é", "\x00\"\\", "\xff", "\u2028", "<&>", int64(1<<53), int64(-1<<53), 1e21)
	f.Add("a", "b", "c", "😀", "\uffff", int64(1<<62), int64(-3), 5e-324)
	f.Add("a", "b", "c", "d", "e", int64(7), int64(9), 0.1+0.2)
	f.Fuzz(func(t *testing.T, name, arg, program, key, val string, uid, step int64, used float64) {
		a := shellAction(name, program, arg, key)
		a.Env = map[string]string{key: val, val: key}
		a.Principal.UID, a.Task.Step, a.Action.Target.Port = uid, step, uid^step
		a.Task.Labels = []string{val, name}
		a.Task.Recent = []action.Recent{{Kind: name, Name: arg, Host: val, Decision: key}}
		a.Task.Usage = map[string]float64{key: used, val: used * 3}
		a.Task.StateVersion = step ^ uid
		if err := a.Normalize(); err != nil {
			return
		}
		checkInputHash(t, a)
	})
}
