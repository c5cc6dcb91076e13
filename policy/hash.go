package policy

import "github.com/etbproject/etb/action"

// canonPolicy is what the bundle hash covers: everything that can change a
// decision (including messages) plus the descriptive fields, with match
// lists sorted and expressions and messages trimmed. The tests: section is
// not covered: it cannot change a decision.
type canonPolicy struct {
	Version     string             `json:"version"`
	Name        string             `json:"name"`
	Description string             `json:"description"`
	Defaults    action.Obligations `json:"defaults"`
	Rules       []canonRule        `json:"rules"`
}

type canonRule struct {
	ID          string             `json:"id"`
	Effect      string             `json:"effect"`
	Description string             `json:"description"`
	Kind        []string           `json:"kind"`
	Name        []string           `json:"name"`
	When        string             `json:"when"`
	Message     string             `json:"message"`
	Obligations action.Obligations `json:"obligations"`
}

// hashFile returns action.CanonicalHash of the canonical form of f. The
// rules of f must already be normalised by compileRule.
func hashFile(f *file) (string, error) {
	c := canonPolicy{
		Version:     f.Version,
		Name:        f.Name,
		Description: f.Description,
		Defaults:    f.Defaults.Obligations,
		Rules:       make([]canonRule, 0, len(f.Rules)),
	}
	for _, r := range f.Rules {
		c.Rules = append(c.Rules, canonRule{
			ID:          r.ID,
			Effect:      r.Effect,
			Description: r.Description,
			Kind:        r.Match.Kind,
			Name:        r.Match.Name,
			When:        r.When,
			Message:     r.Message,
			Obligations: r.Obligations,
		})
	}
	return action.CanonicalHash(c)
}
