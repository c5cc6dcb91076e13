package gateway

import (
	"bytes"
	"context"
	"encoding/hex"
	"testing"
	"time"

	"github.com/etbproject/etb/telemetry"
	"github.com/etbproject/etb/telemetry/otlptest"
)

// Each governed execution is one span exported over OTLP, parented by the
// caller's traceparent, with the governance attributes and the outcome,
// and never the arguments.
func TestExecutionSpanExported(t *testing.T) {
	ctx := context.Background()
	col := otlptest.New(t)
	tr, err := telemetry.New(ctx, telemetry.Config{Endpoint: col.Endpoint(), Insecure: true, BatchTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	g, err := Open(ctx, t.TempDir(), Options{Tracer: tr})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	const parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	var out bytes.Buffer
	res, err := g.Exec(ctx, ExecRequest{Argv: []string{"echo", "s3cret-argument"}, Cwd: t.TempDir(), Stdout: &out,
		Traceparent: parent})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("%v %+v", err, res)
	}
	denied, err := g.Exec(ctx, ExecRequest{Argv: []string{"rm", "-rf", "/nonexistent-etb"}, Cwd: t.TempDir(), Stdout: &out})
	if err != nil || denied.ExitCode != ExitDenied {
		t.Fatalf("%v %+v", err, denied)
	}
	if err := tr.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	spans, _, failures := col.Snapshot()
	if len(failures) > 0 || len(spans) != 2 {
		t.Fatalf("%d spans, failures %v", len(spans), failures)
	}
	byID := map[string]map[string]string{}
	for _, s := range spans {
		m := map[string]string{}
		for k, v := range otlptest.Attrs(s) {
			m[k] = v.GetStringValue()
		}
		m["trace"], m["parent"] = hex.EncodeToString(s.GetTraceId()), hex.EncodeToString(s.GetParentSpanId())
		byID[m[telemetry.AttrExecutionID]] = m
	}
	ok := byID[res.Execution.ID]
	if ok == nil || ok["etb.decision"] != "permit" || ok["etb.rule"] != "allow-read-only" || ok["etb.grant.id"] != res.Execution.Claims.ID ||
		ok["etb.outcome"] != "exit 0" || ok["etb.policy.hash"] != res.Execution.Decision.Policy.BundleHash {
		t.Fatalf("permitted execution's span %v", ok)
	}
	if ok["trace"] != "4bf92f3577b34da6a3ce929d0e0e4736" || ok["parent"] != "00f067aa0ba902b7" {
		t.Fatalf("span not parented by the caller's traceparent: %v", ok)
	}
	no := byID[denied.Execution.ID]
	if no == nil || no["etb.decision"] != "deny" || no["etb.rule"] != "forbid-recursive-delete" || no["etb.grant.id"] != "" {
		t.Fatalf("denied execution's span %v", no)
	}
	for _, b := range col.Bodies() {
		if bytes.Contains(b, []byte("s3cret-argument")) {
			t.Fatal("an argument was exported")
		}
	}
}
