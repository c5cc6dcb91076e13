package ledger

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/transparency-dev/merkle/compact"
)

func TestTilePath(t *testing.T) {
	tests := []struct {
		id      TileID
		w       int
		entries bool
		path    string
	}{
		{TileID{0, 0}, 256, false, "tile/0/000"},
		{TileID{0, 5}, 17, false, "tile/0/005.p/17"},
		{TileID{2, 1234067}, 256, false, "tile/2/x001/x234/067"},
		{TileID{63, 1000}, 1, false, "tile/63/x001/000.p/1"},
		{TileID{0, 273}, 112, true, "tile/entries/273.p/112"},
		{TileID{0, 1<<63 - 1}, 256, true, "tile/entries/x009/x223/x372/x036/x854/x775/807"},
	}
	for _, tt := range tests {
		if got := TilePath(tt.id, tt.w, tt.entries); got != tt.path {
			t.Errorf("TilePath(%v, %d, %v) = %q, want %q", tt.id, tt.w, tt.entries, got, tt.path)
		}
		id, w, e, err := ParseTilePath(tt.path)
		if err != nil || id != tt.id || w != tt.w || e != tt.entries {
			t.Errorf("ParseTilePath(%q) = %v, %d, %v, %v", tt.path, id, w, e, err)
		}
	}
}

var badTilePaths = []string{
	"tile/",
	"tile/0",
	"tile/0/",
	"tile/abc/000",
	"tile/0/abc",
	"tile/-1/000",
	"tile/0/-01",
	"tile/0/-1",
	"tile/64/000",
	"tile/00/000",
	"tile/+1/000",
	"tile/0/1",
	"tile/0/0001",
	"tile/0/x001",
	"tile/0/001/002",
	"tile/0/x000/001",
	"tile/0/x001/x002",
	"tile/0/000.p/0",
	"tile/0/000.p/256",
	"tile/0/000.p/010",
	"tile/0/000.p/",
	"tile/0/000.p/1/2",
	"tile/0/000.p",
	"tile/0/x009/x223/x372/x036/x854/x775/808",           // 2^63
	"tile/0/x018/x446/x744/x073/x709/x551/615",           // 2^64-1
	"tile/0/x001/x000/x000/x000/x000/x000/x000/000",      // 10^21
	"tile/entries/x009/x223/x372/x036/x854/x775/808.p/1", // 2^63
	"tile/99999999999999999999/000",                      // level overflow
	"tile/0/000.p/99999999999999999999",                  // width overflow
	"tile/entries/000.p/-1",                              // negative width
	"tile/0/" + strings.Repeat("x001/", 10) + "001",      // too many elements
	"tile/0/\x00\x00\x00",                                // control bytes
	"tile/entries/entries/000",                           // nonsense
	"tile/1/000.p/1.p/1",                                 // double suffix
	"tile/0/000/",                                        // trailing slash
	"tile/0//000",                                        // empty element
	"tile/0/x001//000",                                   // empty element
	"tile/0/x00a/000",                                    // non-digit
	"tile/0/x001/00a",                                    // non-digit
	"tile/0/x1234/000",                                   // 4 digits
	"tile/0/xx01/000",                                    // double x
	"tile/0/001.p/1x",                                    // junk width
	"tile/0/001.p/ 1",                                    // space
	"tile/0/001 ",                                        // space
	"tile/entries/001.p/256",                             // width 256 partial
	"tile/entries/0.p/1",                                 // 1 digit
	"tile/entries/x000/000",                              // leading x000
	"tile/entries/x001/x000/x000/x000/x000/x000/x000/x000/000.p/1", // too many
}

func TestParseTilePathRejects(t *testing.T) {
	for _, p := range badTilePaths {
		if id, w, e, err := ParseTilePath(p); err == nil {
			t.Errorf("ParseTilePath(%q) = %v, %d, %v; want an error", p, id, w, e)
		} else if !strings.Contains(err.Error(), "tile path") {
			t.Errorf("ParseTilePath(%q) error %q does not name the path", p, err)
		}
	}
}

func FuzzParseTilePath(f *testing.F) {
	for _, p := range badTilePaths {
		f.Add(p)
	}
	f.Add("tile/0/x001/x234/067.p/8")
	f.Add("tile/entries/273.p/112")
	f.Fuzz(func(t *testing.T, p string) {
		id, w, e, err := ParseTilePath(p)
		if err != nil {
			return
		}
		if id.Level > MaxLevel || id.Index > 1<<63-1 || w < 1 || w > TileWidth || e && id.Level != 0 {
			t.Fatalf("ParseTilePath(%q) = %v, %d, %v out of range", p, id, w, e)
		}
		// Only canonical paths parse: the path round-trips.
		if got := TilePath(id, w, e); got != p {
			t.Fatalf("ParseTilePath(%q) round-trips to %q", p, got)
		}
	})
}

func get(t *testing.T, srv *httptest.Server, path string) (int, http.Header, []byte) {
	t.Helper()
	resp, err := srv.Client().Get(srv.URL + "/log/" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, body
}

// TestHandler serves a log of 70,000 entries, the example of C2SP
// tlog-tiles (273 full level-0 tiles and one of width 112, a full level-1
// tile and one of width 17, a level-2 tile of width 1), and checks it
// like a client: the checkpoint verifies, tiles and bundles hash to each
// other, the root recomputed from the tiles is the checkpoint's, and
// nothing beyond the tree is served.
func TestHandler(t *testing.T) {
	ctx := context.Background()
	f := newLog(t)
	const size = 70000
	var all [][]byte
	for len(all) < size {
		var b [][]byte
		for i := 0; i < MaxBatchEntries && len(all)+len(b) < size; i++ {
			b = append(b, entryData(len(all)+len(b)))
		}
		if _, err := f.log.Append(ctx, b...); err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	mux := http.NewServeMux()
	mux.Handle("/log/", http.StripPrefix("/log", NewHandler(f.log)))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	code, hdr, body := get(t, srv, "checkpoint")
	if code != 200 || hdr.Get("Content-Type") != "text/plain; charset=utf-8" || hdr.Get("Cache-Control") != "no-cache" {
		t.Fatalf("checkpoint: %d %v", code, hdr)
	}
	cp, err := ParseCheckpoint(body, f.v)
	if err != nil || cp.Size != size {
		t.Fatalf("checkpoint: size %d, %v", cp.Size, err)
	}

	// fetch returns the tile of width tileWidthAt(id, size) over HTTP.
	fetch := func(id TileID, entries bool) []byte {
		w := tileWidthAt(id, size)
		code, hdr, body := get(t, srv, TilePath(id, w, entries))
		if code != 200 || hdr.Get("Content-Type") != "application/octet-stream" || hdr.Get("Cache-Control") != cacheImmutable {
			t.Fatalf("%s: %d %v %s", TilePath(id, w, entries), code, hdr, body)
		}
		if !entries && len(body) != w*HashSize {
			t.Fatalf("%s: %d bytes, want %d", TilePath(id, w, entries), len(body), w*HashSize)
		}
		return body
	}
	for _, n := range []uint64{0, 5, 272, 273} {
		tile := fetch(TileID{0, n}, false)
		bundle := fetch(TileID{0, n}, true)
		for i := 0; len(bundle) > 0; i++ {
			l := int(binary.BigEndian.Uint16(bundle))
			e := bundle[2 : 2+l]
			bundle = bundle[2+l:]
			idx := n*TileWidth + uint64(i)
			if !bytes.Equal(e, all[idx]) {
				t.Fatalf("bundle %d entry %d = %q, want %q", n, i, e, all[idx])
			}
			if !bytes.Equal(hasher.HashLeaf(e), tile[i*HashSize:(i+1)*HashSize]) {
				t.Fatalf("tile 0/%d hash %d is not the leaf hash of entry %d", n, i, idx)
			}
			if i == tileWidthAt(TileID{0, n}, size)-1 && len(bundle) != 0 {
				t.Fatalf("bundle %d has trailing bytes", n)
			}
		}
		if n < 273 {
			// Level-1 hash n is the Merkle root of level-0 tile n.
			up := fetch(TileID{1, n / TileWidth}, false)
			if got := up[(n%TileWidth)*HashSize : (n%TileWidth+1)*HashSize]; !bytes.Equal(got, refRoot(all[n*TileWidth:(n+1)*TileWidth])) {
				t.Fatalf("level-1 hash %d is not the root of tile 0/%d", n, n)
			}
		}
	}
	// Recompute the root from the tiles alone.
	rd := newTileReader(func(_ context.Context, ids []TileID) ([][]byte, error) {
		var out [][]byte
		for _, id := range ids {
			out = append(out, fetch(id, false))
		}
		return out, nil
	})
	hashes, err := rd.nodes(ctx, compact.RangeNodes(0, size, nil))
	if err != nil {
		t.Fatal(err)
	}
	rng, err := f.log.factory.NewRange(0, size, hashes)
	if err != nil {
		t.Fatal(err)
	}
	if root, _ := rng.GetRootHash(nil); !bytes.Equal(root, cp.Root) || !bytes.Equal(root, refRoot(all)) {
		t.Fatal("root recomputed from served tiles is not the checkpoint's")
	}

	for _, tt := range []struct {
		path string
		code int
		body []byte // nil: don't check
	}{
		{"tile/0/005.p/10", 200, fetch(TileID{0, 5}, false)[:10*HashSize]},
		{"tile/0/273.p/111", 200, fetch(TileID{0, 273}, false)[:111*HashSize]},
		{"tile/2/000.p/1", 200, nil},
		{"tile/1/001.p/17", 200, nil},
		{"tile/0/273", 404, nil},
		{"tile/0/273.p/113", 404, nil},
		{"tile/0/274.p/1", 404, nil},
		{"tile/entries/273", 404, nil},
		{"tile/entries/273.p/113", 404, nil},
		{"tile/entries/x001/x234/067", 404, nil},
		{"tile/1/001", 404, nil},
		{"tile/2/000", 404, nil},
		{"tile/3/000.p/1", 404, nil},
		{"tile/63/000.p/1", 404, nil},
		{"tile/0/x009/x223/x372/x036/x854/x775/807", 404, nil},
		{"tile/entries/x009/x223/x372/x036/x854/x775/807.p/255", 404, nil},
		{"checkpoint/", 404, nil},
		{"", 404, nil},
		{"tiles/0/000", 404, nil},
	} {
		code, _, body := get(t, srv, tt.path)
		if code != tt.code || tt.body != nil && !bytes.Equal(body, tt.body) {
			t.Errorf("GET %s: %d %.80q, want %d", tt.path, code, string(body), tt.code)
		}
	}
	for _, p := range badTilePaths {
		req, _ := http.NewRequest("GET", srv.URL+"/log/"+p, nil)
		if req == nil || strings.Contains(p, "//") {
			continue // not a URL, or one that ServeMux redirects to its clean form
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 && resp.StatusCode != 404 || len(msg) == 0 {
			t.Errorf("GET %q: %d %.80q, want 400 or 404 with a message", p, resp.StatusCode, string(msg))
		}
	}
	resp, err := srv.Client().Post(srv.URL+"/log/checkpoint", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 {
		t.Errorf("POST checkpoint: %d, want 405", resp.StatusCode)
	}
	if _, err := Fsck(ctx, f.st, f.v); err != nil {
		t.Fatal(err)
	}
}

func TestHandlerEmptyLog(t *testing.T) {
	f := newLog(t)
	srv := httptest.NewServer(http.StripPrefix("/log", NewHandler(f.log)))
	defer srv.Close()
	code, _, body := get(t, srv, "checkpoint")
	if cp, err := ParseCheckpoint(body, f.v); code != 200 || err != nil || cp.Size != 0 {
		t.Fatalf("checkpoint of the empty log: %d %v", code, err)
	}
	for _, p := range []string{"tile/0/000.p/1", "tile/entries/000.p/1", "tile/0/000"} {
		if code, _, _ := get(t, srv, p); code != 404 {
			t.Errorf("GET %s on the empty log: %d, want 404", p, code)
		}
	}
	if code, _, body := get(t, srv, "tile/0/-1"); code != 400 || !strings.Contains(string(body), "tile path") {
		t.Errorf("GET tile/0/-1: %d %q, want 400 naming the path", code, body)
	}
}
