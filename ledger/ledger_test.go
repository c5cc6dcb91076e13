package ledger

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"golang.org/x/mod/sumdb/note"
)

const testOrigin = "example.com/etb-test"

// testKey returns a deterministic Ed25519 key derived from label.
func testKey(label string) ed25519.PrivateKey {
	seed := sha256.Sum256([]byte("etb ledger test key " + label))
	return ed25519.NewKeyFromSeed(seed[:])
}

func testVerifier(t testing.TB, origin string, key ed25519.PrivateKey) note.Verifier {
	t.Helper()
	vkey, err := VerifierKey(origin, key.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

type fixture struct {
	path string
	db   *sql.DB
	st   *SQLiteStorage
	log  *Log
	v    note.Verifier
}

// openLog opens (or reopens) the log in the SQLite file path.
func openLog(t testing.TB, path string) *fixture {
	t.Helper()
	ctx := context.Background()
	db, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := NewSQLiteStorage(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	key := testKey("log")
	signer, err := NewSigner(testOrigin, key)
	if err != nil {
		t.Fatal(err)
	}
	l, err := New(ctx, st, signer, testOrigin)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{path: path, db: db, st: st, log: l, v: testVerifier(t, testOrigin, key)}
	t.Cleanup(func() { f.log.Close(); f.st.Close(); f.db.Close() })
	return f
}

func newLog(t testing.TB) *fixture {
	return openLog(t, filepath.Join(t.TempDir(), "ledger.db"))
}

func entryData(i int) []byte {
	return []byte(fmt.Sprintf(`{"v":"etb.event/v1","seq":%d}`, i))
}

// refRoot computes the RFC 6962 root of entries in memory.
func refRoot(entries [][]byte) []byte {
	if len(entries) == 0 {
		return hasher.EmptyRoot()
	}
	f := &compact.RangeFactory{Hash: hasher.HashChildren}
	r := f.NewEmptyRange(0)
	for _, e := range entries {
		r.Append(hasher.HashLeaf(e), nil)
	}
	root, _ := r.GetRootHash(nil)
	return root
}

func TestEmptyLogCheckpoint(t *testing.T) {
	f := newLog(t)
	cp, err := f.log.Checkpoint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if cp.Size != 0 || !bytes.Equal(cp.Root, hasher.EmptyRoot()) {
		t.Fatalf("empty checkpoint = size %d root %x", cp.Size, cp.Root)
	}
	got, err := ParseCheckpoint(cp.Note, f.v)
	if err != nil {
		t.Fatal(err)
	}
	if got.Origin != testOrigin || got.Size != 0 {
		t.Fatalf("parsed %+v", got)
	}
}

// TestAppendAndProve appends one entry at a time up to 100, then batches up
// to a few hundred, and checks every inclusion proof at every checkpoint,
// the text form, and consistency between checkpoints.
func TestAppendAndProve(t *testing.T) {
	ctx := context.Background()
	f := newLog(t)
	var all [][]byte
	cps := []Checkpoint{}
	add := func(batch [][]byte) {
		first, err := f.log.Append(ctx, batch...)
		if err != nil {
			t.Fatal(err)
		}
		if first != uint64(len(all)) {
			t.Fatalf("Append returned first %d, want %d", first, len(all))
		}
		all = append(all, batch...)
		cp, err := f.log.Checkpoint(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if cp.Size != uint64(len(all)) || !bytes.Equal(cp.Root, refRoot(all)) {
			t.Fatalf("checkpoint size %d root %x, want size %d root %x", cp.Size, cp.Root, len(all), refRoot(all))
		}
		if _, err := ParseCheckpoint(cp.Note, f.v); err != nil {
			t.Fatal(err)
		}
		cps = append(cps, cp)
	}
	for i := 0; i < 100; i++ {
		add([][]byte{entryData(i)})
	}
	for len(all) < 420 {
		n := 37
		batch := make([][]byte, n)
		for j := range batch {
			batch[j] = entryData(len(all) + j)
		}
		add(batch)
	}
	for _, cp := range cps {
		step := uint64(1)
		if cp.Size > 100 {
			step = 7
		}
		for i := uint64(0); i < cp.Size; i += step {
			hashes, err := f.log.InclusionProof(ctx, i, cp.Size)
			if err != nil {
				t.Fatalf("InclusionProof(%d, %d): %v", i, cp.Size, err)
			}
			if err := proof.VerifyInclusion(hasher, i, cp.Size, hasher.HashLeaf(all[i]), hashes, cp.Root); err != nil {
				t.Fatalf("VerifyInclusion(%d, %d): %v", i, cp.Size, err)
			}
			text, err := f.log.ProveEntry(ctx, i, cp)
			if err != nil {
				t.Fatalf("ProveEntry(%d, %d): %v", i, cp.Size, err)
			}
			got, err := VerifyProof(text, all[i], f.v)
			if err != nil {
				t.Fatalf("VerifyProof(%d, %d): %v", i, cp.Size, err)
			}
			if got.Size != cp.Size || !bytes.Equal(got.Root, cp.Root) {
				t.Fatalf("VerifyProof returned size %d, want %d", got.Size, cp.Size)
			}
		}
	}
	// Inclusion at sizes that are not checkpoints, against an in-memory root.
	for _, size := range []uint64{3, 65, 129, 200, 255, 256, 257, 419} {
		root := refRoot(all[:size])
		for _, i := range []uint64{0, size / 2, size - 1} {
			hashes, err := f.log.InclusionProof(ctx, i, size)
			if err != nil {
				t.Fatal(err)
			}
			if err := proof.VerifyInclusion(hasher, i, size, hasher.HashLeaf(all[i]), hashes, root); err != nil {
				t.Fatalf("VerifyInclusion(%d, %d): %v", i, size, err)
			}
		}
	}
	for i := 0; i < len(cps); i += 3 {
		for j := i; j < len(cps); j += 5 {
			p, err := f.log.ConsistencyProof(ctx, cps[i].Size, cps[j].Size)
			if err != nil {
				t.Fatal(err)
			}
			if err := VerifyConsistency(cps[i], cps[j], p); err != nil {
				t.Fatalf("consistency %d -> %d: %v", cps[i].Size, cps[j].Size, err)
			}
			if cps[i].Size < cps[j].Size && cps[i].Size > 0 {
				// The same proof must not verify against a wrong older root.
				bad := cps[i]
				bad.Root = cps[j].Root
				if err := VerifyConsistency(bad, cps[j], p); err == nil {
					t.Fatalf("consistency %d -> %d verified with a wrong older root", cps[i].Size, cps[j].Size)
				}
			}
		}
	}
	es, err := f.log.Entries(ctx, 10, 20)
	if err != nil {
		t.Fatal(err)
	}
	for k, e := range es {
		if !bytes.Equal(e, all[10+k]) {
			t.Fatalf("Entries[%d] = %q, want %q", 10+k, e, all[10+k])
		}
	}
}

func TestReadBounds(t *testing.T) {
	ctx := context.Background()
	f := newLog(t)
	if _, err := f.log.Append(ctx, entryData(0), entryData(1), entryData(2)); err != nil {
		t.Fatal(err)
	}
	cp, _ := f.log.Checkpoint(ctx)
	tests := []struct {
		name string
		fn   func() error
	}{
		{"entry past end", func() error { _, err := f.log.Entry(ctx, 3); return err }},
		{"entry max", func() error { _, err := f.log.Entry(ctx, ^uint64(0)); return err }},
		{"entries past end", func() error { _, err := f.log.Entries(ctx, 2, 4); return err }},
		{"entries reversed", func() error { _, err := f.log.Entries(ctx, 2, 1); return err }},
		{"inclusion index = size", func() error { _, err := f.log.InclusionProof(ctx, 3, 3); return err }},
		{"inclusion size past end", func() error { _, err := f.log.InclusionProof(ctx, 0, 4); return err }},
		{"consistency reversed", func() error { _, err := f.log.ConsistencyProof(ctx, 2, 1); return err }},
		{"consistency past end", func() error { _, err := f.log.ConsistencyProof(ctx, 1, 4); return err }},
		{"prove past size", func() error { _, err := f.log.ProveEntry(ctx, 3, cp); return err }},
		{"prove with foreign origin", func() error {
			c := cp
			c.Origin = "other.example/log"
			_, err := f.log.ProveEntry(ctx, 0, c)
			return err
		}},
		{"prove with forged root", func() error {
			c := cp
			c.Root = bytes.Repeat([]byte{1}, 32)
			_, err := f.log.ProveEntry(ctx, 0, c)
			return err
		}},
		{"prove with unknown size", func() error {
			c := cp
			c.Size = 2
			_, err := f.log.ProveEntry(ctx, 0, c)
			return err
		}},
	}
	for _, tt := range tests {
		if err := tt.fn(); err == nil {
			t.Errorf("%s: no error", tt.name)
		}
	}
	if _, err := f.log.Entry(ctx, 3); !errors.Is(err, ErrNotFound) {
		t.Errorf("Entry(3) error %v, want ErrNotFound", err)
	}
}

func TestAppendRejects(t *testing.T) {
	ctx := context.Background()
	f := newLog(t)
	tooMany := make([][]byte, MaxBatchEntries+1)
	for i := range tooMany {
		tooMany[i] = []byte("x")
	}
	bigs := make([][]byte, 65)
	for i := range bigs {
		bigs[i] = make([]byte, MaxEntrySize)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	tests := []struct {
		name    string
		ctx     context.Context
		entries [][]byte
	}{
		{"none", ctx, nil},
		{"empty entry", ctx, [][]byte{[]byte("a"), {}}},
		{"oversize entry", ctx, [][]byte{make([]byte, MaxEntrySize+1)}},
		{"too many entries", ctx, tooMany},
		{"too many bytes", ctx, bigs},
		{"canceled context", canceled, [][]byte{[]byte("a")}},
	}
	for _, tt := range tests {
		if _, err := f.log.Append(tt.ctx, tt.entries...); err == nil {
			t.Errorf("%s: Append succeeded", tt.name)
		}
	}
	// A maximal entry is fine.
	if _, err := f.log.Append(ctx, make([]byte, MaxEntrySize)); err != nil {
		t.Fatal(err)
	}
	cp, _ := f.log.Checkpoint(ctx)
	if cp.Size != 1 {
		t.Fatalf("size %d after rejected appends, want 1", cp.Size)
	}
	f.log.Close()
	if _, err := f.log.Append(ctx, []byte("late")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v, want ErrClosed", err)
	}
	if err := f.log.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestNewRejects(t *testing.T) {
	ctx := context.Background()
	f := newLog(t)
	key := testKey("log")
	other, _ := NewSigner("other.example/log", key)
	if _, err := New(ctx, f.st, other, testOrigin); err == nil {
		t.Error("New accepted a signer whose name is not the origin")
	}
	if _, err := NewSigner("bad origin", key); err == nil {
		t.Error("NewSigner accepted an origin with a space")
	}
	if _, err := NewSigner("a+b", key); err == nil {
		t.Error("NewSigner accepted an origin with '+'")
	}
	if _, err := NewSigner(testOrigin, key[:10]); err == nil {
		t.Error("NewSigner accepted a short key")
	}
	// A log with another origin refuses to open on the same store.
	s2, _ := NewSigner("other.example/log", key)
	if _, err := New(ctx, f.st, s2, "other.example/log"); err == nil || !strings.Contains(err.Error(), "origin") {
		t.Fatalf("foreign-origin New: %v, want origin error", err)
	}
}

// TestConcurrentAppend checks group commit: 64 goroutines, unique contiguous
// indices, fewer transactions than entries.
func TestConcurrentAppend(t *testing.T) {
	ctx := context.Background()
	f := newLog(t)
	const workers, per = 64, 40
	var mu sync.Mutex
	got := map[uint64][]byte{}
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < per; i++ {
				e := []byte(fmt.Sprintf("worker %d entry %d", w, i))
				idx, err := f.log.Append(ctx, e)
				if err != nil {
					errc <- err
					return
				}
				mu.Lock()
				if _, dup := got[idx]; dup {
					errc <- fmt.Errorf("index %d given twice", idx)
				}
				got[idx] = e
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	n := uint64(workers * per)
	cp, err := f.log.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cp.Size != n {
		t.Fatalf("size %d, want %d", cp.Size, n)
	}
	all, err := f.log.Entries(ctx, 0, n)
	if err != nil {
		t.Fatal(err)
	}
	for i := uint64(0); i < n; i++ {
		if !bytes.Equal(all[i], got[i]) {
			t.Fatalf("entry %d = %q, Append said %q", i, all[i], got[i])
		}
	}
	if !bytes.Equal(cp.Root, refRoot(all)) {
		t.Fatal("root does not match the entries")
	}
	st := f.log.Stats()
	t.Logf("%d entries in %d transactions", st.Entries, st.Batches)
	if st.Entries != n || st.Batches >= n {
		t.Fatalf("stats %+v: want %d entries in fewer transactions", st, n)
	}
	var count int
	f.db.QueryRow("SELECT COUNT(*) FROM ledger_checkpoints").Scan(&count)
	if uint64(count) != st.Batches+1 {
		t.Fatalf("%d checkpoints stored, want %d (one per batch plus the empty tree)", count, st.Batches+1)
	}
}

func TestReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ledger.db")
	f := openLog(t, path)
	var all [][]byte
	for i := 0; i < 50; i++ {
		all = append(all, entryData(i))
	}
	if _, err := f.log.Append(ctx, all...); err != nil {
		t.Fatal(err)
	}
	before, _ := f.log.Checkpoint(ctx)
	f.log.Close()
	f.db.Close()

	g := openLog(t, path)
	after, err := g.log.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.Size != before.Size || !bytes.Equal(after.Root, before.Root) || !bytes.Equal(after.Note, before.Note) {
		t.Fatalf("reopened checkpoint size %d, want %d", after.Size, before.Size)
	}
	es, err := g.log.Entries(ctx, 0, 50)
	if err != nil {
		t.Fatal(err)
	}
	for i := range es {
		if !bytes.Equal(es[i], all[i]) {
			t.Fatalf("entry %d changed across reopen", i)
		}
	}
	first, err := g.log.Append(ctx, entryData(50), entryData(51))
	if err != nil || first != 50 {
		t.Fatalf("Append after reopen = %d, %v; want 50", first, err)
	}
	all = append(all, entryData(50), entryData(51))
	cp, _ := g.log.Checkpoint(ctx)
	if !bytes.Equal(cp.Root, refRoot(all)) {
		t.Fatal("root after reopen and append does not match entries")
	}
	p, err := g.log.ConsistencyProof(ctx, before.Size, cp.Size)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyConsistency(before, cp, p); err != nil {
		t.Fatal(err)
	}
}

// faultStorage wraps a real storage and fails one write step of every
// append transaction once armed.
type faultStorage struct {
	Storage
	failAt string // "entries", "tiles", "checkpoint", "commit" or ""
}

type faultTx struct {
	AppendTx
	failAt string
}

var errInjected = errors.New("injected storage failure")

func (s *faultStorage) BeginAppend(ctx context.Context) (AppendTx, error) {
	tx, err := s.Storage.BeginAppend(ctx)
	if err != nil {
		return nil, err
	}
	return &faultTx{AppendTx: tx, failAt: s.failAt}, nil
}

func (t *faultTx) WriteEntries(ctx context.Context, first uint64, e [][]byte) error {
	if err := t.AppendTx.WriteEntries(ctx, first, e); err != nil || t.failAt == "entries" {
		return errors.Join(err, errInjected)
	}
	return nil
}

func (t *faultTx) WriteTiles(ctx context.Context, tiles []Tile) error {
	if err := t.AppendTx.WriteTiles(ctx, tiles); err != nil || t.failAt == "tiles" {
		return errors.Join(err, errInjected)
	}
	return nil
}

func (t *faultTx) WriteCheckpoint(ctx context.Context, size uint64, n []byte) error {
	if err := t.AppendTx.WriteCheckpoint(ctx, size, n); err != nil || t.failAt == "checkpoint" {
		return errors.Join(err, errInjected)
	}
	return nil
}

func (t *faultTx) Commit() error {
	if t.failAt == "commit" {
		t.AppendTx.Rollback()
		return errInjected
	}
	return t.AppendTx.Commit()
}

// TestStorageFailure: any failing step of the transaction fails every
// caller of the batch and leaves nothing of it visible.
func TestStorageFailure(t *testing.T) {
	ctx := context.Background()
	f := newLog(t)
	if _, err := f.log.Append(ctx, entryData(0)); err != nil {
		t.Fatal(err)
	}
	before, _ := f.log.Checkpoint(ctx)
	for _, at := range []string{"entries", "tiles", "checkpoint", "commit"} {
		fs := &faultStorage{Storage: f.st, failAt: at}
		signer, _ := NewSigner(testOrigin, testKey("log"))
		l, err := New(ctx, fs, signer, testOrigin)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := l.Append(ctx, entryData(100+i), entryData(200+i)); !errors.Is(err, errInjected) {
					t.Errorf("fail at %s: Append error %v, want injected failure", at, err)
				}
			}()
		}
		wg.Wait()
		l.Close()
		cp, _ := f.log.Checkpoint(ctx)
		if cp.Size != before.Size || !bytes.Equal(cp.Note, before.Note) {
			t.Fatalf("fail at %s: checkpoint moved to size %d", at, cp.Size)
		}
		var n int
		f.db.QueryRow("SELECT COUNT(*) FROM ledger_entries").Scan(&n)
		var tiles int
		f.db.QueryRow("SELECT COUNT(*) FROM ledger_tiles").Scan(&tiles)
		if n != 1 || tiles != 1 {
			t.Fatalf("fail at %s: %d entries and %d tiles stored, want 1 and 1", at, n, tiles)
		}
	}
	// The log still works after the failures.
	if first, err := f.log.Append(ctx, entryData(1)); err != nil || first != 1 {
		t.Fatalf("Append after failures = %d, %v", first, err)
	}
}

// TestClosedDatabase: the storage and database closed under the log fail
// appends, and nothing of the failed append is stored.
func TestClosedDatabase(t *testing.T) {
	ctx := context.Background()
	f := newLog(t)
	if _, err := f.log.Append(ctx, entryData(0)); err != nil {
		t.Fatal(err)
	}
	// The storage keeps one connection for appends; closing it (as the
	// owner of the storage does before closing the database) ends them.
	f.st.Close()
	f.db.Close()
	if _, err := f.log.Append(ctx, entryData(1)); err == nil {
		t.Fatal("Append on a closed storage and database succeeded")
	}
	g := openLog(t, f.path)
	cp, err := g.log.Checkpoint(ctx)
	if err != nil || cp.Size != 1 {
		t.Fatalf("after failed append: size %d, %v; want 1", cp.Size, err)
	}
}

func TestOpenSQLite(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := OpenSQLite(ctx, filepath.Join(dir, "no-such-dir", "x.db")); err == nil {
		t.Error("OpenSQLite in a missing directory succeeded")
	}
	if _, err := OpenSQLite(ctx, filepath.Join(dir, "a?b.db")); err == nil {
		t.Error("OpenSQLite accepted '?' in the path")
	}
	db, err := OpenSQLite(ctx, filepath.Join(dir, "x.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(3)
	// Every pooled connection carries the pragmas.
	conns := make([]*sql.Conn, 3)
	for i := range conns {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
		var mode string
		var sync, busy, fk int
		c.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode)
		c.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&sync)
		c.QueryRowContext(ctx, "PRAGMA busy_timeout").Scan(&busy)
		c.QueryRowContext(ctx, "PRAGMA foreign_keys").Scan(&fk)
		if mode != "wal" || sync != 2 || busy != 10000 || fk != 1 {
			t.Fatalf("conn %d: journal_mode=%s synchronous=%d busy_timeout=%d foreign_keys=%d", i, mode, sync, busy, fk)
		}
	}
	for _, c := range conns {
		c.Close()
	}
}

// TestStoredRowsImmutable: the schema refuses rewrites and deletions.
func TestStoredRowsImmutable(t *testing.T) {
	ctx := context.Background()
	f := newLog(t)
	if _, err := f.log.Append(ctx, entryData(0), entryData(1)); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"UPDATE ledger_entries SET data = x'00' WHERE idx = 0",
		"DELETE FROM ledger_entries",
		"UPDATE ledger_tiles SET hashes = zeroblob(64) WHERE level = 0 AND idx = 0",
		"DELETE FROM ledger_tiles",
		"UPDATE ledger_checkpoints SET note = x'00'",
		"DELETE FROM ledger_checkpoints",
		"INSERT INTO ledger_entries (idx, count, data) VALUES (0, 1, x'000101')",
		"INSERT INTO ledger_entries (idx, count, data) VALUES (-1, 1, x'000101')",
		"INSERT INTO ledger_entries (idx, count, data) VALUES (5, 0, x'')",
		"INSERT INTO ledger_tiles (level, idx, width, hashes) VALUES (0, 0, 2, zeroblob(64))",
		"INSERT INTO ledger_tiles (level, idx, width, hashes) VALUES (0, 0, 3, zeroblob(64))",
		"INSERT INTO ledger_tiles (level, idx, width, hashes) VALUES (64, 0, 1, zeroblob(32))",
		"INSERT INTO ledger_tiles (level, idx, width, hashes) VALUES (0, 1, 257, zeroblob(8224))",
		"INSERT INTO ledger_checkpoints (size, note) VALUES (2, x'00')",
	} {
		if _, err := f.db.ExecContext(ctx, q); err == nil {
			t.Errorf("%s: succeeded", q)
		}
	}
	es, _ := f.log.Entries(ctx, 0, 2)
	if !bytes.Equal(es[0], entryData(0)) || !bytes.Equal(es[1], entryData(1)) {
		t.Fatal("entries changed")
	}
}

// TestTamperedStoreRefused: if a stored hash is altered behind the log's
// back (triggers dropped), the next append refuses to extend the tree and
// proofs refuse to be served.
func TestTamperedStoreRefused(t *testing.T) {
	ctx := context.Background()
	f := newLog(t)
	if _, err := f.log.Append(ctx, entryData(0), entryData(1), entryData(2)); err != nil {
		t.Fatal(err)
	}
	cp, _ := f.log.Checkpoint(ctx)
	if _, err := f.db.ExecContext(ctx, "DROP TRIGGER ledger_tiles_immutable"); err != nil {
		t.Fatal(err)
	}
	// Replace the third leaf hash of the edge tile.
	bad := make([]byte, 3*HashSize)
	if err := f.db.QueryRowContext(ctx, "SELECT hashes FROM ledger_tiles WHERE level = 0 AND idx = 0 AND width = 3").Scan(&bad); err != nil {
		t.Fatal(err)
	}
	bad[2*HashSize] ^= 1
	if _, err := f.db.ExecContext(ctx, "UPDATE ledger_tiles SET hashes = ? WHERE level = 0 AND idx = 0 AND width = 3", bad); err != nil {
		t.Fatal(err)
	}
	if _, err := f.log.Append(ctx, entryData(3)); err == nil || !strings.Contains(err.Error(), "does not match the stored tree") {
		t.Fatalf("Append on a tampered store: %v", err)
	}
	if _, err := f.log.ProveEntry(ctx, 0, cp); err == nil {
		t.Fatal("ProveEntry served a proof from a tampered node")
	}
	signer, _ := NewSigner(testOrigin, testKey("log"))
	if _, err := New(ctx, f.st, signer, testOrigin); err == nil {
		t.Fatal("New opened a tampered store")
	}
}

// TestTwoLogsOneFile simulates two processes: two databases handles and two
// Logs on one file append concurrently; the tree never forks.
func TestTwoLogsOneFile(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ledger.db")
	a, b := openLog(t, path), openLog(t, path)
	const per = 150
	type got struct {
		idx   uint64
		entry []byte
		cp    Checkpoint
	}
	var mu sync.Mutex
	var results []got
	var wg sync.WaitGroup
	for w, f := range []*fixture{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				e := []byte(fmt.Sprintf("writer %d entry %d", w, i))
				idx, err := f.log.Append(ctx, e)
				if err != nil {
					t.Error(err)
					return
				}
				cp, err := f.log.Checkpoint(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				results = append(results, got{idx, e, cp})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	checkTree(t, a, len(results))
	seen := map[uint64]bool{}
	for _, r := range results {
		if seen[r.idx] {
			t.Fatalf("index %d given twice", r.idx)
		}
		seen[r.idx] = true
		e, err := b.log.Entry(ctx, r.idx)
		if err != nil || !bytes.Equal(e, r.entry) {
			t.Fatalf("entry %d = %q, %v; Append said %q", r.idx, e, err, r.entry)
		}
	}
	sort.Slice(results, func(i, j int) bool { return results[i].cp.Size < results[j].cp.Size })
	final, _ := a.log.Checkpoint(ctx)
	for _, r := range results {
		p, err := b.log.ConsistencyProof(ctx, r.cp.Size, final.Size)
		if err != nil {
			t.Fatal(err)
		}
		if err := VerifyConsistency(r.cp, final, p); err != nil {
			t.Fatalf("checkpoint %d inconsistent with final %d: %v", r.cp.Size, final.Size, err)
		}
	}
}

// checkTree checks that the log in f holds n entries, its root matches
// them, one checkpoint per stored size verifies, and every entry proves.
func checkTree(t *testing.T, f *fixture, n int) {
	t.Helper()
	ctx := context.Background()
	cp, err := f.log.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cp.Size != uint64(n) {
		t.Fatalf("size %d, want %d", cp.Size, n)
	}
	if rep, err := Fsck(ctx, f.st, f.v); err != nil || rep.Size != cp.Size {
		t.Fatalf("fsck: %+v, %v", rep, err)
	}
	all, err := f.log.Entries(ctx, 0, cp.Size)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(cp.Root, refRoot(all)) {
		t.Fatal("final root does not match the stored entries")
	}
	for i := range all {
		text, err := f.log.ProveEntry(ctx, uint64(i), cp)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := VerifyProof(text, all[i], f.v); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
	}
	rows, err := f.db.QueryContext(ctx, "SELECT size, note FROM ledger_checkpoints ORDER BY size")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var size int64
		var n []byte
		rows.Scan(&size, &n)
		c, err := ParseCheckpoint(n, f.v)
		if err != nil {
			t.Fatal(err)
		}
		if c.Size != uint64(size) || !bytes.Equal(c.Root, refRoot(all[:size])) {
			t.Fatalf("stored checkpoint at %d does not match the entries", size)
		}
	}
}

// TestCloseWhileAppending: every Append either commits its entry or fails
// with ErrClosed; nothing partial.
func TestCloseWhileAppending(t *testing.T) {
	ctx := context.Background()
	f := newLog(t)
	var mu sync.Mutex
	ok := map[uint64][]byte{}
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				e := []byte(fmt.Sprintf("w%d-%d", w, i))
				idx, err := f.log.Append(ctx, e, e)
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				ok[idx] = e
				mu.Unlock()
			}
		}()
	}
	for f.log.Stats().Entries < 200 {
		runtime.Gosched()
	}
	f.log.Close()
	wg.Wait()
	g := openLog(t, f.path)
	cp, err := g.log.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cp.Size != uint64(2*len(ok)) {
		t.Fatalf("size %d, but %d two-entry appends succeeded", cp.Size, len(ok))
	}
	for idx, e := range ok {
		es, err := g.log.Entries(ctx, idx, idx+2)
		if err != nil || !bytes.Equal(es[0], e) || !bytes.Equal(es[1], e) {
			t.Fatalf("entries at %d: %q, %v; want %q twice", idx, es, err, e)
		}
	}
}

// TestUndisturbed: an append transaction knows whether anyone else committed
// since the previous one began; only then may the Log skip reading its
// border back.
func TestUndisturbed(t *testing.T) {
	ctx := context.Background()
	f := newLog(t)
	begin := func() *sqliteTx {
		t.Helper()
		tx, err := f.st.BeginAppend(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return tx.(*sqliteTx)
	}
	tx := begin()
	tx.Rollback()
	steps := []struct {
		name  string
		other string // statement another connection commits before the begin
		want  bool
	}{
		{"nothing in between", "", true},
		{"another connection's table write", "CREATE TABLE IF NOT EXISTS other(x)", false},
		{"quiet again", "", true},
		{"another connection's row", "INSERT INTO other VALUES (1)", false},
	}
	for _, s := range steps {
		if s.other != "" {
			if _, err := f.db.ExecContext(ctx, s.other); err != nil {
				t.Fatal(err)
			}
		}
		tx := begin()
		if got := tx.Undisturbed(); got != s.want {
			t.Errorf("%s: Undisturbed = %v, want %v", s.name, got, s.want)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	// Another process (another database handle on the file) likewise.
	g := openLog(t, f.path)
	if _, err := g.log.Append(ctx, entryData(0)); err != nil {
		t.Fatal(err)
	}
	if tx := begin(); tx.Undisturbed() {
		t.Error("Undisturbed after another handle appended")
		tx.Rollback()
	} else {
		tx.Rollback()
	}
	// And the Log notices: its next append is at index 1, over a tree it
	// re-derived from storage.
	if first, err := f.log.Append(ctx, entryData(1)); err != nil || first != 1 {
		t.Fatalf("Append after another handle's append = %d, %v; want 1", first, err)
	}

	// Append transactions of one storage run one at a time.
	tx = begin()
	second := make(chan AppendTx, 1)
	go func() {
		tx, err := f.st.BeginAppend(ctx)
		if err != nil {
			t.Error(err)
		}
		second <- tx
	}()
	select {
	case <-second:
		t.Fatal("a second append transaction began while the first was open")
	case <-time.After(50 * time.Millisecond):
	}
	tx.Rollback()
	if tx2 := <-second; tx2 != nil {
		tx2.Rollback()
	}
}

// TestIsBusy: SQLite's busy error is recognised (OpenSQLite tries again on
// it), other errors are not.
func TestIsBusy(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "busy.db")
	a, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(0)")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	conn, err := a.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	defer conn.ExecContext(ctx, "ROLLBACK")
	_, err = b.ExecContext(ctx, "BEGIN IMMEDIATE")
	if err == nil || !isBusy(err) {
		t.Fatalf("a second writer: %v, want SQLITE_BUSY", err)
	}
	if _, err := b.ExecContext(ctx, "SELEKT 1"); err == nil || isBusy(err) {
		t.Fatalf("a syntax error counted as busy: %v", err)
	}
	if isBusy(errors.New("database is locked")) {
		t.Fatal("a plain error counted as busy")
	}
}

// TestTwoLogsOneStorage: two Logs appending through one SQLiteStorage
// (one connection, so data_version sees neither) each notice the other's
// appends: an append after the other Log's is at the right index, over
// the tree the other extended, and both Logs' checkpoints verify.
func TestTwoLogsOneStorage(t *testing.T) {
	ctx := context.Background()
	f := newLog(t)
	signer, err := NewSigner(testOrigin, testKey("log"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := New(ctx, f.st, signer, testOrigin)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	var all [][]byte
	for i, l := range []*Log{f.log, f.log, other, f.log, other, other, f.log} {
		e := entryData(i)
		first, err := l.Append(ctx, e)
		if err != nil || first != uint64(i) {
			t.Fatalf("append %d: index %d, %v", i, first, err)
		}
		all = append(all, e)
		cp, err := l.Checkpoint(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if cp.Size != uint64(len(all)) || !bytes.Equal(cp.Root, refRoot(all)) {
			t.Fatalf("after append %d: checkpoint size %d root %x, want %d %x", i, cp.Size, cp.Root, len(all), refRoot(all))
		}
	}
	if tx, err := f.st.BeginAppend(ctx); err != nil {
		t.Fatal(err)
	} else {
		if got := tx.(*sqliteTx).Committed(); got != uint64(len(all))+1 {
			t.Errorf("Committed = %d after the empty checkpoint and %d appends", got, len(all))
		}
		tx.Rollback()
	}
}

// TestReadWarm: reads on the appending connection happen only while no
// append transaction is open, and see every commit, this storage's own and
// another connection's alike.
func TestReadWarm(t *testing.T) {
	ctx := context.Background()
	f := newLog(t)
	count := func(q Querier) (n int, err error) {
		err = q.QueryRowContext(ctx, "SELECT COUNT(*) FROM ledger_checkpoints").Scan(&n)
		return n, err
	}
	warm := func() (int, bool) {
		t.Helper()
		var n int
		ok, err := f.st.ReadWarm(ctx, func(q Querier) (err error) {
			n, err = count(q)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return n, ok
	}
	if _, err := f.log.Append(ctx, entryData(0)); err != nil {
		t.Fatal(err)
	}
	if n, ok := warm(); !ok || n != 2 {
		t.Fatalf("after an append: ReadWarm = %d checkpoints, %v; want 2, true", n, ok)
	}
	// Another connection's commit is seen too.
	if _, err := f.db.ExecContext(ctx, "INSERT INTO ledger_checkpoints (size, note) VALUES (99, x'00')"); err != nil {
		t.Fatal(err)
	}
	if n, ok := warm(); !ok || n != 3 {
		t.Fatalf("after another connection's commit: ReadWarm = %d checkpoints, %v; want 3, true", n, ok)
	}
	// Not while an append transaction is open.
	tx, err := f.st.BeginAppend(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := warm(); ok {
		t.Fatal("ReadWarm ran while an append transaction was open")
	}
	tx.Rollback()
	// Not after Close.
	f.st.Close()
	if _, ok := warm(); ok {
		t.Fatal("ReadWarm ran after Close")
	}
}
