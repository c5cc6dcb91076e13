package lineage

import (
	"encoding/json"
	"github.com/etbproject/etb/action"
	"strings"
	"testing"
)

func buildChain(t *testing.T, n int) ([]*Event, [][]byte) {
	t.Helper()
	c := NewChain("exec1", "task1", "")
	types := []string{TypeIntent, TypeDecision, TypeGrant, TypeStart, TypeEnd}
	var evs []*Event
	var raw [][]byte
	for i := 0; i < n; i++ {
		e, b, err := c.Next(types[i%len(types)], "spiffe://etb.local/user/1", "2026-01-01T00:00:00Z", map[string]int{"i": i})
		if err != nil {
			t.Fatal(err)
		}
		evs, raw = append(evs, e), append(raw, b)
	}
	return evs, raw
}

func TestChainLinksAndParses(t *testing.T) {
	evs, raw := buildChain(t, 5)
	if err := VerifyChain(evs); err != nil {
		t.Fatal(err)
	}
	for i, b := range raw {
		e, err := Parse(b)
		if err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		if e.Seq != int64(i) || e.Type != evs[i].Type {
			t.Fatalf("entry %d parsed as %+v", i, e)
		}
	}
	if evs[0].Prev != "" || evs[1].Prev == "" {
		t.Fatal("first event must have no prev; later ones must")
	}
}

func TestVerifyChainRejectsTampering(t *testing.T) {
	cases := map[string]func([]*Event) []*Event{
		"dropped middle": func(e []*Event) []*Event { return append(e[:2:2], e[3:]...) },
		"dropped first":  func(e []*Event) []*Event { return e[1:] },
		"duplicated":     func(e []*Event) []*Event { return append(e[:3:3], e[2:]...) },
		"reordered":      func(e []*Event) []*Event { e[2], e[3] = e[3], e[2]; return e },
		"altered body": func(e []*Event) []*Event {
			c := *e[1]
			c.Body = json.RawMessage(`{"i":99}`)
			e[1] = &c
			return e
		},
		"other execution": func(e []*Event) []*Event { c := *e[4]; c.Execution = "exec2"; e[4] = &c; return e },
		"empty":           func(e []*Event) []*Event { return nil },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			evs, _ := buildChain(t, 5)
			if err := VerifyChain(mutate(evs)); err == nil {
				t.Fatal("tampered chain verified")
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	_, raw := buildChain(t, 1)
	good := string(raw[0])
	cases := map[string]string{
		"not canonical":  strings.Replace(good, `{"actor"`, `{ "actor"`, 1),
		"unknown field":  strings.Replace(good, `{"actor"`, `{"zzz":1,"actor"`, 1),
		"unknown type":   strings.Replace(good, `"type":"intent"`, `"type":"magic"`, 1),
		"wrong version":  strings.Replace(good, Version, "etb.event/v0", 1),
		"trailing":       good + "{}",
		"not json":       "intent",
		"oversize entry": `{"v":"` + strings.Repeat("x", MaxEventBytes) + `"}`,
	}
	for name, in := range cases {
		if _, err := Parse([]byte(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	c := NewChain("e", "t", "")
	if _, _, err := c.Next(TypeIntent, "a", "t", map[string]string{"big": strings.Repeat("x", MaxEventBytes)}); err == nil {
		t.Error("oversize event accepted")
	}
	if _, _, err := c.Next("bogus", "a", "t", nil); err == nil {
		t.Error("unknown type accepted")
	}
}

// The envelope fast path writes exactly what the general RFC 8785 path does.
func TestEnvelopeIsCanonical(t *testing.T) {
	odd := []string{"", "plain", "quote\" back\\slash", "ctl\x01\x1f\b\t\n\f\r", "é ü 日本 \u2028 \U0001F600", "<>&", "\x7f"}
	for i, s := range odd {
		c := NewChain(s, "task-"+s, s)
		for j := 0; j < 3; j++ {
			e, b, err := c.Next(TypeHeartbeat, s, s, map[string]any{"k": s, "n": j})
			if err != nil {
				t.Fatal(err)
			}
			want, err := e.Canonical()
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != string(want) {
				t.Fatalf("case %d: envelope\n%s\nJCS\n%s", i, b, want)
			}
			if _, err := Parse(b); err != nil {
				t.Fatalf("case %d: %v", i, err)
			}
		}
	}
	// Invalid UTF-8 takes the general path (which substitutes U+FFFD).
	c := NewChain("x", "t", "")
	e, b, err := c.Next(TypeHeartbeat, "bad\xff", "t", nil)
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := e.Canonical(); string(b) != string(want) {
		t.Fatalf("invalid UTF-8: %s vs %s", b, want)
	}
}

func TestIntentBodyFastPathIsCanonical(t *testing.T) {
	for _, a := range []action.Action{
		{V: action.Version, ID: "x", Action: action.Spec{Kind: "shell.exec", Name: "ls", Args: []string{"-l"}}, Env: map[string]string{"k": "v"}},
		{ID: "é non-ASCII takes the general path"},
	} {
		body := IntentBody{Action: a, ActionDigest: "sha256:00"}
		got, err := canonicalBody(body)
		if err != nil {
			t.Fatal(err)
		}
		want, err := action.Canonical(body)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Fatalf("fast\n%s\nJCS\n%s", got, want)
		}
	}
}

// The direct encoding of a grant body is the generic RFC 8785 one.
func TestGrantBodyAppendCanonicalMatchesJCS(t *testing.T) {
	for _, g := range []GrantBody{
		{JTI: "j", TokenSHA256: "sha256:00", ADG: "sha256:11", Pol: "sha256:22", Aud: "spiffe://etb.local/enforcer/x", Exp: 1700000000},
		{},
		{JTI: "é\"\\\n", Exp: -3},
	} {
		got, ok := g.AppendCanonical(nil)
		want, err := action.Canonical(g)
		if err != nil || !ok || string(got) != string(want) {
			t.Errorf("%+v: ok=%v %v\n got %s\nwant %s", g, ok, err, got, want)
		}
	}
	if _, ok := (GrantBody{Exp: 1 << 60}).AppendCanonical(nil); ok {
		t.Error("a number beyond 2^53 took the direct path")
	}
}
