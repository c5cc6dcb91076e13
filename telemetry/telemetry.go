// Package telemetry owns the mapping of governed executions to OpenTelemetry
// spans: one span per execution, carrying the governance attributes
// (decision, rules, policy hash, grant id, outcome), parented by the caller's
// W3C trace context, and exported over OTLP/HTTP when an endpoint is
// configured.
//
// Tracing is an observer, never a participant. The package must never let a
// tracing error, a slow or absent collector, or a malformed traceparent
// affect a decision: nothing here returns an error on the execution path,
// span export is asynchronous and drops spans rather than block, and an
// invalid traceparent is reported as an attribute and otherwise ignored. It
// must never put an action's arguments, its outputs, a grant token or an
// error message in a span: only identifiers, digests, the action's kind and
// name, and the decision. It must never touch global OpenTelemetry state
// (otel.SetTracerProvider, the global propagator); a Tracer is a plain value
// the host passes around. The ledger, not the trace, is the record of what
// happened.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/etbproject/etb/action"
	"github.com/etbproject/etb/policy"
)

// EnvTraceparent is the key under which an adapter records the caller's W3C
// traceparent in an action's env (action.Action.Env).
const EnvTraceparent = "trace.traceparent"

// DefaultServiceName is the service.name of the spans when none is
// configured.
const DefaultServiceName = "etb"

// Span attribute keys. Values are identifiers, digests and verdicts only.
const (
	AttrExecutionID        = "etb.execution.id"
	AttrTaskID             = "etb.task.id"
	AttrTaskRootID         = "etb.task.root_id"
	AttrPrincipalID        = "etb.principal.id"
	AttrActionKind         = "etb.action.kind"
	AttrActionName         = "etb.action.name"
	AttrActionDigest       = "etb.action.digest"
	AttrDecision           = "etb.decision"
	AttrRule               = "etb.rule"
	AttrPolicyHash         = "etb.policy.hash"
	AttrPolicyEngine       = "etb.policy.engine"
	AttrGrantID            = "etb.grant.id"
	AttrOutcome            = "etb.outcome"
	AttrTraceparentInvalid = "etb.traceparent.invalid"
	// AttrErrorType is the OpenTelemetry semantic convention error.type: the
	// Go type of the error that says what failed, never its message.
	AttrErrorType = "error.type"
)

// Limits that keep a span small whatever an agent puts in an action's name.
const (
	maxNameLen       = 256  // bytes of kind or name in the span name
	maxAttrValueLen  = 1024 // bytes of any attribute value
	maxAttrsPerSpan  = 32
	defaultTimeout   = 10 * time.Second
	defaultBatchWait = 5 * time.Second
	defaultQueueSize = 2048
	defaultBatchSize = 512
)

// Compression values of Config.Compression.
const (
	CompressionNone = "none"
	CompressionGzip = "gzip"
)

// Config configures a Tracer. The zero value (no Endpoint) is a Tracer that
// records nothing.
type Config struct {
	// Endpoint is the full OTLP/HTTP traces URL, for example
	// "https://collector:4318/v1/traces", used as-is (a URL without a path
	// means "/"). Empty means tracing is off.
	Endpoint string
	// Headers are sent with every export request (for example an
	// authorization header for the collector).
	Headers map[string]string
	// ServiceName is the service.name resource attribute; empty means
	// DefaultServiceName.
	ServiceName string
	// Insecure must be true for an "http" Endpoint: span data is sent in
	// clear text only when asked for explicitly.
	Insecure bool
	// Disabled turns tracing off whatever Endpoint says (OTEL_SDK_DISABLED).
	Disabled bool
	// Timeout bounds one export request; zero means 10 s.
	Timeout time.Duration
	// Compression is CompressionNone (the default when empty) or
	// CompressionGzip.
	Compression string
	// BatchTimeout is the longest a finished span waits before it is
	// exported; zero means 5 s.
	BatchTimeout time.Duration
	// HTTPClient, if set, sends the export requests as it is (custom TLS
	// roots, proxies). If nil, New builds a client of its own, with Timeout,
	// and closes its idle connections on Shutdown.
	HTTPClient *http.Client
	// Warnings lists the environment settings ConfigFromEnv ignored because
	// they were malformed or unsupported. New ignores it; a host should log
	// it once at startup.
	Warnings []string
}

// ConfigFromEnv builds a Config from the OpenTelemetry environment
// variables, read through getenv (os.Getenv in a program, a map in a test):
//
//   - OTEL_SDK_DISABLED: "true" (any case) turns tracing off.
//   - OTEL_TRACES_EXPORTER: "none" turns tracing off; "otlp" (the default)
//     is the only exporter supported.
//   - OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: the traces URL, used as-is; it
//     takes precedence over OTEL_EXPORTER_OTLP_ENDPOINT, a base URL to which
//     "v1/traces" is appended as a path segment.
//   - OTEL_EXPORTER_OTLP_TRACES_HEADERS, else OTEL_EXPORTER_OTLP_HEADERS:
//     comma-separated key=value pairs, values percent-decoded.
//   - OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, else OTEL_EXPORTER_OTLP_TIMEOUT:
//     milliseconds.
//   - OTEL_EXPORTER_OTLP_TRACES_COMPRESSION, else
//     OTEL_EXPORTER_OTLP_COMPRESSION: "gzip" or "none".
//   - OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL:
//     only "http/protobuf" is supported.
//   - OTEL_SERVICE_NAME: service.name, default "etb".
//
// Per the OTLP exporter specification the endpoint's scheme decides
// transport security, so an "http" endpoint sets Insecure. Malformed values
// are ignored, as the OpenTelemetry specification asks, and listed in
// Warnings; an ignored endpoint leaves tracing off.
func ConfigFromEnv(getenv func(string) string) Config {
	var c Config
	warn := func(format string, args ...any) { c.Warnings = append(c.Warnings, fmt.Sprintf(format, args...)) }
	get := func(name string) string { return strings.TrimSpace(getenv(name)) }
	// signal returns the traces-specific variable if set, else the generic
	// one, and the name it came from.
	signal := func(suffix string) (value, name string) {
		if v := get("OTEL_EXPORTER_OTLP_TRACES_" + suffix); v != "" {
			return v, "OTEL_EXPORTER_OTLP_TRACES_" + suffix
		}
		return get("OTEL_EXPORTER_OTLP_" + suffix), "OTEL_EXPORTER_OTLP_" + suffix
	}

	switch v := get("OTEL_SDK_DISABLED"); {
	case strings.EqualFold(v, "true"):
		c.Disabled = true
	case v == "" || strings.EqualFold(v, "false"):
	default:
		warn("OTEL_SDK_DISABLED=%q is neither true nor false; treated as false", v)
	}
	switch v := get("OTEL_TRACES_EXPORTER"); v {
	case "", "otlp":
	case "none":
		c.Disabled = true
	default:
		warn("OTEL_TRACES_EXPORTER=%q is not supported (only otlp or none); tracing is off", v)
		c.Disabled = true
	}

	if v := get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"); v != "" {
		if u, err := parseEndpoint(v); err != nil {
			warn("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ignored: %v", err)
		} else {
			c.Endpoint = u.String()
		}
	} else if v := get("OTEL_EXPORTER_OTLP_ENDPOINT"); v != "" {
		if u, err := parseEndpoint(v); err != nil {
			warn("OTEL_EXPORTER_OTLP_ENDPOINT ignored: %v", err)
		} else {
			c.Endpoint = tracesURL(u)
		}
	}
	if strings.HasPrefix(c.Endpoint, "http:") {
		c.Insecure = true
	}

	if v, name := signal("HEADERS"); v != "" {
		h, bad := parseHeaders(v)
		for _, b := range bad {
			warn("%s: ignored malformed entry %q", name, b)
		}
		if len(h) > 0 {
			c.Headers = h
		}
	}
	if v, name := signal("TIMEOUT"); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms <= 0 {
			warn("%s=%q is not a positive number of milliseconds; ignored", name, v)
		} else {
			c.Timeout = time.Duration(ms) * time.Millisecond
		}
	}
	if v, name := signal("COMPRESSION"); v != "" {
		if v == CompressionGzip || v == CompressionNone {
			c.Compression = v
		} else {
			warn("%s=%q is neither gzip nor none; ignored", name, v)
		}
	}
	if v, name := signal("PROTOCOL"); v != "" && v != "http/protobuf" {
		warn("%s=%q is not supported; using http/protobuf", name, v)
	}
	c.ServiceName = get("OTEL_SERVICE_NAME")
	if c.ServiceName == "" {
		c.ServiceName = DefaultServiceName
	}
	return c
}

// parseEndpoint parses an OTLP/HTTP endpoint URL: scheme http or https, a
// host, no fragment.
func parseEndpoint(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("endpoint %q: %w", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("endpoint %q: scheme must be http or https", s)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("endpoint %q: no host", s)
	}
	if u.Fragment != "" || u.Opaque != "" {
		return nil, fmt.Errorf("endpoint %q: not a plain URL", s)
	}
	return u, nil
}

// tracesURL appends the "v1/traces" path segment to base, as the OTLP
// specification asks for the generic OTEL_EXPORTER_OTLP_ENDPOINT.
func tracesURL(base *url.URL) string {
	u := *base
	u.Path = strings.TrimSuffix(u.Path, "/") + "/v1/traces"
	u.RawPath = ""
	return u.String()
}

// parseHeaders parses "k1=v1,k2=v2" with percent-encoded values. It returns
// the valid pairs and the malformed entries.
func parseHeaders(s string) (map[string]string, []string) {
	h := make(map[string]string)
	var bad []string
	for _, entry := range strings.Split(s, ",") {
		if strings.TrimSpace(entry) == "" {
			continue
		}
		k, v, ok := strings.Cut(entry, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" || !validHeaderName(k) {
			bad = append(bad, entry)
			continue
		}
		dv, err := url.PathUnescape(strings.TrimSpace(v))
		if err != nil || strings.ContainsAny(dv, "\r\n\x00") {
			bad = append(bad, entry)
			continue
		}
		h[k] = dv
	}
	return h, bad
}

// validHeaderName reports whether k is an HTTP token (RFC 9110 §5.6.2).
func validHeaderName(k string) bool {
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			continue
		}
		if !strings.ContainsRune("!#$%&'*+-.^_`|~", rune(c)) {
			return false
		}
	}
	return len(k) > 0
}

// Tracer starts execution spans. A nil *Tracer, or one built from a Config
// with no Endpoint, records nothing; its spans still propagate the caller's
// traceparent. A Tracer is safe for concurrent use.
type Tracer struct {
	tp     *sdktrace.TracerProvider // nil when disabled
	tracer trace.Tracer             // nil when disabled
	client *http.Client             // owned by the Tracer, or nil
}

// New returns a Tracer for cfg. With cfg.Disabled or no cfg.Endpoint it
// returns a Tracer that records nothing and starts no goroutine. Otherwise
// it builds a TracerProvider of its own (never the global one) that samples
// every execution and exports through a batch span processor to the OTLP/HTTP
// endpoint. The export never blocks a span's End: when the queue is full,
// spans are dropped.
//
// New returns an error, and no Tracer, for an endpoint that is not an http or
// https URL, an "http" endpoint without cfg.Insecure, an unknown compression
// or a malformed header. It does not contact the endpoint.
func New(ctx context.Context, cfg Config) (*Tracer, error) {
	if cfg.Disabled || cfg.Endpoint == "" {
		return &Tracer{}, nil
	}
	u, err := parseEndpoint(cfg.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("telemetry: %w", err)
	}
	if u.Scheme == "http" && !cfg.Insecure {
		return nil, fmt.Errorf("telemetry: endpoint %q is plain http; set Insecure to send spans unencrypted", cfg.Endpoint)
	}
	compression := otlptracehttp.NoCompression
	switch cfg.Compression {
	case "", CompressionNone:
	case CompressionGzip:
		compression = otlptracehttp.GzipCompression
	default:
		return nil, fmt.Errorf("telemetry: compression %q is neither %q nor %q", cfg.Compression, CompressionNone, CompressionGzip)
	}
	for k, v := range cfg.Headers {
		if !validHeaderName(k) || strings.ContainsAny(v, "\r\n\x00") {
			return nil, fmt.Errorf("telemetry: malformed header %q", k)
		}
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = defaultTimeout
	}
	batchWait := cfg.BatchTimeout
	if batchWait <= 0 {
		batchWait = defaultBatchWait
	}
	t := &Tracer{}
	client := cfg.HTTPClient
	if client == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		client = &http.Client{Transport: tr, Timeout: timeout}
		t.client = client
	}
	// Every exporter, processor, sampler and limit setting is passed
	// explicitly, so that the OTEL_* variables the SDK would otherwise read
	// from the process environment have no effect. The one exception is
	// OTEL_RESOURCE_ATTRIBUTES, which the SDK always merges into the
	// resource; service.name from Config wins over it.
	headers := make(map[string]string, len(cfg.Headers))
	for k, v := range cfg.Headers {
		headers[k] = v
	}
	exp, err := otlptracehttp.New(ctx,
		otlptracehttp.WithEndpointURL(u.String()),
		otlptracehttp.WithHeaders(headers),
		otlptracehttp.WithCompression(compression),
		otlptracehttp.WithEncoding(otlptracehttp.EncodingProtobuf),
		otlptracehttp.WithTimeout(timeout),
		otlptracehttp.WithHTTPClient(client),
	)
	if err != nil {
		return nil, fmt.Errorf("telemetry: OTLP exporter for %q: %w", cfg.Endpoint, err)
	}
	name := cfg.ServiceName
	if name == "" {
		name = DefaultServiceName
	}
	t.tp = sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp,
			sdktrace.WithBatchTimeout(batchWait),
			sdktrace.WithExportTimeout(timeout),
			sdktrace.WithMaxQueueSize(defaultQueueSize),
			sdktrace.WithMaxExportBatchSize(defaultBatchSize),
		),
		// Every governed execution is recorded: an agent must not be able
		// to hide its actions from the operator's traces by clearing the
		// sampled flag of its traceparent.
		sdktrace.WithSampler(sdktrace.AlwaysSample()),
		sdktrace.WithRawSpanLimits(sdktrace.SpanLimits{
			AttributeValueLengthLimit: maxAttrValueLen,
			AttributeCountLimit:       maxAttrsPerSpan,
			// The package adds no events or links; none are kept.
			EventCountLimit:             0,
			LinkCountLimit:              0,
			AttributePerEventCountLimit: 0,
			AttributePerLinkCountLimit:  0,
		}),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", name))),
	)
	t.tracer = t.tp.Tracer("github.com/etbproject/etb/telemetry")
	return t, nil
}

// Enabled reports whether t records and exports spans.
func (t *Tracer) Enabled() bool { return t != nil && t.tp != nil }

// Flush exports every finished span now, waiting at most until ctx is done.
func (t *Tracer) Flush(ctx context.Context) error {
	if !t.Enabled() {
		return nil
	}
	if err := t.tp.ForceFlush(ctx); err != nil {
		return fmt.Errorf("telemetry: flush: %w", err)
	}
	return nil
}

// Shutdown exports every finished span, then stops the exporter, waiting at
// most until ctx is done. Spans started afterwards record nothing. It is safe
// to call more than once.
func (t *Tracer) Shutdown(ctx context.Context) error {
	if !t.Enabled() {
		return nil
	}
	err := t.tp.Shutdown(ctx)
	if t.client != nil {
		t.client.CloseIdleConnections()
	}
	if err != nil {
		return fmt.Errorf("telemetry: shutdown: %w", err)
	}
	return nil
}

// ExecutionAttrs identify one governed execution on its span.
type ExecutionAttrs struct {
	ExecutionID string
	TaskID      string
	TaskRootID  string
	PrincipalID string
	Kind        string
	Name        string
	// Digest is the action digest (action.Spec.Digest).
	Digest string
}

// AttrsFromAction returns the attributes of the execution of a, whose id is
// the execution id, with digest its action digest. It reads no argument.
func AttrsFromAction(a *action.Action, digest string) ExecutionAttrs {
	if a == nil {
		return ExecutionAttrs{Digest: digest}
	}
	return ExecutionAttrs{
		ExecutionID: a.ID,
		TaskID:      a.Task.ID,
		TaskRootID:  a.Task.RootID,
		PrincipalID: a.Principal.ID,
		Kind:        a.Action.Kind,
		Name:        a.Action.Name,
		Digest:      digest,
	}
}

// SpanName returns the name of the span of an execution: "etb.execute KIND
// NAME" (or "etb.execute KIND" without a name), each part cut to at most
// 256 bytes on a rune boundary.
func SpanName(kind, name string) string {
	n := "etb.execute " + truncate(kind, maxNameLen)
	if name != "" {
		n += " " + truncate(name, maxNameLen)
	}
	return n
}

// truncate cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Span is the span of one governed execution. A nil *Span is valid and does
// nothing. Its methods never fail and never block.
type Span struct {
	span trace.Span // nil when the Tracer records nothing
	// parent is the caller's traceparent, kept only when the Tracer records
	// nothing, so that Traceparent still propagates the caller's trace.
	parent string
}

// StartExecution starts the span of one governed execution and returns a
// context carrying it. The span is a child of traceparent when that is a
// valid W3C traceparent; an invalid one is ignored (the span then has
// etb.traceparent.invalid=true) and an empty one means none. Without a
// traceparent the parent is the span in ctx, if any, else the span is a
// root. It never returns an error and never reads the action's arguments.
//
// When t records nothing (t nil, or built without an endpoint),
// StartExecution returns ctx unchanged and a Span whose only use is
// Traceparent, which forwards the caller's valid traceparent (a nil Span,
// allocating nothing, when there is no traceparent).
func (t *Tracer) StartExecution(ctx context.Context, traceparent string, a ExecutionAttrs) (context.Context, *Span) {
	if !t.Enabled() {
		if traceparent == "" {
			return ctx, nil
		}
		return ctx, &Span{parent: traceparent}
	}
	invalid := false
	if strings.Trim(traceparent, " \t") != "" {
		if sc, err := ParseTraceparent(traceparent); err == nil {
			ctx = trace.ContextWithRemoteSpanContext(ctx, sc)
		} else {
			invalid = true
		}
	}
	attrs := make([]attribute.KeyValue, 0, 8)
	attrs = append(attrs,
		attribute.String(AttrExecutionID, a.ExecutionID),
		attribute.String(AttrTaskID, a.TaskID),
		attribute.String(AttrTaskRootID, a.TaskRootID),
		attribute.String(AttrPrincipalID, a.PrincipalID),
		attribute.String(AttrActionKind, a.Kind),
		attribute.String(AttrActionName, a.Name),
		attribute.String(AttrActionDigest, a.Digest),
	)
	if invalid {
		attrs = append(attrs, attribute.Bool(AttrTraceparentInvalid, true))
	}
	ctx, s := t.tracer.Start(ctx, SpanName(a.Kind, a.Name),
		trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithAttributes(attrs...),
	)
	return ctx, &Span{span: s}
}

// Decision records the policy decision: etb.decision, etb.rule (the rule ids,
// comma-joined), etb.policy.hash and etb.policy.engine. Rule messages are
// not recorded.
func (s *Span) Decision(d policy.Decision) {
	if s == nil || s.span == nil {
		return
	}
	s.span.SetAttributes(
		attribute.String(AttrDecision, d.Decision),
		attribute.String(AttrRule, strings.Join(d.Rules, ",")),
		attribute.String(AttrPolicyHash, d.Policy.BundleHash),
		attribute.String(AttrPolicyEngine, d.Policy.Engine),
	)
}

// Grant records the id (jti) of the grant the execution runs under. Pass the
// jti, never the token.
func (s *Span) Grant(jti string) {
	if s == nil || s.span == nil {
		return
	}
	s.span.SetAttributes(attribute.String(AttrGrantID, jti))
}

// End records the outcome (for example "ok", "denied", "failed",
// "interrupted") and ends the span. With err nil the status is Ok; otherwise
// it is Error, described by the outcome, and error.type names the Go type
// of the error (see errorType). The error's message is never recorded: it may
// quote arguments or output. Calls after the first do nothing.
func (s *Span) End(outcome string, err error) {
	if s == nil || s.span == nil {
		return
	}
	s.span.SetAttributes(attribute.String(AttrOutcome, outcome))
	if err != nil {
		desc := outcome
		if desc == "" {
			desc = "error"
		}
		s.span.SetAttributes(attribute.String(AttrErrorType, errorType(err)))
		s.span.SetStatus(codes.Error, desc)
	} else {
		s.span.SetStatus(codes.Ok, "")
	}
	s.span.End()
}

// errorType returns the Go type of the first error in err's Unwrap chain
// that is not a fmt.Errorf wrapper, or of the last one if all are: the type
// that says what failed, for example *fs.PathError.
func errorType(err error) string {
	for {
		typ := fmt.Sprintf("%T", err)
		next := errors.Unwrap(err)
		if next == nil || (typ != "*fmt.wrapError" && typ != "*fmt.wrapErrors") {
			return typ
		}
		err = next
	}
}

// SpanContext returns the span's context; it is invalid for a nil Span or
// one of a Tracer that records nothing.
func (s *Span) SpanContext() trace.SpanContext {
	if s == nil || s.span == nil {
		return trace.SpanContext{}
	}
	return s.span.SpanContext()
}

// Traceparent returns the W3C traceparent header value that makes a
// downstream call (for example to the upstream MCP server) a child of this
// span. When the Tracer records nothing it forwards the caller's
// traceparent, re-encoded as version 00, if that was valid. It returns ""
// when there is nothing to propagate.
func (s *Span) Traceparent() string {
	if s == nil {
		return ""
	}
	if s.span == nil {
		sc, err := ParseTraceparent(s.parent)
		if err != nil {
			return ""
		}
		return FormatTraceparent(sc)
	}
	return FormatTraceparent(s.span.SpanContext())
}

// ErrTraceparent is wrapped by every error of ParseTraceparent.
var ErrTraceparent = errors.New("malformed traceparent")

// ParseTraceparent parses a W3C Trace Context (level 1) traceparent header
// value, "VERSION-TRACEID-PARENTID-FLAGS", strictly:
//
//   - every field is lower-case hex; VERSION is 2 digits and not "ff";
//   - TRACEID is 32 digits and PARENTID 16, neither all zeros;
//   - for version 00 the value is exactly 55 characters;
//   - for a later version the value is at least 55 characters and, if
//     longer, the 56th is "-" (the fields a later version adds are ignored).
//
// Leading and trailing spaces and tabs (HTTP optional white space) are
// ignored. Of the flags only "sampled" is kept: level 1 defines no other.
// The returned SpanContext is marked remote. Any error wraps ErrTraceparent.
func ParseTraceparent(s string) (trace.SpanContext, error) {
	v := strings.Trim(s, " \t")
	fail := func(why string) (trace.SpanContext, error) {
		return trace.SpanContext{}, fmt.Errorf("%w %q: %s", ErrTraceparent, truncate(s, 128), why)
	}
	if len(v) < 55 {
		return fail("shorter than 55 characters")
	}
	if !lowerHex(v[0:2]) {
		return fail("version is not 2 lower-case hex digits")
	}
	switch {
	case v[0:2] == "ff":
		return fail("version ff is invalid")
	case v[0:2] == "00" && len(v) != 55:
		return fail("version 00 must be exactly 55 characters")
	case len(v) > 55 && v[55] != '-':
		return fail("fields after the flags must be separated by '-'")
	}
	if v[2] != '-' || v[35] != '-' || v[52] != '-' {
		return fail("fields must be separated by '-' at offsets 2, 35 and 52")
	}
	tid, sid, flags := v[3:35], v[36:52], v[53:55]
	if !lowerHex(tid) || !lowerHex(sid) || !lowerHex(flags) {
		return fail("trace-id, parent-id and flags must be lower-case hex")
	}
	traceID, err := trace.TraceIDFromHex(tid)
	if err != nil {
		return fail("trace-id is all zeros")
	}
	spanID, err := trace.SpanIDFromHex(sid)
	if err != nil {
		return fail("parent-id is all zeros")
	}
	f := unhex(flags[0])<<4 | unhex(flags[1])
	return trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    traceID,
		SpanID:     spanID,
		TraceFlags: trace.TraceFlags(f) & trace.FlagsSampled,
		Remote:     true,
	}), nil
}

// FormatTraceparent returns the version 00 traceparent of sc, or "" if sc is
// not valid. Only the sampled flag is emitted.
func FormatTraceparent(sc trace.SpanContext) string {
	if !sc.IsValid() {
		return ""
	}
	flags := "00"
	if sc.IsSampled() {
		flags = "01"
	}
	return "00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-" + flags
}

// lowerHex reports whether s is non-empty and all lower-case hex digits.
func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return len(s) > 0
}

// unhex returns the value of the lower-case hex digit c.
func unhex(c byte) byte {
	if c <= '9' {
		return c - '0'
	}
	return c - 'a' + 10
}
