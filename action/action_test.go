package action

import (
	"strings"
	"testing"
)

func spec(args ...string) Spec {
	return Spec{Kind: KindShellExec, Name: "ls", Args: args,
		Target: Target{Program: "/usr/bin/ls", ProgramSHA256: "sha256:00", Argv: append([]string{"ls"}, args...), Cwd: "/tmp"}}
}

func TestDigestCoversEveryBoundField(t *testing.T) {
	base, err := spec("-l").Digest()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(base, "sha256:") || len(base) != 7+64 {
		t.Fatalf("digest %q is not sha256:<64 hex>", base)
	}
	changes := map[string]func(*Spec){
		"kind":           func(s *Spec) { s.Kind = KindMCPTool },
		"name":           func(s *Spec) { s.Name = "cat" },
		"args":           func(s *Spec) { s.Args = []string{"-la"} },
		"extra arg":      func(s *Spec) { s.Args = append(s.Args, "/") },
		"program":        func(s *Spec) { s.Target.Program = "/tmp/ls" },
		"program sha256": func(s *Spec) { s.Target.ProgramSHA256 = "sha256:01" },
		"argv":           func(s *Spec) { s.Target.Argv = []string{"ls", "-l", "x"} },
		"cwd":            func(s *Spec) { s.Target.Cwd = "/" },
		"host":           func(s *Spec) { s.Target.Host = "example.org" },
		"port":           func(s *Spec) { s.Target.Port = 443 },
	}
	for name, change := range changes {
		s := spec("-l")
		change(&s)
		d, err := s.Digest()
		if err != nil {
			t.Fatal(err)
		}
		if d == base {
			t.Errorf("changing %s does not change the digest", name)
		}
	}
	// ArgsHash is derived, not bound; nil and empty lists digest alike.
	s := spec("-l")
	s.ArgsHash = "anything"
	if d, _ := s.Digest(); d != base {
		t.Error("ArgsHash changes the digest")
	}
	a, _ := Spec{Kind: "k", Name: "n"}.Digest()
	b, _ := Spec{Kind: "k", Name: "n", Args: []string{}, Target: Target{Argv: []string{}, Paths: []string{}}}.Digest()
	if a != b {
		t.Error("nil and empty lists digest differently")
	}
	// Host is normalised to lower case.
	h1, h2 := spec(), spec()
	h1.Target.Host, h2.Target.Host = "Example.ORG", "example.org"
	if d1, _ := h1.Digest(); d1 != func() string { d, _ := h2.Digest(); return d }() {
		t.Error("host case changes the digest")
	}
}

func TestCanonicalIsRFC8785(t *testing.T) {
	got, err := Canonical(map[string]any{"b": 1, "a": []any{"x", 1.5, true}, "é": "\u2028"})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"a":["x",1.5,true],"b":1,"é":"` + "\u2028" + `"}`
	if string(got) != want {
		t.Fatalf("got %s want %s", got, want)
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name, in, err string
	}{
		{"minimal", `{"action":{"kind":"shell.exec","name":"ls"}}`, ""},
		{"unknown field", `{"action":{"kind":"shell.exec","nmae":"ls"}}`, "unknown field"},
		{"trailing", `{"action":{"kind":"shell.exec"}} {}`, "trailing"},
		{"wrong version", `{"v":"etb.action/v0","action":{"kind":"x"}}`, "version"},
		{"no kind", `{"action":{"name":"ls"}}`, "kind is empty"},
		{"not json", `kind: x`, "parse"},
		{"args not strings", `{"action":{"kind":"x","args":[1]}}`, "parse"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := Parse([]byte(tt.in))
			if tt.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				if a.V != Version || a.Action.Args == nil || a.Action.ArgsHash == "" || a.Env == nil || a.Task.Labels == nil {
					t.Fatalf("not normalised: %+v", a)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.err)
			}
		})
	}
}

func TestDuration(t *testing.T) {
	var o Obligations
	if err := o.Timeout.UnmarshalJSON([]byte(`"1m30s"`)); err != nil || o.Timeout.D().Seconds() != 90 {
		t.Fatalf("%v %v", err, o.Timeout.D())
	}
	for _, bad := range []string{`"-1s"`, `"soon"`, `90`} {
		var d Duration
		if err := d.UnmarshalJSON([]byte(bad)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	a := Obligations{Timeout: Duration(30e9)}
	if got := a.Tighten(Obligations{Timeout: Duration(10e9)}); got.Timeout != Duration(10e9) {
		t.Errorf("tighten kept %v", got.Timeout.D())
	}
	if got := a.Tighten(Obligations{}); got.Timeout != a.Timeout {
		t.Errorf("zero loosened to %v", got.Timeout.D())
	}
	if got := (Obligations{}).Tighten(a); got.Timeout != a.Timeout {
		t.Errorf("zero base ignored %v", got.Timeout.D())
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"action":{"kind":"shell.exec","name":"ls","args":["-l"],"target":{"program":"/usr/bin/ls"}}}`))
	f.Add([]byte(`{"v":"etb.action/v1","principal":{"uid":1},"task":{"labels":["a"]},"env":{"k":"v"},"action":{"kind":"x"}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := Parse(b)
		if err != nil {
			return
		}
		if _, err := a.Action.Digest(); err != nil {
			t.Fatalf("parsed action does not digest: %v", err)
		}
		if _, err := CanonicalHash(a); err != nil {
			t.Fatalf("parsed action does not canonicalise: %v", err)
		}
	})
}
