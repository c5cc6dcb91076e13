package interop

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/etbproject/etb/ledger"
	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera/api/layout"
	"github.com/transparency-dev/tessera/client"
	"golang.org/x/mod/sumdb/note"
)

const origin = "interop.etb.local/log"

var hasher = rfc6962.DefaultHasher

// testLog is an etb ledger served over HTTP by ledger.NewHandler, mounted
// under /log/ as `etb serve` mounts it, with everything appended so far.
type testLog struct {
	log      *ledger.Log
	srv      *httptest.Server
	root     *url.URL // srv.URL + "/log/"
	verifier note.Verifier
	vkey     string
	entries  [][]byte
}

// newTestLog starts a ledger on a fresh SQLite file and serves it, wrapping
// the handler with wrap if not nil.
func newTestLog(t *testing.T, wrap func(http.Handler) http.Handler) *testLog {
	t.Helper()
	ctx := context.Background()
	db, err := ledger.OpenSQLite(ctx, filepath.Join(t.TempDir(), "ledger.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	st, err := ledger.NewSQLiteStorage(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ledger.NewSigner(origin, priv)
	if err != nil {
		t.Fatal(err)
	}
	l, err := ledger.New(ctx, st, signer, origin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	if got := l.Origin(); got != origin {
		t.Fatalf("Origin() = %q, want %q", got, origin)
	}
	vkey, err := ledger.VerifierKey(origin, pub)
	if err != nil {
		t.Fatal(err)
	}
	// A stock note verifier parses the key text etb exports.
	v, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatalf("note.NewVerifier(%q): %v", vkey, err)
	}
	var h http.Handler = http.StripPrefix("/log", ledger.NewHandler(l))
	if wrap != nil {
		h = wrap(h)
	}
	mux := http.NewServeMux()
	mux.Handle("/log/", h)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	root, err := url.Parse(srv.URL + "/log/")
	if err != nil {
		t.Fatal(err)
	}
	return &testLog{log: l, srv: srv, root: root, verifier: v, vkey: vkey}
}

// entry returns the i-th test entry. Sizes vary from 1 byte to
// ledger.MaxEntrySize (the uint16 limit of entry bundles), so bundle length
// prefixes are exercised at both ends.
func entry(i int) []byte {
	var n int
	switch {
	case i == 0:
		n = 1
	case i == 7:
		n = ledger.MaxEntrySize
	case i%1000 == 999:
		n = 256 + i%4096
	default:
		n = 24 + i%97
	}
	e := make([]byte, n)
	for j := range e {
		e[j] = byte(i*31 + j)
	}
	if n >= 8 {
		binary.BigEndian.PutUint64(e, uint64(i))
	}
	return e
}

// appendUpTo appends entries until the log has size entries.
func (tl *testLog) appendUpTo(t *testing.T, size int) {
	t.Helper()
	ctx := context.Background()
	for len(tl.entries) < size {
		var batch [][]byte
		bytes := 0
		for len(tl.entries)+len(batch) < size && len(batch) < ledger.MaxBatchEntries {
			e := entry(len(tl.entries) + len(batch))
			if bytes+len(e) > ledger.MaxBatchBytes {
				break
			}
			batch = append(batch, e)
			bytes += len(e)
		}
		first, err := tl.log.Append(ctx, batch...)
		if err != nil {
			t.Fatal(err)
		}
		if first != uint64(len(tl.entries)) {
			t.Fatalf("Append returned first index %d, want %d", first, len(tl.entries))
		}
		tl.entries = append(tl.entries, batch...)
	}
}

func (tl *testLog) fetcher(t *testing.T) *client.HTTPFetcher {
	t.Helper()
	u := *tl.root
	f, err := client.NewHTTPFetcher(&u, tl.srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// fetchCheckpoint fetches and verifies the log's checkpoint with the stock
// client, and checks it is the ledger's own latest checkpoint.
func (tl *testLog) fetchCheckpoint(t *testing.T, f *client.HTTPFetcher) (*log.Checkpoint, []byte) {
	t.Helper()
	ctx := context.Background()
	cp, raw, n, err := client.FetchCheckpoint(ctx, f.ReadCheckpoint, tl.verifier, origin)
	if err != nil {
		t.Fatalf("client.FetchCheckpoint: %v", err)
	}
	if len(n.Sigs) == 0 || n.Sigs[0].Name != origin {
		t.Fatalf("checkpoint note signatures %+v, want one by %q", n.Sigs, origin)
	}
	if cp.Origin != origin || cp.Size != uint64(len(tl.entries)) {
		t.Fatalf("checkpoint origin %q size %d, want %q size %d", cp.Origin, cp.Size, origin, len(tl.entries))
	}
	if want := refRoot(tl.entries); !bytes.Equal(cp.Hash, want) {
		t.Fatalf("checkpoint root %x, want RFC 6962 root of the appended entries %x", cp.Hash, want)
	}
	own, err := tl.log.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, own.Note) {
		t.Fatalf("served checkpoint\n%s\nis not the ledger's latest\n%s", raw, own.Note)
	}
	return cp, raw
}

// refRoot computes the RFC 6962 root of entries independently of etb.
func refRoot(entries [][]byte) []byte {
	var rec func(es [][]byte) []byte
	rec = func(es [][]byte) []byte {
		if len(es) == 1 {
			return hasher.HashLeaf(es[0])
		}
		k := 1
		for k*2 < len(es) {
			k *= 2
		}
		return hasher.HashChildren(rec(es[:k]), rec(es[k:]))
	}
	if len(entries) == 0 {
		return hasher.EmptyRoot()
	}
	return rec(entries)
}

// checkInclusion builds inclusion proofs with the stock ProofBuilder for
// indices in the tree of cp and verifies them with merkle/proof.
func (tl *testLog) checkInclusion(t *testing.T, f *client.HTTPFetcher, cp *log.Checkpoint, indices []uint64) {
	t.Helper()
	ctx := context.Background()
	pb, err := client.NewProofBuilder(ctx, cp.Size, f.ReadTile)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range indices {
		p, err := pb.InclusionProof(ctx, i)
		if err != nil {
			t.Fatalf("InclusionProof(%d) in size %d: %v", i, cp.Size, err)
		}
		if err := proof.VerifyInclusion(hasher, i, cp.Size, hasher.HashLeaf(tl.entries[i]), p, cp.Hash); err != nil {
			t.Fatalf("inclusion proof of %d in size %d built from served tiles does not verify: %v", i, cp.Size, err)
		}
		// The ledger's own proof (from its storage) is the same list.
		own, err := tl.log.InclusionProof(ctx, i, cp.Size)
		if err != nil {
			t.Fatal(err)
		}
		if !equalHashes(p, own) {
			t.Fatalf("inclusion proof of %d in size %d: client built %x, ledger returns %x", i, cp.Size, p, own)
		}
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

// checkBundles fetches every entry bundle of the tree of cp with the stock
// client and compares them with the appended entries.
func (tl *testLog) checkBundles(t *testing.T, f *client.HTTPFetcher, cp *log.Checkpoint) {
	t.Helper()
	ctx := context.Background()
	got := 0
	for b := uint64(0); b*layout.EntryBundleWidth < cp.Size; b++ {
		bundle, err := client.GetEntryBundle(ctx, f.ReadEntryBundle, b, cp.Size)
		if err != nil {
			t.Fatalf("GetEntryBundle(%d) at size %d: %v", b, cp.Size, err)
		}
		want := min(layout.EntryBundleWidth, cp.Size-b*layout.EntryBundleWidth)
		if uint64(len(bundle.Entries)) != want {
			t.Fatalf("entry bundle %d at size %d has %d entries, want %d", b, cp.Size, len(bundle.Entries), want)
		}
		for j, e := range bundle.Entries {
			i := int(b)*layout.EntryBundleWidth + j
			if !bytes.Equal(e, tl.entries[i]) {
				t.Fatalf("entry %d from bundle %d (%d bytes) differs from the appended entry (%d bytes)", i, b, len(e), len(tl.entries[i]))
			}
			got++
		}
	}
	if got != int(cp.Size) {
		t.Fatalf("bundles held %d entries, want %d", got, cp.Size)
	}
	// The leaf hashes in the level-0 tiles are those of the entries.
	hashes, err := client.FetchLeafHashes(ctx, f.ReadTile, 0, cp.Size, cp.Size)
	if err != nil {
		t.Fatalf("FetchLeafHashes: %v", err)
	}
	for i, h := range hashes {
		if !bytes.Equal(h, hasher.HashLeaf(tl.entries[i])) {
			t.Fatalf("leaf hash %d from tiles %x, want %x", i, h, hasher.HashLeaf(tl.entries[i]))
		}
	}
}

// TestStockClientFollowsLog is the interoperability claim of issue 3: a
// stock tlog-tiles client fetches etb's checkpoint, verifies it with the
// log's public key in signed-note vkey form, builds inclusion proofs for
// entries and a consistency proof between two checkpoints, and they verify;
// the entries it reads from bundles are the ones appended.
func TestStockClientFollowsLog(t *testing.T) {
	ctx := context.Background()
	tl := newTestLog(t, nil)
	f := tl.fetcher(t)

	// The empty log already has a signed checkpoint.
	cp0, raw0 := tl.fetchCheckpoint(t, f)
	if cp0.Size != 0 || !bytes.Equal(cp0.Hash, hasher.EmptyRoot()) {
		t.Fatalf("empty log checkpoint size %d root %x", cp0.Size, cp0.Hash)
	}

	// A first tree with one full level-0 tile and a partial one.
	tl.appendUpTo(t, 300)
	cp1, raw1 := tl.fetchCheckpoint(t, f)
	tl.checkInclusion(t, f, cp1, []uint64{0, 1, 7, 254, 255, 256, 257, 298, 299})
	tl.checkBundles(t, f, cp1)

	// A stock LogStateTracker, started at the empty checkpoint, follows the
	// log: Update fetches the new checkpoint and checks consistency.
	tracker, err := client.NewLogStateTracker(ctx, f.ReadTile, raw0, tl.verifier, origin, client.UnilateralConsensus(f.ReadCheckpoint))
	if err != nil {
		t.Fatalf("NewLogStateTracker: %v", err)
	}
	trackTo(t, tracker, cp1.Size)

	// Grow past a full level-1 tile (256*256 leaves) so that proofs combine
	// full and partial tiles of two levels.
	const size2 = 256*256 + 300
	tl.appendUpTo(t, size2)
	cp2, _ := tl.fetchCheckpoint(t, f)
	tl.checkInclusion(t, f, cp2, []uint64{0, 7, 299, 300, 4097, 65535, 65536, 65537, size2 - 1})
	trackTo(t, tracker, cp2.Size)

	pb, err := client.NewProofBuilder(ctx, cp2.Size, f.ReadTile)
	if err != nil {
		t.Fatal(err)
	}
	for _, older := range []*log.Checkpoint{cp0, cp1} {
		cons, err := pb.ConsistencyProof(ctx, older.Size, cp2.Size)
		if err != nil {
			t.Fatalf("ConsistencyProof(%d, %d): %v", older.Size, cp2.Size, err)
		}
		if err := proof.VerifyConsistency(hasher, older.Size, cp2.Size, cons, older.Hash, cp2.Hash); err != nil {
			t.Fatalf("consistency proof %d -> %d built from served tiles does not verify: %v", older.Size, cp2.Size, err)
		}
		own, err := tl.log.ConsistencyProof(ctx, older.Size, cp2.Size)
		if err != nil {
			t.Fatal(err)
		}
		if !equalHashes(cons, own) {
			t.Fatalf("consistency proof %d -> %d: client built %x, ledger returns %x", older.Size, cp2.Size, cons, own)
		}
	}
	// And etb's own verifier accepts what the stock client fetched.
	older, err := ledger.ParseCheckpoint(raw1, tl.verifier)
	if err != nil {
		t.Fatal(err)
	}
	newer, err := ledger.ParseCheckpoint(mustFetch(t, f.ReadCheckpoint), tl.verifier)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := pb.ConsistencyProof(ctx, cp1.Size, cp2.Size)
	if err != nil {
		t.Fatal(err)
	}
	if err := ledger.VerifyConsistency(older, newer, cons); err != nil {
		t.Fatalf("ledger.VerifyConsistency of a client-built proof: %v", err)
	}
	tl.checkBundles(t, f, cp2)
}

func mustFetch(t *testing.T, read func(context.Context) ([]byte, error)) []byte {
	t.Helper()
	b, err := read(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// trackTo updates tracker and checks it reached size.
func trackTo(t *testing.T, tracker *client.LogStateTracker, size uint64) {
	t.Helper()
	_, _, _, err := tracker.Update(context.Background())
	if err != nil {
		t.Fatalf("LogStateTracker.Update to size %d: %v", size, err)
	}
	if got := tracker.Latest().Size; got != size {
		t.Fatalf("LogStateTracker at size %d, want %d", got, size)
	}
}

// TestStockClientRejectsWrongKey: the stock client refuses etb's checkpoint
// under any other key, even one with the same name.
func TestStockClientRejectsWrongKey(t *testing.T) {
	tl := newTestLog(t, nil)
	tl.appendUpTo(t, 10)
	f := tl.fetcher(t)
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	otherKey, err := ledger.VerifierKey(origin, pub)
	if err != nil {
		t.Fatal(err)
	}
	other, err := note.NewVerifier(otherKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := client.FetchCheckpoint(context.Background(), f.ReadCheckpoint, other, origin); err == nil {
		t.Fatal("checkpoint verified under a different key of the same name")
	}
	if _, _, _, err := client.FetchCheckpoint(context.Background(), f.ReadCheckpoint, tl.verifier, "other.origin/log"); err == nil {
		t.Fatal("checkpoint accepted for a different origin")
	}
}

// corrupter flips one bit in responses whose path matches, to model a
// server that lies about tiles or entries.
type corrupter struct {
	match func(path string) bool
	hits  atomic.Int64
}

func (c *corrupter) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !c.match(r.URL.Path) {
			h.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		if rec.Code == http.StatusOK && len(body) > 40 {
			body[40] ^= 0x01
			c.hits.Add(1)
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		w.Write(body)
	})
}

// TestStockClientDetectsTamperedTiles: when the server alters a hash tile,
// proofs the client builds from it fail to verify against the signed
// checkpoint; when it alters an entry bundle, the entries no longer match
// the leaf hashes the checkpoint commits to. The client never accepts a lie.
func TestStockClientDetectsTamperedTiles(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		match func(string) bool
	}{
		{"level-0 tile", func(p string) bool { return strings.HasPrefix(p, "/log/tile/0/") }},
		{"level-1 tile", func(p string) bool { return strings.HasPrefix(p, "/log/tile/1/") }},
		{"entry bundle", func(p string) bool { return strings.HasPrefix(p, "/log/tile/entries/") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &corrupter{match: tc.match}
			tl := newTestLog(t, c.wrap)
			tl.appendUpTo(t, 256*256+10)
			f := tl.fetcher(t)
			cp, _ := tl.fetchCheckpoint(t, f)
			pb, err := client.NewProofBuilder(ctx, cp.Size, f.ReadTile)
			if err != nil {
				t.Fatal(err)
			}
			failed := 0
			for _, i := range []uint64{0, 100, 255, 70000 % cp.Size, cp.Size - 1} {
				p, err := pb.InclusionProof(ctx, i)
				if err != nil {
					failed++
					continue
				}
				if proof.VerifyInclusion(hasher, i, cp.Size, hasher.HashLeaf(tl.entries[i]), p, cp.Hash) != nil {
					failed++
				}
			}
			if strings.Contains(tc.name, "entry") {
				// Hash tiles are intact, so proofs verify; the altered
				// bundle must not match the committed leaf hashes.
				if failed != 0 {
					t.Fatalf("%d inclusion proofs failed with intact hash tiles", failed)
				}
				bundle, err := client.GetEntryBundle(ctx, f.ReadEntryBundle, 0, cp.Size)
				if err != nil {
					t.Fatal(err)
				}
				leaves, err := client.FetchLeafHashes(ctx, f.ReadTile, 0, uint64(len(bundle.Entries)), cp.Size)
				if err != nil {
					t.Fatal(err)
				}
				mismatch := 0
				for j, e := range bundle.Entries {
					if !bytes.Equal(hasher.HashLeaf(e), leaves[j]) {
						mismatch++
					}
				}
				if mismatch == 0 {
					t.Fatal("a tampered entry bundle matched the committed leaf hashes")
				}
			} else if failed == 0 {
				t.Fatalf("all inclusion proofs verified although %d tile responses were altered", c.hits.Load())
			}
			if c.hits.Load() == 0 {
				t.Fatal("the corrupter altered no response: the test exercised nothing")
			}
		})
	}
}

// TestReadAPIHeaders checks the HTTP contract a stock client and caches rely
// on: the checkpoint is not cached, full tiles are immutable, and paths
// that do not name a tile of the current tree are 4xx, never 200.
func TestReadAPIHeaders(t *testing.T) {
	tl := newTestLog(t, nil)
	tl.appendUpTo(t, 300)
	get := func(path string) (*http.Response, []byte) {
		t.Helper()
		resp, err := tl.srv.Client().Get(tl.srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, b
	}
	resp, _ := get("/log/checkpoint")
	if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Cache-Control"), "no-cache") {
		t.Fatalf("checkpoint: status %d, Cache-Control %q; want 200 and no-cache", resp.StatusCode, resp.Header.Get("Cache-Control"))
	}
	for _, p := range []string{"/log/tile/0/000", "/log/tile/entries/000"} {
		resp, b := get(p)
		cc := resp.Header.Get("Cache-Control")
		if resp.StatusCode != http.StatusOK || !strings.Contains(cc, "immutable") || !strings.Contains(cc, "max-age=31536000") {
			t.Fatalf("full tile %s: status %d, Cache-Control %q; want 200, immutable, max-age=31536000", p, resp.StatusCode, cc)
		}
		if len(b) == 0 {
			t.Fatalf("full tile %s is empty", p)
		}
	}
	resp, b := get("/log/tile/0/001.p/44")
	if resp.StatusCode != http.StatusOK || len(b) != 44*32 {
		t.Fatalf("partial tile: status %d, %d bytes; want 200 and %d bytes", resp.StatusCode, len(b), 44*32)
	}
	for _, p := range []string{
		"/log/tile/0/002",      // beyond the tree
		"/log/tile/0/001",      // full version of a partial tile
		"/log/tile/0/001.p/45", // wider than the tree
		"/log/tile/0/-01",      // negative
		"/log/tile/0/x999/x999/x999/x999/x999/x999/999", // huge
		"/log/tile/entries/002",
		"/log/tile/0/1",    // not the 3-digit encoding
		"/log/tile/99/000", // level out of range
		"/log/nosuch",
	} {
		resp, b := get(p)
		if resp.StatusCode < 400 || resp.StatusCode >= 500 {
			t.Errorf("%s: status %d (%q), want 4xx", p, resp.StatusCode, b)
		}
	}
}

// TestStockClientFollowsLiveLog: while entries are being appended, a stock
// LogStateTracker polls the log; every checkpoint it moves to must be
// consistent with the previous one (Update verifies that), and the newest
// entry of each must be provably included.
func TestStockClientFollowsLiveLog(t *testing.T) {
	ctx := context.Background()
	tl := newTestLog(t, nil)
	f := tl.fetcher(t)
	_, raw0 := tl.fetchCheckpoint(t, f)
	tracker, err := client.NewLogStateTracker(ctx, f.ReadTile, raw0, tl.verifier, origin, client.UnilateralConsensus(f.ReadCheckpoint))
	if err != nil {
		t.Fatal(err)
	}
	const final = 5000
	// The writer appends its own copy of the entries; the reader compares
	// against entry(i), which is deterministic.
	writeErr := make(chan error, 1)
	go func() {
		for n := 0; n < final; {
			k := min(1+n%333, final-n)
			batch := make([][]byte, k)
			for j := range batch {
				batch[j] = entry(n + j)
			}
			if _, err := tl.log.Append(ctx, batch...); err != nil {
				writeErr <- err
				return
			}
			n += k
		}
		writeErr <- nil
	}()
	var sizes []uint64
	last := uint64(0)
	deadline := time.Now().Add(30 * time.Second)
	for last < final {
		select {
		case err := <-writeErr:
			if err != nil {
				t.Fatal(err)
			}
			writeErr <- nil // for the check after the loop
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("tracker stuck at size %d of %d", last, final)
		}
		if _, _, _, err := tracker.Update(ctx); err != nil {
			t.Fatalf("LogStateTracker.Update after size %d: %v", last, err)
		}
		cp := tracker.Latest()
		if cp.Size < last {
			t.Fatalf("tracker went back from size %d to %d", last, cp.Size)
		}
		if cp.Size > last {
			pb, err := client.NewProofBuilder(ctx, cp.Size, f.ReadTile)
			if err != nil {
				t.Fatal(err)
			}
			i := cp.Size - 1
			p, err := pb.InclusionProof(ctx, i)
			if err != nil {
				t.Fatalf("InclusionProof(%d) in size %d: %v", i, cp.Size, err)
			}
			if err := proof.VerifyInclusion(hasher, i, cp.Size, hasher.HashLeaf(entry(int(i))), p, cp.Hash); err != nil {
				t.Fatalf("newest entry %d not included in checkpoint of size %d: %v", i, cp.Size, err)
			}
			sizes = append(sizes, cp.Size)
			last = cp.Size
		}
	}
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	if len(sizes) < 3 {
		t.Fatalf("tracker saw only sizes %v: the log was not followed while it grew", sizes)
	}
}
