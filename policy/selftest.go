package policy

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// RunTests evaluates every entry of the policy's tests: section and
// compares the decision, and when given the rules and obligations, with
// what the entry expects. It does not stop at the first failure.
func (b *Bundle) RunTests(ctx context.Context) []TestResult {
	out := make([]TestResult, 0, len(b.tests))
	for _, t := range b.tests {
		in := t.input
		got := b.Evaluate(ctx, &in)
		res := TestResult{Name: t.name, Got: got, Want: t.expect.Decision}
		var diffs []string
		if got.Decision != t.expect.Decision {
			diffs = append(diffs, fmt.Sprintf("decision is %s, want %s (rules %v: %s)", got.Decision, t.expect.Decision, got.Rules, strings.Join(got.Messages, "; ")))
		}
		if t.expect.Rules != nil {
			want := slices.Clone(*t.expect.Rules)
			slices.Sort(want)
			if want == nil {
				want = []string{}
			}
			if !slices.Equal(got.Rules, want) {
				diffs = append(diffs, fmt.Sprintf("rules are %v, want %v", got.Rules, want))
			}
		}
		if t.expect.LabelsToAdd != nil {
			want := slices.Clone(*t.expect.LabelsToAdd)
			slices.Sort(want)
			want = slices.Compact(want)
			if want == nil {
				want = []string{}
			}
			if !slices.Equal(got.LabelsToAdd, want) {
				diffs = append(diffs, fmt.Sprintf("labels_to_add are %v, want %v", got.LabelsToAdd, want))
			}
		}
		if t.expect.Obligations != nil && !got.Obligations.Equal(*t.expect.Obligations) {
			diffs = append(diffs, fmt.Sprintf("obligations are {timeout: %s}, want {timeout: %s}", got.Obligations.Timeout.D(), t.expect.Obligations.Timeout.D()))
		}
		res.Pass = len(diffs) == 0
		res.Detail = strings.Join(diffs, "; ")
		out = append(out, res)
	}
	return out
}
