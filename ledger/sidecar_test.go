package ledger

import (
	"context"
	"errors"
	"sync"
	"testing"
)

// A sidecar's rows commit with the entries, at the right index, even when
// concurrent appends are grouped into one batch; a failing sidecar fails
// its whole batch and nothing of it is written.
func TestAppendWithSidecar(t *testing.T) {
	ctx := context.Background()
	f := newLog(t)
	if _, err := f.db.ExecContext(ctx, `CREATE TABLE side(idx INTEGER PRIMARY KEY, tag TEXT)`); err != nil {
		t.Fatal(err)
	}
	side := func(tag string) Sidecar {
		return func(ctx context.Context, tx AppendTx, first uint64) error {
			ex, ok := tx.(SQLExecer)
			if !ok {
				return errors.New("storage has no SQL")
			}
			_, err := ex.ExecContext(ctx, `INSERT INTO side(idx, tag) VALUES(?, ?)`, int64(first), tag)
			return err
		}
	}
	var wg sync.WaitGroup
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			first, err := f.log.AppendWith(ctx, side(string(entryData(i))), entryData(i), entryData(1000+i))
			if err != nil {
				t.Error(err)
				return
			}
			var tag string
			if err := f.db.QueryRowContext(ctx, `SELECT tag FROM side WHERE idx = ?`, int64(first)).Scan(&tag); err != nil || tag != string(entryData(i)) {
				t.Errorf("sidecar row at %d: %q %v", first, tag, err)
			}
			got, err := f.log.Entry(ctx, first)
			if err != nil || string(got) != string(entryData(i)) {
				t.Errorf("entry %d: %q %v", first, got, err)
			}
		}(i)
	}
	wg.Wait()
	before, _ := f.log.Checkpoint(ctx)
	boom := errors.New("boom")
	if _, err := f.log.AppendWith(ctx, func(context.Context, AppendTx, uint64) error { return boom }, entryData(5000)); !errors.Is(err, boom) {
		t.Fatalf("failing sidecar: %v", err)
	}
	after, _ := f.log.Checkpoint(ctx)
	if after.Size != before.Size {
		t.Fatalf("a failed sidecar's batch was committed: size %d → %d", before.Size, after.Size)
	}
	if _, err := f.log.Append(ctx, entryData(6000)); err != nil {
		t.Fatalf("append after a failed sidecar: %v", err)
	}
}

// AppendOwned appends what AppendWith does, with its sidecar, and refuses
// the same batches.
func TestAppendOwned(t *testing.T) {
	ctx := context.Background()
	f := newLog(t)
	ran := false
	side := func(context.Context, AppendTx, uint64) error { ran = true; return nil }
	first, err := f.log.AppendOwned(ctx, side, [][]byte{entryData(1), entryData(2)})
	if err != nil || !ran {
		t.Fatalf("AppendOwned: %v, sidecar ran %v", err, ran)
	}
	for i, want := range [][]byte{entryData(1), entryData(2)} {
		got, err := f.log.Entry(ctx, first+uint64(i))
		if err != nil || string(got) != string(want) {
			t.Fatalf("entry %d: %q %v", first+uint64(i), got, err)
		}
	}
	for _, bad := range [][][]byte{nil, {{}}, {make([]byte, MaxEntrySize+1)}} {
		if _, err := f.log.AppendOwned(ctx, nil, bad); err == nil {
			t.Fatalf("AppendOwned of %d entries (first %d bytes) succeeded", len(bad), func() int {
				if len(bad) == 0 {
					return 0
				}
				return len(bad[0])
			}())
		}
	}
}
