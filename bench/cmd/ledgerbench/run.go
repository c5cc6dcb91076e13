package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/etbproject/etb/bench/internal/measure"
)

// worker is one appender goroutine's state: its entry template and the
// histogram shard it records into.
type worker struct {
	id       int
	shard    *shard
	template []byte
}

// shard is a pair of latency histograms shared by a few workers. Workers
// are spread over at most maxShards shards, so that the harness's memory
// does not grow with -concurrency (a histogram is about 30 KiB).
type shard struct {
	mu      sync.Mutex
	durable *measure.Histogram
	covered *measure.Histogram
}

const maxShards = 16

func (w *worker) recordDurable(d time.Duration) {
	w.shard.mu.Lock()
	w.shard.durable.Record(d)
	w.shard.mu.Unlock()
}

func (w *worker) recordCovered(d time.Duration) {
	w.shard.mu.Lock()
	w.shard.covered.Record(d)
	w.shard.mu.Unlock()
}

// entry returns a fresh entry of the configured size for sequence number
// seq: seq and the worker id in the first 12 bytes, then the worker's
// pseudo-random filler, so every entry of a run is distinct.
func (w *worker) entry(seq uint64) []byte {
	e := make([]byte, len(w.template))
	copy(e, w.template)
	binary.BigEndian.PutUint64(e, seq)
	binary.BigEndian.PutUint32(e[8:], uint32(w.id))
	return e
}

// appendOne appends the entry with sequence number seq and records its
// latencies in w. It returns the log index the entry got.
type appendOne func(ctx context.Context, w *worker, seq uint64) (uint64, error)

// driveResult is what drive measured.
type driveResult struct {
	entries uint64
	elapsed time.Duration
	durable *measure.Histogram
	covered *measure.Histogram
}

// drive runs c.Concurrency workers calling one until c.Entries entries have
// been issued or c.Duration has passed, whichever comes first (a zero limit
// is no limit). Every entry issued must be acknowledged: the first error
// stops the run and is returned. acked, if not nil, counts acknowledged
// entries as they come.
func drive(ctx context.Context, c *config, one appendOne, acked *atomic.Uint64) (*driveResult, error) {
	if acked == nil {
		acked = new(atomic.Uint64)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Uint64
	var lastAck atomic.Int64 // nanoseconds since start
	start := time.Now()
	var deadline time.Time
	if c.Duration > 0 {
		deadline = start.Add(c.Duration)
	}
	shards := make([]*shard, min(c.Concurrency, maxShards))
	for i := range shards {
		shards[i] = &shard{durable: measure.NewHistogram(), covered: measure.NewHistogram()}
	}
	var wg sync.WaitGroup
	for i := range c.Concurrency {
		w := &worker{
			id:       i,
			shard:    shards[i%len(shards)],
			template: make([]byte, c.Size),
		}
		r := mrand.NewChaCha8([32]byte{byte(i), byte(i >> 8), byte(i >> 16), byte(i >> 24)})
		r.Read(w.template)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				seq := next.Add(1) - 1
				if c.Entries > 0 && seq >= c.Entries {
					return
				}
				if !deadline.IsZero() && time.Now().After(deadline) {
					return
				}
				if _, err := one(ctx, w, seq); err != nil {
					cancel(fmt.Errorf("append of entry %d: %w", seq, err))
					return
				}
				acked.Add(1)
				now := int64(time.Since(start))
				for {
					old := lastAck.Load()
					if now <= old || lastAck.CompareAndSwap(old, now) {
						break
					}
				}
			}
		}()
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	res := &driveResult{
		entries: acked.Load(),
		elapsed: time.Duration(lastAck.Load()),
		durable: measure.NewHistogram(),
		covered: measure.NewHistogram(),
	}
	for _, sh := range shards {
		res.durable.Merge(sh.durable)
		res.covered.Merge(sh.covered)
	}
	return res, nil
}

func summary(h *measure.Histogram) Latency {
	return Latency{N: h.Count(), P50: h.Quantile(0.50), P99: h.Quantile(0.99), Max: h.Max()}
}

// newKey returns a fresh Ed25519 private key.
func newKey() (ed25519.PrivateKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return priv, nil
}

// pending is an entry whose durable acknowledgement has come but whose
// coverage by a published checkpoint has not been seen yet.
type pending struct {
	idx uint64
	t0  int64 // UnixNano of the start of its append
}

// coverTracker measures, for entries handed to it once durable, the time
// until a published checkpoint covers them. One goroutine (run) waits for
// the lowest pending index to be covered, then records every pending entry
// the checkpoint it got covers; so its memory is proportional to the
// entries not yet covered, and its error is the awaiter's poll period.
type coverTracker struct {
	mu   sync.Mutex
	in   []pending
	wake chan struct{}
	hist *measure.Histogram
}

func newCoverTracker() *coverTracker {
	return &coverTracker{wake: make(chan struct{}, 1), hist: measure.NewHistogram()}
}

// add hands a durable entry to the tracker.
func (t *coverTracker) add(idx uint64, t0 time.Time) {
	t.mu.Lock()
	t.in = append(t.in, pending{idx: idx, t0: t0.UnixNano()})
	t.mu.Unlock()
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

func (t *coverTracker) take(h *pendingHeap) {
	t.mu.Lock()
	in := t.in
	t.in = nil
	t.mu.Unlock()
	for _, p := range in {
		h.push(p)
	}
}

// run records coverage until done is closed and every entry added before
// is covered. await(ctx, idx) must block until a checkpoint covering idx is
// published and return that checkpoint's size.
func (t *coverTracker) run(ctx context.Context, done <-chan struct{}, await func(ctx context.Context, idx uint64) (uint64, error)) error {
	var h pendingHeap
	for {
		t.take(&h)
		if h.len() == 0 {
			select {
			case <-t.wake:
				continue
			case <-done:
				t.take(&h)
				if h.len() == 0 {
					return nil
				}
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		low := h.min().idx
		size, err := await(ctx, low)
		if err != nil {
			return fmt.Errorf("await coverage of entry %d: %w", low, err)
		}
		if size <= low {
			return fmt.Errorf("awaiter returned a checkpoint of size %d, which does not cover entry %d", size, low)
		}
		now := time.Now().UnixNano()
		t.take(&h)
		for h.len() > 0 && h.min().idx < size {
			p := h.pop()
			t.hist.Record(time.Duration(now - p.t0))
		}
	}
}

// pendingHeap is a min-heap of pending entries by index.
type pendingHeap struct{ s []pending }

func (h *pendingHeap) len() int           { return len(h.s) }
func (h *pendingHeap) min() pending       { return h.s[0] }
func (h *pendingHeap) less(i, j int) bool { return h.s[i].idx < h.s[j].idx }

func (h *pendingHeap) push(p pending) {
	h.s = append(h.s, p)
	for i := len(h.s) - 1; i > 0; {
		parent := (i - 1) / 2
		if !h.less(i, parent) {
			break
		}
		h.s[i], h.s[parent] = h.s[parent], h.s[i]
		i = parent
	}
}

func (h *pendingHeap) pop() pending {
	top := h.s[0]
	last := len(h.s) - 1
	h.s[0] = h.s[last]
	h.s = h.s[:last]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < len(h.s) && h.less(l, m) {
			m = l
		}
		if r < len(h.s) && h.less(r, m) {
			m = r
		}
		if m == i {
			break
		}
		h.s[i], h.s[m] = h.s[m], h.s[i]
		i = m
	}
	if len(h.s) == 0 {
		h.s = nil // let a drained heap's backing array go
	}
	return top
}

var errShortLog = errors.New("log is shorter than the acknowledged appends")
