package policy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/interpreter"

	"github.com/etbproject/etb/action"
)

// nameIndex holds rule indexes (into Bundle.rules, ascending) for one kind,
// or for rules without a kind.
type nameIndex struct {
	byName map[string][]int // rules that list the action name
	any    []int            // rules without a name selector
}

// add places r in the index. Rules are added in file order, so every list
// stays ascending.
func (b *Bundle) add(r *rule) {
	i := len(b.rules)
	b.rules = append(b.rules, r)
	if len(r.kinds) == 0 {
		b.anyKind.put(i, r.names)
		return
	}
	for _, k := range r.kinds {
		ix := b.byKind[k]
		if ix == nil {
			ix = &nameIndex{}
			b.byKind[k] = ix
		}
		ix.put(i, r.names)
	}
}

func (ix *nameIndex) put(i int, names []string) {
	if len(names) == 0 {
		ix.any = append(ix.any, i)
		return
	}
	if ix.byName == nil {
		ix.byName = map[string][]int{}
	}
	for _, n := range names {
		ix.byName[n] = append(ix.byName[n], i)
	}
}

// candidates appends to dst the indexes of the rules whose match selector
// selects (kind, name), ascending and without duplicates: a rule sits in
// exactly one of the four lists consulted, and at most once in each.
func (b *Bundle) candidates(dst []int, kind, name string) []int {
	if ix := b.byKind[kind]; ix != nil {
		dst = append(dst, ix.byName[name]...)
		dst = append(dst, ix.any...)
	}
	dst = append(dst, b.anyKind.byName[name]...)
	dst = append(dst, b.anyKind.any...)
	slices.Sort(dst)
	return dst
}

// activation binds the CEL variables without allocating a map.
type activation struct{ a *action.Action }

func (v activation) ResolveName(name string) (any, bool) {
	switch name {
	case "principal":
		return &v.a.Principal, true
	case "action":
		return &v.a.Action, true
	case "task":
		return &v.a.Task, true
	case "env":
		return v.a.Env, true
	}
	return nil, false
}

func (v activation) Parent() interpreter.Activation { return nil }

// match reports whether r's when expression holds for a. Any failure,
// including a panic inside CEL, is an error.
func (r *rule) match(a activation, bounded bool) (bool, error) {
	if r.prg == nil {
		return true, nil
	}
	out, err := r.eval(a, bounded)
	if err != nil {
		return false, err
	}
	bv, isBool := out.(types.Bool)
	if !isBool {
		return false, fmt.Errorf("when evaluated to %s, not bool", out.Type())
	}
	return bool(bv), nil
}

// ruleError is one rule that failed to evaluate.
type ruleError struct {
	id  string
	err error
}

// eval implements Evaluate and Explain. The decision is a function of b and
// the normalised input only: candidates are visited in file order and the
// combination is order independent.
func (b *Bundle) eval(ctx context.Context, in *action.Action, trace bool) (d Decision, traces []Trace) {
	start := time.Now()
	d = Decision{
		Decision:    Deny,
		Rules:       []string{},
		Messages:    []string{},
		LabelsToAdd: []string{},
		Policy:      Ref{BundleHash: b.hash, Engine: Engine},
	}
	defer func() {
		if p := recover(); p != nil {
			d = errorDecision(d, []ruleError{{id: "", err: fmt.Errorf("panic: %v", p)}})
		}
		d.EvalNS = time.Since(start).Nanoseconds()
	}()
	if trace {
		traces = make([]Trace, len(b.rules))
		for i, r := range b.rules {
			traces[i] = Trace{RuleID: r.id, Effect: r.effect}
		}
	}
	if err := ctx.Err(); err != nil {
		return errorDecision(d, []ruleError{{err: fmt.Errorf("not evaluated: %w", err)}}), traces
	}
	if in == nil {
		return errorDecision(d, []ruleError{{err: errors.New("input action is nil")}}), traces
	}
	a := *in // Normalize replaces, never mutates, the slices and map it fills.
	if err := a.Normalize(); err != nil {
		return errorDecision(d, []ruleError{{err: fmt.Errorf("input: %w", err)}}), traces
	}
	h, err := inputHash(&a)
	if err != nil {
		return errorDecision(d, []ruleError{{err: fmt.Errorf("input: %w", err)}}), traces
	}
	d.InputHash = h
	d.StateVersion = a.Task.StateVersion

	var buf [16]int
	cands := b.candidates(buf[:0], a.Action.Kind, a.Action.Name)
	act := activation{a: &a}
	bounded := withinBounds(&a)
	var failed []ruleError
	var forbids, approvals, permits []int
	for _, i := range cands {
		r := b.rules[i]
		if err := ctx.Err(); err != nil {
			err = fmt.Errorf("not evaluated: %w", err)
			failed = append(failed, ruleError{id: r.id, err: err})
			if trace {
				traces[i].Candidate, traces[i].Error = true, err.Error()
			}
			continue
		}
		ok, err := r.match(act, bounded)
		if trace {
			traces[i].Candidate, traces[i].Matched = true, ok
			if err != nil {
				traces[i].Error = err.Error()
			}
		}
		switch {
		case err != nil:
			failed = append(failed, ruleError{id: r.id, err: err})
		case !ok:
		case r.effect == Forbid:
			forbids = append(forbids, i)
		case r.effect == RequireApproval:
			approvals = append(approvals, i)
		default:
			permits = append(permits, i)
		}
	}
	switch {
	case len(failed) > 0:
		return errorDecision(d, failed), traces
	case len(forbids) > 0:
		d.Decision = Deny
		b.cite(&d, forbids)
	case len(approvals) > 0:
		o, err := b.tighten(approvals, permits)
		if err != nil {
			return errorDecision(d, []ruleError{{err: err}}), traces
		}
		d.Decision = RequireApproval
		b.cite(&d, approvals)
		d.Obligations = o
	case len(permits) > 0:
		o, err := b.tighten(permits)
		if err != nil {
			return errorDecision(d, []ruleError{{err: err}}), traces
		}
		d.Decision = Permit
		b.cite(&d, permits)
		d.Obligations = o
		d.LabelsToAdd = b.labels(permits)
	default:
		d.Decision = Deny
		d.Rules = append(d.Rules, RuleDefaultDeny)
		d.Messages = append(d.Messages, "no rule permits this action")
	}
	if len(b.limits) > 0 && d.Decision != Deny {
		d = b.applyLimits(d, act, bounded)
	}
	return d, traces
}

// citation is one rule or limit a decision cites.
type citation struct{ id, message string }

// cite returns the ids of cs sorted, and their messages in the same order.
func cite(cs []citation) (ids, messages []string) {
	slices.SortFunc(cs, func(x, y citation) int { return strings.Compare(x.id, y.id) })
	ids, messages = make([]string, len(cs)), make([]string, len(cs))
	for i, c := range cs {
		ids[i], messages[i] = c.id, c.message
	}
	return ids, messages
}

// cite sets the decision's rules (sorted by id) and their messages.
func (b *Bundle) cite(d *Decision, idx []int) {
	cs := make([]citation, len(idx))
	for j, i := range idx {
		cs[j] = citation{id: b.rules[i].id, message: b.rules[i].cited}
	}
	d.Rules, d.Messages = cite(cs)
}

// labels returns the sorted union of the labels of the rules in idx.
func (b *Bundle) labels(idx []int) []string {
	var out []string
	for _, i := range idx {
		out = append(out, b.rules[i].labels...)
	}
	if out == nil {
		return []string{}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// tighten returns the defaults tightened by the obligations of every rule
// in lists. Obligations that cannot be combined (two working directories)
// are an error, and the caller denies.
func (b *Bundle) tighten(lists ...[]int) (action.Obligations, error) {
	o := b.defaults
	for _, l := range lists {
		for _, i := range l {
			var err error
			if o, err = o.Tighten(b.rules[i].obligations); err != nil {
				return action.Obligations{}, fmt.Errorf("rule %s: %w", b.rules[i].id, err)
			}
		}
	}
	return o, nil
}

// errorDecision turns d into a deny naming RuleError, with one message per
// failure in evaluation order.
func errorDecision(d Decision, failed []ruleError) Decision {
	d.Decision = Deny
	d.Rules = []string{RuleError}
	d.Messages = make([]string, 0, len(failed))
	d.Obligations = action.Obligations{}
	d.LabelsToAdd = []string{}
	d.Reservations = nil
	for _, f := range failed {
		if f.id == "" {
			d.Messages = append(d.Messages, fmt.Sprintf("evaluation failed: %v", f.err))
			continue
		}
		d.Messages = append(d.Messages, fmt.Sprintf("rule %q failed: %v", f.id, f.err))
	}
	return d
}

// withinBounds reports whether every list, map and string of the input is
// within the sizes the load-time cost estimate assumed (MaxListSize
// elements, action.MaxRecent for task.recent, MaxStringSize bytes — a string's CEL size in code points is at
// most its length in bytes). For such an input a rule's estimated
// worst-case cost, already checked against the budget, bounds its real cost.
func withinBounds(a *action.Action) bool {
	strs := func(l ...string) bool {
		for _, s := range l {
			if len(s) > MaxStringSize {
				return false
			}
		}
		return true
	}
	list := func(l []string) bool { return len(l) <= MaxListSize && strs(l...) }
	p, s, t := &a.Principal, &a.Action, &a.Task
	if len(t.Recent) > action.MaxRecent || len(t.Usage) > MaxListSize {
		return false
	}
	for i := range t.Recent {
		if r := &t.Recent[i]; !strs(r.Kind, r.Name, r.Host, r.Decision) {
			return false
		}
	}
	for k := range t.Usage {
		if !strs(k) {
			return false
		}
	}
	if !strs(a.V, a.ID, a.Time, p.ID, p.Attestation, p.User, p.Exe, p.ExeSHA256, p.OnBehalfOf,
		s.Kind, s.Name, s.ArgsHash, s.Target.Program, s.Target.ProgramSHA256, s.Target.Cwd, s.Target.Host,
		t.ID, t.RootID, t.ParentID) {
		return false
	}
	if !list(s.Args) || !list(s.Target.Argv) || !list(s.Target.Paths) || !list(t.Labels) || len(a.Env) > MaxListSize {
		return false
	}
	for k, v := range a.Env {
		if !strs(k, v) {
			return false
		}
	}
	return true
}
