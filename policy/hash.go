package policy

import "github.com/etbproject/etb/action"

// canonPolicy is what the bundle hash covers: everything that can change a
// decision (including messages, labels and limits) plus the descriptive fields, with match
// lists sorted and expressions and messages trimmed. The tests: section is
// not covered: it cannot change a decision.
type canonPolicy struct {
	Version     string             `json:"version"`
	Name        string             `json:"name"`
	Description string             `json:"description"`
	Defaults    action.Obligations `json:"defaults"`
	Rules       []canonRule        `json:"rules"`
	// Limits is left out when empty, so that a policy without limits
	// keeps the hash it had before limits existed.
	Limits []canonLimit `json:"limits,omitempty"`
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
	Labels      []string           `json:"labels,omitempty"`
}

type canonLimit struct {
	ID          string          `json:"id"`
	Description string          `json:"description"`
	Kind        []string        `json:"kind"`
	Name        []string        `json:"name"`
	When        string          `json:"when"`
	Key         string          `json:"key"`
	Window      action.Duration `json:"window"`
	Max         float64         `json:"max"`
	Cost        string          `json:"cost"`
	OnExceed    string          `json:"on_exceed"`
	Message     string          `json:"message"`
}

// hashFile returns action.CanonicalHash of the canonical form of f. The
// rules and limits of f must already be normalised by compileRule and
// compileLimit.
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
			Labels:      r.Labels,
		})
	}
	for _, l := range f.Limits {
		c.Limits = append(c.Limits, canonLimit{
			ID:          l.ID,
			Description: l.Description,
			Kind:        l.Match.Kind,
			Name:        l.Match.Name,
			When:        l.When,
			Key:         l.Key,
			Window:      l.Window,
			Max:         l.Max,
			Cost:        l.Cost,
			OnExceed:    l.OnExceed,
			Message:     l.Message,
		})
	}
	return action.CanonicalHash(c)
}
