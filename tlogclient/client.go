// Package tlogclient is a minimal client of the C2SP tlog-tiles read API: it
// fetches and verifies a log's checkpoint, fetches hash tiles and entry
// bundles, computes inclusion and consistency proofs from tiles on the client
// side, and follows a log (Follow, Monitor), proving every new checkpoint
// consistent with the last one.
//
// The package owns nothing but the client's view: everything it returns is
// either verified against a signed checkpoint or explicitly raw (Tile,
// EntryBundle). It must never report two checkpoints as inconsistent without
// a proof that the served tiles commit to the newer one (see
// InconsistencyError), and never treat an unverifiable answer as consistent.
// It uses only net/http from the standard library for transport.
package tlogclient

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"github.com/etbproject/etb/ledger"
)

// Tile geometry of C2SP tlog-tiles.
const (
	TileHeight = 8               // tree levels per tile level
	TileWidth  = 1 << TileHeight // hashes in a full tile
	HashSize   = 32              // bytes of one hash
	maxLevel   = 63 / TileHeight // highest tile level of a tree of < 2^63 leaves
	maxBundle  = TileWidth * (2 + ledger.MaxEntrySize)
)

var hasher = rfc6962.DefaultHasher

// Client reads one log. URL is the log's tlog-tiles prefix (for etb,
// "http://HOST/log"); HTTP nil means http.DefaultClient; Verifier is the
// log's checkpoint verifier, whose name is the log origin.
type Client struct {
	URL      string
	HTTP     *http.Client
	Verifier note.Verifier
}

// StatusError is a non-200 answer.
type StatusError struct {
	URL  string
	Code int
	Body string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("tlogclient: GET %s: HTTP %d: %s", e.URL, e.Code, e.Body)
}

// get fetches path under the log prefix, reading at most max bytes.
func (c *Client) get(ctx context.Context, path string, max int) ([]byte, error) {
	url := strings.TrimSuffix(c.URL, "/") + "/" + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("tlogclient: GET %s: %w", url, err)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("tlogclient: GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, int64(max)+1))
	if err != nil {
		return nil, fmt.Errorf("tlogclient: GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		msg := strings.TrimSpace(string(body))
		if len(msg) > 200 {
			msg = msg[:200] + "..."
		}
		return nil, &StatusError{URL: url, Code: resp.StatusCode, Body: msg}
	}
	if len(body) > max {
		return nil, fmt.Errorf("tlogclient: GET %s: response exceeds %d bytes", url, max)
	}
	return body, nil
}

// FetchCheckpoint returns the log's latest checkpoint note, unverified.
func (c *Client) FetchCheckpoint(ctx context.Context) ([]byte, error) {
	return c.get(ctx, "checkpoint", ledger.MaxNoteSize)
}

// Checkpoint fetches the log's latest checkpoint and verifies it with
// c.Verifier (see ledger.ParseCheckpoint).
func (c *Client) Checkpoint(ctx context.Context) (ledger.Checkpoint, error) {
	n, err := c.FetchCheckpoint(ctx)
	if err != nil {
		return ledger.Checkpoint{}, err
	}
	return ledger.ParseCheckpoint(n, c.Verifier)
}

// TilePath returns the tlog-tiles path of hash tile (level, index) of width
// w, "tile/<L>/<N>[.p/<W>]"; w is 1..TileWidth, TileWidth for a full tile.
func TilePath(level uint8, index uint64, w int) string {
	return "tile/" + strconv.Itoa(int(level)) + "/" + encodeIndex(index) + partial(w)
}

// EntriesPath returns the tlog-tiles path of entry bundle index of width w,
// "tile/entries/<N>[.p/<W>]".
func EntriesPath(index uint64, w int) string {
	return "tile/entries/" + encodeIndex(index) + partial(w)
}

func partial(w int) string {
	if w >= TileWidth {
		return ""
	}
	return ".p/" + strconv.Itoa(w)
}

// encodeIndex encodes n as zero-padded 3-digit path elements, all but the
// last prefixed with "x": 1234067 is "x001/x234/067".
func encodeIndex(n uint64) string {
	s := fmt.Sprintf("%03d", n%1000)
	for n /= 1000; n > 0; n /= 1000 {
		s = fmt.Sprintf("x%03d/", n%1000) + s
	}
	return s
}

// TileWidthAt returns the width of hash tile (level, index) in a tree of
// size size: 0 if the tile is empty there, TileWidth if it is full.
func TileWidthAt(level uint8, index, size uint64) int {
	if level > maxLevel {
		return 0
	}
	count := size >> (TileHeight * uint(level)) // hashes at tree level 8*level
	if index >= count/TileWidth+1 {
		return 0
	}
	return int(min(count-index*TileWidth, TileWidth))
}

// Tile fetches the first w hashes of hash tile (level, index), concatenated.
// If the partial tile is gone (404), it fetches the full tile and returns
// its prefix, as tlog-tiles allows. The hashes are not verified.
func (c *Client) Tile(ctx context.Context, level uint8, index uint64, w int) ([]byte, error) {
	if w < 1 || w > TileWidth || level > maxLevel {
		return nil, fmt.Errorf("tlogclient: tile %d/%d of width %d: want level 0..%d and width 1..%d", level, index, w, maxLevel, TileWidth)
	}
	b, err := c.get(ctx, TilePath(level, index, w), w*HashSize)
	var se *StatusError
	if w < TileWidth && asStatus(err, &se) && se.Code == http.StatusNotFound {
		b, err = c.get(ctx, TilePath(level, index, TileWidth), TileWidth*HashSize)
		if err == nil && len(b) == TileWidth*HashSize {
			b = b[:w*HashSize]
		}
	}
	if err != nil {
		return nil, err
	}
	if len(b) != w*HashSize {
		return nil, fmt.Errorf("tlogclient: %s is %d bytes, want %d", TilePath(level, index, w), len(b), w*HashSize)
	}
	return b, nil
}

func asStatus(err error, se **StatusError) bool {
	if e, ok := err.(*StatusError); ok {
		*se = e
		return true
	}
	return false
}

// EntryBundle fetches entry bundle index of width w and returns its w
// entries. The entries are not verified; check them against leaf hashes
// (hash tile level 0) or an inclusion proof.
func (c *Client) EntryBundle(ctx context.Context, index uint64, w int) ([][]byte, error) {
	if w < 1 || w > TileWidth {
		return nil, fmt.Errorf("tlogclient: entry bundle %d of width %d: want width 1..%d", index, w, TileWidth)
	}
	b, err := c.get(ctx, EntriesPath(index, w), maxBundle)
	var se *StatusError
	if w < TileWidth && asStatus(err, &se) && se.Code == http.StatusNotFound {
		b, err = c.get(ctx, EntriesPath(index, TileWidth), maxBundle)
	}
	if err != nil {
		return nil, err
	}
	var es [][]byte
	for rest := b; len(rest) > 0; {
		if len(rest) < 2 {
			return nil, fmt.Errorf("tlogclient: %s: truncated length after %d entries", EntriesPath(index, w), len(es))
		}
		n := int(binary.BigEndian.Uint16(rest))
		if len(rest) < 2+n {
			return nil, fmt.Errorf("tlogclient: %s: entry %d is truncated", EntriesPath(index, w), len(es))
		}
		es = append(es, rest[2:2+n])
		rest = rest[2+n:]
	}
	if len(es) < w {
		return nil, fmt.Errorf("tlogclient: %s has %d entries, want %d", EntriesPath(index, w), len(es), w)
	}
	return es[:w], nil
}

// tileKey names a fetched tile in a tileSet.
type tileKey struct {
	level uint8
	index uint64
	w     int
}

// tileSet computes node hashes of the tree of one size from tiles, fetching
// each tile once.
type tileSet struct {
	c     *Client
	size  uint64
	tiles map[tileKey][]byte
}

func (c *Client) tilesAt(size uint64) *tileSet {
	return &tileSet{c: c, size: size, tiles: map[tileKey][]byte{}}
}

// nodes returns the hashes of the complete subtrees ids of the tree.
func (ts *tileSet) nodes(ctx context.Context, ids []compact.NodeID) ([][]byte, error) {
	out := make([][]byte, len(ids))
	for i, id := range ids {
		h, err := ts.node(ctx, id)
		if err != nil {
			return nil, err
		}
		out[i] = h
	}
	return out, nil
}

// node returns the hash of complete subtree id: the Merkle hash of the
// 2^r tile-level hashes under it, r = id.Level mod TileHeight, which are
// consecutive in one tile.
func (ts *tileSet) node(ctx context.Context, id compact.NodeID) ([]byte, error) {
	if id.Level > 63 || id.Index >= (1<<63)>>id.Level || (id.Index+1)<<id.Level > ts.size {
		return nil, fmt.Errorf("tlogclient: node (%d, %d) is not a complete subtree of the tree of size %d", id.Level, id.Index, ts.size)
	}
	level := uint8(id.Level / TileHeight)
	r := id.Level % TileHeight
	first := id.Index << r
	tile, lo := first/TileWidth, int(first%TileWidth)
	hi := lo + 1<<r
	w := TileWidthAt(level, tile, ts.size)
	if w < hi {
		return nil, fmt.Errorf("tlogclient: node (%d, %d) is beyond tile %d/%d of width %d", id.Level, id.Index, level, tile, w)
	}
	k := tileKey{level, tile, w}
	b, ok := ts.tiles[k]
	if !ok {
		var err error
		if b, err = ts.c.Tile(ctx, level, tile, w); err != nil {
			return nil, err
		}
		ts.tiles[k] = b
	}
	return subtreeHash(b, lo, hi), nil
}

// subtreeHash returns the RFC 6962 hash of the perfect subtree whose leaves
// are hashes [lo, hi) of the concatenated hashes b; hi-lo is a power of two.
func subtreeHash(b []byte, lo, hi int) []byte {
	level := make([][]byte, 0, hi-lo)
	for i := lo; i < hi; i++ {
		level = append(level, b[i*HashSize:(i+1)*HashSize])
	}
	for len(level) > 1 {
		next := level[:0:0]
		for i := 0; i < len(level); i += 2 {
			next = append(next, hasher.HashChildren(level[i], level[i+1]))
		}
		level = next
	}
	return bytes.Clone(level[0])
}

// root returns the root hash of the tree of size m <= ts.size, computed
// from the tiles of the tree of size ts.size.
func (ts *tileSet) root(ctx context.Context, m uint64) ([]byte, error) {
	if m == 0 {
		return hasher.EmptyRoot(), nil
	}
	hashes, err := ts.nodes(ctx, compact.RangeNodes(0, m, nil))
	if err != nil {
		return nil, err
	}
	f := compact.RangeFactory{Hash: hasher.HashChildren}
	rng, err := f.NewRange(0, m, hashes)
	if err != nil {
		return nil, fmt.Errorf("tlogclient: root of size %d: %w", m, err)
	}
	return rng.GetRootHash(nil)
}

// ConsistencyProof computes the RFC 6962 consistency proof from size from to
// size to (from <= to) from the tiles of the tree of size to. The hashes are
// unverified until checked against two checkpoints (ledger.VerifyConsistency).
func (c *Client) ConsistencyProof(ctx context.Context, from, to uint64) ([][]byte, error) {
	nodes, err := proof.Consistency(from, to)
	if err != nil {
		return nil, fmt.Errorf("tlogclient: consistency proof from %d to %d: %w", from, to, err)
	}
	hashes, err := c.tilesAt(to).nodes(ctx, nodes.IDs)
	if err != nil {
		return nil, err
	}
	return nodes.Rehash(hashes, hasher.HashChildren)
}

// InclusionProof computes the RFC 6962 inclusion proof of entry index in the
// tree of size size (index < size) from that tree's tiles. The hashes are
// unverified until checked against a checkpoint.
func (c *Client) InclusionProof(ctx context.Context, index, size uint64) ([][]byte, error) {
	nodes, err := proof.Inclusion(index, size)
	if err != nil {
		return nil, fmt.Errorf("tlogclient: inclusion proof of %d in %d: %w", index, size, err)
	}
	hashes, err := c.tilesAt(size).nodes(ctx, nodes.IDs)
	if err != nil {
		return nil, err
	}
	return nodes.Rehash(hashes, hasher.HashChildren)
}

// ProveEntry fetches entry index, proves it is included in cp (a verified
// checkpoint of this log) with tiles, and returns it.
func (c *Client) ProveEntry(ctx context.Context, index uint64, cp ledger.Checkpoint) ([]byte, error) {
	if index >= cp.Size {
		return nil, fmt.Errorf("tlogclient: entry %d is not below checkpoint size %d", index, cp.Size)
	}
	bundle := index / TileWidth
	es, err := c.EntryBundle(ctx, bundle, TileWidthAt(0, bundle, cp.Size))
	if err != nil {
		return nil, err
	}
	e := es[index%TileWidth]
	p, err := c.InclusionProof(ctx, index, cp.Size)
	if err != nil {
		return nil, err
	}
	if err := proof.VerifyInclusion(hasher, index, cp.Size, hasher.HashLeaf(e), p, cp.Root); err != nil {
		return nil, fmt.Errorf("tlogclient: entry %d is not included in the checkpoint of size %d: %w", index, cp.Size, err)
	}
	return e, nil
}
