package ledger

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"testing"

	"github.com/transparency-dev/merkle/compact"
)

// TestTileGeometry checks the tile arithmetic on the example of C2SP
// tlog-tiles: a tree of 70,000 entries has 273 full level-0 tiles and one
// of width 112, a full level-1 tile and one of width 17, and a level-2
// tile of width 1; a tree of 256 has a full level-0 tile and a level-1
// tile of width 1.
func TestTileGeometry(t *testing.T) {
	tests := []struct {
		id   TileID
		size uint64
		w    int
	}{
		{TileID{0, 272}, 70000, 256},
		{TileID{0, 273}, 70000, 112},
		{TileID{0, 274}, 70000, 0},
		{TileID{1, 0}, 70000, 256},
		{TileID{1, 1}, 70000, 17},
		{TileID{2, 0}, 70000, 1},
		{TileID{3, 0}, 70000, 0},
		{TileID{0, 0}, 256, 256},
		{TileID{1, 0}, 256, 1},
		{TileID{0, 0}, 0, 0},
		{TileID{0, 1 << 55}, ^uint64(0), 256},
		{TileID{0, 1 << 56}, ^uint64(0), 0},
		{TileID{0, 1 << 63}, ^uint64(0), 0},
		{TileID{0, ^uint64(0)}, ^uint64(0), 0},
		{TileID{6, 254}, ^uint64(0), 256},
		{TileID{6, 255}, ^uint64(0), 255},
		{TileID{7, 0}, ^uint64(0), 255},
		{TileID{8, 0}, ^uint64(0), 0},
		{TileID{63, 0}, ^uint64(0), 0},
	}
	for _, tt := range tests {
		if got := tileWidthAt(tt.id, tt.size); got != tt.w {
			t.Errorf("tileWidthAt(%v, %d) = %d, want %d", tt.id, tt.size, got, tt.w)
		}
	}
	if n := tilesAt(0, 70000); n != 274 {
		t.Errorf("tilesAt(0, 70000) = %d, want 274", n)
	}
	// Node (level h, index i) lies in tile (h/8, (i << h%8) / 256).
	for _, tt := range []struct {
		node   compact.NodeID
		tile   TileID
		lo, hi int
	}{
		{compact.NewNodeID(0, 300), TileID{0, 1}, 44, 45},
		{compact.NewNodeID(3, 37), TileID{0, 1}, 40, 48},
		{compact.NewNodeID(7, 3), TileID{0, 1}, 128, 256},
		{compact.NewNodeID(8, 273), TileID{1, 1}, 17, 18},
		{compact.NewNodeID(15, 0), TileID{1, 0}, 0, 128},
		{compact.NewNodeID(16, 0), TileID{2, 0}, 0, 1},
	} {
		id, lo, hi := tileOf(tt.node)
		if id != tt.tile || lo != tt.lo || hi != tt.hi {
			t.Errorf("tileOf(%v) = %v [%d, %d), want %v [%d, %d)", tt.node, id, lo, hi, tt.tile, tt.lo, tt.hi)
		}
	}
}

// TestTileReaderCache: nodes computed through the reader's small cache are
// the nodes of the tiles read, also when the cache overflows between and
// within calls (a regression: a full cache once dropped tiles a call had
// found cached).
func TestTileReaderCache(t *testing.T) {
	tile := func(id TileID) []byte {
		var b []byte
		for i := 0; i < TileWidth; i++ {
			h := sha256.Sum256(binary.BigEndian.AppendUint64([]byte{id.Level}, id.Index*TileWidth+uint64(i)))
			b = append(b, h[:]...)
		}
		return b
	}
	reads := 0
	rd := newTileReader(func(_ context.Context, ids []TileID) ([][]byte, error) {
		reads += len(ids)
		var out [][]byte
		for _, id := range ids {
			out = append(out, tile(id))
		}
		return out, nil
	})
	for k := uint64(0); k < 200; k++ {
		ids := []compact.NodeID{compact.NewNodeID(0, 5), compact.NewNodeID(2, k*64+3), compact.NewNodeID(9, k)}
		got, err := rd.nodes(context.Background(), ids)
		if err != nil {
			t.Fatalf("call %d: %v", k, err)
		}
		for i, id := range ids {
			tid, lo, hi := tileOf(id)
			if want := subtreeHash(Tile{TileID: tid, Hashes: tile(tid)}, lo, hi); !bytes.Equal(got[i], want) {
				t.Fatalf("call %d: node %v wrong", k, id)
			}
		}
	}
	if reads >= 3*200 {
		t.Errorf("%d tile reads for 600 nodes: the cache is not used", reads)
	}
}
