package ledger

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/transparency-dev/merkle/compact"
)

// Tile geometry of C2SP tlog-tiles: a tile at level L holds up to TileWidth
// consecutive hashes of tree level TileHeight*L.
const (
	TileHeight = 8
	TileWidth  = 1 << TileHeight // hashes in a full tile
	HashSize   = sha256.Size
	MaxLevel   = 63 // highest tile level in a path
)

// TileID names a hash tile: level L and index N within the level.
type TileID struct {
	Level uint8
	Index uint64
}

// Tile is a stored hash tile: the first Width() hashes of tile (Level,
// Index), concatenated. A tile of width w is a prefix of every wider tile of
// the same ID; a full tile (width TileWidth) never changes.
type Tile struct {
	TileID
	Hashes []byte // Width()*HashSize bytes, 1..TileWidth hashes
}

// Width returns the number of hashes in t.
func (t Tile) Width() int { return len(t.Hashes) / HashSize }

// hash returns the i-th hash of t.
func (t Tile) hash(i int) []byte { return t.Hashes[i*HashSize : (i+1)*HashSize] }

// levelCount returns the number of hashes at tree level TileHeight*level in
// a tree of size size: size / 256^level.
func levelCount(level uint8, size uint64) uint64 {
	sh := uint(level) * TileHeight
	if sh >= 64 {
		return 0
	}
	return size >> sh
}

// tileWidthAt returns the width of tile id in the tree of size size (0 if
// the tile is empty there, TileWidth if it is full).
func tileWidthAt(id TileID, size uint64) int {
	n := levelCount(id.Level, size)
	start := id.Index * TileWidth
	if id.Index > math.MaxUint64/TileWidth || n <= start {
		return 0
	}
	return int(min(n-start, TileWidth))
}

// tileOf returns the tile holding the tile-level hashes under node id, and
// the range [lo, hi) of positions in that tile that node id is the Merkle
// tree hash of.
func tileOf(id compact.NodeID) (TileID, int, int) {
	l, r := id.Level/TileHeight, id.Level%TileHeight
	first := id.Index << r // first tile-level hash under id
	return TileID{Level: uint8(l), Index: first / TileWidth}, int(first % TileWidth), int(first%TileWidth) + 1<<r
}

// subtreeHash returns the RFC 6962 hash of the perfect subtree whose leaves
// (at the tile's level) are hashes [lo, hi) of t; hi-lo is a power of two.
func subtreeHash(t Tile, lo, hi int) []byte {
	if hi-lo == 1 {
		return t.hash(lo)
	}
	mid := (lo + hi) / 2
	return hasher.HashChildren(subtreeHash(t, lo, mid), subtreeHash(t, mid, hi))
}

// tileRoot returns the hash of a full tile, which is the hash at index
// id.Index of the level above.
func tileRoot(t Tile) []byte { return subtreeHash(t, 0, TileWidth) }

// tileReader reads tiles through read, keeping the last few in memory.
type tileReader struct {
	read  func(ctx context.Context, ids []TileID) ([][]byte, error)
	cache map[TileID][]byte
}

func newTileReader(read func(ctx context.Context, ids []TileID) ([][]byte, error)) *tileReader {
	return &tileReader{read: read, cache: map[TileID][]byte{}}
}

// nodes returns the hashes of the complete subtrees ids, computed from the
// stored tiles. It fails (wrapping ErrNotFound) if a tile is missing or too
// narrow to cover a node.
func (r *tileReader) nodes(ctx context.Context, ids []compact.NodeID) ([][]byte, error) {
	if len(r.cache) > 64 {
		clear(r.cache) // before choosing what to read, so no needed tile is dropped
	}
	var need []TileID
	seen := map[TileID]bool{}
	for _, id := range ids {
		if id.Level > MaxLevel*TileHeight+TileHeight-1 {
			return nil, fmt.Errorf("ledger: node (level %d, index %d) is above the tree", id.Level, id.Index)
		}
		t, _, _ := tileOf(id)
		if _, ok := r.cache[t]; !ok && !seen[t] {
			seen[t] = true
			need = append(need, t)
		}
	}
	if len(need) > 0 {
		hs, err := r.read(ctx, need)
		if err != nil {
			return nil, err
		}
		for i, t := range need {
			r.cache[t] = hs[i]
		}
	}
	out := make([][]byte, len(ids))
	for i, id := range ids {
		tid, lo, hi := tileOf(id)
		t := Tile{TileID: tid, Hashes: r.cache[tid]}
		if t.Width() < hi {
			return nil, fmt.Errorf("ledger: node (level %d, index %d) needs %d hashes of tile %d/%d, %d stored: %w",
				id.Level, id.Index, hi, tid.Level, tid.Index, t.Width(), ErrNotFound)
		}
		out[i] = subtreeHash(t, lo, hi)
	}
	return out, nil
}

// TilePath returns the tlog-tiles path of the tile id of width w
// ("tile/<L>/<N>[.p/<W>]"), or of the entry bundle if entries is true
// ("tile/entries/<N>[.p/<W>]").
func TilePath(id TileID, w int, entries bool) string {
	var b strings.Builder
	b.WriteString("tile/")
	if entries {
		b.WriteString("entries/")
	} else {
		b.WriteString(strconv.Itoa(int(id.Level)) + "/")
	}
	b.WriteString(encodeIndex(id.Index))
	if w > 0 && w < TileWidth {
		b.WriteString(".p/" + strconv.Itoa(w))
	}
	return b.String()
}

// encodeIndex encodes n as zero-padded 3-digit path elements, all but the
// last prefixed with "x": 1234067 is "x001/x234/067".
func encodeIndex(n uint64) string {
	s := fmt.Sprintf("%03d", n%1000)
	for n >= 1000 {
		n /= 1000
		s = fmt.Sprintf("x%03d/", n%1000) + s
	}
	return s
}

// ParseTilePath parses a tlog-tiles path relative to the log prefix:
// "tile/<L>/<N>[.p/<W>]" or "tile/entries/<N>[.p/<W>]". It accepts only the
// canonical encoding: L in 0..63 and W in 1..255 without leading zeros, N in
// 3-digit elements without a leading "x000" element, N below 2^63. w is
// TileWidth for a full tile.
func ParseTilePath(path string) (id TileID, w int, entries bool, err error) {
	bad := func(format string, args ...any) (TileID, int, bool, error) {
		return TileID{}, 0, false, fmt.Errorf("ledger: tile path %q: "+format, append([]any{truncate(path)}, args...)...)
	}
	rest, ok := strings.CutPrefix(path, "tile/")
	if !ok {
		return bad("does not start with tile/")
	}
	level, rest, ok := strings.Cut(rest, "/")
	if !ok {
		return bad("no index")
	}
	if level == "entries" {
		entries = true
	} else {
		l, err := parseDecimal(level)
		if err != nil || l > MaxLevel {
			return bad("level %q is not a decimal in 0..%d", truncate(level), MaxLevel)
		}
		id.Level = uint8(l)
	}
	w = TileWidth
	if idx, width, partial := strings.Cut(rest, ".p/"); partial {
		n, err := parseDecimal(width)
		if err != nil || n < 1 || n >= TileWidth {
			return bad("partial width %q is not a decimal in 1..%d", truncate(width), TileWidth-1)
		}
		w, rest = int(n), idx
	}
	elems := strings.SplitN(rest, "/", 8)
	if len(elems) > 7 {
		return bad("index has more than 7 elements")
	}
	var n uint64
	for i, e := range elems {
		last := i == len(elems)-1
		digits, x := strings.CutPrefix(e, "x")
		if x == last || len(digits) != 3 || strings.Trim(digits, "0123456789") != "" {
			want := `"x" and 3 digits`
			if last {
				want = "3 digits"
			}
			return bad("index element %q is not %s", truncate(e), want)
		}
		if i == 0 && !last && digits == "000" {
			return bad("index has a leading x000 element")
		}
		d, _ := strconv.ParseUint(digits, 10, 64)
		if n > (math.MaxInt64-d)/1000 {
			return bad("index exceeds 2^63-1")
		}
		n = n*1000 + d
	}
	id.Index = n
	return id, w, entries, nil
}

// equalPrefix reports whether a is a prefix of b.
func equalPrefix(a, b []byte) bool { return len(a) <= len(b) && bytes.Equal(a, b[:len(a)]) }
