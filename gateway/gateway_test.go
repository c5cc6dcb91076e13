package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/enforce"
	"github.com/etbproject/etb/grant"
	"github.com/etbproject/etb/lineage"
	"github.com/etbproject/etb/policy"
	"github.com/etbproject/etb/proof"
)

func open(t testing.TB, dir string) *Gateway {
	t.Helper()
	g, err := Open(context.Background(), dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

func echoAction(t testing.TB, args ...string) *action.Action {
	t.Helper()
	spec, err := enforce.DescribeExec(append([]string{"echo"}, args...), os.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return &action.Action{Principal: action.Principal{ID: "spiffe://etb.local/user/1000", Attestation: "local-uid"}, Action: spec}
}

// Intent, decision and grant are committed before Begin returns: another
// connection (as another process would) sees them before anything runs.
func TestBeginIsDurableBeforeStart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	g := open(t, dir)
	ex, err := g.Begin(ctx, echoAction(t, "hi"))
	if err != nil {
		t.Fatal(err)
	}
	if ex.Decision.Decision != policy.Permit || ex.Token == "" {
		t.Fatalf("echo not permitted: %+v", ex.Decision)
	}
	other := open(t, dir)
	events, _, err := other.Events(ctx, ex.ID)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, e := range events {
		types = append(types, e.Type)
	}
	if strings.Join(types, ",") != "intent,decision,grant" {
		t.Fatalf("durable before start: %v", types)
	}
	var sync int
	if err := g.db.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&sync); err != nil || sync != 2 {
		t.Fatalf("synchronous = %d (%v), want 2 (FULL)", sync, err)
	}
	var mode string
	if err := g.db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal_mode = %q (%v)", mode, err)
	}
}

func TestGrantRefusals(t *testing.T) {
	ctx := context.Background()
	g := open(t, t.TempDir())
	ex, err := g.Begin(ctx, echoAction(t, "hi"))
	if err != nil {
		t.Fatal(err)
	}
	// Arguments changed after the grant was issued.
	changed := echoAction(t, "bye")
	d, _ := changed.Action.Digest()
	if err := ex.Authorize(ctx, d); !errors.Is(err, grant.ErrDigest) {
		t.Fatalf("changed args: %v", err)
	}
	// The genuine digest passes once, and never again (replay), not even
	// from another process holding the same home.
	if err := ex.Authorize(ctx, ex.Digest); err != nil {
		t.Fatal(err)
	}
	if err := ex.Authorize(ctx, ex.Digest); !errors.Is(err, grant.ErrReplayed) {
		t.Fatalf("replay: %v", err)
	}
	// A denial carries no grant; nothing can be authorized with it.
	rm, err := enforce.DescribeExec([]string{"rm", "-rf", "/nonexistent"}, os.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	den, err := g.Begin(ctx, &action.Action{Principal: action.Principal{ID: "spiffe://etb.local/user/1"}, Action: rm})
	if err != nil {
		t.Fatal(err)
	}
	if den.Decision.Decision != policy.Deny || den.Token != "" {
		t.Fatalf("rm -rf: %+v", den.Decision)
	}
	if err := den.Authorize(ctx, den.Digest); err == nil {
		t.Fatal("a denied execution was authorized")
	}
}

// Replay protection survives a restart: a grant used before the gateway
// was closed is refused after it reopens.
func TestReplayAcrossRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	g1, err := Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ex, err := g1.Begin(ctx, echoAction(t, "x"))
	if err != nil {
		t.Fatal(err)
	}
	if err := ex.Authorize(ctx, ex.Digest); err != nil {
		t.Fatal(err)
	}
	g1.Close()
	g2 := open(t, dir)
	if _, err := g2.Verifier().Verify(ctx, ex.Token, grant.Expect{Audience: g2.Config().Enforcer, ADG: ex.Digest}); !errors.Is(err, grant.ErrReplayed) {
		t.Fatalf("replay after restart: %v", err)
	}
}

// An expired grant is refused by the enforcer.
func TestExpiredGrantRefused(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	now := time.Now()
	g, err := Open(ctx, dir, Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	ex, err := g.Begin(ctx, echoAction(t, "late"))
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Minute) // past the 60 s ttl and the 5 s skew
	var out bytes.Buffer
	_, err = enforce.Run(ctx, enforce.Command{Spec: ex.Action.Action, Stdout: &out, Stderr: &out}, ex.Authorize, func(int) error { return nil })
	if !errors.Is(err, enforce.ErrNotAuthorized) || !errors.Is(err, grant.ErrExpired) || out.Len() != 0 {
		t.Fatalf("expired grant: %v, output %q", err, out.String())
	}
}

func TestExecRecordsLifecycle(t *testing.T) {
	ctx := context.Background()
	g := open(t, t.TempDir())
	var out bytes.Buffer
	res, err := g.Exec(ctx, ExecRequest{Argv: []string{"echo", "hello"}, Cwd: t.TempDir(), Stdout: &out, Stderr: &out})
	if err != nil || res.ExitCode != 0 || out.String() != "hello\n" {
		t.Fatalf("%v %+v %q", err, res, out.String())
	}
	events, _, err := g.Events(ctx, res.Execution.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 5 || events[4].Type != lineage.TypeEnd {
		t.Fatalf("events: %d", len(events))
	}
	var end lineage.EndBody
	if err := events[4].DecodeBody(&end); err != nil {
		t.Fatal(err)
	}
	if end.StdoutSHA256 != action.SHA256([]byte("hello\n")) || end.StdoutBytes != 6 || end.ExitCode != 0 {
		t.Fatalf("end body %+v", end)
	}
	list, err := g.List(ctx, 10)
	if err != nil || len(list) != 1 || list[0].Outcome != "exit 0" || list[0].Decision != "permit" {
		t.Fatalf("list %+v %v", list, err)
	}
}

// A broken ledger means nothing runs.
func TestLedgerFailureRefusesBeforeStart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	g, err := Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	g.db.Close() // the storage fails under the gateway
	marker := filepath.Join(t.TempDir(), "ran")
	res, err := g.Exec(ctx, ExecRequest{Argv: []string{"touch", marker}, Cwd: dir})
	if err == nil {
		t.Fatalf("exec succeeded with a closed ledger: %+v", res)
	}
	if _, serr := os.Stat(marker); serr == nil {
		t.Fatal("the command ran although its authorization could not be recorded")
	}
	g.Close()
}

func TestConcurrentBeginInOneProcess(t *testing.T) {
	ctx := context.Background()
	g := open(t, t.TempDir())
	var wg sync.WaitGroup
	ids := make(chan string, 32)
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ex, err := g.Begin(ctx, echoAction(t, "c"))
			if err != nil {
				t.Error(err)
				return
			}
			ids <- ex.ID
		}()
	}
	wg.Wait()
	close(ids)
	for id := range ids {
		if _, _, err := g.Events(ctx, id); err != nil {
			t.Error(err)
		}
	}
}

// BenchmarkGovernedDecision measures the in-process path: intent →
// decision → signed grant → durable ledger entries (one batch per decision,
// coalesced across concurrent callers by the ledger's group commit).
func BenchmarkGovernedDecision(b *testing.B) {
	for _, callers := range []int{1, 64} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			g := open(b, b.TempDir())
			a := echoAction(b, "bench")
			ctx := context.Background()
			// RunParallel starts GOMAXPROCS × parallelism goroutines.
			b.SetParallelism(max(1, callers/runtime.GOMAXPROCS(0)))
			start := time.Now()
			b.ResetTimer()
			if callers == 1 {
				for i := 0; i < b.N; i++ {
					c := *a
					if _, err := g.Begin(ctx, &c); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "decisions/s")
				return
			}
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					c := *a
					if _, err := g.Begin(ctx, &c); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "decisions/s")
		})
	}
}

// BeginStart commits intent, decision, grant, the grant's single use and
// the start together; a digest that does not match the grant records an
// interrupt instead, and nothing can start twice.
func TestBeginStart(t *testing.T) {
	ctx := context.Background()
	g := open(t, t.TempDir())
	a := echoAction(t, "once")
	ex, err := g.BeginStart(ctx, a, func(ex *Execution) (string, lineage.StartBody, error) {
		d, err := ex.Action.Action.Digest()
		return d, lineage.StartBody{Program: ex.Action.Action.Target.Program}, err
	})
	if err != nil || !ex.Started() || ex.StartErr() != nil {
		t.Fatalf("%v started=%v %v", err, ex != nil && ex.Started(), ex.StartErr())
	}
	events, idx, err := g.Events(ctx, ex.ID)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, e := range events {
		types = append(types, e.Type)
	}
	if strings.Join(types, ",") != "intent,decision,grant,start" || idx[3] != idx[0]+3 {
		t.Fatalf("events %v at %v", types, idx)
	}
	// The index row, written in the same batch, says it is running.
	if list, err := g.List(ctx, 1); err != nil || len(list) != 1 || list[0].ID != ex.ID || list[0].Outcome != "running" {
		t.Fatalf("etb log after BeginStart: %+v %v; want %s running", list, err, ex.ID)
	}
	// The grant's jti is burnt: it cannot start again.
	d, _ := ex.Action.Action.Digest()
	if err := ex.AuthorizeStart(ctx, d, lineage.StartBody{}); !errors.Is(err, grant.ErrReplayed) {
		t.Fatalf("second start: %v", err)
	}
	if err := ex.Record(ctx, lineage.TypeEnd, lineage.EndBody{}); err != nil {
		t.Fatal(err)
	}
	b, err := g.Evidence(ctx, ex.ID)
	verifyBundle(t, g, b, err)

	// What is about to run differs from what was decided: no start.
	other, err := g.BeginStart(ctx, echoAction(t, "decided"), func(ex *Execution) (string, lineage.StartBody, error) {
		d, err := echoAction(t, "changed").Action.Digest()
		return d, lineage.StartBody{}, err
	})
	if err != nil || other.Started() || !errors.Is(other.StartErr(), grant.ErrDigest) {
		t.Fatalf("mismatched digest: %v started=%v %v", err, other.Started(), other.StartErr())
	}
	if got := strings.Join(eventTypesOf(t, g, other.ID), ","); got != "intent,decision,grant,interrupt" {
		t.Fatalf("events %s", got)
	}
	// A denial is returned as by Begin.
	denied, err := g.BeginStart(ctx, &action.Action{Principal: a.Principal, Action: action.Spec{Kind: "fs.write", Name: "/etc/passwd"}},
		func(*Execution) (string, lineage.StartBody, error) {
			t.Fatal("prepare called for a denial")
			return "", lineage.StartBody{}, nil
		})
	if err != nil || denied.Decision.Decision != policy.Deny || denied.Started() {
		t.Fatalf("denial: %v %+v", err, denied.Decision)
	}
}

func eventTypesOf(t *testing.T, g *Gateway, id string) []string {
	t.Helper()
	events, _, err := g.Events(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range events {
		out = append(out, e.Type)
	}
	return out
}

// verifyBundle checks b (built with error err) offline with g's trust file.
func verifyBundle(t *testing.T, g *Gateway, b *proof.Bundle, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	tr, err := g.Trust()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := proof.Verify(context.Background(), b, tr); err != nil {
		t.Fatalf("evidence: %v", err)
	}
}
