package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testConfig(t *testing.T) *config {
	t.Helper()
	var c config
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	c.flags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	return &c
}

func TestConfigArgsRoundTrip(t *testing.T) {
	c := testConfig(t)
	c.Clients, c.Duration, c.Systems, c.OPA, c.Etb, c.Verbose, c.CPUProfile, c.Rounds = 3, 1500*time.Millisecond, "opa", "/x/opa", "/x/etb", true, "/x/prof", 3
	var back config
	fs := flag.NewFlagSet("child", flag.ContinueOnError)
	back.flags(fs)
	if err := fs.Parse(c.args()); err != nil {
		t.Fatal(err)
	}
	if back != *c {
		t.Fatalf("flags round trip: got %+v, want %+v", back, *c)
	}
}

func TestConfigCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*config)
		bad  string
	}{
		{"defaults", func(*config) {}, ""},
		{"no clients", func(c *config) { c.Clients = 0 }, "-clients"},
		{"too many clients", func(c *config) { c.Clients = 4097 }, "-clients"},
		{"no duration", func(c *config) { c.Duration = 0 }, "-duration"},
		{"unknown system", func(c *config) { c.Systems = "etb,cedar" }, `"cedar"`},
		{"no rounds", func(c *config) { c.Rounds = 0 }, "-rounds"},
		{"too many rounds", func(c *config) { c.Rounds = 101 }, "-rounds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig(t)
			tc.edit(c)
			err := c.check()
			switch {
			case tc.bad == "" && err != nil:
				t.Fatalf("check: %v", err)
			case tc.bad != "" && (err == nil || !strings.Contains(err.Error(), tc.bad)):
				t.Fatalf("check = %v, want an error about %s", err, tc.bad)
			}
		})
	}
}

func TestOPAOutcome(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		want *outcome // nil: an error
	}{
		{`{"result":{"decision":"permit","rules":["allow-read-only"],"timeout_s":300}}`, &outcome{"permit", []string{"allow-read-only"}, 5 * time.Minute}},
		{`{"result":{"decision":"deny","rules":["etb.default-deny"]}}`, &outcome{"deny", []string{"etb.default-deny"}, 0}},
		{`{}`, nil}, // undefined decision: never a default
		{`{"result":{"decision":"permit"}}`, nil},
		{`{"result":{"rules":["x"]}}`, nil},
		{`{"result":{"decision":"permit","rules":["x"],"timeout_s":"300"}}`, nil},
		{`not json`, nil},
	} {
		got, err := opaOutcome([]byte(tc.raw))
		switch {
		case tc.want == nil && err == nil:
			t.Errorf("opaOutcome(%s) = %v, want an error", tc.raw, got)
		case tc.want != nil && (err != nil || !got.equal(*tc.want)):
			t.Errorf("opaOutcome(%s) = %v, %v; want %v", tc.raw, got, err, tc.want)
		}
	}
}

// TestPrecheckRefusesDisagreement: a system that answers one input
// differently, or fails, is not timed.
func TestPrecheckRefusesDisagreement(t *testing.T) {
	ctx := context.Background()
	ins := inputs()
	right := func(_ context.Context, _, in int) (*outcome, error) { w := ins[in].want; return &w, nil }
	if seen, err := precheck(ctx, 3, right); err != nil || len(seen) != len(ins) {
		t.Fatalf("precheck of agreeing answers = %v, %v", seen, err)
	}
	for name, decide := range map[string]func(context.Context, int, int) (*outcome, error){
		"other rules": func(ctx context.Context, c, in int) (*outcome, error) {
			o, _ := right(ctx, c, in)
			if in == 2 && c == 1 {
				o.Rules = []string{"allow-read-only"}
			}
			return o, nil
		},
		"other timeout": func(ctx context.Context, c, in int) (*outcome, error) {
			o, _ := right(ctx, c, in)
			if in == 0 {
				o.Timeout = time.Minute
			}
			return o, nil
		},
		"permit": func(ctx context.Context, c, in int) (*outcome, error) {
			return &outcome{"permit", []string{"allow-read-only"}, 5 * time.Minute}, nil
		},
		"error": func(ctx context.Context, c, in int) (*outcome, error) {
			return nil, io.ErrUnexpectedEOF
		},
	} {
		if seen, err := precheck(ctx, 3, decide); err == nil || !strings.Contains(err.Error(), "nothing timed") {
			t.Errorf("%s: precheck = %v, %v; want a refusal", name, seen, err)
		}
	}
}

func TestAgreeRefusesMismatch(t *testing.T) {
	ins := inputs()
	good := func(system string) *Result {
		r := &Result{System: system, ByInput: make([]Latency, len(ins))}
		for _, in := range ins {
			w := in.want
			r.Outcomes = append(r.Outcomes, &w)
		}
		return r
	}
	if err := agree([]*Result{good("etb"), good("opa")}); err != nil {
		t.Fatalf("agree: %v", err)
	}
	bad := good("opa")
	bad.Outcomes[1] = &outcome{"permit", []string{"allow-read-only"}, time.Minute}
	if err := agree([]*Result{good("etb"), bad}); err == nil || !strings.Contains(err.Error(), "opa decided") {
		t.Fatalf("agree with a mismatch = %v", err)
	}
	short := good("etb")
	short.Outcomes = short.Outcomes[:1]
	if err := agree([]*Result{short}); err == nil {
		t.Fatal("agree accepted a result missing outcomes")
	}
}

// TestBothSystems runs `etb serve` (built from this repository) and OPA's
// server for about a second each, as a child would, and checks that both
// answered, agree on every input, and that the table prints.
func TestBothSystems(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts etb serve and an OPA server (building opa once)")
	}
	ctx := context.Background()
	c := testConfig(t)
	c.Clients, c.Duration = 4, time.Second
	var log bytes.Buffer
	bin, err := ensureOPA(ctx, &log)
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	c.OPA = bin
	if c.Etb, err = ensureEtb(ctx, t.TempDir(), &log); err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	var results []*Result
	for _, s := range []string{"etb", "opa"} {
		r, err := runners[s](ctx, c)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		if r.System != s || r.Decisions == 0 || r.Elapsed <= 0 || r.Overall.P50 <= 0 || r.Overall.P99 < r.Overall.P50 {
			t.Fatalf("%s: implausible result %+v", s, r)
		}
		// Both processes worked for the decisions; the server's CPU time is
		// counted in 10 ms ticks, so it is only checked to be there.
		if r.ServerCPU <= 0 || r.ClientCPU <= 0 || r.ServerCPU > 2*r.Elapsed+time.Second || r.ClientCPU > 2*r.Elapsed+time.Second {
			t.Errorf("%s: implausible CPU times: server %v, clients %v over %v", s, r.ServerCPU, r.ClientCPU, r.Elapsed)
		}
		if r.ServerPeakRSS < 1<<20 {
			t.Errorf("%s: server peak RSS %d bytes", s, r.ServerPeakRSS)
		}
		var n uint64
		for i, l := range r.ByInput {
			if l.N == 0 {
				t.Errorf("%s: input %q never timed", s, inputs()[i].name)
			}
			n += l.N
		}
		if n != r.Decisions {
			t.Errorf("%s: %d decisions by input, %d overall", s, n, r.Decisions)
		}
		results = append(results, r)
	}
	if err := agree(results); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	printTable(&out, results)
	if !strings.Contains(out.String(), "etb/opa") || !strings.Contains(out.String(), "python3") || !strings.Contains(out.String(), "CPU per decision") {
		t.Errorf("table lacks the ratio or an input:\n%s", out.String())
	}
	t.Logf("\n%s", out.String())
}

// TestEtbServeFailureIsReported: a server that exits before it is ready
// fails the run with its exit and standard error, and one that never
// answers is not waited for beyond what the context allows.
func TestEtbServeFailureIsReported(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	script := filepath.Join(dir, "fake-etb")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho 'no such home' >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := startEtb(ctx, script, dir, 2, "", io.Discard)
	if err == nil || !strings.Contains(err.Error(), "exited before it was ready") || !strings.Contains(err.Error(), "no such home") {
		t.Fatalf("startEtb with a server that exits = %v; want its exit and stderr", err)
	}
	if _, err := startEtb(ctx, "", dir, 2, "", io.Discard); err == nil {
		t.Fatal("startEtb without a binary succeeded")
	}
}

// TestOPADisagreementIsCaught runs a real OPA server whose policy permits
// rm -rf: the precheck must refuse to time it.
func TestOPADisagreementIsCaught(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an OPA server")
	}
	ctx := context.Background()
	var log bytes.Buffer
	bin, err := ensureOPA(ctx, &log)
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	lax := strings.Replace(defaultRego, `"uniq", "true", "printf",`, `"uniq", "true", "printf", "rm",`, 1)
	lax = strings.Replace(lax, `input.action.name == "rm"`, `input.action.name == "no-such-rm"`, 1)
	if lax == defaultRego {
		t.Fatal("could not weaken default.rego")
	}
	s, err := startOPA(ctx, bin, t.TempDir(), lax, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	sp, err := specs()
	if err != nil {
		t.Fatal(err)
	}
	clients := []*opaClient{newOPAClient(s.url, 0, "etb.local"), newOPAClient(s.url, 1, "etb.local")}
	if o, err := clients[0].decide(ctx, sp[1]); err != nil || o.Decision != "permit" {
		t.Fatalf("weakened policy on rm -rf: %v, %v; want permit", o, err)
	}
	_, err = precheck(ctx, len(clients), func(ctx context.Context, c, in int) (*outcome, error) { return clients[c].decide(ctx, sp[in]) })
	if err == nil || !strings.Contains(err.Error(), "rm -rf") {
		t.Fatalf("precheck of a disagreeing OPA = %v, want a refusal naming rm -rf", err)
	}
}

// printRounds prints each round's ratios of etb to OPA, throughput and CPU
// per decision, and their medians.
func TestPrintRounds(t *testing.T) {
	result := func(system string, decisions uint64, cpu time.Duration) *Result {
		return &Result{System: system, Decisions: decisions, Elapsed: time.Second, ServerCPU: cpu, ClientCPU: cpu}
	}
	rounds := [][]*Result{
		{result("etb", 4000, time.Second), result("opa", 5000, time.Second)},          // 0.80×, CPU 1.25×
		{result("etb", 6000, time.Second), result("opa", 5000, time.Second)},          // 1.20×, CPU 0.83×
		{result("etb", 4500, time.Second), result("opa", 5000, 900*time.Millisecond)}, // 0.90×, CPU 1.23×
	}
	var out bytes.Buffer
	printRounds(&out, rounds)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 5 {
		t.Fatalf("%d lines, want a header, three rounds and the median:\n%s", len(lines), out.String())
	}
	if f := strings.Fields(lines[4]); len(f) != 3 || f[0] != "median" || f[1] != "0.90×" || f[2] != "1.23×" {
		t.Fatalf("median line %q, want 0.90× and 1.23×", lines[4])
	}
	if f := strings.Fields(lines[2]); len(f) != 5 || f[3] != "1.20×" || f[4] != "0.83×" {
		t.Fatalf("round 2 line %q", lines[2])
	}
	for _, tc := range []struct {
		xs   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{4, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := median(tc.xs); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.xs, got, tc.want)
		}
	}
}
