package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/etbproject/etb/action"
)

// Limits enforced by Load. They bound the work a policy file can cause.
const (
	// MaxSourceBytes is the largest policy file Load accepts.
	MaxSourceBytes = 4 << 20
	// MaxRules is the largest number of rules in one policy.
	MaxRules = 10_000
	// MaxWhenBytes is the longest when expression.
	MaxWhenBytes = 4 << 10
)

var ruleIDPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)

// file is the YAML form of a policy. Unknown keys are rejected by checkKeys
// before it is decoded.
type file struct {
	Version     string     `yaml:"version"`
	Name        string     `yaml:"name"`
	Description string     `yaml:"description"`
	Defaults    defaults   `yaml:"defaults"`
	Rules       []ruleDoc  `yaml:"rules"`
	Limits      []limitDoc `yaml:"limits"`
	Tests       []testDoc  `yaml:"tests"`
}

type defaults struct {
	Obligations action.Obligations `yaml:"obligations"`
}

type ruleDoc struct {
	ID          string             `yaml:"id"`
	Effect      string             `yaml:"effect"`
	Description string             `yaml:"description"`
	Match       matchDoc           `yaml:"match"`
	When        string             `yaml:"when"`
	Message     string             `yaml:"message"`
	Obligations action.Obligations `yaml:"obligations"`
	Labels      []string           `yaml:"labels"`
}

// limitDoc is one entry of the limits: section.
type limitDoc struct {
	ID          string          `yaml:"id"`
	Description string          `yaml:"description"`
	Match       matchDoc        `yaml:"match"`
	When        string          `yaml:"when"`
	Key         string          `yaml:"key"`
	Window      action.Duration `yaml:"window"`
	Max         float64         `yaml:"max"`
	Cost        string          `yaml:"cost"`
	OnExceed    string          `yaml:"on_exceed"`
	Message     string          `yaml:"message"`
}

type matchDoc struct {
	Kind stringList `yaml:"kind"`
	Name stringList `yaml:"name"`
}

type testDoc struct {
	Name   string    `yaml:"name"`
	Input  yaml.Node `yaml:"input"`
	Expect expectDoc `yaml:"expect"`
}

type expectDoc struct {
	Decision    string              `yaml:"decision"`
	Rules       *[]string           `yaml:"rules"`
	Obligations *action.Obligations `yaml:"obligations"`
	LabelsToAdd *[]string           `yaml:"labels_to_add"`
}

// stringList is a YAML string or list of strings.
type stringList []string

// UnmarshalYAML accepts a string scalar or a sequence of string scalars.
func (s *stringList) UnmarshalYAML(n *yaml.Node) error {
	scalar := func(n *yaml.Node) (string, error) {
		if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
			return "", fmt.Errorf("line %d: want a string, got %s", n.Line, n.Tag)
		}
		if n.Value == "" {
			return "", fmt.Errorf("line %d: empty string", n.Line)
		}
		return n.Value, nil
	}
	switch n.Kind {
	case yaml.ScalarNode:
		v, err := scalar(n)
		if err != nil {
			return err
		}
		*s = stringList{v}
	case yaml.SequenceNode:
		if len(n.Content) == 0 {
			// Leaving the key out means "any"; an empty list would read
			// as "none" but select everything. Refuse the ambiguity.
			return fmt.Errorf("line %d: empty list (leave the key out to match any)", n.Line)
		}
		out := make(stringList, 0, len(n.Content))
		for _, c := range n.Content {
			v, err := scalar(c)
			if err != nil {
				return err
			}
			out = append(out, v)
		}
		*s = out
	default:
		return fmt.Errorf("line %d: want a string or a list of strings", n.Line)
	}
	return nil
}

// selfTest is one parsed entry of the tests: section.
type selfTest struct {
	name   string
	input  action.Action
	expect expectDoc
}

// Keys allowed in each mapping of a policy file.
var (
	topKeys         = []string{"version", "name", "description", "defaults", "rules", "limits", "tests"}
	defaultsKeys    = []string{"obligations"}
	obligationsKeys = []string{"timeout", "cpu_seconds", "memory_bytes", "max_processes", "max_file_bytes", "fs", "net", "env", "cwd"}
	fsKeys          = []string{"read", "write", "exec"}
	netKeys         = []string{"allow"}
	ruleKeys        = []string{"id", "effect", "description", "match", "when", "message", "obligations", "labels"}
	limitKeys       = []string{"id", "description", "match", "when", "key", "window", "max", "cost", "on_exceed", "message"}
	matchKeys       = []string{"kind", "name"}
	testKeys        = []string{"name", "input", "expect"}
	expectKeys      = []string{"decision", "rules", "obligations", "labels_to_add"}
)

// Load parses, validates and compiles a policy file. It fails on anything it
// does not understand: unknown keys (the error names the key and the rule or
// test), duplicate rule ids, an unknown effect, a when expression that does
// not compile, does not type-check to bool or whose estimated cost exceeds
// CostBudget, labels on a rule that is not a permit or that are not
// lower-case [a-z0-9_.:-] of at most 64 bytes, a limit whose key is not a
// string expression, whose cost is not a number expression, whose window or
// max is not positive or whose on_exceed is unknown, an id used twice among
// rules and limits, and on size limits (MaxSourceBytes, MaxRules,
// MaxLimits, MaxWhenBytes).
// A policy with no rules is valid and denies everything.
func Load(src []byte) (*Bundle, error) { return load(src, CostBudget) }

// load is Load with a cost budget; tests use a small one to reach the
// run-time limit cheaply.
func load(src []byte, budget uint64) (*Bundle, error) {
	if len(src) > MaxSourceBytes {
		return nil, fmt.Errorf("policy: source is %d bytes, more than the limit of %d", len(src), MaxSourceBytes)
	}
	root, err := parseYAML(src)
	if err != nil {
		return nil, err
	}
	if err := checkFile(root); err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	var f file
	if err := root.Decode(&f); err != nil {
		return nil, fmt.Errorf("policy: decode: %w", err)
	}
	if f.Version != Version {
		return nil, fmt.Errorf("policy: version is %q, want %q", f.Version, Version)
	}
	if strings.TrimSpace(f.Name) == "" {
		return nil, errors.New("policy: name is empty")
	}
	if len(f.Rules) > MaxRules {
		return nil, fmt.Errorf("policy: %d rules, more than the limit of %d", len(f.Rules), MaxRules)
	}
	if len(f.Limits) > MaxLimits {
		return nil, fmt.Errorf("policy: %d limits, more than the limit of %d", len(f.Limits), MaxLimits)
	}
	env, err := newEnv()
	if err != nil {
		return nil, fmt.Errorf("policy: CEL environment: %w", err)
	}
	if err := f.Defaults.Obligations.Validate(); err != nil {
		return nil, fmt.Errorf("policy: defaults: %w", err)
	}
	f.Defaults.Obligations.Normalize()
	b := &Bundle{
		src:      slices.Clone(src),
		name:     f.Name,
		defaults: f.Defaults.Obligations,
		byKind:   map[string]*nameIndex{},
	}
	seen := map[string]bool{}
	for i := range f.Rules {
		rd := &f.Rules[i]
		r, err := compileRule(env, rd, budget)
		if err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
		if seen[r.id] {
			return nil, fmt.Errorf("policy: duplicate rule id %q", r.id)
		}
		seen[r.id] = true
		rd.Match.Kind, rd.Match.Name = r.kinds, r.names
		rd.When, rd.Message, rd.Labels = r.when, r.message, r.labels
		b.add(r)
	}
	for i := range f.Limits {
		ld := &f.Limits[i]
		l, err := compileLimit(env, ld, budget)
		if err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
		if seen[l.id] {
			return nil, fmt.Errorf("policy: limit id %q is already a rule or limit id", l.id)
		}
		seen[l.id] = true
		b.limits = append(b.limits, l)
	}
	if b.hash, err = hashFile(&f); err != nil {
		return nil, fmt.Errorf("policy: hash: %w", err)
	}
	if b.tests, err = parseTests(f.Tests); err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return b, nil
}

// parseYAML decodes exactly one YAML document into a node tree and rejects
// aliases (which would let a small file expand into a large one).
func parseYAML(src []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(src))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("policy: empty policy file")
		}
		return nil, fmt.Errorf("policy: YAML: %w", err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("policy: more than one YAML document")
	}
	if err := noAliases(&root); err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	if root.Kind != yaml.DocumentNode || len(root.Content) != 1 || root.Content[0].Kind != yaml.MappingNode {
		return nil, errors.New("policy: the document must be a mapping")
	}
	return root.Content[0], nil
}

func noAliases(n *yaml.Node) error {
	if n.Kind == yaml.AliasNode || n.Anchor != "" {
		return fmt.Errorf("line %d: YAML anchors and aliases are not allowed", n.Line)
	}
	for _, c := range n.Content {
		if err := noAliases(c); err != nil {
			return err
		}
	}
	return nil
}

// checkFile rejects unknown keys anywhere in the policy file, naming the
// rule or test they are in.
func checkFile(top *yaml.Node) error {
	if err := checkKeys(top, topKeys, "policy"); err != nil {
		return err
	}
	if d := mapValue(top, "defaults"); d != nil {
		if err := checkKeys(d, defaultsKeys, "defaults"); err != nil {
			return err
		}
		if o := mapValue(d, "obligations"); o != nil {
			if err := checkObligations(o, "defaults.obligations"); err != nil {
				return err
			}
		}
	}
	if rules := mapValue(top, "rules"); rules != nil {
		if rules.Kind != yaml.SequenceNode && !isNull(rules) {
			return fmt.Errorf("line %d: rules must be a list", rules.Line)
		}
		for i, r := range rules.Content {
			where := fmt.Sprintf("rules[%d]", i)
			if id := mapValue(r, "id"); id != nil && id.Kind == yaml.ScalarNode {
				where = fmt.Sprintf("rule %q", id.Value)
			}
			if err := checkKeys(r, ruleKeys, where); err != nil {
				return err
			}
			if err := checkMatch(r, where); err != nil {
				return err
			}
			if o := mapValue(r, "obligations"); o != nil {
				if err := checkObligations(o, where+" obligations"); err != nil {
					return err
				}
			}
			var rd ruleDoc // decoded here only to name the rule in type errors
			if err := r.Decode(&rd); err != nil {
				return fmt.Errorf("%s: %w", where, err)
			}
		}
	}
	if limits := mapValue(top, "limits"); limits != nil {
		if limits.Kind != yaml.SequenceNode && !isNull(limits) {
			return fmt.Errorf("line %d: limits must be a list", limits.Line)
		}
		for i, l := range limits.Content {
			where := fmt.Sprintf("limits[%d]", i)
			if id := mapValue(l, "id"); id != nil && id.Kind == yaml.ScalarNode {
				where = fmt.Sprintf("limit %q", id.Value)
			}
			if err := checkKeys(l, limitKeys, where); err != nil {
				return err
			}
			if err := checkMatch(l, where); err != nil {
				return err
			}
			var ld limitDoc
			if err := l.Decode(&ld); err != nil {
				return fmt.Errorf("%s: %w", where, err)
			}
		}
	}
	if tests := mapValue(top, "tests"); tests != nil {
		if tests.Kind != yaml.SequenceNode && !isNull(tests) {
			return fmt.Errorf("line %d: tests must be a list", tests.Line)
		}
		for i, t := range tests.Content {
			where := fmt.Sprintf("tests[%d]", i)
			if n := mapValue(t, "name"); n != nil && n.Kind == yaml.ScalarNode {
				where = fmt.Sprintf("test %q", n.Value)
			}
			if err := checkKeys(t, testKeys, where); err != nil {
				return err
			}
			if e := mapValue(t, "expect"); e != nil {
				if err := checkKeys(e, expectKeys, where+" expect"); err != nil {
					return err
				}
				if o := mapValue(e, "obligations"); o != nil {
					if err := checkObligations(o, where+" expect.obligations"); err != nil {
						return err
					}
				}
			}
		}
	}
	return nil
}

// checkMatch checks the match selector of a rule or limit, if any.
func checkMatch(n *yaml.Node, where string) error {
	m := mapValue(n, "match")
	if m == nil {
		return nil
	}
	if err := checkKeys(m, matchKeys, where+" match"); err != nil {
		return err
	}
	for _, k := range matchKeys {
		if v := mapValue(m, k); v != nil {
			var l stringList
			if err := l.UnmarshalYAML(v); err != nil {
				return fmt.Errorf("%s match.%s: %w", where, k, err)
			}
		}
	}
	return nil
}

// checkObligations rejects unknown keys in an obligations mapping and in
// its fs and net scopes.
func checkObligations(o *yaml.Node, where string) error {
	if err := checkKeys(o, obligationsKeys, where); err != nil {
		return err
	}
	if f := mapValue(o, "fs"); f != nil {
		if err := checkKeys(f, fsKeys, where+".fs"); err != nil {
			return err
		}
	}
	if n := mapValue(o, "net"); n != nil {
		if err := checkKeys(n, netKeys, where+".net"); err != nil {
			return err
		}
	}
	return nil
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

// checkKeys requires n to be a mapping (or null) whose keys are all in allowed.
func checkKeys(n *yaml.Node, allowed []string, where string) error {
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("%s: line %d: want a mapping", where, n.Line)
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if k.Kind != yaml.ScalarNode || !slices.Contains(allowed, k.Value) {
			return fmt.Errorf("%s: line %d: unknown key %q (allowed: %s)", where, k.Line, k.Value, strings.Join(allowed, ", "))
		}
	}
	return nil
}

// mapValue returns the value of key in mapping n, or nil.
func mapValue(n *yaml.Node, key string) *yaml.Node {
	if n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// parseTests decodes the tests: section. An input is a partial
// etb.action/v1 document, decoded strictly and normalised.
func parseTests(docs []testDoc) ([]selfTest, error) {
	out := make([]selfTest, 0, len(docs))
	names := map[string]bool{}
	for i, td := range docs {
		if td.Name == "" {
			return nil, fmt.Errorf("tests[%d]: name is empty", i)
		}
		if names[td.Name] {
			return nil, fmt.Errorf("duplicate test name %q", td.Name)
		}
		names[td.Name] = true
		switch td.Expect.Decision {
		case Permit, Deny, RequireApproval:
		default:
			return nil, fmt.Errorf("test %q: expect.decision is %q, want %s, %s or %s", td.Name, td.Expect.Decision, Permit, Deny, RequireApproval)
		}
		in, err := decodeInput(&td.Input)
		if err != nil {
			return nil, fmt.Errorf("test %q: input: %w", td.Name, err)
		}
		out = append(out, selfTest{name: td.Name, input: *in, expect: td.Expect})
	}
	return out, nil
}

// decodeInput converts a YAML node to JSON and decodes it as an action
// document, rejecting unknown fields.
func decodeInput(n *yaml.Node) (*action.Action, error) {
	var a action.Action
	if n.Kind == 0 || isNull(n) {
		return &a, a.Normalize()
	}
	var v any
	if err := n.Decode(&v); err != nil {
		return nil, err
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("not representable as JSON: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil {
		return nil, err
	}
	if err := a.Normalize(); err != nil {
		return nil, err
	}
	return &a, nil
}
