package tlogclient

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/proof"
	"golang.org/x/mod/sumdb/note"

	"github.com/etbproject/etb/internal/etbtest"
	"github.com/etbproject/etb/ledger"
)

const testOrigin = "etb.test/log"

func testKey(b byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{b}, ed25519.SeedSize))
}

func verifierFor(t *testing.T, key ed25519.PrivateKey) note.Verifier {
	t.Helper()
	vkey, err := ledger.VerifierKey(testOrigin, key.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// testLog is a real ledger on a SQLite file.
type testLog struct {
	*ledger.Log
	db *sql.DB
}

func newTestLog(t *testing.T, path string, key ed25519.PrivateKey) *testLog {
	t.Helper()
	ctx := context.Background()
	db, err := ledger.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	st, err := ledger.NewSQLiteStorage(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ledger.NewSigner(testOrigin, key)
	if err != nil {
		t.Fatal(err)
	}
	l, err := ledger.New(ctx, st, signer, testOrigin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return &testLog{Log: l, db: db}
}

// grow appends entries prefix-from .. prefix-(to-1) in batches of at most
// ledger.MaxBatchEntries and returns the checkpoint.
func (l *testLog) grow(t *testing.T, prefix string, from, to int) ledger.Checkpoint {
	t.Helper()
	ctx := context.Background()
	for from < to {
		n := min(to-from, ledger.MaxBatchEntries)
		batch := make([][]byte, n)
		for i := range batch {
			batch[i] = []byte(fmt.Sprintf("%s-%d", prefix, from+i))
		}
		if _, err := l.Append(ctx, batch...); err != nil {
			t.Fatal(err)
		}
		from += n
	}
	cp, err := l.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return cp
}

// switchServer serves the tlog-tiles API of whichever log is current under
// /log/, like `etb serve`.
type switchServer struct {
	*httptest.Server
	h    atomic.Pointer[http.Handler]
	down atomic.Bool
}

func newSwitchServer(t *testing.T, l *ledger.Log) *switchServer {
	t.Helper()
	s := &switchServer{}
	s.serve(l)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.down.Load() {
			http.Error(w, "down for the test", http.StatusServiceUnavailable)
			return
		}
		(*s.h.Load()).ServeHTTP(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *switchServer) serve(l *ledger.Log) { s.handle(ledger.NewHandler(l)) }

func (s *switchServer) handle(h http.Handler) {
	mux := http.NewServeMux()
	mux.Handle("/log/", http.StripPrefix("/log", h))
	var hh http.Handler = mux
	s.h.Store(&hh)
}

func (s *switchServer) client(v note.Verifier) *Client {
	return &Client{URL: s.URL + "/log", HTTP: s.Client(), Verifier: v}
}

func TestTilePath(t *testing.T) {
	tests := []struct {
		level uint8
		index uint64
		w     int
		want  string
	}{
		{0, 0, 256, "tile/0/000"},
		{0, 0, 1, "tile/0/000.p/1"},
		{1, 67, 255, "tile/1/067.p/255"},
		{2, 1000, 256, "tile/2/x001/000"},
		{0, 1234067, 256, "tile/0/x001/x234/067"},
		{0, 1234067, 8, "tile/0/x001/x234/067.p/8"},
	}
	for _, tt := range tests {
		if got := TilePath(tt.level, tt.index, tt.w); got != tt.want {
			t.Errorf("TilePath(%d, %d, %d) = %q, want %q", tt.level, tt.index, tt.w, got, tt.want)
		}
	}
	if got := EntriesPath(1234067, 3); got != "tile/entries/x001/x234/067.p/3" {
		t.Errorf("EntriesPath = %q", got)
	}
	widths := []struct {
		level       uint8
		index, size uint64
		want        int
	}{
		{0, 0, 0, 0}, {0, 0, 1, 1}, {0, 0, 256, 256}, {0, 1, 256, 0}, {0, 1, 300, 44},
		{1, 0, 255, 0}, {1, 0, 256, 1}, {1, 0, 70000, 256}, {1, 1, 70000, 17}, {2, 0, 70000, 1},
		{7, 0, 1 << 63, 128}, {8, 0, 1 << 63, 0},
	}
	for _, tt := range widths {
		if got := TileWidthAt(tt.level, tt.index, tt.size); got != tt.want {
			t.Errorf("TileWidthAt(%d, %d, %d) = %d, want %d", tt.level, tt.index, tt.size, got, tt.want)
		}
	}
}

// TestProofsFromTiles computes inclusion and consistency proofs from the
// tiles a real ledger serves, across tile boundaries and tile levels, and
// checks them against the ledger's own proofs and its signed checkpoints.
func TestProofsFromTiles(t *testing.T) {
	ctx := context.Background()
	l := newTestLog(t, filepath.Join(t.TempDir(), "log.db"), testKey(1))
	v := verifierFor(t, testKey(1))
	srv := newSwitchServer(t, l.Log)
	c := srv.client(v)

	// Checkpoints at sizes around tile edges, ending in a tree with two
	// tile levels above the leaves.
	var cps []ledger.Checkpoint
	size := 0
	for _, s := range []int{1, 2, 255, 256, 257, 511, 513, 65535, 65536, 65537, 66000} {
		cps = append(cps, l.grow(t, "e", size, s))
		size = s
	}
	latest, err := c.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if latest.Size != 66000 || !bytes.Equal(latest.Note, cps[len(cps)-1].Note) {
		t.Fatalf("served checkpoint size %d, want 66000", latest.Size)
	}
	for i, older := range cps {
		for _, newer := range cps[i:] {
			got, err := c.ConsistencyProof(ctx, older.Size, newer.Size)
			if err != nil {
				t.Fatalf("consistency %d -> %d: %v", older.Size, newer.Size, err)
			}
			if err := ledger.VerifyConsistency(older, newer, got); err != nil {
				t.Fatalf("consistency %d -> %d from tiles does not verify: %v", older.Size, newer.Size, err)
			}
			want, err := l.ConsistencyProof(ctx, older.Size, newer.Size)
			if err != nil {
				t.Fatal(err)
			}
			if !equalHashes(got, want) {
				t.Fatalf("consistency %d -> %d from tiles differs from the ledger's", older.Size, newer.Size)
			}
			if err := c.CheckConsistency(ctx, newer, older); err != nil {
				t.Fatalf("CheckConsistency(%d, %d): %v", newer.Size, older.Size, err)
			}
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 40 {
		cp := cps[rng.IntN(len(cps))]
		index := rng.Uint64N(cp.Size)
		p, err := c.InclusionProof(ctx, index, cp.Size)
		if err != nil {
			t.Fatalf("inclusion %d in %d: %v", index, cp.Size, err)
		}
		want, err := l.InclusionProof(ctx, index, cp.Size)
		if err != nil {
			t.Fatal(err)
		}
		if !equalHashes(p, want) {
			t.Fatalf("inclusion %d in %d from tiles differs from the ledger's", index, cp.Size)
		}
		e, err := c.ProveEntry(ctx, index, cp)
		if err != nil {
			t.Fatalf("ProveEntry(%d) in %d: %v", index, cp.Size, err)
		}
		if want := fmt.Sprintf("e-%d", index); string(e) != want {
			t.Fatalf("entry %d is %q, want %q", index, e, want)
		}
		if err := proof.VerifyInclusion(hasher, index, cp.Size, hasher.HashLeaf(e), p, cp.Root); err != nil {
			t.Fatal(err)
		}
	}
	// Beyond the tree: refused, not guessed.
	if _, err := c.ConsistencyProof(ctx, 10, 70000); err == nil {
		t.Fatal("consistency proof to a size beyond the log succeeded")
	}
	if _, err := c.ProveEntry(ctx, 66000, latest); err == nil {
		t.Fatal("ProveEntry beyond the checkpoint succeeded")
	}
}

func equalHashes(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// TestBadServer: wrong signatures, truncated or oversized tiles and
// malformed bundles are errors, never accepted data.
func TestBadServer(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := newTestLog(t, filepath.Join(dir, "log.db"), testKey(1))
	cp := l.grow(t, "e", 0, 300)
	v := verifierFor(t, testKey(1))
	srv := newSwitchServer(t, l.Log)
	c := srv.client(v)

	other := srv.client(verifierFor(t, testKey(2)))
	if _, err := other.Checkpoint(ctx); err == nil {
		t.Fatal("checkpoint verified with another key")
	}

	real := ledger.NewHandler(l.Log)
	tamper := func(f func(path string, body []byte) []byte) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rec := httptest.NewRecorder()
			real.ServeHTTP(rec, r)
			w.WriteHeader(rec.Code)
			w.Write(f(r.URL.Path, rec.Body.Bytes()))
		})
	}
	tests := []struct {
		name string
		h    http.Handler
		call func() error
	}{
		{"short tile", tamper(func(p string, b []byte) []byte {
			if strings.HasPrefix(p, "/tile/0/") {
				return b[:len(b)-1]
			}
			return b
		}), func() error { _, err := c.Tile(ctx, 0, 0, 256); return err }},
		{"long tile", tamper(func(p string, b []byte) []byte {
			if strings.HasPrefix(p, "/tile/0/") {
				return append(b, make([]byte, 32)...)
			}
			return b
		}), func() error { _, err := c.Tile(ctx, 0, 1, 44); return err }},
		{"truncated bundle", tamper(func(p string, b []byte) []byte {
			if strings.HasPrefix(p, "/tile/entries/") {
				return b[:len(b)-2]
			}
			return b
		}), func() error { _, err := c.EntryBundle(ctx, 0, 256); return err }},
		{"swapped entry", tamper(func(p string, b []byte) []byte {
			if strings.HasPrefix(p, "/tile/entries/") {
				return bytes.Replace(b, []byte("e-7"), []byte("x-7"), 1)
			}
			return b
		}), func() error { _, err := c.ProveEntry(ctx, 7, cp); return err }},
		{"corrupt hash tile", tamper(func(p string, b []byte) []byte {
			if strings.HasPrefix(p, "/tile/0/") && len(b) > 0 {
				b = bytes.Clone(b)
				b[0] ^= 1
			}
			return b
		}), func() error { _, err := c.ProveEntry(ctx, 1, cp); return err }},
		{"bad checkpoint signature", tamper(func(p string, b []byte) []byte {
			if p == "/checkpoint" {
				return bytes.Replace(b, []byte("\n300\n"), []byte("\n301\n"), 1)
			}
			return b
		}), func() error { _, err := c.Checkpoint(ctx); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv.handle(tt.h)
			defer srv.serve(l.Log)
			if err := tt.call(); err == nil {
				t.Fatal("bad data accepted")
			}
		})
	}
	if _, err := c.Tile(ctx, 0, 0, 0); err == nil {
		t.Error("tile of width 0 accepted")
	}
	if _, err := c.Tile(ctx, 8, 0, 1); err == nil {
		t.Error("tile level 8 accepted")
	}
	// A partial tile that is gone falls back to the full tile.
	l.grow(t, "e", 300, 600)
	srv.handle(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, ".p/") {
			http.NotFound(w, r)
			return
		}
		real.ServeHTTP(w, r)
	}))
	if p, err := c.InclusionProof(ctx, 5, 300); err != nil || len(p) == 0 {
		t.Fatalf("inclusion proof with partial tiles gone: %v", err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestMonitorFollowsLog(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := newTestLog(t, filepath.Join(t.TempDir(), "log.db"), testKey(1))
	srv := newSwitchServer(t, l.Log)
	l.grow(t, "e", 0, 3)
	var out etbtest.Buffer
	done := make(chan error, 1)
	go func() { done <- srv.client(verifierFor(t, testKey(1))).Monitor(ctx, nil, 2*time.Millisecond, &out) }()
	waitFor(t, "the first checkpoint", func() bool { return strings.Contains(out.String(), "size 3 ") })
	for i := 3; i < 600; i += 37 {
		l.grow(t, "e", i, i+37)
		time.Sleep(3 * time.Millisecond)
	}
	waitFor(t, "the last checkpoint", func() bool { return strings.Contains(out.String(), "size 632 ") })

	// A transient outage is reported and survived.
	srv.down.Store(true)
	waitFor(t, "a warning", func() bool { return strings.Contains(out.String(), "warning: ") })
	srv.down.Store(false)
	l.grow(t, "e", 632, 700)
	waitFor(t, "the checkpoint after the outage", func() bool {
		return strings.Contains(out.String(), "size 700 ") && strings.Contains(out.String(), "(consistent with size 632)")
	})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Monitor returned %v, want context.Canceled", err)
	}
}

// TestMonitorDetectsFork serves, behind the same URL, a second log with the
// same key and origin that differs from the first at index 2.
func TestMonitorDetectsFork(t *testing.T) {
	dir := t.TempDir()
	v := verifierFor(t, testKey(1))
	a := newTestLog(t, filepath.Join(dir, "a.db"), testKey(1))
	b := newTestLog(t, filepath.Join(dir, "b.db"), testKey(1))
	cpA := a.grow(t, "e", 0, 300)
	b.grow(t, "e", 0, 2)
	b.grow(t, "fork", 2, 3)
	cpB300 := b.grow(t, "e", 3, 300)
	cpB := b.grow(t, "e", 300, 700)

	tests := []struct {
		name  string
		serve *testLog
		newer ledger.Checkpoint
	}{
		{"fork grows", b, cpB},
		{"fork at the same size", b, cpB300},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if tt.newer.Size == 300 {
				// Serve b as it was at size 300.
				b300 := newTestLog(t, filepath.Join(t.TempDir(), "b300.db"), testKey(1))
				b300.grow(t, "e", 0, 2)
				b300.grow(t, "fork", 2, 3)
				b300.grow(t, "e", 3, 300)
				tt.serve = b300
			}
			srv := newSwitchServer(t, a.Log)
			var out etbtest.Buffer
			done := make(chan error, 1)
			go func() { done <- srv.client(v).Monitor(ctx, nil, 2*time.Millisecond, &out) }()
			waitFor(t, "log a", func() bool { return strings.Contains(out.String(), "size 300 ") })
			srv.serve(tt.serve.Log)
			err := <-done
			var inc *InconsistencyError
			if !errors.As(err, &inc) {
				t.Fatalf("Monitor returned %v, want an InconsistencyError", err)
			}
			if !bytes.Equal(inc.Older.Note, cpA.Note) || !bytes.Equal(inc.Newer.Note, tt.newer.Note) {
				t.Fatalf("evidence holds sizes %d and %d, want 300 (log a) and %d (log b)", inc.Older.Size, inc.Newer.Size, tt.newer.Size)
			}
			if err := inc.Check(v); err != nil {
				t.Fatalf("evidence does not check: %v", err)
			}
			ev := string(inc.Evidence())
			if !strings.Contains(ev, string(cpA.Note)) || !strings.Contains(ev, string(tt.newer.Note)) {
				t.Fatalf("evidence does not print both checkpoints:\n%s", ev)
			}
			// Tampered evidence does not check.
			if tt.newer.Size != 300 {
				tampered := []func(e *InconsistencyError){
					func(e *InconsistencyError) { e.Older = cpB300 }, // consistent pair
					func(e *InconsistencyError) { e.Proof = nil },
					func(e *InconsistencyError) { e.RootAtOlder = bytes.Clone(cpB.Root) },
					func(e *InconsistencyError) { e.Older, e.Newer = e.Newer, e.Older },
				}
				for i, f := range tampered {
					bad := *inc
					f(&bad)
					if err := bad.Check(v); err == nil {
						t.Errorf("tampered evidence %d checks", i)
					}
				}
			}
		})
	}

	// Starting from a previously saved checkpoint of log a, a server now
	// serving log b is caught at once.
	srv := newSwitchServer(t, b.Log)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out etbtest.Buffer
	err := Monitor(ctx, srv.URL+"/log", v, cpA.Note, 2*time.Millisecond, &out)
	var inc *InconsistencyError
	if !errors.As(err, &inc) || inc.Older.Size != 300 || inc.Newer.Size != 700 {
		t.Fatalf("Monitor from a saved checkpoint returned %v", err)
	}
}

// TestMonitorBadTilesAreNotAFork: tiles that do not match the served
// checkpoint stop the monitor with a TileError, not with evidence of a fork.
func TestMonitorBadTilesAreNotAFork(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	v := verifierFor(t, testKey(1))
	l := newTestLog(t, filepath.Join(t.TempDir(), "log.db"), testKey(1))
	cp := l.grow(t, "e", 0, 300)
	l.grow(t, "e", 300, 700)
	srv := newSwitchServer(t, l.Log)
	real := ledger.NewHandler(l.Log)
	srv.handle(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		real.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		if strings.HasPrefix(r.URL.Path, "/tile/") && len(body) > 0 {
			body = bytes.Clone(body)
			body[len(body)-1] ^= 1
		}
		w.WriteHeader(rec.Code)
		w.Write(body)
	}))
	var out etbtest.Buffer
	err := srv.client(v).Monitor(ctx, cp.Note, 2*time.Millisecond, &out)
	var te *TileError
	var inc *InconsistencyError
	if !errors.As(err, &te) || errors.As(err, &inc) {
		t.Fatalf("Monitor returned %v, want a TileError", err)
	}
}

// TestMonitorStaleCheckpoint: a log that serves an older (consistent)
// checkpoint is reported, not taken as the new state and not a fork.
func TestMonitorStaleCheckpoint(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	v := verifierFor(t, testKey(1))
	l := newTestLog(t, filepath.Join(t.TempDir(), "log.db"), testKey(1))
	old := l.grow(t, "e", 0, 300)
	cur := l.grow(t, "e", 300, 700)
	srv := newSwitchServer(t, l.Log)
	real := ledger.NewHandler(l.Log)
	srv.handle(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/checkpoint" {
			w.Write(old.Note)
			return
		}
		real.ServeHTTP(w, r)
	}))
	var out etbtest.Buffer
	done := make(chan error, 1)
	go func() { done <- srv.client(v).Monitor(ctx, cur.Note, 2*time.Millisecond, &out) }()
	waitFor(t, "a stale-checkpoint warning", func() bool {
		return strings.Contains(out.String(), "older than the 700 seen (consistent)")
	})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Monitor returned %v", err)
	}
	if strings.Contains(out.String(), "size 300 root") {
		t.Fatalf("the stale checkpoint was taken as new:\n%s", out.String())
	}
}

func TestMonitorRefusesBadSignature(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l := newTestLog(t, filepath.Join(t.TempDir(), "log.db"), testKey(2))
	l.grow(t, "e", 0, 3)
	srv := newSwitchServer(t, l.Log)
	var out etbtest.Buffer
	err := Monitor(ctx, srv.URL+"/log", verifierFor(t, testKey(1)), nil, 2*time.Millisecond, &out)
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Monitor of a log signed by another key returned %v", err)
	}
	if err := Monitor(ctx, srv.URL+"/log", verifierFor(t, testKey(1)), []byte("garbage"), time.Millisecond, &out); err == nil {
		t.Fatal("Monitor accepted a garbage previous checkpoint")
	}
}

func TestVerifySince(t *testing.T) {
	ctx := context.Background()
	l := newTestLog(t, filepath.Join(t.TempDir(), "log.db"), testKey(1))
	a := l.grow(t, "e", 0, 10)
	b := l.grow(t, "e", 10, 25)
	p, err := l.ConsistencyProof(ctx, 10, 25)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifySince(a, b, p); err != nil {
		t.Fatalf("seen older: %v", err)
	}
	if err := VerifySince(b, a, p); err != nil {
		t.Fatalf("seen newer: %v", err)
	}
	if err := VerifySince(a, b, p[1:]); err == nil {
		t.Fatal("short proof accepted")
	}
	bad := a
	bad.Root = b.Root
	if err := VerifySince(bad, b, p); err == nil {
		t.Fatal("wrong root accepted")
	}
}
