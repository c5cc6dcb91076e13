// Package otlptest is a real OTLP/HTTP trace receiver for tests: it decodes
// each protobuf ExportTraceServiceRequest (plain or gzip) and keeps the
// spans, the raw bodies and the request headers, so a test can assert what
// a tracer really sent over the wire.
//
// It is test support only: it must never be imported by non-test code.
package otlptest

import (
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// Collector receives OTLP/HTTP trace exports at /v1/traces.
type Collector struct {
	srv *httptest.Server

	mu       sync.Mutex
	requests int
	bodies   [][]byte
	headers  []http.Header
	spans    []*tracepb.Span
	services []string
	failures []string
}

// New starts a collector, closed when the test ends.
func New(t testing.TB) *Collector {
	c := &Collector{}
	c.srv = httptest.NewServer(http.HandlerFunc(c.handle))
	t.Cleanup(c.srv.Close)
	return c
}

func (c *Collector) handle(w http.ResponseWriter, r *http.Request) {
	fail := func(code int, format string, args ...any) {
		c.mu.Lock()
		c.failures = append(c.failures, fmt.Sprintf(format, args...))
		c.mu.Unlock()
		http.Error(w, "bad request", code)
	}
	if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" {
		fail(http.StatusNotFound, "%s %s", r.Method, r.URL.Path)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/x-protobuf" {
		fail(http.StatusUnsupportedMediaType, "content type %q", ct)
		return
	}
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			fail(http.StatusBadRequest, "gzip: %v", err)
			return
		}
		body = zr
	}
	raw, err := io.ReadAll(body)
	if err != nil {
		fail(http.StatusBadRequest, "read: %v", err)
		return
	}
	var req coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(raw, &req); err != nil {
		fail(http.StatusBadRequest, "decode: %v", err)
		return
	}
	c.mu.Lock()
	c.requests++
	c.bodies = append(c.bodies, raw)
	c.headers = append(c.headers, r.Header.Clone())
	for _, rs := range req.GetResourceSpans() {
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				c.services = append(c.services, kv.GetValue().GetStringValue())
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			c.spans = append(c.spans, ss.GetSpans()...)
		}
	}
	c.mu.Unlock()
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.Write(out)
}

// Endpoint is the traces URL to export to.
func (c *Collector) Endpoint() string { return c.srv.URL + "/v1/traces" }

// Snapshot returns the spans received so far, the number of export
// requests and the malformed requests seen.
func (c *Collector) Snapshot() (spans []*tracepb.Span, requests int, failures []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*tracepb.Span(nil), c.spans...), c.requests, append([]string(nil), c.failures...)
}

// Bodies returns the raw (decompressed) request bodies received.
func (c *Collector) Bodies() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]byte(nil), c.bodies...)
}

// Headers returns the headers of every request received.
func (c *Collector) Headers() []http.Header {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]http.Header(nil), c.headers...)
}

// Services returns the service.name of every resource received.
func (c *Collector) Services() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.services...)
}

// Attrs returns a span's attributes by key.
func Attrs(s *tracepb.Span) map[string]*commonpb.AnyValue {
	m := make(map[string]*commonpb.AnyValue)
	for _, kv := range s.GetAttributes() {
		m[kv.GetKey()] = kv.GetValue()
	}
	return m
}
