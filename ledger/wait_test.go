package ledger

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

func TestOrigin(t *testing.T) {
	f := newLog(t)
	if got := f.log.Origin(); got != testOrigin {
		t.Fatalf("Origin() = %q, want %q", got, testOrigin)
	}
}

// TestWaitCheckpoint: WaitCheckpoint returns a checkpoint covering the
// entry (from memory when this Log committed it, else the first stored one
// whose size exceeds its index), waits for entries
// not yet appended, including by another Log on the same storage, and
// gives up with the context.
func TestWaitCheckpoint(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ledger.db")
	f := openLog(t, path)
	if _, err := f.log.Append(ctx, entryData(0), entryData(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.log.Append(ctx, entryData(2)); err != nil {
		t.Fatal(err)
	}
	// This Log committed size 3 last: it covers every index.
	for _, tt := range []struct{ index, size uint64 }{{0, 3}, {1, 3}, {2, 3}} {
		cp, err := f.log.WaitCheckpoint(ctx, tt.index)
		if err != nil {
			t.Fatal(err)
		}
		if cp.Size != tt.size {
			t.Errorf("WaitCheckpoint(%d) size %d, want %d", tt.index, cp.Size, tt.size)
		}
		if _, err := ParseCheckpoint(cp.Note, f.v); err != nil {
			t.Errorf("WaitCheckpoint(%d): %v", tt.index, err)
		}
	}
	// Another Log on the same storage has no checkpoint in memory: it finds
	// the first stored checkpoint covering each index.
	other := openLog(t, path)
	for _, tt := range []struct{ index, size uint64 }{{0, 2}, {1, 2}, {2, 3}} {
		cp, err := other.log.WaitCheckpoint(ctx, tt.index)
		if err != nil || cp.Size != tt.size {
			t.Errorf("other Log: WaitCheckpoint(%d) size %d (%v), want %d", tt.index, cp.Size, err, tt.size)
		}
	}

	// Not yet appended: times out.
	short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	if _, err := f.log.WaitCheckpoint(short, 3); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitCheckpoint(3) on a log of 3: %v, want deadline exceeded", err)
	}

	// Appended later by this Log, and by another Log on the same file.
	for _, by := range []*fixture{f, openLog(t, path)} {
		cp0, _ := f.log.Checkpoint(ctx)
		got := make(chan Checkpoint, 1)
		go func() {
			cp, err := f.log.WaitCheckpoint(ctx, cp0.Size)
			if err != nil {
				t.Error(err)
			}
			got <- cp
		}()
		time.Sleep(10 * time.Millisecond)
		if _, err := by.log.Append(ctx, entryData(int(cp0.Size))); err != nil {
			t.Fatal(err)
		}
		select {
		case cp := <-got:
			if cp.Size != cp0.Size+1 {
				t.Fatalf("WaitCheckpoint(%d) = size %d, want %d", cp0.Size, cp.Size, cp0.Size+1)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("WaitCheckpoint did not return after the append")
		}
	}
}
