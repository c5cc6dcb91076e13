package telemetry

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/policy"
	"github.com/etbproject/etb/telemetry/otlptest"
)

const (
	validTP   = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	traceHex  = "4bf92f3577b34da6a3ce929d0e0e4736"
	parentHex = "00f067aa0ba902b7"
)

func TestParseTraceparent(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		ok      bool
		sampled bool
	}{
		{"v00 sampled", validTP, true, true},
		{"v00 not sampled", "00-" + traceHex + "-" + parentHex + "-00", true, false},
		{"v00 unknown flags keep only sampled", "00-" + traceHex + "-" + parentHex + "-ff", true, true},
		{"v00 unknown flag without sampled", "00-" + traceHex + "-" + parentHex + "-02", true, false},
		{"optional white space", " \t" + validTP + "\t ", true, true},
		{"future version same length", "01-" + traceHex + "-" + parentHex + "-01", true, true},
		{"future version with more fields", "cc-" + traceHex + "-" + parentHex + "-01-what-the-future-will-be-like", true, true},

		{"empty", "", false, false},
		{"white space only", "  ", false, false},
		{"short", validTP[:54], false, false},
		{"version ff", "ff-" + traceHex + "-" + parentHex + "-01", false, false},
		{"version upper case", "0A-" + traceHex + "-" + parentHex + "-01", false, false},
		{"version not hex", "0g-" + traceHex + "-" + parentHex + "-01", false, false},
		{"v00 with trailing field", validTP + "-what-the-future-will-be-like", false, false},
		{"v00 with trailing garbage", validTP + ".x", false, false},
		{"v00 with trailing NUL", validTP + "\x00", false, false},
		{"future version bad separator", "cc-" + traceHex + "-" + parentHex + "-01.what-the-future-will-be-like", false, false},
		{"trace id upper case", "00-4BF92F3577B34DA6A3CE929D0E0E4736-" + parentHex + "-01", false, false},
		{"parent id upper case", "00-" + traceHex + "-00F067AA0BA902B7-01", false, false},
		{"flags upper case", "00-" + traceHex + "-" + parentHex + "-0A", false, false},
		{"flags not hex", "00-" + traceHex + "-" + parentHex + "-0g", false, false},
		{"trace id all zeros", "00-00000000000000000000000000000000-" + parentHex + "-01", false, false},
		{"parent id all zeros", "00-" + traceHex + "-0000000000000000-01", false, false},
		{"trace id one short", "00-" + traceHex[:31] + "-" + parentHex + "0-01", false, false},
		{"wrong separator", "00_" + traceHex + "_" + parentHex + "_01", false, false},
		{"space inside", "00- " + traceHex[1:] + "-" + parentHex + "-01", false, false},
		{"non-ASCII", "00-" + traceHex[:30] + "é-" + parentHex + "-01", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc, err := ParseTraceparent(tt.in)
			if !tt.ok {
				if err == nil {
					t.Fatalf("ParseTraceparent(%q) = %v, want error", tt.in, sc)
				}
				if !errors.Is(err, ErrTraceparent) {
					t.Fatalf("error %v does not wrap ErrTraceparent", err)
				}
				if sc.IsValid() {
					t.Fatalf("error with a valid SpanContext %v", sc)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseTraceparent(%q): %v", tt.in, err)
			}
			if got := sc.TraceID().String(); got != traceHex {
				t.Errorf("trace id %s, want %s", got, traceHex)
			}
			if got := sc.SpanID().String(); got != parentHex {
				t.Errorf("span id %s, want %s", got, parentHex)
			}
			if sc.IsSampled() != tt.sampled {
				t.Errorf("sampled %v, want %v", sc.IsSampled(), tt.sampled)
			}
			if uint8(sc.TraceFlags())&^1 != 0 {
				t.Errorf("flags %v carry more than the sampled bit", sc.TraceFlags())
			}
			if !sc.IsRemote() {
				t.Error("span context not marked remote")
			}
			want := "00-" + traceHex + "-" + parentHex + "-00"
			if tt.sampled {
				want = want[:len(want)-1] + "1"
			}
			if got := FormatTraceparent(sc); got != want {
				t.Errorf("FormatTraceparent = %q, want %q", got, want)
			}
		})
	}
}

func TestFormatTraceparentInvalid(t *testing.T) {
	var s *Span
	if got := FormatTraceparent(s.SpanContext()); got != "" {
		t.Fatalf("FormatTraceparent(invalid) = %q, want empty", got)
	}
}

func FuzzParseTraceparent(f *testing.F) {
	for _, s := range []string{validTP, "cc-" + traceHex + "-" + parentHex + "-01-x", "", "ff-" + traceHex + "-" + parentHex + "-01"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sc, err := ParseTraceparent(s)
		if err != nil {
			return
		}
		if !sc.IsValid() {
			t.Fatalf("accepted %q with an invalid SpanContext", s)
		}
		// A parsed value re-encodes to a version 00 value that parses to
		// the same context.
		out := FormatTraceparent(sc)
		sc2, err := ParseTraceparent(out)
		if err != nil || !sc2.Equal(sc) {
			t.Fatalf("%q → %q → %v, %v", s, out, sc2, err)
		}
	})
}

func TestConfigFromEnv(t *testing.T) {
	tests := []struct {
		name     string
		env      map[string]string
		want     Config
		warnings int
	}{
		{"empty", nil, Config{ServiceName: "etb"}, 0},
		{"generic endpoint gets /v1/traces",
			map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
			Config{Endpoint: "http://collector:4318/v1/traces", Insecure: true, ServiceName: "etb"}, 0},
		{"generic endpoint with base path",
			map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4318/otlp/"},
			Config{Endpoint: "https://collector:4318/otlp/v1/traces", ServiceName: "etb"}, 0},
		{"traces endpoint used as-is and wins",
			map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT":        "http://generic:4318",
				"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://traces:443/custom/path",
			},
			Config{Endpoint: "https://traces:443/custom/path", ServiceName: "etb"}, 0},
		{"headers percent-decoded, traces-specific wins",
			map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT":       "https://c",
				"OTEL_EXPORTER_OTLP_HEADERS":        "x-generic=1",
				"OTEL_EXPORTER_OTLP_TRACES_HEADERS": "Authorization=Bearer%20abc , x-team = infra,bad-entry,=novalue",
			},
			Config{Endpoint: "https://c/v1/traces", ServiceName: "etb",
				Headers: map[string]string{"Authorization": "Bearer abc", "x-team": "infra"}}, 2},
		{"service name, timeout, compression",
			map[string]string{
				"OTEL_SERVICE_NAME":              "etb-gw",
				"OTEL_EXPORTER_OTLP_TIMEOUT":     "2500",
				"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
				"OTEL_EXPORTER_OTLP_PROTOCOL":    "http/protobuf",
			},
			Config{ServiceName: "etb-gw", Timeout: 2500 * time.Millisecond, Compression: "gzip"}, 0},
		{"malformed values ignored with warnings",
			map[string]string{
				"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "collector:4318",
				"OTEL_EXPORTER_OTLP_TIMEOUT":         "soon",
				"OTEL_EXPORTER_OTLP_COMPRESSION":     "zstd",
				"OTEL_EXPORTER_OTLP_PROTOCOL":        "grpc",
				"OTEL_SDK_DISABLED":                  "maybe",
			},
			Config{ServiceName: "etb"}, 5},
		{"sdk disabled",
			map[string]string{"OTEL_SDK_DISABLED": "TRUE", "OTEL_EXPORTER_OTLP_ENDPOINT": "https://c"},
			Config{Disabled: true, Endpoint: "https://c/v1/traces", ServiceName: "etb"}, 0},
		{"exporter none",
			map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "https://c"},
			Config{Disabled: true, Endpoint: "https://c/v1/traces", ServiceName: "etb"}, 0},
		{"unsupported exporter turns tracing off",
			map[string]string{"OTEL_TRACES_EXPORTER": "zipkin", "OTEL_EXPORTER_OTLP_ENDPOINT": "https://c"},
			Config{Disabled: true, Endpoint: "https://c/v1/traces", ServiceName: "etb"}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ConfigFromEnv(func(k string) string { return tt.env[k] })
			if len(got.Warnings) != tt.warnings {
				t.Errorf("warnings %q, want %d", got.Warnings, tt.warnings)
			}
			got.Warnings = nil
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("ConfigFromEnv =\n %+v\nwant\n %+v", got, tt.want)
			}
		})
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"plain http without Insecure", Config{Endpoint: "http://127.0.0.1:4318/v1/traces"}, "plain http"},
		{"no scheme", Config{Endpoint: "collector:4318"}, "scheme"},
		{"grpc scheme", Config{Endpoint: "grpc://collector:4317"}, "scheme"},
		{"no host", Config{Endpoint: "https:///v1/traces"}, "no host"},
		{"unknown compression", Config{Endpoint: "https://c/v1/traces", Compression: "zstd"}, "compression"},
		{"header injection", Config{Endpoint: "https://c/v1/traces", Headers: map[string]string{"x": "a\r\nEvil: 1"}}, "header"},
		{"bad header name", Config{Endpoint: "https://c/v1/traces", Headers: map[string]string{"a b": "1"}}, "header"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr, err := New(context.Background(), tt.cfg)
			if err == nil {
				tr.Shutdown(context.Background())
				t.Fatalf("New(%+v) succeeded, want error", tt.cfg)
			}
			if tr != nil {
				t.Errorf("New returned a Tracer with error %v", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
		})
	}
}

// collector is the OTLP/HTTP receiver of otlptest.
type collector = otlptest.Collector

func newCollector(t *testing.T) *collector { return otlptest.New(t) }

func attrs(s *tracepb.Span) map[string]*commonpb.AnyValue { return otlptest.Attrs(s) }

func newTracer(t *testing.T, c *collector, mod func(*Config)) *Tracer {
	t.Helper()
	cfg := Config{Endpoint: c.Endpoint(), Insecure: true, ServiceName: "etb-test", BatchTimeout: time.Hour}
	if mod != nil {
		mod(&cfg)
	}
	tr, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if !tr.Enabled() {
		t.Fatal("Tracer with an endpoint is not enabled")
	}
	return tr
}

func shutdown(t *testing.T, tr *Tracer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tr.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

var testAttrs = ExecutionAttrs{
	ExecutionID: "exe-1", TaskID: "task-2", TaskRootID: "task-1",
	PrincipalID: "spiffe://etb.local/agent/a", Kind: "mcp.tool_call", Name: "read_file",
	Digest: "sha256:" + strings.Repeat("ab", 32),
}

func TestExportedSpan(t *testing.T) {
	for _, compression := range []string{"", CompressionGzip} {
		t.Run("compression="+compression, func(t *testing.T) {
			c := newCollector(t)
			tr := newTracer(t, c, func(cfg *Config) {
				cfg.Compression = compression
				cfg.Headers = map[string]string{"Authorization": "Bearer collector-key"}
			})
			// The caller did not sample; the execution is recorded anyway.
			tp := "00-" + traceHex + "-" + parentHex + "-00"
			ctx, sp := tr.StartExecution(context.Background(), tp, testAttrs)
			if got := sp.SpanContext(); got.TraceID().String() != traceHex || !got.IsSampled() {
				t.Fatalf("span context %v: want trace %s, sampled", got, traceHex)
			}
			if got := FormatTraceparent(trace.SpanContextFromContext(ctx)); got != sp.Traceparent() {
				t.Fatalf("context carries %q, span says %q", got, sp.Traceparent())
			}
			sp.Decision(policy.Decision{Decision: policy.Permit, Rules: []string{"allow-read", "audit"},
				Policy: policy.Ref{BundleHash: "sha256:" + strings.Repeat("cd", 32), Engine: policy.Engine}})
			sp.Grant("0123456789abcdef0123456789abcdef")
			child := sp.Traceparent()
			sp.End("ok", nil)
			shutdown(t, tr)

			spans, _, failures := c.Snapshot()
			if len(failures) > 0 {
				t.Fatalf("collector rejected requests: %q", failures)
			}
			if len(spans) != 1 {
				t.Fatalf("collector got %d spans, want 1", len(spans))
			}
			s := spans[0]
			if got := hex.EncodeToString(s.GetTraceId()); got != traceHex {
				t.Errorf("trace id %s, want the caller's %s", got, traceHex)
			}
			if got := hex.EncodeToString(s.GetParentSpanId()); got != parentHex {
				t.Errorf("parent span id %s, want %s", got, parentHex)
			}
			if want := "00-" + traceHex + "-" + hex.EncodeToString(s.GetSpanId()) + "-01"; child != want {
				t.Errorf("Traceparent() = %q, want %q", child, want)
			}
			if s.GetName() != "etb.execute mcp.tool_call read_file" {
				t.Errorf("name %q", s.GetName())
			}
			if s.GetKind() != tracepb.Span_SPAN_KIND_INTERNAL {
				t.Errorf("kind %v", s.GetKind())
			}
			if s.GetStatus().GetCode() != tracepb.Status_STATUS_CODE_OK {
				t.Errorf("status %v, want OK", s.GetStatus())
			}
			a := attrs(s)
			wantStr := map[string]string{
				AttrExecutionID: "exe-1", AttrTaskID: "task-2", AttrTaskRootID: "task-1",
				AttrPrincipalID: "spiffe://etb.local/agent/a", AttrActionKind: "mcp.tool_call",
				AttrActionName: "read_file", AttrActionDigest: testAttrs.Digest,
				AttrDecision: "permit", AttrRule: "allow-read,audit",
				AttrPolicyHash: "sha256:" + strings.Repeat("cd", 32), AttrPolicyEngine: policy.Engine,
				AttrGrantID: "0123456789abcdef0123456789abcdef", AttrOutcome: "ok",
			}
			for k, v := range wantStr {
				if got := a[k].GetStringValue(); got != v {
					t.Errorf("attribute %s = %q, want %q", k, got, v)
				}
			}
			if _, ok := a[AttrTraceparentInvalid]; ok {
				t.Errorf("valid traceparent reported invalid")
			}
			if len(a) != len(wantStr) {
				t.Errorf("span has %d attributes, want %d: %v", len(a), len(wantStr), a)
			}
			headers := c.Headers()
			if got := c.Services(); len(got) != 1 || got[0] != "etb-test" {
				t.Errorf("service.name %q, want etb-test", got)
			}
			if got := headers[0].Get("Authorization"); got != "Bearer collector-key" {
				t.Errorf("Authorization header %q", got)
			}
			if compression == CompressionGzip && headers[0].Get("Content-Encoding") != "gzip" {
				t.Errorf("gzip asked for, Content-Encoding %q", headers[0].Get("Content-Encoding"))
			}
		})
	}
}

func TestInvalidTraceparentYieldsRootSpan(t *testing.T) {
	bad := []string{
		"00-" + strings.ToUpper(traceHex) + "-" + parentHex + "-01",
		"ff-" + traceHex + "-" + parentHex + "-01",
		validTP + "-extra",
		"garbage",
	}
	c := newCollector(t)
	tr := newTracer(t, c, nil)
	for _, tp := range bad {
		ctx, sp := tr.StartExecution(context.Background(), tp, testAttrs)
		if ctx == nil || sp == nil {
			t.Fatalf("StartExecution(%q) returned nil", tp)
		}
		sp.End("ok", nil)
	}
	// No traceparent at all: a root span, not reported invalid.
	_, sp := tr.StartExecution(context.Background(), "", testAttrs)
	sp.End("ok", nil)
	shutdown(t, tr)

	spans, _, _ := c.Snapshot()
	if len(spans) != len(bad)+1 {
		t.Fatalf("got %d spans, want %d", len(spans), len(bad)+1)
	}
	for i, s := range spans {
		if len(s.GetParentSpanId()) != 0 {
			t.Errorf("span %d has parent %x, want a root span", i, s.GetParentSpanId())
		}
		if hex.EncodeToString(s.GetTraceId()) == traceHex {
			t.Errorf("span %d adopted the invalid traceparent's trace id", i)
		}
		inv, ok := attrs(s)[AttrTraceparentInvalid]
		if i < len(bad) && (!ok || !inv.GetBoolValue()) {
			t.Errorf("span %d (traceparent %q): %s not set", i, bad[i], AttrTraceparentInvalid)
		}
		if i == len(bad) && ok {
			t.Errorf("span without traceparent reported invalid")
		}
	}
}

// TestNoSecretsInSpans exports an execution whose arguments, output and
// error carry a secret, and checks the secret appears nowhere in what the
// collector received.
func TestNoSecretsInSpans(t *testing.T) {
	const secret = "s3cr3t-AKIAIOSFODNN7EXAMPLE"
	a := &action.Action{ID: "exe-9", Principal: action.Principal{ID: "spiffe://etb.local/agent/a"},
		Action: action.Spec{Kind: action.KindShellExec, Name: "curl", Args: []string{"-H", "Authorization: " + secret}},
		Task:   action.Task{ID: "t", RootID: "t"},
		Env:    map[string]string{"TOKEN": secret, EnvTraceparent: validTP}}
	digest, err := a.Action.Digest()
	if err != nil {
		t.Fatal(err)
	}
	c := newCollector(t)
	tr := newTracer(t, c, nil)
	_, sp := tr.StartExecution(context.Background(), a.Env[EnvTraceparent], AttrsFromAction(a, digest))
	sp.Decision(policy.Decision{Decision: policy.Deny, Rules: []string{"no-egress"}, Messages: []string{"blocked " + secret}})
	cause := &fs.PathError{Op: "open", Path: "/tmp/" + secret, Err: fs.ErrNotExist}
	sp.End("failed", fmt.Errorf("run %s: %w", secret, cause))
	shutdown(t, tr)

	spans, _, _ := c.Snapshot()
	if len(spans) != 1 {
		t.Fatalf("got %d spans, want 1", len(spans))
	}
	for _, b := range c.Bodies() {
		if bytes.Contains(b, []byte(secret)) {
			t.Errorf("secret found in an export request")
		}
	}
	s := spans[0]
	if s.GetStatus().GetCode() != tracepb.Status_STATUS_CODE_ERROR || s.GetStatus().GetMessage() != "failed" {
		t.Errorf("status %v, want ERROR \"failed\"", s.GetStatus())
	}
	a2 := attrs(s)
	if got := a2[AttrErrorType].GetStringValue(); got != "*fs.PathError" {
		t.Errorf("error.type %q, want *fs.PathError", got)
	}
	if got := a2[AttrActionDigest].GetStringValue(); got != digest {
		t.Errorf("digest %q, want %q", got, digest)
	}
	if got := a2[AttrExecutionID].GetStringValue(); got != "exe-9" {
		t.Errorf("execution id %q", got)
	}
}

func TestShutdownFlushes(t *testing.T) {
	c := newCollector(t)
	tr := newTracer(t, c, nil) // batches wait an hour
	for i := 0; i < 10; i++ {
		_, sp := tr.StartExecution(context.Background(), validTP, testAttrs)
		sp.End("ok", nil)
	}
	time.Sleep(50 * time.Millisecond)
	if _, n, _ := c.Snapshot(); n != 0 {
		t.Fatalf("%d export requests before Shutdown with an hour's batch timeout", n)
	}
	shutdown(t, tr)
	if spans, _, _ := c.Snapshot(); len(spans) != 10 {
		t.Fatalf("after Shutdown the collector has %d spans, want 10", len(spans))
	}
	// Spans after Shutdown are not exported, and a second Shutdown is fine.
	_, sp := tr.StartExecution(context.Background(), validTP, testAttrs)
	sp.End("ok", nil)
	shutdown(t, tr)
	if spans, _, _ := c.Snapshot(); len(spans) != 10 {
		t.Fatalf("span after Shutdown exported: %d spans", len(spans))
	}
}

func TestFlush(t *testing.T) {
	c := newCollector(t)
	tr := newTracer(t, c, nil)
	defer shutdown(t, tr)
	_, sp := tr.StartExecution(context.Background(), "", testAttrs)
	sp.End("ok", nil)
	if err := tr.Flush(context.Background()); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if spans, _, _ := c.Snapshot(); len(spans) != 1 {
		t.Fatalf("after Flush the collector has %d spans, want 1", len(spans))
	}
}

// TestStalledCollectorNeverBlocks points the Tracer at a collector that never
// answers: starting and ending spans stays fast (spans beyond the queue are
// dropped) and Shutdown returns when its context ends.
func TestStalledCollectorNeverBlocks(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	tr, err := New(context.Background(), Config{Endpoint: srv.URL + "/v1/traces", Insecure: true,
		Timeout: 300 * time.Millisecond, BatchTimeout: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	const n = 3 * defaultQueueSize
	start := time.Now()
	for i := 0; i < n; i++ {
		_, sp := tr.StartExecution(context.Background(), validTP, testAttrs)
		sp.Decision(policy.Decision{Decision: policy.Permit})
		sp.End("ok", nil)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("%d spans against a stalled collector took %v", n, d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start = time.Now()
	err = tr.Shutdown(ctx)
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Shutdown took %v with a 200ms context", d)
	}
	if err == nil {
		t.Log("Shutdown reported no error although the collector stalled")
	}
}

// TestUnreachableCollector: New does not dial, and spans against a closed
// port cost no more than against a live one.
func TestUnreachableCollector(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL + "/v1/traces"
	srv.Close()
	tr, err := New(context.Background(), Config{Endpoint: url, Insecure: true, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("New must not contact the endpoint: %v", err)
	}
	_, sp := tr.StartExecution(context.Background(), validTP, testAttrs)
	sp.End("ok", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := tr.Shutdown(ctx); err == nil {
		t.Log("Shutdown against a closed port reported no error")
	}
}

func TestDisabledRecordsNothing(t *testing.T) {
	c := newCollector(t)
	before := runtime.NumGoroutine()
	for _, cfg := range []Config{
		{},
		{ServiceName: "x", Headers: map[string]string{"a": "b"}},
		// Disabled wins over an endpoint.
		{Disabled: true, Endpoint: c.Endpoint(), Insecure: true},
	} {
		tr, err := New(context.Background(), cfg)
		if err != nil {
			t.Fatalf("New(%+v): %v", cfg, err)
		}
		if tr.Enabled() {
			t.Fatalf("New(%+v) is enabled", cfg)
		}
		type key struct{}
		ctx := context.WithValue(context.Background(), key{}, 1)
		got, sp := tr.StartExecution(ctx, validTP, testAttrs)
		if got != ctx {
			t.Error("disabled StartExecution changed the context")
		}
		sp.Decision(policy.Decision{Decision: policy.Permit})
		sp.Grant("jti")
		// The caller's trace still propagates, re-encoded as version 00.
		if tp := sp.Traceparent(); tp != validTP {
			t.Errorf("Traceparent() = %q, want the caller's %q", tp, validTP)
		}
		if sp.SpanContext().IsValid() {
			t.Error("disabled span has a valid span context")
		}
		sp.End("ok", errors.New("x"))
		_, sp = tr.StartExecution(ctx, "cc-"+traceHex+"-"+parentHex+"-01-future", testAttrs)
		if tp := sp.Traceparent(); tp != validTP {
			t.Errorf("future version forwarded as %q, want %q", tp, validTP)
		}
		_, sp = tr.StartExecution(ctx, "bogus", testAttrs)
		if tp := sp.Traceparent(); tp != "" {
			t.Errorf("invalid traceparent forwarded as %q", tp)
		}
		if err := tr.Flush(context.Background()); err != nil {
			t.Error(err)
		}
		if err := tr.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
	}
	if after := runtime.NumGoroutine(); after > before {
		t.Errorf("goroutines %d → %d with tracing off", before, after)
	}
	if _, n, _ := c.Snapshot(); n != 0 {
		t.Errorf("collector got %d requests with tracing off", n)
	}
}

func TestNilSafety(t *testing.T) {
	var tr *Tracer
	ctx := context.Background()
	got, sp := tr.StartExecution(ctx, validTP, testAttrs)
	if got != ctx || sp == nil {
		t.Fatal("nil Tracer: want ctx unchanged and a usable span")
	}
	if sp.Traceparent() != validTP {
		t.Errorf("nil Tracer does not forward the traceparent: %q", sp.Traceparent())
	}
	if tr.Enabled() || tr.Flush(ctx) != nil || tr.Shutdown(ctx) != nil {
		t.Error("nil Tracer is not a no-op")
	}
	var s *Span
	s.Decision(policy.Decision{})
	s.Grant("x")
	s.End("ok", nil)
	if s.Traceparent() != "" || s.SpanContext().IsValid() {
		t.Error("nil Span is not a no-op")
	}
}

// TestEnabledNoGoroutineLeak: after Shutdown an enabled Tracer leaves no
// goroutine behind (its batch processor and HTTP connections are gone).
func TestEnabledNoGoroutineLeak(t *testing.T) {
	c := newCollector(t)
	before := runtime.NumGoroutine()
	tr := newTracer(t, c, nil)
	_, sp := tr.StartExecution(context.Background(), validTP, testAttrs)
	sp.End("ok", nil)
	shutdown(t, tr)
	deadline := time.Now().Add(3 * time.Second)
	for {
		// The collector's side of the closed connection ends on its own.
		after := runtime.NumGoroutine()
		if after <= before {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("goroutines %d → %d after Shutdown\n%s", before, after, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestConcurrentExecutions(t *testing.T) {
	c := newCollector(t)
	tr := newTracer(t, c, nil)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				_, sp := tr.StartExecution(context.Background(), validTP, testAttrs)
				sp.Decision(policy.Decision{Decision: policy.Permit, Rules: []string{"r"}})
				sp.Grant("j")
				sp.End("ok", nil)
			}
		}()
	}
	wg.Wait()
	shutdown(t, tr)
	if spans, _, _ := c.Snapshot(); len(spans) != 400 {
		t.Fatalf("got %d spans, want 400", len(spans))
	}
}

func TestSpanNameBounded(t *testing.T) {
	if got := SpanName("shell.exec", ""); got != "etb.execute shell.exec" {
		t.Errorf("SpanName without a name = %q", got)
	}
	long := strings.Repeat("é", 300) // 600 bytes
	name := SpanName("shell.exec", long)
	if len(name) > len("etb.execute shell.exec ")+maxNameLen {
		t.Fatalf("span name is %d bytes", len(name))
	}
	if !strings.HasPrefix(name, "etb.execute shell.exec é") || !utf8ValidString(name) {
		t.Fatalf("span name %q is not a valid cut", name)
	}
}

func utf8ValidString(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }

func TestDisabledCost(t *testing.T) {
	tr, _ := New(context.Background(), Config{})
	ctx := context.Background()
	for _, tt := range []struct {
		traceparent string
		maxAllocs   float64
	}{{"", 0}, {validTP, 1}, {"bogus", 1}} {
		allocs := testing.AllocsPerRun(1000, func() {
			_, sp := tr.StartExecution(ctx, tt.traceparent, testAttrs)
			sp.Decision(policy.Decision{})
			sp.Grant("j")
			sp.End("ok", nil)
		})
		if allocs > tt.maxAllocs {
			t.Errorf("disabled start+end with traceparent %q allocates %v times, want at most %v", tt.traceparent, allocs, tt.maxAllocs)
		}
	}
}

func TestAttrsFromAction(t *testing.T) {
	a := &action.Action{ID: "e", Principal: action.Principal{ID: "p"},
		Action: action.Spec{Kind: "k", Name: "n", Args: []string{"secret"}},
		Task:   action.Task{ID: "t", RootID: "r"}}
	got := AttrsFromAction(a, "d")
	want := ExecutionAttrs{ExecutionID: "e", TaskID: "t", TaskRootID: "r", PrincipalID: "p", Kind: "k", Name: "n", Digest: "d"}
	if got != want {
		t.Fatalf("AttrsFromAction = %+v, want %+v", got, want)
	}
	if got := AttrsFromAction(nil, "d"); got != (ExecutionAttrs{Digest: "d"}) {
		t.Fatalf("AttrsFromAction(nil) = %+v", got)
	}
}

func BenchmarkStartEndDisabled(b *testing.B) {
	tr, _ := New(context.Background(), Config{})
	ctx := context.Background()
	d := policy.Decision{Decision: policy.Permit, Rules: []string{"r"}}
	for _, tp := range []string{"", validTP} {
		b.Run(fmt.Sprintf("traceparent=%t", tp != ""), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, sp := tr.StartExecution(ctx, tp, testAttrs)
				sp.Decision(d)
				sp.Grant("j")
				sp.End("ok", nil)
			}
		})
	}
}

func BenchmarkStartEndEnabled(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
	}))
	defer srv.Close()
	tr, err := New(context.Background(), Config{Endpoint: srv.URL + "/v1/traces", Insecure: true})
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Shutdown(context.Background())
	ctx := context.Background()
	d := policy.Decision{Decision: policy.Permit, Rules: []string{"r"}}
	b.ReportAllocs()
	for b.Loop() {
		_, sp := tr.StartExecution(ctx, validTP, testAttrs)
		sp.Decision(d)
		sp.Grant("j")
		sp.End("ok", nil)
	}
}

func TestErrorType(t *testing.T) {
	pathErr := &fs.PathError{Op: "open", Path: "/x", Err: fs.ErrNotExist}
	tests := []struct {
		err  error
		want string
	}{
		{errors.New("x"), "*errors.errorString"},
		{pathErr, "*fs.PathError"},
		{fmt.Errorf("a: %w", pathErr), "*fs.PathError"},
		{fmt.Errorf("a: %w", fmt.Errorf("b: %w", pathErr)), "*fs.PathError"},
		{fmt.Errorf("a: %w", fs.ErrNotExist), "*errors.errorString"},
		{fmt.Errorf("a: %v", pathErr), "*errors.errorString"},
		{fmt.Errorf("a: %w %w", pathErr, fs.ErrExist), "*fmt.wrapErrors"},
		{context.DeadlineExceeded, "context.deadlineExceededError"},
	}
	for _, tt := range tests {
		if got := errorType(tt.err); got != tt.want {
			t.Errorf("errorType(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}

// TestProcessEnvironmentIgnored: the OTEL_* variables the SDK and exporter
// read from the process environment by themselves do not override Config.
func TestProcessEnvironmentIgnored(t *testing.T) {
	for k, v := range map[string]string{
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:1/elsewhere",
		"OTEL_EXPORTER_OTLP_HEADERS":         "x-from-env=1",
		"OTEL_EXPORTER_OTLP_COMPRESSION":     "gzip",
		"OTEL_EXPORTER_OTLP_PROTOCOL":        "http/json",
		"OTEL_TRACES_SAMPLER":                "always_off",
		"OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT":    "1",
		"OTEL_BSP_MAX_QUEUE_SIZE":            "1",
		"OTEL_RESOURCE_ATTRIBUTES":           "service.name=from-env,deployment.environment=test",
	} {
		t.Setenv(k, v)
	}
	c := newCollector(t)
	tr := newTracer(t, c, nil)
	for i := 0; i < 3; i++ {
		_, sp := tr.StartExecution(context.Background(), validTP, testAttrs)
		sp.End("ok", nil)
	}
	shutdown(t, tr)
	spans, _, failures := c.Snapshot()
	if len(failures) > 0 {
		t.Fatalf("collector rejected requests: %q", failures)
	}
	if len(spans) != 3 {
		t.Fatalf("got %d spans, want 3", len(spans))
	}
	if n := len(spans[0].GetAttributes()); n != 8 {
		t.Errorf("span has %d attributes, want 8", n)
	}
	for _, h := range c.Headers() {
		if h.Get("x-from-env") != "" || h.Get("Content-Encoding") != "" {
			t.Errorf("process environment leaked into the request headers: %v", h)
		}
	}
	for _, s := range c.Services() {
		if s != "etb-test" {
			t.Errorf("service.name %q, want etb-test", s)
		}
	}
}
