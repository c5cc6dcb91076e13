package policy

import (
	"fmt"
	"reflect"
	"slices"
	"strings"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/cost"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/ext"

	"github.com/etbproject/etb/action"
)

// Cost bounds. A when expression is rejected at load if its estimated
// worst-case cost exceeds CostBudget, assuming every list and map in the
// input holds at most MaxListSize elements and every string at most
// MaxStringSize bytes. At run time each expression is stopped (and the
// action denied) once its actual cost exceeds CostBudget, whatever the input
// sizes really are.
const (
	CostBudget    = 1_000_000
	MaxListSize   = 1024
	MaxStringSize = 4096
)

// rule is one compiled rule.
type rule struct {
	id          string
	effect      string
	message     string // as written, trimmed
	cited       string // message, or a generated one when it is empty
	obligations action.Obligations
	kinds       []string // sorted, unique; empty = any kind
	names       []string // sorted, unique; empty = any name
	when        string
	prg         cel.Program // nil when the rule has no when expression; runtime cost limit on
	bounded     cel.Program // the same expression without runtime cost tracking
	cost        uint64      // estimated worst-case cost of when
}

// newEnv returns the CEL environment every when expression is checked in:
// principal, action, task and env, with CEL field names equal to the JSON
// field names of package action.
func newEnv() (*cel.Env, error) {
	return cel.NewEnv(
		ext.NativeTypes(
			reflect.TypeFor[action.Principal](),
			reflect.TypeFor[action.Spec](),
			reflect.TypeFor[action.Target](),
			reflect.TypeFor[action.Task](),
			ext.ParseStructTag("json"),
		),
		cel.Variable("principal", cel.ObjectType("action.Principal")),
		cel.Variable("action", cel.ObjectType("action.Spec")),
		cel.Variable("task", cel.ObjectType("action.Task")),
		cel.Variable("env", cel.MapType(cel.StringType, cel.StringType)),
	)
}

// compileRule validates rd and compiles its when expression. Every error
// names the rule.
func compileRule(env *cel.Env, rd *ruleDoc, budget uint64) (*rule, error) {
	if !ruleIDPattern.MatchString(rd.ID) {
		return nil, fmt.Errorf("rule id %q must match %s", rd.ID, ruleIDPattern)
	}
	if strings.HasPrefix(rd.ID, "etb.") {
		return nil, fmt.Errorf("rule %q: ids starting with \"etb.\" are reserved", rd.ID)
	}
	switch rd.Effect {
	case Permit, Forbid, RequireApproval:
	default:
		return nil, fmt.Errorf("rule %q: effect is %q, want %s, %s or %s", rd.ID, rd.Effect, Permit, Forbid, RequireApproval)
	}
	r := &rule{
		id:          rd.ID,
		effect:      rd.Effect,
		message:     strings.TrimSpace(rd.Message),
		obligations: rd.Obligations,
		when:        strings.TrimSpace(rd.When),
	}
	if err := r.obligations.Validate(); err != nil {
		return nil, fmt.Errorf("rule %q: %w", rd.ID, err)
	}
	r.obligations.Normalize()
	r.cited = r.message
	if r.cited == "" {
		r.cited = fmt.Sprintf("rule %s: %s", r.id, r.effect)
	}
	var err error
	if r.kinds, err = uniqueSorted(rd.Match.Kind); err != nil {
		return nil, fmt.Errorf("rule %q: match.kind: %w", rd.ID, err)
	}
	if r.names, err = uniqueSorted(rd.Match.Name); err != nil {
		return nil, fmt.Errorf("rule %q: match.name: %w", rd.ID, err)
	}
	if r.when == "" {
		return r, nil
	}
	if len(r.when) > MaxWhenBytes {
		return nil, fmt.Errorf("rule %q: when is %d bytes, more than the limit of %d", rd.ID, len(r.when), MaxWhenBytes)
	}
	ast, iss := env.Compile(r.when)
	if iss.Err() != nil {
		return nil, fmt.Errorf("rule %q: when: %w", rd.ID, iss.Err())
	}
	if !ast.OutputType().IsExactType(types.BoolType) {
		return nil, fmt.Errorf("rule %q: when has type %s, want bool", rd.ID, ast.OutputType())
	}
	est, err := env.EstimateCost(ast, sizeEstimator{})
	if err != nil {
		return nil, fmt.Errorf("rule %q: when: estimating cost: %w", rd.ID, err)
	}
	if est.Max > budget {
		return nil, fmt.Errorf("rule %q: when has estimated worst-case cost %d, more than the budget of %d", rd.ID, est.Max, budget)
	}
	r.cost = est.Max
	r.prg, err = env.Program(ast, cel.CostLimit(budget), cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		return nil, fmt.Errorf("rule %q: when: %w", rd.ID, err)
	}
	// For an input within the size bounds the estimate assumed (see
	// withinBounds), est.Max ≤ budget is already a proof that evaluation
	// stays under budget, so the runtime cost tracker can be left out.
	r.bounded, err = env.Program(ast, cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		return nil, fmt.Errorf("rule %q: when: %w", rd.ID, err)
	}
	return r, nil
}

// uniqueSorted returns a sorted copy of l and fails on a duplicate.
func uniqueSorted(l []string) ([]string, error) {
	out := slices.Clone(l)
	slices.Sort(out)
	for i := 1; i < len(out); i++ {
		if out[i] == out[i-1] {
			return nil, fmt.Errorf("%q is listed twice", out[i])
		}
	}
	if out == nil {
		out = []string{}
	}
	return out, nil
}

// sizeEstimator bounds the size of every list, map and string reachable
// from the input variables.
type sizeEstimator struct{}

func (sizeEstimator) EstimateSize(n cost.AstNode) *cost.SizeEstimate {
	if len(n.Path()) == 0 {
		return nil
	}
	switch n.Type().Kind() {
	case types.ListKind, types.MapKind:
		return &cost.SizeEstimate{Min: 0, Max: MaxListSize}
	case types.StringKind, types.BytesKind:
		return &cost.SizeEstimate{Min: 0, Max: MaxStringSize}
	}
	return nil
}

func (sizeEstimator) EstimateCallCost(function, overloadID string, target *cost.AstNode, args []cost.AstNode) *cost.CallEstimate {
	return nil
}
