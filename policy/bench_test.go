package policy

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/etbproject/etb/action"
)

func shellAction(name, program string, args ...string) *action.Action {
	return &action.Action{
		V:         action.Version,
		ID:        "act-1",
		Principal: action.Principal{ID: "spiffe://etb.local/user/1000", Attestation: "local-uid", UID: 1000, User: "dev"},
		Action:    action.Spec{Kind: action.KindShellExec, Name: name, Args: args, Target: action.Target{Program: program, Argv: append([]string{name}, args...), Cwd: "/home/dev"}},
		Task:      action.Task{ID: "task-1", RootID: "task-1", Step: 1},
		Env:       map[string]string{"HOME": "/home/dev"},
	}
}

func BenchmarkEvaluateDefault(b *testing.B) {
	bundle, err := Load(DefaultPolicy)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		in   *action.Action
		want string
	}{
		{"permit-echo", shellAction("echo", "/usr/bin/echo", "hello"), Permit},
		{"forbid-rm-rf", shellAction("rm", "/usr/bin/rm", "-rf", "/tmp/x"), Deny},
		{"default-deny", shellAction("python3", "/usr/bin/python3", "-c", "print(1)"), Deny},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if d := bundle.Evaluate(ctx, tc.in); d.Decision != tc.want {
					b.Fatalf("decision %s, want %s: %v", d.Decision, tc.want, d.Messages)
				}
			}
		})
	}
}

// thousandRules returns a policy of n rules spread over 10 kinds and n/4
// names, with a mix of effects, some without a name or kind selector.
func thousandRules(n int) []byte {
	var sb strings.Builder
	sb.WriteString("version: etb.policy/v1\nname: big\ndefaults: {obligations: {timeout: 5m}}\nrules:\n")
	for i := range n {
		kind := fmt.Sprintf("kind%d.op", i%10)
		if i%10 == 0 {
			kind = action.KindShellExec
		}
		fmt.Fprintf(&sb, "  - id: rule-%d\n    effect: %s\n", i, []string{Permit, Permit, Permit, Forbid}[i%4])
		switch {
		case i%97 == 0:
			fmt.Fprintf(&sb, "    match: {kind: %s}\n", kind) // no name
		default:
			fmt.Fprintf(&sb, "    match: {kind: %s, name: [cmd%d, cmd%d]}\n", kind, i%250, (i+1)%250)
		}
		fmt.Fprintf(&sb, "    when: 'action.args.size() < %d && principal.uid == 1000 && !action.args.exists(a, a == \"--danger%d\")'\n", 8+i%5, i)
	}
	return []byte(sb.String())
}

func BenchmarkEvaluate1000Rules(b *testing.B) {
	bundle, err := Load(thousandRules(1000))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	in := shellAction("cmd10", "/usr/bin/cmd10", "-v", "file")
	b.ReportAllocs()
	for b.Loop() {
		if d := bundle.Evaluate(ctx, in); d.Decision == "" {
			b.Fatal("empty decision")
		}
	}
}

func BenchmarkLoadDefault(b *testing.B) {
	for b.Loop() {
		if _, err := Load(DefaultPolicy); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEvaluateFlow: a permit under a window rule, a label rule and a
// limit, with a full recent window and usage.
func BenchmarkEvaluateFlow(b *testing.B) {
	bundle, err := Load([]byte(flowPolicy))
	if err != nil {
		b.Fatal(err)
	}
	in := shellAction("ls", "/usr/bin/ls", "-l")
	for range action.MaxRecent {
		in.Task.Recent = append(in.Task.Recent, action.Recent{Kind: action.KindShellExec, Name: "ls", Decision: Permit})
	}
	in.Task.Labels = []string{"fs_read", "secret_read"}
	in.Task.Usage = map[string]float64{"shell-per-agent/" + in.Principal.ID: 1}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if d := bundle.Evaluate(ctx, in); d.Decision != Permit || len(d.Reservations) != 1 {
			b.Fatalf("%+v", d)
		}
	}
}
