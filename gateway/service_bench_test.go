package gateway_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/etbproject/etb/client"
	"github.com/etbproject/etb/enforce"
)

// BenchmarkRevocationToDead measures, over mTLS with a real `sleep 600`
// per iteration, the time from POST /v1/revoke returning to the governed
// process being dead (enforce.Result.EndedAt: the process was reaped after
// its tree was killed). The goal is p99 ≤ 250 ms. Run with
//
//	go test ./gateway/ -run '^$' -bench RevocationToDead -benchtime 100x
func BenchmarkRevocationToDead(b *testing.B) {
	ctx := context.Background()
	e := newEnv(b, b.TempDir(), 0)
	agent, admin := e.client("/agent/a"), e.client("/admin/ops")
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		done := make(chan *client.RunResult, 1)
		go func() {
			res, err := agent.RunCommand(ctx, client.RunRequest{Argv: []string{"sleep", "600"}, Cwd: os.TempDir()})
			if err != nil {
				b.Error(err)
			}
			done <- res
		}()
		id := waitRunning(b, e)
		b.StartTimer()
		if _, err := admin.Revoke(ctx, client.RevokeRequest{Execution: id}); err != nil {
			b.Fatal(err)
		}
		returned := time.Now()
		res := <-done
		b.StopTimer()
		if res == nil || res.Reason != client.ReasonRevoked {
			b.Fatalf("run: %+v", res)
		}
		lat = append(lat, max(0, res.Result.EndedAt.Sub(returned)))
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
}

// waitRunning waits until the newest execution's start is in the ledger.
func waitRunning(tb testing.TB, e *testEnv) string {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		list, err := e.g.List(context.Background(), 1)
		if err == nil && len(list) == 1 && list[0].Outcome == "running" {
			return list[0].ID
		}
	}
	tb.Fatal("no execution started")
	return ""
}

// BenchmarkServiceIntents measures governed decisions over HTTPS with mTLS
// (decision + signed grant + durable ledger append), from 64 concurrent
// clients (32 per core on 2 cores), each with its own SVID and connection.
//
//	go test ./gateway/ -run '^$' -bench ServiceIntents -benchtime 5000x
func BenchmarkServiceIntents(b *testing.B) {
	ctx := context.Background()
	e := newEnv(b, b.TempDir(), 0)
	spec, err := enforce.DescribeExec([]string{"echo", "bench"}, os.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	var mu sync.Mutex
	var n int
	clients := make(chan *client.Client, 64)
	for i := range 64 {
		clients <- e.client(fmt.Sprintf("/agent/b%d", i))
	}
	lat := make([]time.Duration, 0, b.N)
	b.SetParallelism(32)
	before := e.g.LogStats()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c := <-clients
		var mine []time.Duration
		for pb.Next() {
			t0 := time.Now()
			a, err := c.Decide(ctx, spec, client.Task{})
			if err != nil || !a.Permitted() {
				b.Errorf("decide: %v", err)
				return
			}
			mine = append(mine, time.Since(t0))
		}
		mu.Lock()
		lat = append(lat, mine...)
		n += len(mine)
		mu.Unlock()
	})
	b.StopTimer()
	slices.Sort(lat)
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "decisions/s")
	if st := e.g.LogStats(); st.Batches > before.Batches {
		b.ReportMetric(float64(st.Entries-before.Entries)/float64(st.Batches-before.Batches), "entries/batch")
	}
}
