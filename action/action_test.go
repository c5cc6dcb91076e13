package action

import (
	"math"
	"reflect"
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
	tight := func(x, y Obligations) Obligations {
		t.Helper()
		o, err := x.Tighten(y)
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	if got := tight(a, Obligations{Timeout: Duration(10e9)}); got.Timeout != Duration(10e9) {
		t.Errorf("tighten kept %v", got.Timeout.D())
	}
	if got := tight(a, Obligations{}); got.Timeout != a.Timeout {
		t.Errorf("zero loosened to %v", got.Timeout.D())
	}
	if got := tight(Obligations{}, a); got.Timeout != a.Timeout {
		t.Errorf("zero base ignored %v", got.Timeout.D())
	}
}

// Tighten never allows more than either side allows alone.
func TestTightenNeverWidens(t *testing.T) {
	tests := []struct {
		name string
		a, b Obligations
		want Obligations
	}{
		{"limits take the smaller", Obligations{CPUSeconds: 5, MemoryBytes: 100}, Obligations{CPUSeconds: 3, MaxProcesses: 7},
			Obligations{CPUSeconds: 3, MemoryBytes: 100, MaxProcesses: 7}},
		{"fs paths intersect by containment",
			Obligations{FS: &FSScope{Read: []string{"/usr", "/etc/hosts"}, Write: []string{"/tmp"}}},
			Obligations{FS: &FSScope{Read: []string{"/usr/lib", "/etc"}, Write: []string{"/var"}}},
			Obligations{FS: &FSScope{Read: []string{"/etc/hosts", "/usr/lib"}, Write: []string{}, Exec: []string{}}}},
		{"a list left out of a present scope allows nothing; write implies read",
			Obligations{FS: &FSScope{Read: []string{"/usr"}}}, Obligations{FS: &FSScope{Write: []string{"/tmp"}}},
			Obligations{FS: &FSScope{Read: []string{}, Write: []string{}, Exec: []string{}}}},
		{"write implies read on both sides",
			Obligations{FS: &FSScope{Write: []string{"/tmp"}}}, Obligations{FS: &FSScope{Read: []string{"/"}, Write: []string{"/tmp/a"}}},
			Obligations{FS: &FSScope{Read: []string{"/tmp"}, Write: []string{"/tmp/a"}, Exec: []string{}}}},
		{"fs unrestricted side is the identity",
			Obligations{FS: &FSScope{Read: []string{"/usr"}}}, Obligations{},
			Obligations{FS: &FSScope{Read: []string{"/usr"}}}},
		{"a prefix that is not a parent does not contain",
			Obligations{FS: &FSScope{Read: []string{"/usr"}}}, Obligations{FS: &FSScope{Read: []string{"/usrx"}}},
			Obligations{FS: &FSScope{Read: []string{}, Write: []string{}, Exec: []string{}}}},
		{"net allow-lists intersect; absent is unrestricted",
			Obligations{Net: &NetScope{Allow: []string{"a:1", "b:2"}}}, Obligations{Net: &NetScope{Allow: []string{"b:2", "c:3"}}},
			Obligations{Net: &NetScope{Allow: []string{"b:2"}}}},
		{"net none wins", Obligations{Net: &NetScope{}}, Obligations{Net: &NetScope{Allow: []string{"a:1"}}},
			Obligations{Net: &NetScope{Allow: []string{}}}},
		{"env intersects", Obligations{Env: &EnvScope{Allow: []string{"PATH", "HOME"}}}, Obligations{Env: &EnvScope{Allow: []string{"PATH"}}},
			Obligations{Env: &EnvScope{Allow: []string{"PATH"}}}},
		{"same cwd", Obligations{Cwd: "/w"}, Obligations{Cwd: "/w"}, Obligations{Cwd: "/w"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, order := range [][2]Obligations{{tt.a, tt.b}, {tt.b, tt.a}} {
				got, err := order[0].Tighten(order[1])
				if err != nil {
					t.Fatal(err)
				}
				if !got.Equal(tt.want) {
					g, _ := Canonical(got)
					w, _ := Canonical(tt.want)
					t.Fatalf("got %s want %s", g, w)
				}
			}
		})
	}
	if _, err := (Obligations{Cwd: "/a"}).Tighten(Obligations{Cwd: "/b"}); err == nil {
		t.Error("two working directories combined without error")
	}
	// Absent and empty stay distinct in the canonical form (absent is
	// unrestricted, empty allows nothing).
	if (Obligations{}).Equal(Obligations{Net: &NetScope{}}) || (Obligations{FS: &FSScope{}}).Equal(Obligations{FS: &FSScope{Read: []string{}}}) {
		t.Error("absent and empty scopes compare equal")
	}
}

func TestObligationsValidate(t *testing.T) {
	for name, o := range map[string]Obligations{
		"relative path": {FS: &FSScope{Read: []string{"usr"}}},
		"unclean path":  {FS: &FSScope{Write: []string{"/tmp/../etc"}}},
		"bad host":      {Net: &NetScope{Allow: []string{"example.org"}}},
		"upper host":    {Net: &NetScope{Allow: []string{"Example.org:443"}}},
		"bad env":       {Env: &EnvScope{Allow: []string{"A=B"}}},
		"relative cwd":  {Cwd: "work"},
	} {
		if err := o.Validate(); err == nil {
			t.Errorf("%s: valid", name)
		}
	}
	ok := Obligations{FS: &FSScope{Read: []string{"/usr"}}, Net: &NetScope{Allow: []string{"example.org:443"}}, Env: &EnvScope{Allow: []string{"PATH"}}, Cwd: "/tmp"}
	if err := ok.Validate(); err != nil || !ok.Sandboxed() || (Obligations{Timeout: 1}).Sandboxed() {
		t.Fatalf("valid obligations: %v", err)
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

func TestAppendCanonicalMatchesJCS(t *testing.T) {
	full := Action{V: Version, ID: "id-1", Time: "2026-11-26T06:00:00Z",
		Principal: Principal{ID: "spiffe://etb.local/agent/a", Attestation: "x509-svid", UID: 1000, User: "dev", Exe: "/usr/bin/bash", ExeSHA256: "sha256:aa", OnBehalfOf: "alice"},
		Action: Spec{Kind: KindShellExec, Name: "ls", Args: []string{"-l", `a"b\\c`}, ArgsHash: "sha256:bb",
			Target: Target{Program: "/usr/bin/ls", ProgramSHA256: "sha256:cc", Argv: []string{"ls", "-l"}, Cwd: "/tmp", Paths: []string{"/a"}, Host: "h", Port: 443}},
		Task: Task{ID: "t", RootID: "r", ParentID: "p", Step: 7, Labels: []string{"x", "y"},
			Recent:       []Recent{{Kind: KindHTTP, Name: "GET", Host: "example.com", Decision: "deny"}, {Kind: KindShellExec, Name: "cat", Decision: "permit"}},
			Usage:        map[string]float64{"shell/spiffe://a": 3, "budget/x": 0.1, "big/y": 1e21, "small/z": 1.5e-7, "neg/zero": math.Copysign(0, -1)},
			StateVersion: 42},
		Env: map[string]string{"b": "2", "a": "1"}}
	for name, a := range map[string]Action{"full": full, "zero": {}, "normalised": func() Action { a := Action{}; a.Normalize(); return a }()} {
		want, err := Canonical(&a)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := AppendCanonical(nil, &a)
		if !ok || string(got) != string(want) {
			t.Fatalf("%s: fast path %v\n%s\nJCS\n%s", name, ok, got, want)
		}
	}
	// Any UTF-8 string takes the fast path and agrees with JCS.
	for name, mutate := range map[string]func(*Action){
		"non-ASCII": func(a *Action) { a.Action.Args = []string{"é \u2028 𝄞"} },
		"control":   func(a *Action) { a.ID = "a\nb\x01\x7f" },
		"recent":    func(a *Action) { a.Task.Recent = []Recent{{Host: "\x7f"}} },
		"env value": func(a *Action) { a.Env = map[string]string{"k": "<&> é"} },
	} {
		a := full
		mutate(&a)
		want, err := Canonical(&a)
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := AppendCanonical(nil, &a); !ok || string(got) != string(want) {
			t.Errorf("%s: fast path %v\n%s\nJCS\n%s", name, ok, got, want)
		}
	}
	// Outside the simple case the fast path declines.
	for name, mutate := range map[string]func(*Action){
		"invalid UTF-8": func(a *Action) { a.Action.Args = []string{"\xff"} },
		"env key":       func(a *Action) { a.Env = map[string]string{"é": "1"} },
		"huge number":   func(a *Action) { a.Task.Step = 1 << 60 },
		"huge state":    func(a *Action) { a.Task.StateVersion = -(1 << 60) },
		"usage key":     func(a *Action) { a.Task.Usage = map[string]float64{"é": 1} },
		"usage NaN":     func(a *Action) { a.Task.Usage = map[string]float64{"a": math.NaN()} },
		"usage Inf":     func(a *Action) { a.Task.Usage = map[string]float64{"a": math.Inf(1)} },
	} {
		a := full
		mutate(&a)
		if _, ok := AppendCanonical(nil, &a); ok {
			t.Errorf("%s: fast path accepted", name)
		}
	}
}

// AppendCanonical writes every field by hand: a field added to Action must
// be added there too. This fails when the number of fields changes.
func TestAppendCanonicalCoversEveryField(t *testing.T) {
	var count func(reflect.Type) int
	count = func(tp reflect.Type) int {
		if tp.Kind() == reflect.Slice && tp.Elem().Kind() == reflect.Struct {
			return count(tp.Elem())
		}
		if tp.Kind() != reflect.Struct {
			return 1
		}
		n := 0
		for i := 0; i < tp.NumField(); i++ {
			n += count(tp.Field(i).Type)
		}
		return n
	}
	if n := count(reflect.TypeOf(Action{})); n != 33 {
		t.Fatalf("Action has %d leaf fields; update AppendCanonical (and this count)", n)
	}
}

func TestNormalizeTask(t *testing.T) {
	full := func() []Recent { return make([]Recent, MaxRecent) }
	tests := []struct {
		name    string
		task    Task
		want    Task
		wantErr string
	}{
		{name: "nil fills empty", task: Task{},
			want: Task{Labels: []string{}, Recent: []Recent{}, Usage: map[string]float64{}}},
		{name: "labels sorted and deduplicated", task: Task{Labels: []string{"b", "a", "b", "c", "a"}},
			want: Task{Labels: []string{"a", "b", "c"}, Recent: []Recent{}, Usage: map[string]float64{}}},
		{name: "full window", task: Task{Recent: full(), Usage: map[string]float64{"l/k": 2.5}},
			want: Task{Labels: []string{}, Recent: full(), Usage: map[string]float64{"l/k": 2.5}}},
		{name: "window too long", task: Task{Recent: make([]Recent, MaxRecent+1)}, wantErr: "17 entries"},
		{name: "negative usage", task: Task{Usage: map[string]float64{"l/k": -1}}, wantErr: `task.usage["l/k"]`},
		{name: "NaN usage", task: Task{Usage: map[string]float64{"l/k": math.NaN()}}, wantErr: "NaN"},
		{name: "infinite usage", task: Task{Usage: map[string]float64{"l/k": math.Inf(1)}}, wantErr: "+Inf"},
		{name: "first bad slot is named", task: Task{Usage: map[string]float64{"z": -1, "b": -2, "a": 1, "c": math.NaN()}}, wantErr: `task.usage["b"] = -2`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := Action{Action: Spec{Kind: KindShellExec}, Task: tt.task}
			err := a.Normalize()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Normalize: error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(a.Task, tt.want) {
				t.Fatalf("task %+v, want %+v", a.Task, tt.want)
			}
		})
	}
	// Normalize never reorders the caller's slice.
	labels := []string{"z", "a"}
	a := Action{Task: Task{Labels: labels}}
	if err := a.Normalize(); err != nil {
		t.Fatal(err)
	}
	if labels[0] != "z" {
		t.Fatalf("Normalize reordered the caller's labels: %v", labels)
	}
}

// Task state is part of the input, not of what a grant is bound to.
func TestDigestIgnoresTaskState(t *testing.T) {
	a := Action{Action: Spec{Kind: KindShellExec, Name: "ls"}}
	b := a
	b.Task = Task{Labels: []string{"secret_read"}, Recent: []Recent{{Kind: KindHTTP}}, Usage: map[string]float64{"x/y": 1}, StateVersion: 9}
	da, err := a.Action.Digest()
	if err != nil {
		t.Fatal(err)
	}
	db, err := b.Action.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if da != db {
		t.Fatalf("task state changed the action digest: %s != %s", da, db)
	}
	ha, _ := CanonicalHash(&a)
	hb, _ := CanonicalHash(&b)
	if ha == hb {
		t.Fatal("task state is not covered by the canonical input")
	}
}

// The direct encodings behind Digest and HashArgs are the generic RFC
// 8785 ones.
func TestDigestMatchesJCS(t *testing.T) {
	specs := []Spec{
		{},
		{Kind: "shell.exec", Name: "ls", Args: []string{"-l", "é \"q\" \\ \n\x01 <&>"}, Target: Target{Program: "/bin/ls", ProgramSHA256: "sha256:00",
			Argv: []string{"ls", "-l"}, Cwd: "/tmp", Paths: []string{"/a", "/b"}, Host: "Example.ORG", Port: 443}},
		{Kind: "mcp.tool_call", Name: "srv/t", Args: []string{`{"a":1}`}, Target: Target{Port: -1}},
	}
	for _, s := range specs {
		got, err := s.Digest()
		if err != nil {
			t.Fatal(err)
		}
		want, err := CanonicalHash(digestInput{Kind: s.Kind, Name: s.Name, Args: nonNil(s.Args), Target: s.Target.normal()})
		if err != nil || got != want {
			t.Errorf("%+v: digest %s, generic %s (%v)", s, got, want, err)
		}
		ga, err := HashArgs(s.Args)
		wa, werr := CanonicalHash(nonNil(s.Args))
		if err != nil || werr != nil || ga != wa {
			t.Errorf("%v: args hash %s, generic %s", s.Args, ga, wa)
		}
	}
	if _, ok := (digestInput{Target: Target{Port: 1 << 60}}).appendCanonical(nil); ok {
		t.Error("a port beyond 2^53 took the direct path")
	}
	if _, ok := (digestInput{Name: "\xff"}).appendCanonical(nil); ok {
		t.Error("invalid UTF-8 took the direct path")
	}
}

func TestSHA256KnownAnswers(t *testing.T) {
	for in, want := range map[string]string{
		"":    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		"abc": "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
	} {
		if got := SHA256([]byte(in)); got != want {
			t.Errorf("SHA256(%q) = %s, want %s", in, got, want)
		}
	}
}
