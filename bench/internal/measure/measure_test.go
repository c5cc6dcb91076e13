package measure

import (
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"testing"
	"time"
)

func TestBucketBounds(t *testing.T) {
	// Every bucket's range is contiguous with the next, and bucketOf maps
	// both ends of a bucket back to it.
	for b := 0; b < numBuckets-1; b++ {
		lo, hi := bucketLow(b), bucketHigh(b)
		if lo > hi || hi+1 != bucketLow(b+1) {
			t.Fatalf("bucket %d = [%d, %d], next starts at %d", b, lo, hi, bucketLow(b+1))
		}
		if bucketOf(lo) != b || bucketOf(hi) != b {
			t.Fatalf("bucket %d = [%d, %d]: bucketOf(lo) = %d, bucketOf(hi) = %d", b, lo, hi, bucketOf(lo), bucketOf(hi))
		}
		if lo >= subCount && float64(hi-lo+1) > float64(lo)/subCount {
			t.Fatalf("bucket %d = [%d, %d] is wider than 1/%d of its lower bound", b, lo, hi, subCount)
		}
	}
	if got := bucketOf(math.MaxUint64); got != numBuckets-1 {
		t.Fatalf("bucketOf(MaxUint64) = %d, want %d", got, numBuckets-1)
	}
}

// TestQuantileAccuracy compares Quantile with exact order statistics on
// several distributions: the error must stay within 1/128 relative (plus
// one nanosecond of rounding).
func TestQuantileAccuracy(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		name string
		gen  func() time.Duration
	}{
		{"exact small", func() time.Duration { return time.Duration(r.IntN(60)) }},
		{"uniform ms", func() time.Duration { return time.Duration(r.Int64N(int64(50 * time.Millisecond))) }},
		{"exponential", func() time.Duration { return time.Duration(r.ExpFloat64() * float64(5*time.Millisecond)) }},
		{"bimodal", func() time.Duration {
			if r.IntN(100) < 97 {
				return time.Duration(2*time.Millisecond + time.Duration(r.IntN(1000)))
			}
			return 10*time.Second + time.Duration(r.IntN(1e6))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := NewHistogram()
			var all []time.Duration
			for range 50000 {
				d := tc.gen()
				h.Record(d)
				all = append(all, d)
			}
			slices.Sort(all)
			if h.Count() != uint64(len(all)) || h.Max() != all[len(all)-1] {
				t.Fatalf("count %d max %s, want %d and %s", h.Count(), h.Max(), len(all), all[len(all)-1])
			}
			for _, q := range []float64{0, 0.01, 0.5, 0.9, 0.99, 0.999, 1} {
				rank := max(int(math.Ceil(q*float64(len(all)))), 1)
				exact := all[rank-1]
				got := h.Quantile(q)
				if diff := math.Abs(float64(got - exact)); diff > float64(exact)/128+1 {
					t.Errorf("q%.3f = %s, exact %s (error %.0f ns)", q, got, exact, diff)
				}
			}
		})
	}
}

func TestMergeAndEmpty(t *testing.T) {
	a, b := NewHistogram(), NewHistogram()
	if a.Quantile(0.5) != 0 || a.Max() != 0 || a.Mean() != 0 {
		t.Fatal("empty histogram reports non-zero values")
	}
	for i := 1; i <= 100; i++ {
		a.Record(time.Duration(i) * time.Millisecond)
		b.Record(time.Duration(i+100) * time.Millisecond)
	}
	b.Record(-5) // counts as zero
	a.Merge(b)
	if a.Count() != 201 || a.Max() != 200*time.Millisecond {
		t.Fatalf("merged count %d max %s", a.Count(), a.Max())
	}
	if got := a.Quantile(0); got != 0 {
		t.Fatalf("q0 = %s, want 0 (the negative sample)", got)
	}
	if got := a.Quantile(0.5); got < 99*time.Millisecond || got > 102*time.Millisecond {
		t.Fatalf("median of 0..200ms = %s", got)
	}
}

func TestQuantilePanicsOutOfRange(t *testing.T) {
	for _, q := range []float64{-0.1, 1.1, math.NaN()} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Quantile(%v) did not panic", q)
				}
			}()
			NewHistogram().Quantile(q)
		}()
	}
}

func TestProcStatusAndHeap(t *testing.T) {
	rss, peak, err := ProcStatus()
	if err != nil {
		t.Fatal(err)
	}
	if rss == 0 || peak < rss {
		t.Fatalf("VmRSS %d, VmHWM %d: want 0 < RSS <= peak", rss, peak)
	}
	if _, peakOf, err := ProcStatusOf(os.Getpid()); err != nil || peakOf < peak {
		t.Fatalf("ProcStatusOf(self) peak %d, %v; ProcStatus peak %d", peakOf, err, peak)
	}
	if _, _, err := ProcStatusOf(-1); err == nil {
		t.Fatal("ProcStatusOf(-1) gave no error")
	}
	before := HeapBytes()
	keep := make([][]byte, 0, 64)
	p := StartPeakSampler(time.Millisecond)
	for range 64 {
		keep = append(keep, make([]byte, 1<<20))
	}
	time.Sleep(20 * time.Millisecond)
	peakHeap := p.Stop()
	if peakHeap < before+60<<20 {
		t.Fatalf("peak heap %d after allocating 64 MiB on top of %d", peakHeap, before)
	}
	_ = keep[63][0]
}

func TestKbField(t *testing.T) {
	for _, tc := range []struct {
		line string
		want uint64
		ok   bool
	}{
		{"VmRSS:\t   1234 kB", 1234 << 10, true},
		{"VmRSS: 1234", 0, false},
		{"VmRSS: x kB", 0, false},
		{"VmRSS: 1 MB", 0, false},
	} {
		got, err := kbField([]byte(tc.line))
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("kbField(%q) = %d, %v; want %d, ok=%t", tc.line, got, err, tc.want, tc.ok)
		}
	}
}

func TestStatCPU(t *testing.T) {
	for _, tc := range []struct {
		line string
		want time.Duration // negative: an error
	}{
		{"42 (etb) S 1 42 42 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 9 0 1000 0 0", 2810 * time.Millisecond},
		// The command name may hold spaces and parentheses.
		{"42 (a) b (c) R 1 42 42 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 1 0 0", 100 * time.Millisecond},
		{"42 (etb) S 1 42", -1},
		{"42 etb S 1 42 42 0 -1 0 0 0 0 0 7 3 0 0", -1},
		{"42 (etb) S 1 42 42 0 -1 0 0 0 0 0 x 3 0 0 20", -1},
	} {
		got, err := statCPU(42, []byte(tc.line))
		if tc.want < 0 {
			if err == nil {
				t.Errorf("statCPU(%q) = %v, want an error", tc.line, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("statCPU(%q) = %v, %v; want %v", tc.line, got, err, tc.want)
		}
	}
}

func TestProcessCPU(t *testing.T) {
	self0, err := SelfCPU()
	if err != nil {
		t.Fatal(err)
	}
	proc0, err := ProcessCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Burn 300 ms of CPU on this goroutine.
	x := uint64(1)
	for start := time.Now(); time.Since(start) < 300*time.Millisecond; {
		for range 10000 {
			x = x*6364136223846793005 + 1442695040888963407
		}
	}
	self1, err := SelfCPU()
	if err != nil {
		t.Fatal(err)
	}
	proc1, err := ProcessCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	ds, dp := self1-self0, proc1-proc0
	// The busy loop ran on this machine's CPU unless it was starved; both
	// counters see the same process, one to the tick (10 ms).
	if ds < 100*time.Millisecond || dp < 80*time.Millisecond {
		t.Fatalf("300 ms of work (x=%d): getrusage counted %v, /proc/self/stat %v", x, ds, dp)
	}
	if d := dp - ds; d > 50*time.Millisecond || d < -50*time.Millisecond {
		t.Fatalf("getrusage counted %v, /proc/self/stat %v: more than 50 ms apart", ds, dp)
	}
	if _, err := ProcessCPU(-1); err == nil {
		t.Fatal("ProcessCPU(-1) gave no error")
	}
}
