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
