package ledger

import (
	"context"
	"errors"
)

// ErrNotFound is returned (wrapped) by Storage reads when the entry, tile or
// checkpoint asked for is not stored.
var ErrNotFound = errors.New("ledger: not found")

// Storage is what the sequencer, the proof reader, the tlog-tiles handler and
// Fsck need from a durable store. Implementations only store and load bytes;
// they never compute hashes or sign. Stored rows are immutable: writing an
// entry, a tile of a given width or a checkpoint that already exists is an
// error, never an overwrite.
//
// Hash tiles are stored per C2SP tlog-tiles geometry: one row per (level,
// index, width), width 1..256 hashes. A wider tile of the same (level, index)
// is written as a new row, never over the narrower one, so a row, once
// committed, never changes.
type Storage interface {
	// BeginAppend starts the one exclusive write transaction of an append
	// batch. It must hold the store's write lock from the start, so that
	// everything read through the returned AppendTx is the latest committed
	// state and no other writer, in this or another process, can commit
	// until this transaction ends.
	BeginAppend(ctx context.Context) (AppendTx, error)

	// Entries returns the entries with indices in [from, to), in order. It
	// fails with ErrNotFound if any of them is missing.
	Entries(ctx context.Context, from, to uint64) ([][]byte, error)
	// Tiles returns, for each id, the hashes of the widest stored tile of
	// that id. It fails with ErrNotFound if any of them has no stored tile.
	Tiles(ctx context.Context, ids []TileID) ([][]byte, error)
	// LatestCheckpoint returns the signed note of the largest committed
	// checkpoint and its size, or ErrNotFound if there is none.
	LatestCheckpoint(ctx context.Context) (size uint64, note []byte, err error)
	// CheckpointAt returns the signed note of the checkpoint of the given
	// size, or ErrNotFound.
	CheckpointAt(ctx context.Context, size uint64) ([]byte, error)
	// CheckpointCovering returns the smallest committed checkpoint whose
	// size exceeds index, or ErrNotFound.
	CheckpointCovering(ctx context.Context, index uint64) (size uint64, note []byte, err error)

	// ScanEntries calls fn for every stored entry row with index >= from,
	// in index order, until fn returns an error (which it returns).
	ScanEntries(ctx context.Context, from uint64, fn func(index uint64, entry []byte) error) error
	// ScanTiles calls fn for every stored tile row, ordered by level,
	// index and width, until fn returns an error (which it returns).
	ScanTiles(ctx context.Context, fn func(t Tile) error) error
	// ScanCheckpoints calls fn for every stored checkpoint row in size
	// order, until fn returns an error (which it returns).
	ScanCheckpoints(ctx context.Context, fn func(size uint64, note []byte) error) error
}

// An undisturbedTx is an AppendTx that can tell that no one but its
// Storage's own append transactions has committed to the store since the
// previous one began (SQLiteStorage's can), and how many append
// transactions its Storage committed before it. A Log whose own commit was
// the last of those (two Logs may append through one Storage) then knows
// the stored count, checkpoint and border without reading them.
type undisturbedTx interface {
	AppendTx
	Undisturbed() bool
	// Committed is the number of append transactions the Storage
	// committed before this one began.
	Committed() uint64
}

// AppendTx is an exclusive append transaction (see Storage.BeginAppend).
// Nothing written through it is visible to readers before Commit returns
// nil; after Rollback, or a failed Commit, nothing of it is ever visible.
type AppendTx interface {
	// EntryCount returns the number of stored entries (the highest index
	// plus one).
	EntryCount(ctx context.Context) (uint64, error)
	// LatestCheckpoint is Storage.LatestCheckpoint inside the transaction.
	LatestCheckpoint(ctx context.Context) (size uint64, note []byte, err error)
	// Tiles is Storage.Tiles inside the transaction.
	Tiles(ctx context.Context, ids []TileID) ([][]byte, error)

	// WriteEntries stores entries at indices first, first+1, ...
	WriteEntries(ctx context.Context, first uint64, entries [][]byte) error
	// WriteTiles stores each tile as a new row (level, index, width).
	WriteTiles(ctx context.Context, tiles []Tile) error
	// WriteCheckpoint stores the signed note of the checkpoint of size size.
	WriteCheckpoint(ctx context.Context, size uint64, note []byte) error

	// Commit makes the transaction durable (synced) and visible.
	Commit() error
	// Rollback discards the transaction. It is a no-op after Commit.
	Rollback() error
}
