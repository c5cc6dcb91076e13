package ledger

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"golang.org/x/mod/sumdb/note"
)

// Report says what Fsck checked.
type Report struct {
	Size        uint64 // size of the latest checkpoint: entries recomputed
	Tiles       uint64 // tile rows checked (partial rows included)
	Checkpoints uint64 // checkpoints verified
}

// Fsck checks a log's storage from first principles against the log's
// checkpoint verifier v:
//
//   - the latest checkpoint is signed by v; its size S is the tree size;
//   - entries 0..S-1 are all stored and no entry row lies at or beyond S;
//   - every hash of every tile row is recomputed: level-0 hashes from the
//     entries, level-L hashes from the recomputed full tiles of level L-1 (not
//     from stored hashes), and every row, partial or full, must equal the
//     recomputed prefix of its width;
//   - every tile of the tree of size S is stored at its full width in that
//     tree, and no tile row lies beyond it;
//   - every stored checkpoint is signed by v, is stored under its own size,
//     commits to the root of the tree at its size, and is consistent with the
//     previous stored checkpoint (an RFC 6962 consistency proof built from
//     the verified tiles verifies);
//   - the sizes of the checkpoints that are not multiples of 256 are exactly
//     the sizes the partial level-0 tile rows were written for (each batch
//     writes both), so a deleted or an inserted checkpoint is found even if
//     validly signed.
//
// A store with no checkpoint fails with ErrNotFound.
// It stops at the first problem and returns an error naming the entry index,
// tile or checkpoint size; the Report says what had been checked until then.
// Fsck reads with several queries, so it must run on a store no one appends
// to meanwhile (rows committed during the run would be reported as beyond
// the tree). Its memory is one tile per level, 32 bytes per 256 entries and
// one map entry per stored partial level-0 tile row (one per batch).
func Fsck(ctx context.Context, st Storage, v note.Verifier) (Report, error) {
	var rep Report
	if st == nil || v == nil {
		return rep, errors.New("ledger: fsck needs a storage and a verifier")
	}
	size, n, err := st.LatestCheckpoint(ctx)
	if err != nil {
		return rep, fmt.Errorf("ledger: fsck: %w", err)
	}
	latest, err := ParseCheckpoint(n, v)
	if err != nil {
		return rep, fmt.Errorf("ledger: fsck: latest checkpoint (row size %d): %w", size, err)
	}
	if latest.Size != size {
		return rep, fmt.Errorf("ledger: fsck: checkpoint row at size %d holds a checkpoint of size %d", size, latest.Size)
	}
	rep.Size = size
	rep, err = fsckAt(ctx, st, v, latest, rep)
	if err != nil {
		// Tell a damaged store from one that grew during the check.
		if now, _, err2 := st.LatestCheckpoint(ctx); err2 == nil && now != size {
			return rep, fmt.Errorf("ledger: fsck: the log grew from size %d to %d during the check, run it again on a store no one appends to: %w", size, now, err)
		}
	}
	return rep, err
}

// fsckAt runs the checks of Fsck against the verified latest checkpoint.
func fsckAt(ctx context.Context, st Storage, v note.Verifier, latest Checkpoint, rep Report) (Report, error) {
	size := latest.Size
	// No entry row beyond the tree.
	err := st.ScanEntries(ctx, size, func(idx uint64, _ []byte) error {
		return fmt.Errorf("ledger: fsck: entry row at index %d is beyond the latest checkpoint (size %d)", idx, size)
	})
	if err != nil {
		return rep, err
	}

	partials := map[uint64]bool{}
	if err := fsckTiles(ctx, st, size, partials, &rep); err != nil {
		return rep, err
	}
	if err := fsckCheckpoints(ctx, st, v, latest, partials, &rep); err != nil {
		return rep, err
	}
	return rep, nil
}

// fsckTiles recomputes every tile of the tree of size size and checks every
// stored tile row against it. Rows arrive ordered by level, index, width, so
// the roots of the recomputed full tiles of level L are complete before
// level L+1 starts. It records in partials the tree size that each partial
// level-0 row stands for (256*index + width).
func fsckTiles(ctx context.Context, st Storage, size uint64, partials map[uint64]bool, rep *Report) error {
	var (
		up     []byte // recomputed hashes of the level being checked (level >= 1)
		next   []byte // recomputed roots of full tiles of this level: the level above
		cur    TileID // tile whose expected content is in want
		want   []byte // recomputed content of cur at its width in the tree
		have   int    // widest row of cur seen
		level  = -1   // level being checked
		expect uint64 // next tile index expected on this level
	)
	// finishTile checks that tile cur was stored at its full width in the tree.
	finishTile := func() error {
		if level < 0 || want == nil {
			return nil
		}
		if have != len(want)/HashSize {
			return fmt.Errorf("ledger: fsck: tile %s: widest row has %d hashes, the tree of size %d needs %d", tileName(cur), have, size, len(want)/HashSize)
		}
		if len(want) == TileWidth*HashSize {
			next = append(next, tileRoot(Tile{TileID: cur, Hashes: want})...)
		}
		want = nil
		return nil
	}
	// startTile recomputes the content of tile id.
	startTile := func(id TileID) error {
		w := tileWidthAt(id, size)
		cur, have = id, 0
		if id.Level == 0 {
			first := id.Index * TileWidth
			es, err := st.Entries(ctx, first, first+uint64(w))
			if err != nil {
				return fmt.Errorf("ledger: fsck: entries of tile %s: %w", tileName(id), err)
			}
			want = make([]byte, 0, w*HashSize)
			for _, e := range es {
				want = append(want, hasher.HashLeaf(e)...)
			}
			return nil
		}
		lo := id.Index * TileWidth * HashSize
		want = up[lo : lo+uint64(w)*HashSize]
		return nil
	}
	// advance moves the check to tile id (or past the end when done),
	// reporting every tile of the tree skipped over as missing.
	advance := func(id TileID, done bool) error {
		for {
			if level >= 0 && !done && int(id.Level) == level && id.Index == cur.Index && want != nil {
				return nil // another row of the current tile
			}
			if err := finishTile(); err != nil {
				return err
			}
			if level >= 0 && expect < tilesAt(uint8(level), size) {
				// The current level still has tiles before id.
				t := TileID{Level: uint8(level), Index: expect}
				if done || int(id.Level) != level || id.Index != expect {
					return fmt.Errorf("ledger: fsck: tile %s of the tree of size %d is not stored", tileName(t), size)
				}
				expect++
				return startTile(t)
			}
			if level >= 0 && !done && int(id.Level) == level {
				return fmt.Errorf("ledger: fsck: tile row %s is beyond the tree of size %d", tileName(id), size)
			}
			// Move to the next level.
			if level >= MaxLevel || levelCount(uint8(level+1), size) == 0 {
				if !done {
					return fmt.Errorf("ledger: fsck: tile row %s is beyond the tree of size %d", tileName(id), size)
				}
				return nil
			}
			level++
			up, next, expect = next, nil, 0
		}
	}
	err := st.ScanTiles(ctx, func(t Tile) error {
		if err := advance(t.TileID, false); err != nil {
			return err
		}
		rep.Tiles++
		w := t.Width()
		if w*HashSize > len(want) {
			return fmt.Errorf("ledger: fsck: tile row %s is beyond the tree of size %d", tilePathName(t.TileID, w), size)
		}
		if !bytes.Equal(t.Hashes, want[:w*HashSize]) {
			return fmt.Errorf("ledger: fsck: tile row %s: %s", tilePathName(t.TileID, w), firstDiff(t, want))
		}
		have = w
		if t.Level == 0 && w < TileWidth {
			partials[t.Index*TileWidth+uint64(w)] = true
		}
		return nil
	})
	if err != nil {
		return err
	}
	return advance(TileID{}, true)
}

// tilesAt returns the number of tiles (full or partial) of level lv in the
// tree of size size.
func tilesAt(lv uint8, size uint64) uint64 {
	c := levelCount(lv, size)
	return c/TileWidth + min(c%TileWidth, 1)
}

// firstDiff describes the first hash of t that differs from want.
func firstDiff(t Tile, want []byte) string {
	for i := 0; i < t.Width(); i++ {
		if !bytes.Equal(t.hash(i), want[i*HashSize:(i+1)*HashSize]) {
			if t.Level == 0 {
				return fmt.Sprintf("hash %d does not match the leaf hash of entry %d", i, t.Index*TileWidth+uint64(i))
			}
			return fmt.Sprintf("hash %d does not match the recomputed tile %d/%s below it", i, t.Level-1, encodeIndex(t.Index*TileWidth+uint64(i)))
		}
	}
	return "differs"
}

func tileName(id TileID) string { return fmt.Sprintf("%d/%s", id.Level, encodeIndex(id.Index)) }

func tilePathName(id TileID, w int) string {
	return fmt.Sprintf("%s (width %d)", tileName(id), w)
}

// fsckCheckpoints verifies every stored checkpoint against the tiles, which
// fsckTiles has verified, and each against the previous one. The sequencer
// writes one checkpoint per batch and, with it, the level-0 partial tile of
// its size (unless the size is a multiple of 256), and never another
// partial level-0 row; so the sizes in partials and the checkpoint sizes
// that are not multiples of 256 must be the same set. That detects a
// checkpoint deleted from the middle of the log, or one inserted with a
// valid signature at a size the log never committed.
func fsckCheckpoints(ctx context.Context, st Storage, v note.Verifier, latest Checkpoint, partials map[uint64]bool, rep *Report) error {
	rd := newTileReader(st.Tiles)
	factory := &compact.RangeFactory{Hash: hasher.HashChildren}
	var prev *Checkpoint
	err := st.ScanCheckpoints(ctx, func(size uint64, n []byte) error {
		cp, err := ParseCheckpoint(n, v)
		if err != nil {
			return fmt.Errorf("ledger: fsck: checkpoint row at size %d: %w", size, err)
		}
		if cp.Size != size {
			return fmt.Errorf("ledger: fsck: checkpoint row at size %d holds a checkpoint of size %d", size, cp.Size)
		}
		if size > latest.Size {
			return fmt.Errorf("ledger: fsck: checkpoint at size %d is beyond the latest (size %d)", size, latest.Size)
		}
		if size%TileWidth != 0 {
			if !partials[size] {
				return fmt.Errorf("ledger: fsck: checkpoint at size %d has no partial tile row 0/%s (width %d): the log never committed it", size, encodeIndex(size/TileWidth), size%TileWidth)
			}
			delete(partials, size)
		}
		hashes, err := rd.nodes(ctx, compact.RangeNodes(0, size, nil))
		if err != nil {
			return fmt.Errorf("ledger: fsck: checkpoint at size %d: %w", size, err)
		}
		rng, err := factory.NewRange(0, size, hashes)
		if err != nil {
			return fmt.Errorf("ledger: fsck: checkpoint at size %d: %w", size, err)
		}
		root, err := rootOf(rng)
		if err != nil {
			return err
		}
		if !bytes.Equal(root, cp.Root) {
			return fmt.Errorf("ledger: fsck: checkpoint at size %d has root %x, the tree has %x", size, cp.Root, root)
		}
		if prev != nil {
			nodes, err := proof.Consistency(prev.Size, size)
			if err != nil {
				return fmt.Errorf("ledger: fsck: consistency from size %d to %d: %w", prev.Size, size, err)
			}
			hs, err := rd.nodes(ctx, nodes.IDs)
			if err != nil {
				return fmt.Errorf("ledger: fsck: consistency from size %d to %d: %w", prev.Size, size, err)
			}
			if hs, err = nodes.Rehash(hs, hasher.HashChildren); err != nil {
				return fmt.Errorf("ledger: fsck: consistency from size %d to %d: %w", prev.Size, size, err)
			}
			if err := VerifyConsistency(*prev, cp, hs); err != nil {
				return fmt.Errorf("ledger: fsck: checkpoint at size %d: %w", size, err)
			}
		}
		prev = &cp
		rep.Checkpoints++
		return nil
	})
	if err != nil {
		return err
	}
	if prev == nil || prev.Size != latest.Size || !bytes.Equal(prev.Note, latest.Note) {
		return fmt.Errorf("ledger: fsck: the checkpoint scan did not end at the latest checkpoint (size %d)", latest.Size)
	}
	if len(partials) > 0 {
		first := ^uint64(0)
		for s := range partials {
			first = min(first, s)
		}
		return fmt.Errorf("ledger: fsck: partial tile row 0/%s (width %d) was committed with a checkpoint at size %d, which is not stored", encodeIndex(first/TileWidth), first%TileWidth, first)
	}
	return nil
}
