package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
)

func testConfig(t *testing.T) *config {
	t.Helper()
	var c config
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	c.flags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	c.Dir = t.TempDir()
	return &c
}

func TestConfigArgsRoundTrip(t *testing.T) {
	c := testConfig(t)
	c.Entries, c.Size, c.Concurrency, c.Duration = 7, 100, 3, 2*time.Second
	c.TesseraCheckpointInterval, c.TesseraBatchMaxAge, c.TesseraBatchMaxSize, c.TesseraPoll = time.Second, 5*time.Millisecond, 16, time.Millisecond
	var back config
	fs := flag.NewFlagSet("child", flag.ContinueOnError)
	back.flags(fs)
	if err := fs.Parse(c.args()); err != nil {
		t.Fatal(err)
	}
	back.Systems, back.Verbose, back.Memory, back.Every = c.Systems, c.Verbose, c.Memory, c.Every
	if back != *c {
		t.Fatalf("flags round trip: got %+v, want %+v", back, *c)
	}
}

func TestConfigCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*config)
		bad  string
	}{
		{"defaults", func(*config) {}, ""},
		{"tiny entries", func(c *config) { c.Size = 15 }, "-size"},
		{"oversized entries", func(c *config) { c.Size = 65536 }, "-size"},
		{"no appenders", func(c *config) { c.Concurrency = 0 }, "-concurrency"},
		{"no limit", func(c *config) { c.Duration, c.Entries = 0, 0 }, "must be set"},
		{"negative duration", func(c *config) { c.Duration = -time.Second }, "-duration"},
		{"unknown system", func(c *config) { c.Systems = "etb,trillian" }, "trillian"},
		{"memory every 0", func(c *config) { c.Memory, c.Every = true, 0 }, "-every"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig(t)
			tc.edit(c)
			err := c.check()
			if tc.bad == "" && err != nil {
				t.Fatalf("check() = %v, want nil", err)
			}
			if tc.bad != "" && (err == nil || !strings.Contains(err.Error(), tc.bad)) {
				t.Fatalf("check() = %v, want an error mentioning %q", err, tc.bad)
			}
		})
	}
}

func TestPendingHeap(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var h pendingHeap
	var want []uint64
	for range 1000 {
		i := r.Uint64N(500)
		h.push(pending{idx: i})
		want = append(want, i)
	}
	prev := uint64(0)
	for n := 0; h.len() > 0; n++ {
		p := h.pop()
		if p.idx < prev {
			t.Fatalf("pop %d returned %d after %d", n, p.idx, prev)
		}
		prev = p.idx
	}
	if h.s != nil {
		t.Fatal("drained heap keeps its backing array")
	}
}

// TestCoverTracker: every entry handed over is recorded exactly once, with
// the time until the await that covered it returned.
func TestCoverTracker(t *testing.T) {
	ctx := context.Background()
	tr := newCoverTracker()
	var mu sync.Mutex
	published := uint64(0) // size of the "published checkpoint"
	cond := sync.NewCond(&mu)
	await := func(ctx context.Context, idx uint64) (uint64, error) {
		mu.Lock()
		defer mu.Unlock()
		for published <= idx {
			cond.Wait()
		}
		return published, nil
	}
	done := make(chan struct{})
	errc := make(chan error, 1)
	go func() { errc <- tr.run(ctx, done, await) }()
	start := time.Now()
	for i := range uint64(300) {
		tr.add(i, start)
		if i%100 == 99 {
			time.Sleep(5 * time.Millisecond)
			mu.Lock()
			published = i + 1
			cond.Broadcast()
			mu.Unlock()
		}
	}
	close(done)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if n := tr.hist.Count(); n != 300 {
		t.Fatalf("recorded %d coverages, want 300", n)
	}
	if tr.hist.Quantile(0) < 5*time.Millisecond {
		t.Fatalf("fastest coverage %s, but nothing was published before 5ms", tr.hist.Quantile(0))
	}
}

// TestCoverTrackerFailsClosed: an awaiter that returns a checkpoint not
// covering the entry, or an error, stops the measurement with an error.
func TestCoverTrackerFailsClosed(t *testing.T) {
	for _, tc := range []struct {
		name  string
		await func(context.Context, uint64) (uint64, error)
		want  string
	}{
		{"short checkpoint", func(_ context.Context, idx uint64) (uint64, error) { return idx, nil }, "does not cover"},
		{"await error", func(context.Context, uint64) (uint64, error) { return 0, errors.New("boom") }, "boom"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := newCoverTracker()
			tr.add(5, time.Now())
			done := make(chan struct{})
			close(done)
			err := tr.run(context.Background(), done, tc.await)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("run() = %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

// TestRunEtbSmall runs the etb side for a fixed number of entries: all are
// acknowledged, every latency is recorded, and the log holds them (runEtb
// checks the checkpoint size).
func TestRunEtbSmall(t *testing.T) {
	c := testConfig(t)
	c.Entries, c.Duration, c.Concurrency, c.Size = 400, 0, 8, 128
	r, err := runEtb(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	if r.Entries != 400 || r.Durable.N != 400 || r.Covered.N != 400 {
		t.Fatalf("entries %d, durable samples %d, covered samples %d; want 400 each", r.Entries, r.Durable.N, r.Covered.N)
	}
	if r.Rate() <= 0 || r.Durable.P50 <= 0 || r.Covered.P50 < r.Durable.P50 || r.Batches == 0 || r.PeakHeap == 0 {
		t.Fatalf("implausible result %+v", r)
	}
}

// TestRunTesseraSmall runs the Tessera side with short batching and its
// minimum checkpoint interval so that it finishes quickly.
func TestRunTesseraSmall(t *testing.T) {
	c := testConfig(t)
	c.Entries, c.Duration, c.Concurrency, c.Size = 200, 0, 16, 128
	c.TesseraBatchMaxAge, c.TesseraCheckpointInterval, c.TesseraPoll = 5*time.Millisecond, 100*time.Millisecond, 5*time.Millisecond
	r, err := runTessera(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	if r.Entries != 200 || r.Durable.N != 200 || r.Covered.N != 200 {
		t.Fatalf("entries %d, durable samples %d, covered samples %d; want 200 each", r.Entries, r.Durable.N, r.Covered.N)
	}
	if r.Covered.P50 < r.Durable.P50 {
		t.Fatalf("covered p50 %s below durable p50 %s", r.Covered.P50, r.Durable.P50)
	}
}

// TestDriveStopsOnError: the first failed append ends the run with its
// error; nothing is reported as measured.
func TestDriveStopsOnError(t *testing.T) {
	c := testConfig(t)
	c.Entries, c.Duration, c.Concurrency = 1000, 0, 4
	boom := errors.New("disk on fire")
	_, err := drive(context.Background(), c, func(_ context.Context, w *worker, seq uint64) (uint64, error) {
		if seq == 50 {
			return 0, boom
		}
		return seq, nil
	}, nil)
	if !errors.Is(err, boom) {
		t.Fatalf("drive() = %v, want %v", err, boom)
	}
}

func TestEntriesAreDistinct(t *testing.T) {
	c := testConfig(t)
	c.Entries, c.Duration, c.Concurrency, c.Size = 2000, 0, 7, 64
	var mu sync.Mutex
	seen := map[string]bool{}
	_, err := drive(context.Background(), c, func(_ context.Context, w *worker, seq uint64) (uint64, error) {
		e := w.entry(seq)
		if len(e) != 64 {
			t.Errorf("entry of %d bytes, want 64", len(e))
		}
		mu.Lock()
		defer mu.Unlock()
		if seen[string(e)] {
			return 0, errors.New("duplicate entry")
		}
		seen[string(e)] = true
		w.recordDurable(time.Microsecond)
		return seq, nil
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != 2000 {
		t.Fatalf("%d distinct entries, want 2000", len(seen))
	}
}

func TestPrintTable(t *testing.T) {
	etb := &Result{System: "etb", Entries: 1000, Elapsed: time.Second,
		Durable: Latency{P50: 2 * time.Millisecond, P99: 4 * time.Millisecond},
		Covered: Latency{P50: 3 * time.Millisecond, P99: 6 * time.Millisecond}, PeakRSS: 10 << 20, PeakHeap: 4 << 20, Batches: 10}
	tes := &Result{System: "tessera", Entries: 250, Elapsed: time.Second,
		Durable: Latency{P50: 200 * time.Millisecond, P99: 400 * time.Millisecond},
		Covered: Latency{P50: 3 * time.Second, P99: 6 * time.Second}, PeakRSS: 20 << 20, PeakHeap: 4 << 20}
	var b bytes.Buffer
	printTable(&b, []*Result{etb, tes})
	out := b.String()
	for _, want := range []string{"4.0× more", "100.0× lower", "1000.0× lower", "2.0× lower", "1.0× lower", "100.0 entries/commit"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}
