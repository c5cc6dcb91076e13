package ledger

import (
	"context"
	"errors"

	"github.com/transparency-dev/merkle/compact"
)

// ErrNotFound is returned (wrapped) by Storage reads when the entry, node or
// checkpoint asked for is not stored.
var ErrNotFound = errors.New("ledger: not found")

// Storage is what the sequencer and the proof reader need from a durable
// store. Implementations only store and load bytes; they never compute
// hashes or sign. Stored rows are immutable: writing an entry, node or
// checkpoint that already exists is an error, never an overwrite.
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
	// Nodes returns the hashes of the given complete subtrees, in order. It
	// fails with ErrNotFound if any of them is missing.
	Nodes(ctx context.Context, ids []compact.NodeID) ([][]byte, error)
	// LatestCheckpoint returns the signed note of the largest committed
	// checkpoint and its size, or ErrNotFound if there is none.
	LatestCheckpoint(ctx context.Context) (size uint64, note []byte, err error)
	// CheckpointAt returns the signed note of the checkpoint of the given
	// size, or ErrNotFound.
	CheckpointAt(ctx context.Context, size uint64) ([]byte, error)
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
	// Nodes is Storage.Nodes inside the transaction.
	Nodes(ctx context.Context, ids []compact.NodeID) ([][]byte, error)

	// WriteEntries stores entries at indices first, first+1, ...
	WriteEntries(ctx context.Context, first uint64, entries [][]byte) error
	// WriteNodes stores hashes[i] as the hash of subtree ids[i].
	WriteNodes(ctx context.Context, ids []compact.NodeID, hashes [][]byte) error
	// WriteCheckpoint stores the signed note of the checkpoint of size size.
	WriteCheckpoint(ctx context.Context, size uint64, note []byte) error

	// Commit makes the transaction durable (synced) and visible.
	Commit() error
	// Rollback discards the transaction. It is a no-op after Commit.
	Rollback() error
}
