package ledger

import (
	"context"
	"encoding/binary"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func benchEntry(i uint64) []byte {
	e := make([]byte, 512)
	binary.BigEndian.PutUint64(e, i)
	return e
}

// BenchmarkAppendSerial: one caller, one entry per Append, each durable.
func BenchmarkAppendSerial(b *testing.B) {
	f := newLog(b)
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if _, err := f.log.Append(ctx, benchEntry(uint64(i))); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "entries/s")
}

// BenchmarkAppendParallel: 64 callers per GOMAXPROCS, one entry per Append,
// coalesced by group commit. Reports throughput and the p50/p99 latency of
// append→durable, which is also append→covered by a signed checkpoint:
// Append returns after the transaction that holds both has committed.
var benchPar = 64

func BenchmarkAppendParallel(b *testing.B) {
	f := newLog(b)
	ctx := context.Background()
	var seq atomic.Uint64
	var mu sync.Mutex
	var lat []time.Duration
	b.SetParallelism(benchPar)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		var mine []time.Duration
		for pb.Next() {
			t0 := time.Now()
			if _, err := f.log.Append(ctx, benchEntry(seq.Add(1))); err != nil {
				b.Error(err)
				return
			}
			mine = append(mine, time.Since(t0))
		}
		mu.Lock()
		lat = append(lat, mine...)
		mu.Unlock()
	})
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "entries/s")
	if len(lat) > 0 {
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	}
	st := f.log.Stats()
	if st.Batches > 0 {
		b.ReportMetric(float64(st.Entries)/float64(st.Batches), "entries/batch")
	}
}
