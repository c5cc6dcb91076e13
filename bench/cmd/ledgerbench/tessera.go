package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/etbproject/etb/bench/internal/measure"
	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/storage/posix"
	"golang.org/x/mod/sumdb/note"
)

const tesseraOrigin = "bench.tessera.local/ledgerbench"

// runTessera measures Tessera's POSIX log with its default batching and
// checkpoint interval unless the -tessera-* flags override them. Durable is
// the resolution of the future Add returns ("durably sequenced"); covered
// is when tessera.PublicationAwaiter sees a published checkpoint whose size
// exceeds the index. The awaiting is done by one side goroutine (see
// coverTracker), not by the appenders: an appender that awaited publication
// inline would be blocked for up to the checkpoint interval (10 s by
// default), capping throughput at concurrency/interval.
func runTessera(ctx context.Context, c *config) (*Result, error) {
	skey, vkey, err := note.GenerateKey(rand.Reader, tesseraOrigin)
	if err != nil {
		return nil, err
	}
	signer, err := note.NewSigner(skey)
	if err != nil {
		return nil, err
	}
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	driver, err := posix.New(ctx, posix.Config{Path: filepath.Join(c.Dir, "tessera")})
	if err != nil {
		return nil, fmt.Errorf("posix driver: %w", err)
	}
	opts := tessera.NewAppendOptions().WithCheckpointSigner(signer)
	if c.TesseraCheckpointInterval > 0 {
		opts.WithCheckpointInterval(c.TesseraCheckpointInterval)
	}
	if c.TesseraBatchMaxAge > 0 || c.TesseraBatchMaxSize > 0 {
		size, age := uint(tessera.DefaultBatchMaxSize), tessera.DefaultBatchMaxAge
		if c.TesseraBatchMaxSize > 0 {
			size = c.TesseraBatchMaxSize
		}
		if c.TesseraBatchMaxAge > 0 {
			age = c.TesseraBatchMaxAge
		}
		opts.WithBatching(size, age)
	}
	appender, shutdown, reader, err := tessera.NewAppender(ctx, driver, opts)
	if err != nil {
		return nil, fmt.Errorf("tessera appender: %w", err)
	}
	awaiter := tessera.NewPublicationAwaiter(ctx, reader.ReadCheckpoint, c.TesseraPoll)

	// await returns the size of the first published checkpoint covering
	// idx, after checking its signature.
	await := func(ctx context.Context, idx uint64) (uint64, error) {
		fut := func() (tessera.Index, error) { return tessera.Index{Index: idx}, nil }
		_, raw, err := awaiter.Await(ctx, fut)
		if err != nil {
			return 0, err
		}
		cp, _, _, err := log.ParseCheckpoint(raw, tesseraOrigin, verifier)
		if err != nil {
			return 0, fmt.Errorf("published checkpoint: %w", err)
		}
		return cp.Size, nil
	}

	tracker := newCoverTracker()
	var pushbacks atomic.Uint64
	one := func(ctx context.Context, w *worker, seq uint64) (uint64, error) {
		e := w.entry(seq)
		t0 := time.Now()
		for {
			i, err := appender.Add(ctx, tessera.NewEntry(e))()
			if errors.Is(err, tessera.ErrPushback) {
				pushbacks.Add(1)
				time.Sleep(time.Millisecond)
				continue
			}
			if err != nil {
				return 0, err
			}
			w.recordDurable(time.Since(t0))
			tracker.add(i.Index, t0)
			return i.Index, nil
		}
	}

	done := make(chan struct{})
	trackErr := make(chan error, 1)
	peak := measure.StartPeakSampler(10 * time.Millisecond)
	go func() { trackErr <- tracker.run(ctx, done, await) }()
	res, err := drive(ctx, c, one, nil)
	close(done)
	if err != nil {
		cancel()
		<-trackErr
		peak.Stop()
		return nil, err
	}
	if err := <-trackErr; err != nil {
		peak.Stop()
		return nil, err
	}
	peakHeap := peak.Stop()
	if err := shutdown(ctx); err != nil {
		return nil, fmt.Errorf("tessera shutdown: %w", err)
	}
	raw, err := reader.ReadCheckpoint(ctx)
	if err != nil {
		return nil, err
	}
	cp, _, _, err := log.ParseCheckpoint(raw, tesseraOrigin, verifier)
	if err != nil {
		return nil, fmt.Errorf("final checkpoint: %w", err)
	}
	if cp.Size < res.entries {
		return nil, fmt.Errorf("%w: checkpoint size %d, %d appends acknowledged", errShortLog, cp.Size, res.entries)
	}
	if n := tracker.hist.Count(); n != res.entries {
		return nil, fmt.Errorf("coverage measured for %d entries, %d acknowledged", n, res.entries)
	}
	return &Result{
		System:    "tessera",
		Entries:   res.entries,
		Elapsed:   res.elapsed,
		Durable:   summary(res.durable),
		Covered:   summary(tracker.hist),
		PeakHeap:  peakHeap,
		Pushbacks: pushbacks.Load(),
		Note: fmt.Sprintf("tessera.PublicationAwaiter (poll %s) in one side goroutine, from the start of Add; checkpoint interval %s",
			c.TesseraPoll, cmp(c.TesseraCheckpointInterval, tessera.DefaultCheckpointInterval)),
	}, nil
}

func cmp(v, def time.Duration) time.Duration {
	if v > 0 {
		return v
	}
	return def
}
