package gateway_test

import (
	"context"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/etbproject/etb/client"
	"github.com/etbproject/etb/enforce"
)

// scrape returns the samples of GET /metrics by "name{labels}".
func scrape(t *testing.T, e *testEnv) map[string]float64 {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: e.tlsFor("/admin/prom")}}
	resp, err := hc.Get(e.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("metrics: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if i < 0 || err != nil {
			t.Fatalf("bad sample line %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

func TestServiceMetrics(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, t.TempDir(), 0)
	agent, admin := e.client("/agent/a"), e.client("/admin/ops")
	echo, err := enforce.DescribeExec([]string{"echo", "m"}, os.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rm, err := enforce.DescribeExec([]string{"rm", "-rf", "/nonexistent-etb"}, os.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for range 3 {
		a, err := agent.Decide(ctx, echo, client.Task{})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, a.Execution)
	}
	if _, err := agent.Decide(ctx, rm, client.Task{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Revoke(ctx, client.RevokeRequest{Execution: ids[0]}); err != nil {
		t.Fatal(err)
	}
	m := scrape(t, e)
	for name, want := range map[string]float64{
		`etb_decisions_total{decision="permit",rule="allow-read-only"}`:       3,
		`etb_decisions_total{decision="deny",rule="forbid-recursive-delete"}`: 1,
		`etb_decision_duration_seconds_count`:                                 4,
		`etb_decision_duration_seconds_bucket{le="+Inf"}`:                     4,
		`etb_active_leases`:            2,
		`etb_revocations_total`:        1,
		`etb_revoked_executions_total`: 1,
	} {
		if got, ok := m[name]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", name, got, ok, want)
		}
	}
	if m["etb_decision_duration_seconds_sum"] <= 0 || m[`etb_decision_duration_seconds_bucket{le="2.5"}`] != 4 {
		t.Errorf("histogram: sum %v, le=2.5 %v", m["etb_decision_duration_seconds_sum"], m[`etb_decision_duration_seconds_bucket{le="2.5"}`])
	}
}
