// Package ledger is etb's append-only RFC 6962 Merkle log: layer 6, proof
// storage.
//
// Each entry is the canonical bytes of one lineage event (1..MaxEntrySize
// bytes, so that it fits the uint16 length prefix of a tlog-tiles entry
// bundle). Checkpoints are C2SP tlog-checkpoint signed notes (Ed25519,
// golang.org/x/mod/sumdb/note); per-entry proofs are C2SP tlog-proof texts
// that verify offline with VerifyProof; NewHandler serves the log read-only
// per C2SP tlog-tiles, so stock tlog clients and witnesses can follow it.
//
// # Storage layout
//
// Storage is an interface (a PostgreSQL driver can implement it without
// touching the sequencer). SQLiteStorage keeps three tables:
//
//   - ledger_entries (idx, count, data): one row per append batch: the index
//     of its first entry, the number of entries, and the entries in the
//     tlog-tiles entry bundle encoding (big-endian uint16 length, bytes).
//   - ledger_tiles (level, idx, width, hashes): tlog-tiles hash tiles, up to
//     256 hashes of tree level 8*level. A tile that grows is written again
//     as a new, wider row; rows are never updated, so a committed row never
//     changes, and a partial row is always a prefix of the wider rows of the
//     same tile. Only the nodes at tile levels are stored; the levels in
//     between are recomputed from at most 128 hashes of one tile.
//   - ledger_checkpoints (size, note): one signed checkpoint per batch.
//
// Primary keys refuse a second row at a key and triggers refuse UPDATE and
// DELETE. One row per batch rather than one per entry halves the time
// spent writing entries (one short statement with one blob instead of a
// multi-row INSERT to prepare and bind, and fewer b-tree cells); reading
// one entry decodes its batch's row (a few KiB to MaxBatchBytes). Entry
// bundles are not stored: a growing bundle would be written again as a
// new, wider row at every batch. Bundles are cut from the batch rows when
// served. Partial tile rows do cost that amplification on the (small)
// hashes: a serial writer adds up to 8 KiB of level-0 tile per entry; the
// spec allows deleting partial tiles once the full tile exists, which a
// future compaction may do.
//
// # Durability, step by step
//
// One sequencer goroutine per Log group-commits appends. When a request is
// waiting it opens one exclusive storage transaction (SQLite BEGIN
// IMMEDIATE: the write lock, waited for across processes) and then:
//
//  1. reads the entry count, the latest checkpoint and the edge tiles (the
//     partial tile of each level) of the committed tree, and refuses to go on
//     unless the count equals the checkpoint size, each edge tile has
//     exactly the width that size implies, and the root recomputed from the
//     edge tiles is the checkpoint's root. All of it is read under the lock,
//     so a second Log, in this or another process, can never fork the tree,
//     and a store damaged through SQLite is refused rather than extended.
//     One case skips the reads: the storage tells, under the lock, that the
//     last append transaction committed was this Log's own and that no
//     other connection or process has committed since (SQLite's PRAGMA
//     data_version); then what is stored is what this Log wrote, and its
//     own record of it is used;
//  2. closes the batch: every request queued by then (see Log.sequence),
//     and hashes its entries into the compact range, collecting each new
//     hash at a tile level;
//  3. writes the entry rows, one new row per touched tile (full tiles once,
//     the edge tiles at their new widths) and the signed checkpoint of the
//     new size;
//  4. commits: with journal_mode=WAL and synchronous=FULL the WAL is synced
//     before COMMIT returns, so entries, tiles and checkpoint become durable
//     and visible together, or not at all.
//
// Append returns only after step 4, so an acknowledged entry is durable and
// covered by a signed checkpoint; a crash at any earlier point leaves the
// previous committed state, which step 1 of the next batch verifies. The
// crash test (TestCrashRecovery) kills a writer with SIGKILL under load and
// checks exactly this, plus Fsck and checkpoint consistency across restarts.
// Fsck recomputes every hash from the entries and verifies every stored
// checkpoint; tamper tests show each kind of altered row is found.
//
// The package owns the Merkle log, its durability and its proofs. It must
// never rewrite or delete an entry, a tile or a checkpoint, never serve a
// tile, bundle or proof that a committed checkpoint does not cover, and never
// serve a proof it did not compute from stored hashes. The tree logic and
// signing never live in a Storage implementation.
package ledger
