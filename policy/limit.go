package policy

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"

	"github.com/etbproject/etb/action"
)

// Limits on the limits: section, enforced by Load.
const (
	// MaxLimits is the largest number of limits in one policy.
	MaxLimits = 1_000
	// MaxLimitKeyBytes is the longest key a limit's key expression may
	// produce; a longer one is an evaluation error (and a deny).
	MaxLimitKeyBytes = 1024
)

// Effects of a limit that is exceeded.
const (
	ExceedDeny            = Deny
	ExceedRequireApproval = RequireApproval
)

// LimitSlot is one counter an action is subject to: the limit, the key the
// limit's key expression gave for the action, and the cost the action would
// add. The host stores, per Slot, the costs reserved within the last Window
// and passes their sum in action.Task.Usage[Slot].
type LimitSlot struct {
	// Slot is Limit + "/" + Key. Limit ids hold no "/", so the split is
	// unambiguous.
	Slot   string
	Limit  string
	Key    string
	Window time.Duration
	Max    float64
	Cost   float64
}

// Reservation is the cost a permitted action reserves in one slot. The host
// records it with the decision and settles it with the actual cost.
type Reservation struct {
	Slot  string  `json:"slot"`
	Limit string  `json:"limit"`
	Key   string  `json:"key"`
	Cost  float64 `json:"cost"`
}

// limit is one compiled entry of the limits: section.
type limit struct {
	id       string
	message  string // as written, trimmed
	cited    string // message, or a generated one when it is empty
	kinds    []string
	names    []string
	when     expr // zero when there is no guard
	key      expr
	cost     expr // zero when the cost is the default, 1
	window   time.Duration
	max      float64
	onExceed string
}

// compileLimit validates ld and compiles its expressions, normalising ld
// in place for the bundle hash. Every error names the limit.
func compileLimit(env *cel.Env, ld *limitDoc, budget uint64) (*limit, error) {
	if !ruleIDPattern.MatchString(ld.ID) {
		return nil, fmt.Errorf("limit id %q must match %s", ld.ID, ruleIDPattern)
	}
	if strings.HasPrefix(ld.ID, "etb.") {
		return nil, fmt.Errorf("limit %q: ids starting with \"etb.\" are reserved", ld.ID)
	}
	ld.When, ld.Key, ld.Cost = strings.TrimSpace(ld.When), strings.TrimSpace(ld.Key), strings.TrimSpace(ld.Cost)
	ld.Message = strings.TrimSpace(ld.Message)
	if ld.OnExceed == "" {
		ld.OnExceed = ExceedDeny
	}
	if ld.Cost == "" {
		ld.Cost = "1"
	}
	l := &limit{id: ld.ID, message: ld.Message, window: ld.Window.D(), max: ld.Max, onExceed: ld.OnExceed}
	switch {
	case l.onExceed != ExceedDeny && l.onExceed != ExceedRequireApproval:
		return nil, fmt.Errorf("limit %q: on_exceed is %q, want %s or %s", ld.ID, l.onExceed, ExceedDeny, ExceedRequireApproval)
	case l.window <= 0:
		return nil, fmt.Errorf("limit %q: window is %s, want more than 0", ld.ID, l.window)
	case math.IsNaN(l.max) || math.IsInf(l.max, 0) || l.max <= 0:
		return nil, fmt.Errorf("limit %q: max is %v, want a finite number more than 0", ld.ID, l.max)
	case ld.Key == "":
		return nil, fmt.Errorf("limit %q: key is empty (use a constant such as '\"all\"' for one shared counter)", ld.ID)
	}
	l.cited = l.message
	if l.cited == "" {
		l.cited = fmt.Sprintf("limit %s: more than %g per %s", l.id, l.max, l.window)
	}
	var err error
	if l.kinds, err = uniqueSorted(ld.Match.Kind); err != nil {
		return nil, fmt.Errorf("limit %q: match.kind: %w", ld.ID, err)
	}
	if l.names, err = uniqueSorted(ld.Match.Name); err != nil {
		return nil, fmt.Errorf("limit %q: match.name: %w", ld.ID, err)
	}
	ld.Match.Kind, ld.Match.Name = l.kinds, l.names
	if l.when, err = compileExpr(env, ld.When, budget, types.BoolType); err != nil {
		return nil, fmt.Errorf("limit %q: when: %w", ld.ID, err)
	}
	if l.key, err = compileExpr(env, ld.Key, budget, types.StringType); err != nil {
		return nil, fmt.Errorf("limit %q: key: %w", ld.ID, err)
	}
	if l.cost, err = compileExpr(env, ld.Cost, budget, types.IntType, types.UintType, types.DoubleType); err != nil {
		return nil, fmt.Errorf("limit %q: cost: %w", ld.ID, err)
	}
	return l, nil
}

// selects reports whether l's match selector selects (kind, name).
func (l *limit) selects(kind, name string) bool {
	if len(l.kinds) > 0 {
		if _, ok := slices.BinarySearch(l.kinds, kind); !ok {
			return false
		}
	}
	if len(l.names) > 0 {
		if _, ok := slices.BinarySearch(l.names, name); !ok {
			return false
		}
	}
	return true
}

// slot evaluates l for a: ok is false when l does not apply (its selector or
// guard does not select the action). A key that is not valid UTF-8 or
// longer than MaxLimitKeyBytes, and a cost that is negative or not finite,
// are errors: the caller denies.
func (l *limit) slot(a activation, bounded bool) (s LimitSlot, ok bool, err error) {
	if !l.selects(a.a.Action.Kind, a.a.Action.Name) {
		return LimitSlot{}, false, nil
	}
	if l.when.prg != nil {
		out, err := l.when.eval(a, bounded)
		if err != nil {
			return LimitSlot{}, false, fmt.Errorf("limit %q: when: %w", l.id, err)
		}
		bv, isBool := out.(types.Bool)
		if !isBool {
			return LimitSlot{}, false, fmt.Errorf("limit %q: when evaluated to %s, not bool", l.id, out.Type())
		}
		if !bv {
			return LimitSlot{}, false, nil
		}
	}
	out, err := l.key.eval(a, bounded)
	if err != nil {
		return LimitSlot{}, false, fmt.Errorf("limit %q: key: %w", l.id, err)
	}
	key, isStr := out.(types.String)
	switch {
	case !isStr:
		return LimitSlot{}, false, fmt.Errorf("limit %q: key evaluated to %s, not string", l.id, out.Type())
	case len(key) > MaxLimitKeyBytes:
		return LimitSlot{}, false, fmt.Errorf("limit %q: key is %d bytes, more than %d", l.id, len(key), MaxLimitKeyBytes)
	case !utf8.ValidString(string(key)):
		return LimitSlot{}, false, fmt.Errorf("limit %q: key %q is not valid UTF-8", l.id, string(key))
	}
	c := 1.0
	if l.cost.prg != nil {
		out, err := l.cost.eval(a, bounded)
		if err != nil {
			return LimitSlot{}, false, fmt.Errorf("limit %q: cost: %w", l.id, err)
		}
		switch v := out.(type) {
		case types.Int:
			c = float64(v)
		case types.Uint:
			c = float64(v)
		case types.Double:
			c = float64(v)
		default:
			return LimitSlot{}, false, fmt.Errorf("limit %q: cost evaluated to %s, not a number", l.id, out.Type())
		}
	}
	if math.IsNaN(c) || math.IsInf(c, 0) || c < 0 {
		return LimitSlot{}, false, fmt.Errorf("limit %q: cost is %v, want a finite number not less than 0", l.id, c)
	}
	return LimitSlot{Slot: l.id + "/" + string(key), Limit: l.id, Key: string(key), Window: l.window, Max: l.max, Cost: c}, true, nil
}

// slots returns the slots of every limit that applies to a, in file order,
// or the first error.
func (b *Bundle) slots(a activation, bounded bool) ([]LimitSlot, []*limit, error) {
	var out []LimitSlot
	var ls []*limit
	for _, l := range b.limits {
		s, ok, err := l.slot(a, bounded)
		if err != nil {
			return nil, nil, err
		}
		if ok {
			out = append(out, s)
			ls = append(ls, l)
		}
	}
	return out, ls, nil
}

// LimitSlots returns the slots in is subject to under b's limits, in the
// order of the limits: section; none when b has no limit that applies. The
// host reads each slot's usage into in.Task.Usage before Evaluate. Evaluate
// computes the same slots from the same input, so the usage the host
// filled in is the usage the decision is judged by. An error (a failing
// key, cost or when expression, an input that does not normalise) means
// the action must be denied; Evaluate denies it too.
func (b *Bundle) LimitSlots(ctx context.Context, in *action.Action) ([]LimitSlot, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("policy: limit slots: %w", err)
	}
	if in == nil {
		return nil, errors.New("policy: limit slots: input action is nil")
	}
	if len(b.limits) == 0 {
		return nil, nil
	}
	a := *in
	if err := a.Normalize(); err != nil {
		return nil, fmt.Errorf("policy: limit slots: input: %w", err)
	}
	s, _, err := b.slots(activation{a: &a}, withinBounds(&a))
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return s, nil
}

// applyLimits narrows d, a permit or require_approval with obligations
// already set, by b's limits. A limit whose slot would exceed its maximum
// (usage + cost > max) turns d into a deny or (if none denies) into a
// require_approval citing the limit; a permit within every limit reserves
// each slot's cost. It never widens d.
func (b *Bundle) applyLimits(d Decision, a activation, bounded bool) Decision {
	slots, ls, err := b.slots(a, bounded)
	if err != nil {
		return errorDecision(d, []ruleError{{err: err}})
	}
	var deny, approve []citation
	for i, s := range slots {
		if a.a.Task.Usage[s.Slot]+s.Cost <= s.Max {
			continue
		}
		c := citation{id: ls[i].id, message: ls[i].cited}
		if ls[i].onExceed == ExceedDeny {
			deny = append(deny, c)
		} else {
			approve = append(approve, c)
		}
	}
	switch {
	case len(deny) > 0:
		d.Decision = Deny
		d.Rules, d.Messages = cite(deny)
		d.Obligations = action.Obligations{}
		d.LabelsToAdd = []string{}
		d.Reservations = nil
	case len(approve) > 0:
		if d.Decision == RequireApproval {
			// Keep the approval rules already cited.
			for i, id := range d.Rules {
				approve = append(approve, citation{id: id, message: d.Messages[i]})
			}
		}
		d.Decision = RequireApproval
		d.Rules, d.Messages = cite(approve)
		d.LabelsToAdd = []string{}
		d.Reservations = nil
	case d.Decision == Permit && len(slots) > 0:
		d.Reservations = make([]Reservation, len(slots))
		for i, s := range slots {
			d.Reservations[i] = Reservation{Slot: s.Slot, Limit: s.Limit, Key: s.Key, Cost: s.Cost}
		}
	}
	return d
}
