package main

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/etbproject/etb/bench/internal/measure"
	"github.com/etbproject/etb/ledger"
)

const etbOrigin = "bench.etb.local/ledgerbench"

// checkpointWaiter is ledger.Log.WaitCheckpoint, when the ledger has it.
type checkpointWaiter interface {
	WaitCheckpoint(ctx context.Context, index uint64) (ledger.Checkpoint, error)
}

// etbLog is an etb ledger on a fresh SQLite file in dir.
type etbLog struct {
	log   *ledger.Log
	close func() error
}

func openEtb(ctx context.Context, dir string) (*etbLog, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	db, err := ledger.OpenSQLite(ctx, filepath.Join(dir, "ledger.db"))
	if err != nil {
		return nil, err
	}
	st, err := ledger.NewSQLiteStorage(ctx, db)
	if err != nil {
		db.Close()
		return nil, err
	}
	key, err := newKey()
	if err != nil {
		db.Close()
		return nil, err
	}
	signer, err := ledger.NewSigner(etbOrigin, key)
	if err != nil {
		db.Close()
		return nil, err
	}
	l, err := ledger.New(ctx, st, signer, etbOrigin)
	if err != nil {
		db.Close()
		return nil, err
	}
	var once sync.Once
	var cerr error
	return &etbLog{log: l, close: func() error {
		once.Do(func() {
			lerr := l.Close()
			if cerr = db.Close(); cerr == nil {
				cerr = lerr
			}
		})
		return cerr
	}}, nil
}

// etbAppend returns the appendOne of l: Append (durable: entry, tree nodes
// and a signed checkpoint committed and synced in one transaction), then
// WaitCheckpoint for the covering checkpoint if the ledger has it; without
// it Append's return is the coverage time, since its transaction committed
// a checkpoint covering the entry.
func etbAppend(l *ledger.Log, wait bool) (appendOne, string) {
	waiter, hasWait := any(l).(checkpointWaiter)
	note := "Append's return (ledger.Log has no WaitCheckpoint: Append commits a covering signed checkpoint in the same transaction)"
	if !wait {
		hasWait = false
		note = "Append's return (-etb-wait=false; Append commits a covering signed checkpoint in the same transaction)"
	}
	if hasWait {
		note = "ledger.Log.WaitCheckpoint(idx) called right after Append returns, in the appending goroutine"
	}
	return func(ctx context.Context, w *worker, seq uint64) (uint64, error) {
		e := w.entry(seq)
		t0 := time.Now()
		idx, err := l.Append(ctx, e)
		if err != nil {
			return 0, err
		}
		w.recordDurable(time.Since(t0))
		if hasWait {
			cp, err := waiter.WaitCheckpoint(ctx, idx)
			if err != nil {
				return 0, err
			}
			if cp.Size <= idx {
				return 0, fmt.Errorf("WaitCheckpoint(%d) returned a checkpoint of size %d", idx, cp.Size)
			}
		}
		w.recordCovered(time.Since(t0))
		return idx, nil
	}, note
}

func runEtb(ctx context.Context, c *config) (*Result, error) {
	el, err := openEtb(ctx, filepath.Join(c.Dir, "etb"))
	if err != nil {
		return nil, err
	}
	defer el.close()
	one, note := etbAppend(el.log, c.EtbWait)
	peak := measure.StartPeakSampler(10 * time.Millisecond)
	res, err := drive(ctx, c, one, nil)
	peakHeap := peak.Stop()
	if err != nil {
		return nil, err
	}
	cp, err := el.log.Checkpoint(ctx)
	if err != nil {
		return nil, err
	}
	if cp.Size < res.entries {
		return nil, fmt.Errorf("%w: checkpoint size %d, %d appends acknowledged", errShortLog, cp.Size, res.entries)
	}
	st := el.log.Stats()
	if err := el.close(); err != nil {
		return nil, err
	}
	return &Result{
		System:   "etb",
		Entries:  res.entries,
		Elapsed:  res.elapsed,
		Durable:  summary(res.durable),
		Covered:  summary(res.covered),
		PeakHeap: peakHeap,
		Batches:  st.Batches,
		Note:     note,
	}, nil
}

// runMemory appends c.Entries entries to an etb ledger from c.Concurrency
// goroutines and prints, every c.Every acknowledged entries, the live Go
// heap after a forced GC, RSS and the database size, to show whether memory
// grows with the log.
func runMemory(ctx context.Context, c *config, w io.Writer) error {
	el, err := openEtb(ctx, filepath.Join(c.Dir, "etb"))
	if err != nil {
		return err
	}
	defer el.close()
	one, _ := etbAppend(el.log, c.EtbWait)
	run := *c
	run.Duration = 0
	fmt.Fprintf(w, "ledgerbench -memory: %d entries of %d bytes, %d appenders, sample every %d, etb-wait=%t; GOMAXPROCS=%d, %s\n",
		c.Entries, c.Size, c.Concurrency, c.Every, c.EtbWait, runtime.GOMAXPROCS(0), runtime.Version())
	const rowFmt = "%12v %9v %20v %19v %11v %11v %12v\n"
	fmt.Fprintf(w, rowFmt, "entries", "elapsed", "entries/s (segment)", "live heap after GC", "RSS", "peak RSS", "database")

	var acked atomic.Uint64
	start := time.Now()
	lastN, lastT := uint64(0), start
	// sample prints one row; only the sampling goroutine calls it until
	// drive returns, then the final call below.
	sample := func(n uint64) error {
		now := time.Now()
		runtime.GC()
		live := measure.HeapBytes()
		rss, peak, err := measure.ProcStatus()
		if err != nil {
			return err
		}
		size, err := dirSize(c.Dir)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, rowFmt, n, now.Sub(start).Round(100*time.Millisecond),
			fmt.Sprintf("%.0f", float64(n-lastN)/now.Sub(lastT).Seconds()), mib(live), mib(rss), mib(peak), mib(size))
		lastN, lastT = n, now
		return nil
	}
	stop := make(chan struct{})
	sampled := make(chan error, 1)
	go func() {
		next := c.Every
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				sampled <- nil
				return
			case <-tick.C:
			}
			n := acked.Load()
			if n < next {
				continue
			}
			if err := sample(n); err != nil {
				sampled <- err
				return
			}
			for next <= n {
				next += c.Every
			}
		}
	}()
	res, err := drive(ctx, &run, one, &acked)
	close(stop)
	if serr := <-sampled; err == nil {
		err = serr
	}
	if err != nil {
		return err
	}
	if res.entries != lastN {
		if err := sample(res.entries); err != nil {
			return err
		}
	}
	cp, err := el.log.Checkpoint(ctx)
	if err != nil {
		return err
	}
	if cp.Size < res.entries {
		return fmt.Errorf("%w: checkpoint size %d, %d appends acknowledged", errShortLog, cp.Size, res.entries)
	}
	fmt.Fprintf(w, "done: %d entries in %s (%.0f entries/s), durable p50 %s p99 %s, checkpoint size %d\n",
		res.entries, res.elapsed.Round(time.Second), float64(res.entries)/res.elapsed.Seconds(),
		ms(res.durable.Quantile(0.5)), ms(res.durable.Quantile(0.99)), cp.Size)
	return el.close()
}

// dirSize returns the total size of the regular files under dir.
func dirSize(dir string) (uint64, error) {
	var total uint64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += uint64(info.Size())
		}
		return nil
	})
	return total, err
}
