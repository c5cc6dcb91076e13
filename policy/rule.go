package policy

import (
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/cost"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
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
	labels      []string // sorted, unique; only on permit rules
	kinds       []string // sorted, unique; empty = any kind
	names       []string // sorted, unique; empty = any name
	when        string
	expr        // the compiled when expression; zero when there is none
}

// expr is one compiled CEL expression.
type expr struct {
	prg     cel.Program // nil when there is no expression; runtime cost limit on
	bounded cel.Program // the same expression without runtime cost tracking
	cost    uint64      // estimated worst-case cost
}

// labelPattern is the syntax of a task label.
var labelPattern = regexp.MustCompile(`^[a-z0-9_.:-]{1,64}$`)

// newEnv returns the CEL environment every expression is checked in:
// principal, action, task and env, with CEL field names equal to the JSON
// field names of package action. task.recent is a list of action.Recent
// (fields kind, name, host, decision), task.usage a map(string, double).
func newEnv() (*cel.Env, error) {
	return cel.NewEnv(
		ext.NativeTypes(
			reflect.TypeFor[action.Principal](),
			reflect.TypeFor[action.Spec](),
			reflect.TypeFor[action.Target](),
			reflect.TypeFor[action.Task](),
			reflect.TypeFor[action.Recent](),
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
	if len(rd.Labels) > 0 && r.effect != Permit {
		return nil, fmt.Errorf("rule %q: labels are allowed on permit rules only, not on %s", rd.ID, r.effect)
	}
	if r.labels, err = uniqueSorted(rd.Labels); err != nil {
		return nil, fmt.Errorf("rule %q: labels: %w", rd.ID, err)
	}
	for _, l := range r.labels {
		if !labelPattern.MatchString(l) {
			return nil, fmt.Errorf("rule %q: label %q must match %s", rd.ID, l, labelPattern)
		}
	}
	if r.expr, err = compileExpr(env, r.when, budget, types.BoolType); err != nil {
		return nil, fmt.Errorf("rule %q: when: %w", rd.ID, err)
	}
	return r, nil
}

// compileExpr type-checks src to one of the types want, bounds its
// estimated worst-case cost by budget and compiles it twice: with the
// runtime cost limit and without it (for inputs within bounds). An empty
// src gives the zero expr.
func compileExpr(env *cel.Env, src string, budget uint64, want ...*types.Type) (expr, error) {
	if src == "" {
		return expr{}, nil
	}
	if len(src) > MaxWhenBytes {
		return expr{}, fmt.Errorf("%d bytes, more than the limit of %d", len(src), MaxWhenBytes)
	}
	ast, iss := env.Compile(src)
	if iss.Err() != nil {
		return expr{}, iss.Err()
	}
	if !slices.ContainsFunc(want, ast.OutputType().IsExactType) {
		names := make([]string, len(want))
		for i, w := range want {
			names[i] = w.String()
		}
		return expr{}, fmt.Errorf("has type %s, want %s", ast.OutputType(), strings.Join(names, " or "))
	}
	est, err := env.EstimateCost(ast, sizeEstimator{})
	if err != nil {
		return expr{}, fmt.Errorf("estimating cost: %w", err)
	}
	if est.Max > budget {
		return expr{}, fmt.Errorf("has estimated worst-case cost %d, more than the budget of %d", est.Max, budget)
	}
	e := expr{cost: est.Max}
	if e.prg, err = env.Program(ast, cel.CostLimit(budget), cel.EvalOptions(cel.OptOptimize)); err != nil {
		return expr{}, err
	}
	// For an input within the size bounds the estimate assumed (see
	// withinBounds), est.Max ≤ budget is already a proof that evaluation
	// stays under budget, so the runtime cost tracker can be left out.
	if e.bounded, err = env.Program(ast, cel.EvalOptions(cel.OptOptimize)); err != nil {
		return expr{}, err
	}
	return e, nil
}

// eval evaluates e for a, choosing the untracked program when the input is
// within bounds. Any failure, including a panic inside CEL, is an error.
func (e *expr) eval(a activation, bounded bool) (out ref.Val, err error) {
	prg := e.prg
	if bounded && e.bounded != nil {
		prg = e.bounded
	}
	defer func() {
		if p := recover(); p != nil {
			out, err = nil, fmt.Errorf("panic: %v", p)
		}
	}()
	out, _, err = prg.Eval(a)
	return out, err
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
	path := n.Path()
	if len(path) == 0 {
		return nil
	}
	switch n.Type().Kind() {
	case types.ListKind:
		if len(path) == 2 && path[0] == "task" && path[1] == "recent" {
			// action.Normalize refuses a longer window.
			return &cost.SizeEstimate{Min: 0, Max: action.MaxRecent}
		}
		return &cost.SizeEstimate{Min: 0, Max: MaxListSize}
	case types.MapKind:
		return &cost.SizeEstimate{Min: 0, Max: MaxListSize}
	case types.StringKind, types.BytesKind:
		return &cost.SizeEstimate{Min: 0, Max: MaxStringSize}
	}
	return nil
}

func (sizeEstimator) EstimateCallCost(function, overloadID string, target *cost.AstNode, args []cost.AstNode) *cost.CallEstimate {
	return nil
}
