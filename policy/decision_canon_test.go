package policy

import (
	"testing"
	"time"

	"github.com/etbproject/etb/action"
)

// The direct encoding of a decision is byte for byte the generic RFC 8785
// one, in every shape it accepts, and declines the others.
func TestDecisionAppendCanonicalMatchesJCS(t *testing.T) {
	base := Decision{Decision: Permit, Rules: []string{"a", "b"}, Messages: []string{"m1", ""}, LabelsToAdd: []string{},
		Obligations: action.Obligations{Timeout: action.Duration(5 * time.Minute)},
		Policy:      Ref{BundleHash: "sha256:00", Engine: "etb-cel/v1"}, InputHash: "sha256:11", StateVersion: 3, EvalNS: 4567}
	cases := map[string]func(d *Decision){
		"base":       func(d *Decision) {},
		"nil slices": func(d *Decision) { d.Rules, d.Messages, d.LabelsToAdd = nil, nil, nil },
		"labels":     func(d *Decision) { d.LabelsToAdd = []string{"secret_read", "x"} },
		"escapes":    func(d *Decision) { d.Messages = []string{"a \"quoted\" \\ line\nbreak\ttab\x01 <&> é \u2028"} },
		"every scalar obl": func(d *Decision) {
			d.Obligations = action.Obligations{CPUSeconds: 1, MemoryBytes: 2, MaxProcesses: 3, MaxFileBytes: 4, Cwd: "/w"}
		},
		"no obligations": func(d *Decision) { d.Obligations = action.Obligations{} },
		"reservations": func(d *Decision) {
			d.Reservations = []Reservation{{Slot: "l/k", Limit: "l", Key: "k", Cost: 1}, {Slot: "m/é", Limit: "m", Key: "é", Cost: 0.25}}
		},
		"big cost":         func(d *Decision) { d.Reservations = []Reservation{{Slot: "s", Cost: 1e21}} },
		"negative version": func(d *Decision) { d.StateVersion = -1 },
		"deny with no rule": func(d *Decision) {
			*d = Decision{Decision: Deny, Rules: []string{}, Messages: []string{}, LabelsToAdd: []string{}}
		},
	}
	for name, mod := range cases {
		d := base
		mod(&d)
		got, ok := d.AppendCanonical(nil)
		want, err := action.Canonical(d)
		if err != nil {
			t.Fatal(err)
		}
		if !ok || string(got) != string(want) {
			t.Errorf("%s: ok=%v\n got %s\nwant %s", name, ok, got, want)
		}
	}
	declined := map[string]func(d *Decision){
		"fs scope":    func(d *Decision) { d.Obligations.FS = &action.FSScope{Read: []string{"/"}} },
		"bad UTF-8":   func(d *Decision) { d.Messages = []string{"\xff"} },
		"huge eval":   func(d *Decision) { d.EvalNS = 1 << 60 },
		"huge memory": func(d *Decision) { d.Obligations.MemoryBytes = 1 << 60 },
	}
	for name, mod := range declined {
		d := base
		mod(&d)
		if _, ok := d.AppendCanonical(nil); ok {
			t.Errorf("%s: the direct path accepted what it cannot encode", name)
		}
	}
}
