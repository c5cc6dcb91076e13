// Command policybench compares etb's policy engine with Open Policy Agent on
// the same decisions: etb's default policy (policy.Load of
// policy.DefaultPolicy, Bundle.Evaluate) against an equivalent Rego policy
// (default.rego, a prepared query of OPA's rego package evaluated
// in-process), over the same etb.action/v1 inputs. It prints p50 and p99
// nanoseconds per decision for each engine and input, and the ratio.
//
//	go run ./cmd/policybench -n 20000
//
// Before timing anything it checks that both engines reach the same decision,
// rules and timeout on every input; a disagreement aborts the run.
//
// What each side does per decision differs, and the table says so: etb's
// Evaluate also normalises the input, computes its canonical SHA-256 input
// hash and fills the whole Decision; OPA evaluates the query on an input it
// converts from Go values (EvalInput), or, in the "parsed" row, on an input
// converted to an AST value beforehand (EvalParsedInput, OPA's fastest path).
package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/bench/internal/measure"
	"github.com/etbproject/etb/policy"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
)

//go:embed default.rego
var defaultRego string

// outcome is the comparable part of a decision.
type outcome struct {
	Decision string
	Rules    []string
	Timeout  time.Duration // zero unless permitted
}

func (o outcome) String() string {
	return fmt.Sprintf("%s %v timeout=%s", o.Decision, o.Rules, o.Timeout)
}

func (o outcome) equal(p outcome) bool {
	return o.Decision == p.Decision && slices.Equal(o.Rules, p.Rules) && o.Timeout == p.Timeout
}

// etbEngine is etb's default policy.
type etbEngine struct{ b *policy.Bundle }

func newEtb() (*etbEngine, error) {
	b, err := policy.Load(policy.DefaultPolicy)
	if err != nil {
		return nil, fmt.Errorf("load etb default policy: %w", err)
	}
	return &etbEngine{b: b}, nil
}

func (e *etbEngine) decide(ctx context.Context, in *action.Action) outcome {
	d := e.b.Evaluate(ctx, in)
	o := outcome{Decision: d.Decision, Rules: d.Rules}
	if d.Decision == policy.Permit {
		o.Timeout = time.Duration(d.Obligations.Timeout)
	}
	return o
}

// opaEngine is the Rego equivalent, prepared once.
type opaEngine struct{ pq rego.PreparedEvalQuery }

func newOPA(ctx context.Context) (*opaEngine, error) { return newOPAFrom(ctx, defaultRego) }

// newOPAFrom prepares the decision query of the Rego module src.
func newOPAFrom(ctx context.Context, src string) (*opaEngine, error) {
	pq, err := rego.New(
		rego.Query("data.etb.authz.decision"),
		rego.Module("default.rego", src),
	).PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("prepare rego query: %w", err)
	}
	return &opaEngine{pq: pq}, nil
}

// eval evaluates with a Go-value input (converted by OPA on each call).
func (e *opaEngine) eval(ctx context.Context, in any) (rego.ResultSet, error) {
	return e.pq.Eval(ctx, rego.EvalInput(in))
}

// evalParsed evaluates with an input already converted to an AST value.
func (e *opaEngine) evalParsed(ctx context.Context, in ast.Value) (rego.ResultSet, error) {
	return e.pq.Eval(ctx, rego.EvalParsedInput(in))
}

// outcomeOf extracts the decision object from a result set.
func outcomeOf(rs rego.ResultSet) (outcome, error) {
	if len(rs) != 1 || len(rs[0].Expressions) != 1 {
		return outcome{}, fmt.Errorf("rego result set %v: want exactly one value", rs)
	}
	m, ok := rs[0].Expressions[0].Value.(map[string]any)
	if !ok {
		return outcome{}, fmt.Errorf("rego decision %v is a %T, want an object", rs[0].Expressions[0].Value, rs[0].Expressions[0].Value)
	}
	var o outcome
	o.Decision, _ = m["decision"].(string)
	rules, _ := m["rules"].([]any)
	for _, r := range rules {
		s, ok := r.(string)
		if !ok {
			return outcome{}, fmt.Errorf("rego rule id %v is a %T", r, r)
		}
		o.Rules = append(o.Rules, s)
	}
	if t, ok := m["timeout_s"]; ok {
		n, ok := t.(json.Number)
		if !ok {
			return outcome{}, fmt.Errorf("rego timeout_s %v is a %T, want a number", t, t)
		}
		s, err := n.Int64()
		if err != nil {
			return outcome{}, fmt.Errorf("rego timeout_s %v: %w", n, err)
		}
		o.Timeout = time.Duration(s) * time.Second
	}
	if o.Decision == "" || len(o.Rules) == 0 {
		return outcome{}, fmt.Errorf("rego decision %v lacks decision or rules", m)
	}
	return o, nil
}

// input is one benchmark input in the forms each engine takes.
type input struct {
	name   string
	action *action.Action
	doc    map[string]any // the action's JSON document, for OPA
	parsed ast.Value      // doc as an OPA AST value
}

func newInput(name string, a *action.Action) (*input, error) {
	if err := a.Normalize(); err != nil {
		return nil, fmt.Errorf("input %s: %w", name, err)
	}
	raw, err := json.Marshal(a)
	if err != nil {
		return nil, fmt.Errorf("input %s: %w", name, err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("input %s: %w", name, err)
	}
	v, err := ast.InterfaceToValue(doc)
	if err != nil {
		return nil, fmt.Errorf("input %s: %w", name, err)
	}
	return &input{name: name, action: a, doc: doc, parsed: v}, nil
}

// shellAction is a complete shell.exec action as etb's gateway builds it.
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

// benchInputs are the inputs timed: one per kind of outcome.
func benchInputs() ([]*input, error) {
	var out []*input
	for _, c := range []struct {
		name string
		a    *action.Action
	}{
		{"permit echo", shellAction("echo", "/usr/bin/echo", "hello")},
		{"permit sort -r", shellAction("sort", "/usr/bin/sort", "-r", "data.txt")},
		{"forbid rm -rf", shellAction("rm", "/usr/bin/rm", "-rf", "/tmp/x")},
		{"forbid curl", shellAction("curl", "/usr/bin/curl", "https://example.com")},
		{"default deny python3", shellAction("python3", "/usr/bin/python3", "-c", "print(1)")},
	} {
		in, err := newInput(c.name, c.a)
		if err != nil {
			return nil, err
		}
		out = append(out, in)
	}
	return out, nil
}

// check reports the first input on which the engines disagree.
func check(ctx context.Context, e *etbEngine, o *opaEngine, ins []*input) error {
	for _, in := range ins {
		want := e.decide(ctx, in.action)
		for _, parsed := range []bool{false, true} {
			var rs rego.ResultSet
			var err error
			if parsed {
				rs, err = o.evalParsed(ctx, in.parsed)
			} else {
				rs, err = o.eval(ctx, in.doc)
			}
			if err != nil {
				return fmt.Errorf("input %q: rego eval: %w", in.name, err)
			}
			got, err := outcomeOf(rs)
			if err != nil {
				return fmt.Errorf("input %q: %w", in.name, err)
			}
			if !got.equal(want) {
				return fmt.Errorf("input %q: OPA decided %v, etb decided %v", in.name, got, want)
			}
		}
	}
	return nil
}

// timeEach runs f n times after n/10 warm-up runs and returns the histogram
// of the individual run times.
func timeEach(n int, f func() error) (*measure.Histogram, error) {
	for range n / 10 {
		if err := f(); err != nil {
			return nil, err
		}
	}
	h := measure.NewHistogram()
	for range n {
		t0 := time.Now()
		err := f()
		h.Record(time.Since(t0))
		if err != nil {
			return nil, err
		}
	}
	return h, nil
}

func main() {
	n := flag.Int("n", 20000, "timed evaluations per engine and input (after n/10 warm-up evaluations)")
	flag.Parse()
	if *n < 100 {
		fmt.Fprintln(os.Stderr, "policybench: -n must be at least 100")
		os.Exit(2)
	}
	if err := run(context.Background(), *n); err != nil {
		fmt.Fprintln(os.Stderr, "policybench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, n int) error {
	e, err := newEtb()
	if err != nil {
		return err
	}
	o, err := newOPA(ctx)
	if err != nil {
		return err
	}
	ins, err := benchInputs()
	if err != nil {
		return err
	}
	if err := check(ctx, e, o, ins); err != nil {
		return fmt.Errorf("engines disagree, nothing timed: %w", err)
	}
	fmt.Printf("policybench: etb %s (policy %s) vs OPA v1 rego (default.rego), %d evaluations each; GOMAXPROCS=%d, %s\n",
		policy.Engine, e.b.Hash()[:19], n, runtime.GOMAXPROCS(0), runtime.Version())
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "input\tdecision\tetb p50\tetb p99\tOPA p50\tOPA p99\tOPA/etb p50\tOPA/etb p99\tOPA parsed p50\tOPA parsed p99\tparsed/etb p50\t")
	for _, in := range ins {
		want := e.decide(ctx, in.action)
		he, err := timeEach(n, func() error {
			if d := e.b.Evaluate(ctx, in.action); d.Decision != want.Decision {
				return fmt.Errorf("etb decided %s, want %s", d.Decision, want.Decision)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("%s: %w", in.name, err)
		}
		ho, err := timeEach(n, func() error {
			rs, err := o.eval(ctx, in.doc)
			if err == nil && len(rs) != 1 {
				err = fmt.Errorf("%d results", len(rs))
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("%s: OPA: %w", in.name, err)
		}
		hp, err := timeEach(n, func() error {
			rs, err := o.evalParsed(ctx, in.parsed)
			if err == nil && len(rs) != 1 {
				err = fmt.Errorf("%d results", len(rs))
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("%s: OPA parsed: %w", in.name, err)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d ns\t%d ns\t%d ns\t%d ns\t%.1f×\t%.1f×\t%d ns\t%d ns\t%.1f×\t\n", in.name, want.Decision,
			he.Quantile(0.5), he.Quantile(0.99), ho.Quantile(0.5), ho.Quantile(0.99),
			float64(ho.Quantile(0.5))/float64(he.Quantile(0.5)),
			float64(ho.Quantile(0.99))/float64(he.Quantile(0.99)),
			hp.Quantile(0.5), hp.Quantile(0.99),
			float64(hp.Quantile(0.5))/float64(he.Quantile(0.5)))
	}
	tw.Flush()
	fmt.Println(strings.TrimSpace(`
etb's time includes normalising the input, its canonical SHA-256 input hash
and the full Decision; OPA's includes converting the Go input (not in the
"parsed" columns). Single goroutine, each evaluation timed individually.`))
	return nil
}
