// Package policy owns etb's governance policy (layer 2): the etb.policy/v1
// rule format, its strict loading (CEL compile, type check and cost bound),
// the bundle hash, and the deterministic, fail-closed evaluation of an
// etb.action/v1 into a Decision, including flow policies (the labels a
// permit adds to its task, rules over the task's labels and recent window)
// and limits (which slots an action counts against, whether it exceeds
// them, what a permit reserves).
//
// A Decision is a pure function of (bundle, input): task state and limit
// usage come only from the input's task, never from a store. Evaluation
// never reads the clock (except to fill EvalNS), the environment, the file
// system or the network, and never depends on map iteration order. The package must never
// return a permit it could not fully justify: every error, missing value,
// cost overrun or panic during evaluation is a deny, and no match is a deny.
// It must never mutate the caller's action.
package policy

import (
	"context"
	_ "embed"
	"slices"

	"github.com/etbproject/etb/action"
)

// Version is the value of the "version" key of every policy file.
const Version = "etb.policy/v1"

// Engine identifies the evaluation semantics; it goes in Decision.Policy.
// It changes whenever the same (bundle, input) could yield a different
// decision.
const Engine = "etb-cel/v1"

// Decisions and rule effects.
const (
	Permit          = "permit"
	Deny            = "deny"
	RequireApproval = "require_approval"
	// Forbid is the effect of a rule that denies; its decision is Deny.
	Forbid = "forbid"
)

// Reserved rule ids that appear in decisions but never in a policy file.
// Every id starting with "etb." is reserved.
const (
	// RuleError names a deny caused by an evaluation error: a rule that
	// failed, a malformed input, a cancelled context or a cost overrun.
	RuleError = "etb.error"
	// RuleDefaultDeny names a deny because no rule matched.
	RuleDefaultDeny = "etb.default-deny"
)

// DefaultPolicy is the policy `etb init` installs. Treat it as read-only.
//
//go:embed default.yaml
var DefaultPolicy []byte

// Ref names the policy and engine that produced a decision.
type Ref struct {
	BundleHash string `json:"bundle_hash"`
	Engine     string `json:"engine"`
}

// Decision is the outcome of evaluating one action. Its slices are never
// nil, so its JSON form has no nulls.
type Decision struct {
	// Decision is Permit, Deny or RequireApproval.
	Decision string `json:"decision"`
	// Rules are the ids of the rules that produced the decision, sorted.
	Rules []string `json:"rules"`
	// Messages are the messages of those rules, in the order of Rules.
	Messages    []string           `json:"messages"`
	Obligations action.Obligations `json:"obligations"`
	// LabelsToAdd is, for a permit, the sorted union of the labels of the
	// permit rules cited; the host adds them to the task when the action
	// ends successfully. Empty for any other decision.
	LabelsToAdd []string `json:"labels_to_add"`
	Policy      Ref      `json:"policy"`
	// InputHash is action.CanonicalHash of the normalised input; empty only
	// when the input could not be normalised or encoded (then the decision
	// is a deny).
	InputHash string `json:"input_hash"`
	// StateVersion is the input's task.state_version: the version of the
	// task state (labels, recent window, usage) the decision saw.
	StateVersion int64 `json:"state_version"`
	// Reservations are, for a permit, the cost the action reserves in each
	// limit slot it is subject to (see Bundle.LimitSlots), in the order of
	// the limits: section. Nil for any other decision and when no limit
	// applies; the only slice of a Decision that may be nil.
	Reservations []Reservation `json:"reservations,omitempty"`
	// EvalNS is how long evaluation took. It is the only field that is not
	// a function of (bundle, input).
	EvalNS int64 `json:"eval_ns"`
}

// SameOutcome reports whether d and o are equal in every field but EvalNS.
// The verifier uses it to check a recorded decision against a re-derived one.
func (d Decision) SameOutcome(o Decision) bool {
	return d.Decision == o.Decision &&
		slices.Equal(d.Rules, o.Rules) &&
		slices.Equal(d.Messages, o.Messages) &&
		d.Obligations.Equal(o.Obligations) &&
		slices.Equal(d.LabelsToAdd, o.LabelsToAdd) &&
		d.Policy == o.Policy &&
		d.InputHash == o.InputHash &&
		d.StateVersion == o.StateVersion &&
		slices.Equal(d.Reservations, o.Reservations)
}

// Trace tells what one rule did during an evaluation (see Bundle.Explain).
type Trace struct {
	RuleID string `json:"rule_id"`
	Effect string `json:"effect"`
	// Candidate is true when the rule's match selector selected the action,
	// so its when expression was evaluated.
	Candidate bool `json:"candidate"`
	// Matched is true when the rule was a candidate and its when expression
	// (if any) evaluated to true.
	Matched bool `json:"matched"`
	// Error is why evaluating the rule failed; a failed rule denies.
	Error string `json:"error,omitempty"`
}

// TestResult is the outcome of one entry of a policy's tests: section.
type TestResult struct {
	Name string   `json:"name"`
	Pass bool     `json:"pass"`
	Got  Decision `json:"got"`
	// Want is the expected decision.
	Want string `json:"want"`
	// Detail says what differed; empty when Pass.
	Detail string `json:"detail,omitempty"`
}

// Bundle is a loaded, compiled policy. It is immutable and safe for
// concurrent use.
type Bundle struct {
	src      []byte
	hash     string
	name     string
	defaults action.Obligations
	rules    []*rule
	limits   []*limit
	byKind   map[string]*nameIndex
	anyKind  nameIndex
	tests    []selfTest
}

// Hash returns the bundle hash, "sha256:" followed by lower-case hex: the
// SHA-256 of the RFC 8785 canonical JSON of the parsed policy (see
// docs/POLICY.md). Comments, whitespace, YAML key order and the tests:
// section do not change it.
func (b *Bundle) Hash() string { return b.hash }

// Source returns a copy of the bytes the bundle was loaded from.
func (b *Bundle) Source() []byte { return slices.Clone(b.src) }

// Name returns the policy's name.
func (b *Bundle) Name() string { return b.name }

// Evaluate decides whether in may run. It never fails: any error is a deny
// naming RuleError. It does not modify in.
func (b *Bundle) Evaluate(ctx context.Context, in *action.Action) Decision {
	d, _ := b.eval(ctx, in, false)
	return d
}

// Explain is Evaluate plus one Trace per rule of the policy, in file order.
func (b *Bundle) Explain(ctx context.Context, in *action.Action) (Decision, []Trace) {
	return b.eval(ctx, in, true)
}

// MayPermit reports whether some input of the given kind and name could be
// permitted (or sent for approval) by b, judging by match selectors alone.
// It is false only when no permit or require_approval rule selects (kind,
// name), or a forbid rule without a when expression does: then every such
// action is denied. A true answer promises nothing about a particular
// input. Hosts use it to hide tools a policy can never allow.
func (b *Bundle) MayPermit(kind, name string) bool {
	var buf [16]int
	may := false
	for _, i := range b.candidates(buf[:0], kind, name) {
		r := b.rules[i]
		switch {
		case r.effect == Forbid && r.prg == nil:
			return false
		case r.effect == Permit || r.effect == RequireApproval:
			may = true
		}
	}
	return may
}
