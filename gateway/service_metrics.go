package gateway

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Metrics in the Prometheus text exposition format (version 0.0.4), served
// at GET /metrics. They are written here rather than with client_golang,
// which would raise golang.org/x/net and x/text in the shared go.mod; the
// format is small and stable.

// latencyBuckets are the upper bounds (seconds) of the decision latency
// histogram: from 250 µs to 2.5 s.
var latencyBuckets = []float64{0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}

// metrics are the Service's counters. The zero value is ready.
type metrics struct {
	mu           sync.Mutex
	decisions    map[[2]string]uint64 // {decision, rule} → count
	events       map[string]uint64    // reported event type → count
	approvals    map[string]uint64    // ticket outcome → count
	revocations  uint64
	revokedExecs uint64
	latency      histogram
}

type histogram struct {
	counts []uint64 // per bucket, not cumulative
	sum    float64
	n      uint64
}

func (h *histogram) observe(v float64) {
	if h.counts == nil {
		h.counts = make([]uint64, len(latencyBuckets))
	}
	if i, _ := slices.BinarySearch(latencyBuckets, v); i < len(latencyBuckets) {
		h.counts[i]++
	}
	h.sum += v
	h.n++
}

func inc[K comparable](m *map[K]uint64, k K) {
	if *m == nil {
		*m = map[K]uint64{}
	}
	(*m)[k]++
}

// decision counts one decision (once per rule that produced it) and its
// latency, from the request's arrival to the durable record.
func (m *metrics) decision(decision string, rules []string, took time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(rules) == 0 {
		rules = []string{""}
	}
	for _, r := range rules {
		inc(&m.decisions, [2]string{decision, r})
	}
	m.latency.observe(took.Seconds())
}

func (m *metrics) event(typ string) {
	m.mu.Lock()
	inc(&m.events, typ)
	m.mu.Unlock()
}

func (m *metrics) approval(status string) {
	m.mu.Lock()
	inc(&m.approvals, status)
	m.mu.Unlock()
}

func (m *metrics) revocation(executions int) {
	m.mu.Lock()
	m.revocations++
	m.revokedExecs += uint64(executions)
	m.mu.Unlock()
}

// escapeLabel escapes a label value for the text format.
func escapeLabel(s string) string {
	return strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`).Replace(s)
}

func formatFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// write renders every metric; activeLeases is computed by the caller.
func (m *metrics) write(w io.Writer, activeLeases int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var b strings.Builder
	b.WriteString("# HELP etb_decisions_total Decisions made on intents, by decision and by each rule that produced it.\n# TYPE etb_decisions_total counter\n")
	keys := make([][2]string, 0, len(m.decisions))
	for k := range m.decisions {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b [2]string) int { return strings.Compare(a[0]+"\x00"+a[1], b[0]+"\x00"+b[1]) })
	for _, k := range keys {
		fmt.Fprintf(&b, "etb_decisions_total{decision=\"%s\",rule=\"%s\"} %d\n", escapeLabel(k[0]), escapeLabel(k[1]), m.decisions[k])
	}
	b.WriteString("# HELP etb_decision_duration_seconds Time from an intent's arrival to its durable decision (and grant).\n# TYPE etb_decision_duration_seconds histogram\n")
	var cum uint64
	for i, le := range latencyBuckets {
		if m.latency.counts != nil {
			cum += m.latency.counts[i]
		}
		fmt.Fprintf(&b, "etb_decision_duration_seconds_bucket{le=\"%s\"} %d\n", formatFloat(le), cum)
	}
	fmt.Fprintf(&b, "etb_decision_duration_seconds_bucket{le=\"+Inf\"} %d\n", m.latency.n)
	fmt.Fprintf(&b, "etb_decision_duration_seconds_sum %s\n", formatFloat(m.latency.sum))
	fmt.Fprintf(&b, "etb_decision_duration_seconds_count %d\n", m.latency.n)
	b.WriteString("# HELP etb_active_leases Executions in this gateway's memory holding an unexpired lease.\n# TYPE etb_active_leases gauge\n")
	fmt.Fprintf(&b, "etb_active_leases %d\n", activeLeases)
	b.WriteString("# HELP etb_revocations_total Revocation requests.\n# TYPE etb_revocations_total counter\n")
	fmt.Fprintf(&b, "etb_revocations_total %d\n", m.revocations)
	b.WriteString("# HELP etb_revoked_executions_total Executions revoked by revocation requests.\n# TYPE etb_revoked_executions_total counter\n")
	fmt.Fprintf(&b, "etb_revoked_executions_total %d\n", m.revokedExecs)
	b.WriteString("# HELP etb_events_total Execution events reported by enforcers, by type.\n# TYPE etb_events_total counter\n")
	for _, k := range slices.Sorted(mapKeys(m.events)) {
		fmt.Fprintf(&b, "etb_events_total{type=\"%s\"} %d\n", escapeLabel(k), m.events[k])
	}
	b.WriteString("# HELP etb_approvals_total Approval tickets closed, by outcome.\n# TYPE etb_approvals_total counter\n")
	for _, k := range slices.Sorted(mapKeys(m.approvals)) {
		fmt.Fprintf(&b, "etb_approvals_total{status=\"%s\"} %d\n", escapeLabel(k), m.approvals[k])
	}
	io.WriteString(w, b.String())
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// activeLeases counts cached executions with an unexpired lease that have
// not ended. An execution busy past the scrape's patience is skipped.
func (s *Service) activeLeases(ctx context.Context) int {
	s.mu.Lock()
	les := make([]*liveExec, 0, len(s.live))
	for _, le := range s.live {
		les = append(les, le)
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	now := s.now()
	n := 0
	for _, le := range les {
		select {
		case <-le.ready:
		default:
			continue
		}
		if le.err != nil || le.mu.LockContext(ctx) != nil {
			continue
		}
		if le.terminal == "" && le.revoked == "" && now.Before(le.lease) {
			n++
		}
		le.mu.Unlock()
	}
	return n
}

func (s *Service) handleMetrics(w http.ResponseWriter, r *http.Request, c *caller) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	s.metrics.write(w, s.activeLeases(r.Context()))
}
