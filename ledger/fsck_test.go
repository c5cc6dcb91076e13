package ledger

import (
	"bytes"
	"context"
	"database/sql"
	"strings"
	"testing"
)

// tamperLog returns a log of 600 entries appended in batches of 37 (so it
// has full and partial level-0 tiles, a level-1 tile and 18 checkpoints), a
// proof of entry 300 against the final checkpoint, and the entries.
func tamperLog(t *testing.T) (*fixture, Checkpoint, [][]byte) {
	t.Helper()
	ctx := context.Background()
	f := newLog(t)
	var all [][]byte
	for len(all) < 600 {
		var b [][]byte
		for i := 0; i < 37 && len(all)+len(b) < 600; i++ {
			b = append(b, entryData(len(all)+len(b)))
		}
		if _, err := f.log.Append(ctx, b...); err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	cp, err := f.log.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return f, cp, all
}

func dropTriggers(t *testing.T, db *sql.DB) {
	t.Helper()
	for _, tbl := range []string{"entries", "tiles", "checkpoints"} {
		for _, k := range []string{"immutable", "undeletable"} {
			if _, err := db.Exec("DROP TRIGGER ledger_" + tbl + "_" + k); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestFsckClean(t *testing.T) {
	ctx := context.Background()
	f, cp, _ := tamperLog(t)
	rep, err := Fsck(ctx, f.st, f.v)
	if err != nil {
		t.Fatal(err)
	}
	var rows, cps uint64
	f.db.QueryRow("SELECT COUNT(*) FROM ledger_tiles").Scan(&rows)
	f.db.QueryRow("SELECT COUNT(*) FROM ledger_checkpoints").Scan(&cps)
	if rep.Size != cp.Size || rep.Tiles != rows || rep.Checkpoints != cps {
		t.Fatalf("report %+v, want size %d, %d tiles, %d checkpoints", rep, cp.Size, rows, cps)
	}
	// An empty log is clean too, and a verifier of another key is refused.
	g := newLog(t)
	if _, err := Fsck(ctx, g.st, g.v); err != nil {
		t.Fatal(err)
	}
	if _, err := Fsck(ctx, f.st, testVerifier(t, testOrigin, testKey("other"))); err == nil {
		t.Fatal("Fsck accepted checkpoints with a verifier of another key")
	}
}

// TestFsckTamper: every change, deletion or insertion of an entry, tile or
// checkpoint row is found by Fsck, which names what is wrong; where a
// proof depends on the row, ProveEntry refuses to serve it, and a bundle
// proof issued before the change no longer verifies the stored entry.
func TestFsckTamper(t *testing.T) {
	ctx := context.Background()
	signer, _ := NewSigner(testOrigin, testKey("log"))
	cpNote := func(size uint64, root []byte) []byte {
		n, err := signNote(signer, testOrigin, size, root)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	tests := []struct {
		name  string
		sql   func(f *fixture, all [][]byte) (string, []any)
		want  string // in the Fsck error
		prove uint64 // entry whose ProveEntry must fail, or noProve
	}{
		{"change entry", func(_ *fixture, all [][]byte) (string, []any) {
			// Entries 296..332 are one row (one batch); forge entry 300.
			es := append([][]byte(nil), all[296:333]...)
			es[4] = []byte("forged")
			data, err := encodeEntryRow(es)
			if err != nil {
				t.Fatal(err)
			}
			return "UPDATE ledger_entries SET data = ? WHERE idx = 296", []any{data}
		}, "leaf hash of entry 300", 300},
		{"malformed entry row", func(*fixture, [][]byte) (string, []any) {
			return "UPDATE ledger_entries SET data = x'0005ff' WHERE idx = 296", nil
		}, "entry row at 296 is malformed", 300},
		{"entry row count changed", func(*fixture, [][]byte) (string, []any) {
			return "UPDATE ledger_entries SET count = 36 WHERE idx = 296", nil
		}, "entry row at 296 is malformed: 37 entries, its count says 36", 300},
		{"delete entry row", func(*fixture, [][]byte) (string, []any) {
			return "DELETE FROM ledger_entries WHERE idx = 296", nil
		}, "entry 296", 300},
		{"insert overlapping entry row", func(*fixture, [][]byte) (string, []any) {
			return "INSERT INTO ledger_entries (idx, count, data) VALUES (300, 1, x'000178')", nil
		}, "entry row at 300 (1 entries) overlaps", 300},
		{"insert partly overlapping entry row", func(*fixture, [][]byte) (string, []any) {
			return "INSERT INTO ledger_entries (idx, count, data) VALUES (320, 1, x'000178')", nil
		}, "entry row at 320 (1 entries) overlaps", 320},
		{"insert entry beyond the tree", func(*fixture, [][]byte) (string, []any) {
			return "INSERT INTO ledger_entries (idx, count, data) VALUES (600, 1, x'000101')", nil
		}, "entry row at index 600 is beyond", noProve},
		{"change leaf hash in full tile", func(*fixture, [][]byte) (string, []any) {
			return "UPDATE ledger_tiles SET hashes = ? WHERE level = 0 AND idx = 1 AND width = 256", []any{bytes.Repeat([]byte{7}, 256*32)}
		}, "tile row 0/001 (width 256): hash 0 does not match the leaf hash of entry 256", 300},
		{"change older partial tile", func(*fixture, [][]byte) (string, []any) {
			return "UPDATE ledger_tiles SET hashes = zeroblob(length(hashes)) WHERE level = 0 AND idx = 2 AND width = 43", nil
		}, "tile row 0/002 (width 43)", noProve},
		{"change level-1 tile", func(*fixture, [][]byte) (string, []any) {
			return "UPDATE ledger_tiles SET hashes = zeroblob(64) WHERE level = 1 AND idx = 0 AND width = 2", nil
		}, "tile row 1/000 (width 2): hash 0 does not match the recomputed tile 0/000", 300},
		{"delete tile", func(*fixture, [][]byte) (string, []any) {
			return "DELETE FROM ledger_tiles WHERE level = 0 AND idx = 1", nil
		}, "tile 0/001 of the tree of size 600 is not stored", 300},
		{"delete full tile row, partial rows remain", func(*fixture, [][]byte) (string, []any) {
			return "DELETE FROM ledger_tiles WHERE level = 0 AND idx = 1 AND width = 256", nil
		}, "tile 0/001: widest row has", 300},
		{"insert tile row beyond the tree", func(*fixture, [][]byte) (string, []any) {
			return "INSERT INTO ledger_tiles (level, idx, width, hashes) VALUES (0, 3, 1, zeroblob(32))", nil
		}, "tile row 0/003 is beyond the tree", noProve},
		{"insert wider partial tile row", func(*fixture, [][]byte) (string, []any) {
			return "INSERT INTO ledger_tiles (level, idx, width, hashes) VALUES (0, 2, 89, zeroblob(2848))", nil
		}, "tile row 0/002 (width 89) is beyond the tree", noProve},
		{"change checkpoint signature", func(f *fixture, _ [][]byte) (string, []any) {
			var n []byte
			if err := f.db.QueryRow("SELECT note FROM ledger_checkpoints WHERE size = 111").Scan(&n); err != nil {
				t.Fatal(err)
			}
			if i := len(n) - 6; n[i] == 'A' {
				n[i] = 'B'
			} else {
				n[i] = 'A'
			}
			return "UPDATE ledger_checkpoints SET note = ? WHERE size = 111", []any{n}
		}, "checkpoint row at size 111", noProve},
		{"change checkpoint root, validly signed", func(_ *fixture, all [][]byte) (string, []any) {
			return "UPDATE ledger_checkpoints SET note = ? WHERE size = 111", []any{cpNote(111, refRoot(all[:110]))}
		}, "checkpoint at size 111 has root", noProve},
		{"change latest checkpoint", func(_ *fixture, all [][]byte) (string, []any) {
			return "UPDATE ledger_checkpoints SET note = ? WHERE size = 600", []any{cpNote(600, refRoot(all[:599]))}
		}, "checkpoint at size 600 has root", 300},
		{"delete checkpoint", func(*fixture, [][]byte) (string, []any) {
			return "DELETE FROM ledger_checkpoints WHERE size = 111", nil
		}, "committed with a checkpoint at size 111, which is not stored", noProve},
		{"delete latest checkpoint", func(*fixture, [][]byte) (string, []any) {
			return "DELETE FROM ledger_checkpoints WHERE size = 600", nil
		}, "entry row at index 592 is beyond the latest checkpoint (size 592)", 300},
		{"insert validly signed checkpoint the log never made", func(_ *fixture, all [][]byte) (string, []any) {
			return "INSERT INTO ledger_checkpoints (size, note) VALUES (100, ?)", []any{cpNote(100, refRoot(all[:100]))}
		}, "checkpoint at size 100 has no partial tile row", noProve},
		{"insert checkpoint beyond the tree", func(_ *fixture, all [][]byte) (string, []any) {
			return "INSERT INTO ledger_checkpoints (size, note) VALUES (601, ?)", []any{cpNote(601, refRoot(all))}
		}, "entries of tile 0/002", noProve},
		{"insert checkpoint with a foreign signature", func(_ *fixture, all [][]byte) (string, []any) {
			other, _ := NewSigner(testOrigin, testKey("other"))
			n, _ := signNote(other, testOrigin, 100, refRoot(all[:100]))
			return "INSERT INTO ledger_checkpoints (size, note) VALUES (100, ?)", []any{n}
		}, "checkpoint row at size 100", noProve},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, cp, all := tamperLog(t)
			text, err := f.log.ProveEntry(ctx, 300, cp)
			if err != nil {
				t.Fatal(err)
			}
			dropTriggers(t, f.db)
			q, args := tt.sql(f, all)
			res, err := f.db.ExecContext(ctx, q, args...)
			if err != nil {
				t.Fatal(err)
			}
			if n, _ := res.RowsAffected(); n == 0 {
				t.Fatalf("%s: changed no row", q)
			}
			_, err = Fsck(ctx, f.st, f.v)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Fsck error %v, want it to contain %q", err, tt.want)
			}
			t.Log(err)
			if tt.prove != noProve {
				if _, err := f.log.ProveEntry(ctx, tt.prove, cp); err == nil {
					t.Errorf("ProveEntry(%d) served a proof from the tampered store", tt.prove)
				}
				// The proof issued before the change does not verify what
				// the store now holds (or the store no longer holds it).
				if e, err := f.log.Entry(ctx, tt.prove); err == nil && !bytes.Equal(e, all[tt.prove]) {
					if _, err := VerifyProof(text, e, f.v); err == nil {
						t.Errorf("the tampered entry %d verifies against its bundle proof", tt.prove)
					}
				}
			}
		})
	}
}

const noProve = ^uint64(0)

// TestFsckWhileAppending: on a log that grows during the check, Fsck is
// either clean or says the log grew; it never reports damage.
func TestFsckWhileAppending(t *testing.T) {
	ctx := context.Background()
	f, _, _ := tamperLog(t)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 600; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := f.log.Append(ctx, entryData(i)); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	grew := 0
	for i := 0; i < 20; i++ {
		_, err := Fsck(ctx, f.st, f.v)
		if err != nil && !strings.Contains(err.Error(), "grew from size") {
			t.Fatalf("Fsck on a growing log: %v", err)
		}
		if err != nil {
			grew++
		}
	}
	close(stop)
	<-done
	t.Logf("%d of 20 runs saw the log grow", grew)
	if _, err := Fsck(ctx, f.st, f.v); err != nil {
		t.Fatal(err)
	}
}

// TestFsckReplacedRows: INSERT OR REPLACE gets past the immutability
// triggers (see SQLiteStorage); Fsck still finds each replaced row.
func TestFsckReplacedRows(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		q    string
		want string
	}{
		{"INSERT OR REPLACE INTO ledger_entries (idx, count, data) SELECT idx, count, zeroblob(length(data)) FROM ledger_entries WHERE idx = 296", "entry row at 296 is malformed"},
		{"INSERT OR REPLACE INTO ledger_tiles (level, idx, width, hashes) VALUES (0, 0, 256, zeroblob(8192))", "tile row 0/000 (width 256): hash 0"},
		{"INSERT OR REPLACE INTO ledger_checkpoints (size, note) SELECT 111, note FROM ledger_checkpoints WHERE size = 148", "checkpoint row at size 111 holds a checkpoint of size 148"},
	} {
		f, _, _ := tamperLog(t)
		if _, err := f.db.ExecContext(ctx, tt.q); err != nil {
			t.Fatalf("%s: %v", tt.q, err)
		}
		if _, err := Fsck(ctx, f.st, f.v); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Fsck error %v, want it to contain %q", tt.q, err, tt.want)
		}
	}
}
