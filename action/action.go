// Package action defines etb.action/v1, the one document every governed
// action is described by, and its digest.
//
// The action is the vocabulary shared by every layer: policy evaluates it,
// a grant is bound to its digest, the enforcer recomputes that digest from
// what it is about to run, and the ledger records it. The package owns the
// canonical form (RFC 8785) and the digest; it must never fill the target from
// anything the agent supplied without normalising it (that is the adapter's
// job, see enforce.DescribeExec), and it must never read the clock.
package action

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gowebpki/jcs"
)

// Version is the value of the "v" field of every action document.
const Version = "etb.action/v1"

// Kinds of action. Rules match on these.
const (
	KindShellExec = "shell.exec"
	KindMCPTool   = "mcp.tool_call"
	KindHTTP      = "http.request"
)

// Action is one governed action, as evaluated by policy and recorded in the
// ledger. Time is supplied by the host and never read by rules.
type Action struct {
	V         string            `json:"v"`
	ID        string            `json:"id"`
	Time      string            `json:"time"`
	Principal Principal         `json:"principal"`
	Action    Spec              `json:"action"`
	Task      Task              `json:"task"`
	Env       map[string]string `json:"env"`
}

// Principal is who asks: a SPIFFE ID plus what was attested about the caller.
type Principal struct {
	// ID is the caller's SPIFFE ID, for example spiffe://etb.local/user/1000.
	ID string `json:"id"`
	// Attestation names how the identity was established: "local-uid" in
	// embedded mode, "x509-svid" or "unix-peercred" with a gateway.
	Attestation string `json:"attestation"`
	UID         int64  `json:"uid"`
	User        string `json:"user"`
	// Exe and ExeSHA256 measure the calling process (the agent).
	Exe        string `json:"exe"`
	ExeSHA256  string `json:"exe_sha256"`
	OnBehalfOf string `json:"on_behalf_of"`
}

// Spec is what is asked for. Kind, Name, Args and Target form the digest.
type Spec struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
	// Args are the raw arguments: for shell.exec the argv after the program.
	Args []string `json:"args"`
	// ArgsHash is the SHA-256 of the canonical args, for rules and logs that
	// must not see them.
	ArgsHash string `json:"args_hash"`
	// Target is the normalised target, filled by the adapter from what will
	// really run, never trusted from the agent.
	Target Target `json:"target"`
}

// Target is the normalised target of an action. Which fields are set depends
// on the kind.
type Target struct {
	// Program is the resolved absolute path of the executable (symlinks
	// followed) and ProgramSHA256 the digest of its contents.
	Program       string   `json:"program"`
	ProgramSHA256 string   `json:"program_sha256"`
	Argv          []string `json:"argv"`
	Cwd           string   `json:"cwd"`
	Paths         []string `json:"paths"`
	Host          string   `json:"host"`
	Port          int64    `json:"port"`
}

// MaxRecent is the most entries Task.Recent may hold. It bounds the work a
// rule over the window can do; Normalize refuses a longer window.
const MaxRecent = 16

// Task places the action in a task and gives rules the task's state. The
// gateway fills it from the task's stored state; it is part of the policy
// input (and so of the input hash) but not of the action digest.
type Task struct {
	ID       string `json:"id"`
	RootID   string `json:"root_id"`
	ParentID string `json:"parent_id"`
	Step     int64  `json:"step"`
	// Labels are the task's flow labels, sorted and deduplicated. They only
	// grow, and a child task starts with its parent's.
	Labels []string `json:"labels"`
	// Recent is the task's bounded window of most recent decided actions,
	// oldest first, at most MaxRecent entries.
	Recent []Recent `json:"recent"`
	// Usage maps a limit slot "LIMIT_ID/KEY" to the amount already used in
	// that limit's current window, for every limit slot this action is
	// subject to. A missing slot means nothing used.
	Usage map[string]float64 `json:"usage"`
	// StateVersion is the version of the task state this input was built
	// from (0 = fresh task).
	StateVersion int64 `json:"state_version"`
}

// Recent is one decided action in a task's recent window.
type Recent struct {
	Kind     string `json:"kind"`
	Name     string `json:"name"`
	Host     string `json:"host"`     // action.target.host ("" if none)
	Decision string `json:"decision"` // permit | deny | require_approval
}

// Canonical returns the RFC 8785 (JCS) form of v's JSON encoding.
func Canonical(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("action: encode: %w", err)
	}
	out, err := jcs.Transform(raw)
	if err != nil {
		return nil, fmt.Errorf("action: canonicalise: %w", err)
	}
	return out, nil
}

// SHA256 returns "sha256:" followed by the lower-case hex digest of b.
func SHA256(b []byte) string {
	sum := sha256.Sum256(b)
	var out [len("sha256:") + 2*sha256.Size]byte // one allocation: the string
	n := copy(out[:], "sha256:")
	hex.Encode(out[n:], sum[:])
	return string(out[:])
}

// CanonicalHash is SHA256 of Canonical(v).
func CanonicalHash(v any) (string, error) {
	c, err := Canonical(v)
	if err != nil {
		return "", err
	}
	return SHA256(c), nil
}

// digestInput is exactly what the action digest covers.
type digestInput struct {
	Kind   string   `json:"kind"`
	Name   string   `json:"name"`
	Args   []string `json:"args"`
	Target Target   `json:"target"`
}

// Digest is the action digest: SHA-256 over the canonical form of the
// spec's kind, name, args and target. ArgsHash is not covered (it is derived
// from Args). A grant's adg claim carries this value.
func (s Spec) Digest() (string, error) {
	in := digestInput{Kind: s.Kind, Name: s.Name, Args: nonNil(s.Args), Target: s.Target.normal()}
	if b, ok := in.appendCanonical(make([]byte, 0, 512)); ok {
		return SHA256(b), nil
	}
	return CanonicalHash(in)
}

// appendCanonical appends the RFC 8785 form of in, written directly (see
// AppendCanonical); false when a number is beyond 2^53 or a string is not
// UTF-8. TestDigestMatchesJCS checks it against the generic path.
func (in digestInput) appendCanonical(b []byte) ([]byte, bool) {
	ok, good := true, true
	str := func(key, v string) {
		b = append(b, key...)
		b, good = AppendString(b, v)
		ok = ok && good
	}
	list := func(key string, l []string) {
		b = append(b, key...)
		b, good = AppendStrings(b, l)
		ok = ok && good
	}
	t := in.Target
	list(`{"args":`, in.Args)
	str(`,"kind":`, in.Kind)
	str(`,"name":`, in.Name)
	list(`,"target":{"argv":`, t.Argv)
	str(`,"cwd":`, t.Cwd)
	str(`,"host":`, t.Host)
	list(`,"paths":`, t.Paths)
	b = append(b, `,"port":`...)
	b = strconv.AppendInt(b, t.Port, 10)
	ok = ok && t.Port > -maxExactInt && t.Port < maxExactInt
	str(`,"program":`, t.Program)
	str(`,"program_sha256":`, t.ProgramSHA256)
	return append(b, '}', '}'), ok
}

// HashArgs returns the canonical hash of args.
func HashArgs(args []string) (string, error) {
	if b, ok := AppendStrings(make([]byte, 0, 256), nonNil(args)); ok {
		return SHA256(b), nil
	}
	return CanonicalHash(nonNil(args))
}

// Normalize fills defaults so that the JSON form has no nulls where lists are
// expected: an absent list and an empty list must digest and evaluate alike.
// It sorts and deduplicates the task's labels, and refuses a task.recent
// longer than MaxRecent and a task.usage value that is negative or not
// finite. It replaces, never mutates, the slices and maps it changes.
func (a *Action) Normalize() error {
	if a.V == "" {
		a.V = Version
	}
	if a.V != Version {
		return fmt.Errorf("action: version %q is not %q", a.V, Version)
	}
	a.Action.Args = nonNil(a.Action.Args)
	a.Action.Target = a.Action.Target.normal()
	if err := a.Task.normalize(); err != nil {
		return err
	}
	if a.Env == nil {
		a.Env = map[string]string{}
	}
	h, err := HashArgs(a.Action.Args)
	if err != nil {
		return err
	}
	a.Action.ArgsHash = h
	return nil
}

// normalize sorts and deduplicates the labels (copying them first, so a
// caller's slice is never reordered), fills nil lists and maps with empty
// ones, and refuses a recent window longer than MaxRecent and a usage that
// is negative or not finite.
func (t *Task) normalize() error {
	switch {
	case t.Labels == nil:
		t.Labels = []string{}
	case !isSortedSet(t.Labels):
		l := slices.Clone(t.Labels)
		slices.Sort(l)
		t.Labels = slices.Compact(l)
	}
	if len(t.Recent) > MaxRecent {
		return fmt.Errorf("action: task.recent has %d entries, more than %d", len(t.Recent), MaxRecent)
	}
	if t.Recent == nil {
		t.Recent = []Recent{}
	}
	if t.Usage == nil {
		t.Usage = map[string]float64{}
	}
	var bad []string
	for slot, v := range t.Usage {
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
			bad = append(bad, slot)
		}
	}
	if len(bad) > 0 {
		slices.Sort(bad) // the error names the same slot whatever the map order
		return fmt.Errorf("action: task.usage[%q] = %v is not a finite non-negative number", bad[0], t.Usage[bad[0]])
	}
	return nil
}

// isSortedSet reports whether l is strictly increasing.
func isSortedSet(l []string) bool {
	for i := 1; i < len(l); i++ {
		if l[i-1] >= l[i] {
			return false
		}
	}
	return true
}

func (t Target) normal() Target {
	t.Argv = nonNil(t.Argv)
	t.Paths = nonNil(t.Paths)
	t.Host = strings.ToLower(t.Host)
	return t
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// Parse decodes an action document strictly: unknown fields are an error,
// and so is trailing data.
func Parse(b []byte) (*Action, error) {
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	var a Action
	if err := dec.Decode(&a); err != nil {
		return nil, fmt.Errorf("action: parse: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("action: parse: trailing data after the action document")
	}
	if err := a.Normalize(); err != nil {
		return nil, err
	}
	if a.Action.Kind == "" {
		return nil, fmt.Errorf("action: parse: action.kind is empty")
	}
	return &a, nil
}

// FormatTime is the one time format used in actions and events: RFC 3339
// with nanoseconds, UTC.
func FormatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
